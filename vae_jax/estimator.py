"""`VAEEstimator`: a VAE as a scikit-learn transformer, for any array of vectors or images.

For people who want ``fit`` / ``transform`` rather than a training loop::

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    vae = make_pipeline(StandardScaler(), VAEEstimator())
    codes = vae.fit(X).transform(X)        # [N, z_dim] posterior means
    vae.score(X)                           # mean log-density estimate, nats per example

It is a scikit-learn estimator (`BaseEstimator`, `TransformerMixin`: pipelines, grid
search, `clone`, `check_is_fitted`, `set_output`), so it needs scikit-learn
(``pip install 'vae-jax[sklearn]'``). Training runs `vae_jax.loop.fit` (the same jitted,
scanned step as the MNIST experiments) from `VAEEstimator._run_fit`, its only call site.

X is used exactly as given (computed in float32): any real values for the Gaussian
likelihoods (the default, "gaussian_pixel"), values in [0, 1] for the Bernoulli one (float
round-off at the edges is clipped). Saving writes the parameters with Orbax and the rest
as JSON with a SHA-256 digest of every file, checked on load: no pickle.
docs/evaluation.md says what a scikit-learn user must know.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import warnings
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpy.typing import ArrayLike

try:
    from scipy import sparse
    from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
    from sklearn.exceptions import ConvergenceWarning, NotFittedError
    from sklearn.utils.validation import check_array, check_is_fitted, validate_data
except ImportError:  # one line, not a chain of two tracebacks
    raise ImportError(
        "vae_jax.VAEEstimator needs scikit-learn >= 1.6: pip install 'vae-jax[sklearn]'"
    ) from None

from vae_jax._version import __version__
from vae_jax.arrays import Split, check_values
from vae_jax.config import ExperimentConfig, ModelConfig
from vae_jax.estimator_files import (
    SavedEstimatorError,
    VersionWarning,
    load_estimator,
    save_estimator,
    warn_other_version,
)
from vae_jax.evaluate import make_batch_evaluator
from vae_jax.fields import require_bool
from vae_jax.jit_cache import use_compilation_cache
from vae_jax.loop import fit as fit_loop
from vae_jax.models import LOGVAR_MAX, LOGVAR_MIN, VAE, LinearPathVAE, decode, init_params
from vae_jax.models import encode as encode_
from vae_jax.objectives import make_elbo
from vae_jax.options import MAX_SEED, FitOptions
from vae_jax.sources import machine_memory
from vae_jax.train import (
    DivergenceError,
    TrainState,
    init_train_state,
    make_mesh,
    steps_per_epoch,
)
from vae_jax.trainer import MAX_STEPS, check_state_fits, device_memory

__all__ = [
    "IncomparableScoreWarning",
    "NotFittedError",
    "PosteriorCollapseWarning",
    "SavedEstimatorError",
    "VAEEstimator",
    "VersionWarning",
]

# Rows per compiled call in transform / inverse_transform / sample, and examples per call in
# score_samples: one fixed size each (short inputs padded), so a row's result does not depend
# on how many rows came with it. (With a power of two up to these, XLA's CPU matmuls for
# different batch sizes summed in different orders: a row's code moved by ~4e-7 between a
# call on 8 rows and one on 178, and scikit-learn's check_methods_subset_invariance failed
# for 256 hidden units.) One shape also means one compilation per model.
_BATCH = 1024
_SCORE_BATCH = 128
_COLLAPSE_KL = 0.01  # nats: a latent whose mean KL is below this carries no information
_NOISE_SAMPLES = 8  # posterior samples per example for the noise variances (_fit_noise)
_DEPRECATED = "deprecated"


class PosteriorCollapseWarning(UserWarning):
    """Every latent's KL(q(z|x) || p(z)) is near 0: the codes carry no information."""


class IncomparableScoreWarning(UserWarning):
    """A score in other units than before: a Bernoulli likelihood's score is a log-probability
    mass, a Gaussian one's a log-density of X, so the two are not comparable
    (`VAEEstimator.score`)."""


class _Settings(NamedTuple):
    """The constructor arguments, checked and resolved by `VAEEstimator._check_params`."""

    model: ModelConfig
    max_epochs: int
    early_stopping: bool
    validation_fraction: float
    n_iter_no_change: int
    tol: float
    batch_size: int
    learning_rate: float
    seed: int
    binarize: bool
    warm_start: bool
    linear_path: bool


class _Trained(NamedTuple):
    state: Any  # the kept epoch's TrainState on the host: params, Adam's state, step
    records: list[dict[str, Any]]
    best_epoch: int
    stopped_early: bool  # early stopping's rule ended training (False: max_epochs did)


class VAEEstimator(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """A VAE (MLP encoder and decoder, diagonal-Gaussian q(z|x), N(0, I) prior).

    Constructor arguments are stored as given and checked by `fit` (one-line ValueErrors).

    Args:
      z_dim: latent dimension (the number of features `transform` returns).
      hidden: MLP hidden widths, a tuple such as ``(256,)``; the decoder mirrors them.
      activation: "relu", "tanh", "softplus", "elu", "gelu", "silu" or "leaky_relu".
      likelihood: p(x|z). For any real data (e.g. after `StandardScaler` or
        `MinMaxScaler`): "gaussian_pixel" (the default: a learned variance per feature, the
        noise model of factor analysis), "gaussian_global" (one learned variance) or
        "gaussian" (fixed std `obs_std`). With ``linear_path=True`` the learned variances
        start at factor analysis's and are trained with the rest; with False they are set
        after training to their ELBO-optimal value on X given the encoder and decoder: the
        mean squared residual per feature (the M-step of factor analysis). For data in [0, 1]:
        "bernoulli" (on values between 0 and 1 its "log-likelihood" is minus a
        cross-entropy, not a log-probability).
        Scores of different likelihoods are in different units (see `score`).
      obs_std: std of the fixed-variance "gaussian" likelihood, in the units of X.
      max_epochs: the most passes over the training data (default 500). With early
        stopping, reaching it warns (scikit-learn's `ConvergenceWarning`).
      early_stopping: hold out `validation_fraction` of X, stop when its ELBO has not
        improved by `tol` for `n_iter_no_change` epochs, and keep the parameters of the
        best epoch. False: train `max_epochs` epochs on all of X.
      validation_fraction: the held-out share of X (at least one example), in (0, 1).
      n_iter_no_change: epochs without improvement before stopping.
      tol: the improvement, in nats per example of held-out ELBO, that counts.
      batch_size: examples per Adam update (at most the training set's size).
      learning_rate: Adam's learning rate.
      random_state: None (a fresh seed, recorded in ``seed_``), an int seed in
        0..2**32-1, or a `numpy.random.RandomState` / `Generator` (a seed drawn from it).
        The seed fixes the initialisation, the data order, the validation split and the
        default randomness of `score` and `sample`. The default 0 makes `fit` repeatable.
      binarize: resample every training value ~ Bernoulli(value) at each use (dynamic
        binarization; Bernoulli likelihood only).
      verbose: print one line per epoch and show a progress bar.
      warm_start: False: each `fit` starts from a fresh initialisation. True (scikit-learn's
        convention for iterative estimators): a `fit` of a fitted estimator continues from
        its parameters, Adam's state and step count (those of the kept epoch), for up to
        `max_epochs` more epochs, and appends to ``history_`` (``n_iter_`` counts every
        epoch; epochs are numbered on; with early stopping, the epochs after the kept one
        are replaced by the new ones). The model settings (z_dim, hidden, activation,
        likelihood, obs_std, linear_path) and the example shape must be those fitted (else a
        one-line ValueError); learning_rate, batch_size, the stopping rule and the data may
        change.
        A loaded estimator (`load` keeps no optimizer state) continues from its parameters
        with a fresh Adam state. There is no `partial_fit`: training is by epochs of a
        compiled loop with early stopping on a held-out split drawn from X, which one
        mini-batch per call would bypass (and recompile for every batch size);
        ``warm_start=True, max_epochs=1`` is one more pass over X.
      linear_path: True (the default): the encoder's and decoder's means each add a linear
        map of their input to the MLP's (`vae_jax.models.LinearPathVAE`; the decoder MLP's
        output is in units of the noise std), so the model contains factor analysis; with a
        Gaussian likelihood training starts at a `sklearn.decomposition.FactorAnalysis` fit
        of X's training part (not the rows early stopping holds out), with the MLPs' output
        layers at zero: the model is then that factor analysis, and early stopping keeps an
        epoch no worse on the held-out split than the first. False: the MLP VAE alone, from
        a random initialisation.
      epochs: deprecated; ``epochs=n`` means ``max_epochs=n, early_stopping=False`` (what
        it meant before early stopping existed).
      seed: deprecated; ``seed=s`` means ``random_state=s``.

    Fitted attributes: ``model_`` (the `VAE`), ``params_``, ``n_features_in_``,
    ``feature_names_in_`` (for a DataFrame X), ``feature_shape_`` (one example's shape),
    ``seed_``, ``n_iter_`` (epochs trained), ``best_epoch_`` (the epoch whose parameters
    were kept), ``latent_kl_`` ([z_dim] mean KL per latent on X, nats) and ``history_``
    (per-epoch records, losses in nats per example; ``test_loss`` is the held-out -ELBO).
    """

    feature_shape_: tuple[int, ...]  # (set by fit; annotated for the type checker only)

    def __init__(
        self,
        z_dim: int = 2,
        hidden: tuple[int, ...] = (256,),
        activation: str = "relu",
        likelihood: str = "gaussian_pixel",
        obs_std: float = 0.1,
        *,
        max_epochs: int = 500,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        tol: float = 1e-3,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        random_state: Any = 0,
        binarize: bool = False,
        verbose: bool = False,
        warm_start: bool = False,
        linear_path: bool = True,
        epochs: Any = _DEPRECATED,
        seed: Any = _DEPRECATED,
    ) -> None:
        self.z_dim = z_dim
        self.hidden = hidden
        self.activation = activation
        self.likelihood = likelihood
        self.obs_std = obs_std
        self.max_epochs = max_epochs
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.random_state = random_state
        self.binarize = binarize
        self.verbose = verbose
        self.warm_start = warm_start
        self.linear_path = linear_path
        self.epochs = epochs
        self.seed = seed

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True  # [N, H, W] (and [N, H, W, C]) images
        # transform and score_samples compute in float32 and return float64 for float64 X.
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def set_params(self, **params: Any) -> VAEEstimator:
        """scikit-learn's `set_params`; warns (`IncomparableScoreWarning`) when it changes a
        fitted estimator's likelihood between "bernoulli" and a Gaussian one, whose scores
        are in other units (a log-probability mass against a log-density)."""
        new = params.get("likelihood")
        fitted = getattr(self, "model_", None)
        if (
            fitted is not None
            and isinstance(new, str)
            and (new == "bernoulli") != (fitted.likelihood == "bernoulli")
        ):
            warnings.warn(
                IncomparableScoreWarning(
                    f"likelihood changed from {fitted.likelihood!r} to {new!r} on a fitted "
                    "VAEEstimator: its scores before and after are not comparable (a "
                    "log-probability mass for 'bernoulli', a log-density of X otherwise)"
                ),
                stacklevel=2,
            )
        super().set_params(**params)
        return self

    # ------------------------------------------------------------------ parameters

    def _check_params(self) -> _Settings:
        """The constructor arguments, checked (one-line ValueErrors) and resolved."""
        max_epochs, early_stopping = self.max_epochs, self.early_stopping
        if not _is_str(self.epochs, _DEPRECATED):
            warnings.warn(
                "VAEEstimator(epochs=...) is deprecated: use max_epochs (epochs=n now means "
                "max_epochs=n, early_stopping=False)",
                FutureWarning,
                stacklevel=3,
            )
            max_epochs, early_stopping = self.epochs, False
        random_state = self.random_state
        if not _is_str(self.seed, _DEPRECATED):
            warnings.warn(
                "VAEEstimator(seed=...) is deprecated: use random_state",
                FutureWarning,
                stacklevel=3,
            )
            random_state = self.seed
        max_epochs = _check_int("max_epochs" if _is_str(self.epochs) else "epochs", max_epochs, 1)
        require_bool("early_stopping", early_stopping)
        require_bool("binarize", self.binarize)
        require_bool("verbose", self.verbose)
        require_bool("warm_start", self.warm_start)
        require_bool("linear_path", self.linear_path)
        fraction = _check_float("validation_fraction", self.validation_fraction)
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {fraction!r}")
        tol = _check_float("tol", self.tol)
        if tol < 0:
            raise ValueError(f"tol must be >= 0, got {tol!r}")
        learning_rate = _check_float("learning_rate", self.learning_rate)
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
        obs_std = _check_float("obs_std", self.obs_std)
        hidden = self.hidden
        if isinstance(hidden, list):
            hidden = tuple(hidden)
        if not isinstance(hidden, tuple):
            raise ValueError(f"hidden must be a tuple of widths such as (64,), got {hidden!r}")
        for width in hidden:
            _check_int("each hidden width", width, 1)
        for name in ("activation", "likelihood"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        if self.binarize and self.likelihood != "bernoulli":
            raise ValueError("binarize=True needs likelihood='bernoulli'")
        model = ModelConfig(  # checks activation, likelihood, obs_std (one-line ValueErrors)
            architecture="mlp",
            hidden=tuple(int(h) for h in hidden),
            activation=self.activation,
            z_dim=_check_int("z_dim", self.z_dim, 1),
            likelihood=self.likelihood,
            obs_std=obs_std,
        )
        return _Settings(
            model=model,
            max_epochs=max_epochs,
            early_stopping=bool(early_stopping),
            validation_fraction=fraction,
            n_iter_no_change=_check_int("n_iter_no_change", self.n_iter_no_change, 1),
            tol=tol,
            batch_size=_check_int("batch_size", self.batch_size, 1),
            learning_rate=learning_rate,
            seed=_seed_from(random_state),
            binarize=bool(self.binarize),
            warm_start=bool(self.warm_start),
            linear_path=bool(self.linear_path),
        )

    # ------------------------------------------------------------------ training

    def fit(self, X: ArrayLike, y: Any = None) -> VAEEstimator:
        """Train on X by maximising the ELBO with Adam; returns self.

        Args:
          X: [n_samples, n_features] (an array or a DataFrame), or [N, H, W] / [N, H, W, C]
            images; finite, dense, real. Values in [0, 1] for the Bernoulli likelihood,
            any real values for the Gaussian ones. Used as given.
          y: ignored (present for scikit-learn compatibility).

        Warns:
          ConvergenceWarning: (scikit-learn's) with early stopping, `max_epochs` ended
            training before early stopping's rule did: the model may be undertrained.
          PosteriorCollapseWarning: every latent's mean KL on X is below 0.01 nats.
        """
        del y
        settings = self._check_params()
        use_compilation_cache()  # (once per process; vae_jax.jit_cache)
        start: Any = None
        history: list[dict[str, Any]] = []
        if settings.warm_start and hasattr(self, "params_"):  # (checked before X is recorded)
            self._check_warm_shape(X)
            fitted = _model(settings, _image_shape(self.feature_shape_))
            start, history = self._warm_state(fitted)
        # (binarize=True needs the Bernoulli likelihood: _check_params has made sure)
        x = self._validate(X, reset=True, unit_interval=self.likelihood == "bernoulli")
        self.feature_shape_ = tuple(int(d) for d in x.shape[1:])
        self.n_features_in_ = math.prod(self.feature_shape_)
        rows = _model_input(x, self.feature_shape_)
        model = _model(settings, _image_shape(self.feature_shape_))
        x_val = None
        if settings.early_stopping:
            n = len(rows)
            n_val = math.ceil(settings.validation_fraction * n)
            if n < 2 or n_val >= n:
                raise ValueError(
                    f"early stopping holds out validation_fraction={settings.validation_fraction}"
                    f" of the samples, which leaves none to train on with n_samples = {n}: "
                    "pass more samples, or early_stopping=False"
                )
            order = np.random.default_rng(settings.seed).permutation(n)
            rows, x_val = rows[order[n_val:]], rows[order[:n_val]]
        # (before any allocation: the factor-analysis start below allocated z_dim x D floats,
        # a numpy MemoryError for z_dim=2e9, before fit's own check)
        abstract = jax.eval_shape(
            lambda key: init_train_state(model, _adam(settings.learning_rate), key),
            jax.random.key(0),
        )
        check_state_fits(abstract, make_mesh(1), advice="a smaller z_dim or hidden")
        if start is None and settings.linear_path and model.likelihood != "bernoulli":
            # (fitted on the training part only: early stopping's held-out part stays unseen)
            params = _initializer(model)(jax.random.key(settings.seed))
            params = _factor_analysis_params(model, params, rows, settings.seed)
            start = TrainState(
                step=jnp.zeros((), jnp.int32),
                params=params,
                opt_state=jax.device_get(_adam(settings.learning_rate).init(params)),
                skipped=jnp.zeros((), jnp.int32),
            )
        trained = self._run_fit(settings, rows, x_val, start)
        self.model_ = model
        self.seed_ = settings.seed
        rows_x = _model_input(x, self.feature_shape_)  # (all of X, in the model's shape)
        params = trained.state.params
        # (with linear_path the noise variances start at factor analysis's and are trained
        # and validated with the rest: the M-step on X would fit them to the training
        # residuals again, which a decoder that reproduces rare values makes too small)
        self.params_ = params if settings.linear_path else self._fit_noise(params, rows_x)
        self._train_state = trained.state  # (what warm_start continues from; not saved)
        self.history_ = history + trained.records
        self.n_iter_ = len(self.history_)
        self.best_epoch_ = trained.best_epoch
        self.latent_kl_ = self._latent_kl(rows_x)
        if settings.early_stopping and not trained.stopped_early:
            warnings.warn(
                ConvergenceWarning(
                    f"max_epochs={settings.max_epochs} ended training before early stopping "
                    f"did: the held-out ELBO improved by more than tol={settings.tol} nats "
                    f"within the last n_iter_no_change={settings.n_iter_no_change} epochs. "
                    f"Epoch {self.best_epoch_}'s parameters are kept; increase max_epochs (or "
                    "continue with warm_start=True)"
                ),
                stacklevel=2,
            )
        if np.all(self.latent_kl_ < _COLLAPSE_KL):
            warnings.warn(
                PosteriorCollapseWarning(
                    f"posterior collapse: every latent's mean KL on X is below {_COLLAPSE_KL} "
                    f"nats (largest {float(np.max(self.latent_kl_)):.2g}), so transform's codes "
                    "carry almost no information about X. Try more epochs, a smaller "
                    "obs_std, likelihood='gaussian_pixel' or fewer latents"
                ),
                stacklevel=2,
            )
        return self

    def _fit_noise(self, params: Any, rows: np.ndarray) -> Any:
        """`params` with the learned noise log-variances (``obs_logvar``, "gaussian_pixel" and
        "gaussian_global") replaced by their optimum given the encoder and decoder: the
        variance that maximises the ELBO on `rows` (all of X) is the mean squared residual
        E_q(z|x)[(x - mean(z))^2] of each feature (of all features for "gaussian_global"),
        the M-step of factor analysis. Estimated with `_NOISE_SAMPLES` posterior samples
        per example (NumPy noise from ``seed_``). Adam moves a log-variance by about the
        learning rate per step: too slowly on small data (docs/benchmarks.md)."""
        if self.model_.likelihood not in ("gaussian_pixel", "gaussian_global"):
            return params
        programs = _programs(self.model_)
        mean, logvar = _map_rows(programs.encode, params, rows)
        rng = np.random.default_rng(self.seed_)
        std = np.exp(0.5 * logvar)
        total = np.zeros(rows.shape[1:], np.float64)
        group = max(1, min(_NOISE_SAMPLES, _BATCH // len(rows)))  # samples per decode call
        for done in range(0, _NOISE_SAMPLES, group):
            m = min(group, _NOISE_SAMPLES - done)  # (a small X: all samples in one call)
            z = mean + std * rng.standard_normal((m, *mean.shape), np.float32)
            loc, _ = _map_rows(programs.decode, params, z.reshape(-1, mean.shape[-1]))
            residual = loc.reshape(m, *rows.shape) - rows
            total += np.sum(np.square(residual, dtype=np.float64), axis=(0, 1))
        variance = total / (_NOISE_SAMPLES * len(rows))
        if self.model_.likelihood == "gaussian_global":
            variance = np.asarray(np.mean(variance))
        tiny = float(np.finfo(np.float32).tiny)
        logvar_x = np.clip(np.log(np.maximum(variance, tiny)), LOGVAR_MIN, LOGVAR_MAX)
        return {**params, "obs_logvar": np.asarray(logvar_x, np.float32)}

    def _check_warm_shape(self, X: Any) -> None:
        """Raise ValueError (one line) unless X's examples have the fitted shape (X itself
        is checked by `_validate` afterwards)."""
        try:
            shape = tuple(int(d) for d in np.shape(X)[1:])
        except (ValueError, TypeError):  # (ragged or odd input: _validate says what is wrong)
            return
        if shape != self.feature_shape_:
            raise ValueError(
                f"warm_start=True continues the fitted model, which takes examples of shape "
                f"{self.feature_shape_}; X has examples of shape {shape}: set "
                "warm_start=False to fit afresh"
            )

    def _warm_state(self, model: Any) -> tuple[Any, list[dict[str, Any]]]:
        """The host `TrainState` a warm start continues from (the kept epoch's; for a loaded
        estimator, its parameters with a fresh Adam state at the kept epoch's step), and the
        history up to that epoch (epochs after it, discarded by early stopping, are
        replaced by the new ones)."""
        if model != self.model_:
            changed = ", ".join(
                f"{name} {getattr(self.model_, name, None)!r} -> {getattr(model, name, None)!r}"
                for name in ("z_dim", "hidden", "activation", "likelihood", "obs_std")
                if getattr(self.model_, name, None) != getattr(model, name, None)
            )
            if type(model) is not type(self.model_):
                changed = "linear_path"
            raise ValueError(
                f"warm_start=True continues the fitted model, but its settings changed "
                f"({changed or 'the model'}): set warm_start=False to fit afresh"
            )
        history = list(getattr(self, "history_", []))
        kept = [r for r in history if r.get("epoch", math.inf) <= self.best_epoch_]
        state = getattr(self, "_train_state", None)
        if state is None:
            params = self.params_
            step = int(kept[-1].get("step", 0)) if kept else 0
            state = TrainState(
                step=jnp.asarray(step, jnp.int32),
                params=params,
                opt_state=jax.device_get(optax.adam(self.learning_rate).init(params)),
                skipped=jnp.zeros((), jnp.int32),
            )
        return state, kept

    def _run_fit(
        self,
        settings: _Settings,
        x_train: np.ndarray,
        x_val: np.ndarray | None,
        start: Any = None,
    ) -> _Trained:
        """Train with `vae_jax.loop.fit`: its only call site in the estimator.

        With ``x_val`` the loop evaluates the held-out -ELBO after every epoch and the
        `_EarlyStopping` hook (``on_epoch_end``) keeps a host copy of the best epoch's state
        and returns True, which stops the loop, once `n_iter_no_change` epochs have not
        improved it. `start` (a host `TrainState`, warm_start) is continued for
        `max_epochs` more epochs (a partial epoch first when its step is not at an epoch's
        end, as when X's size changed).
        """
        n_train = len(x_train)
        eval_batch = 1000 if x_val is None else min(1000, _pow2(len(x_val)))
        model = _model(settings, x_train.shape[1:])
        variant = "binarized" if settings.binarize else "values as given"
        batch_size = min(settings.batch_size, n_train)  # a small X: one batch per epoch
        n_steps = steps_per_epoch(n_train, batch_size)
        done = 0 if start is None else -(-int(start.step) // n_steps)
        if (done + settings.max_epochs) * n_steps > MAX_STEPS:  # (the int32 step counter)
            name = "max_epochs" if _is_str(self.epochs) else "epochs"
            after = f" after the {done} trained (warm_start)" if done else ""
            raise ValueError(
                f"{name}={settings.max_epochs} epochs{after} of {n_steps} steps each exceed "
                f"the {MAX_STEPS} steps training can count (int32): lower {name}"
            )
        options = FitOptions(
            epochs=done + settings.max_epochs,
            batch_size=batch_size,
            seed=settings.seed,
            eval_batch_size=eval_batch,
            binarize=settings.binarize,
            data_variant=f"array [{'x'.join(map(str, x_train.shape[1:]))}], {variant}",
            log=print if self.verbose else _quiet,
        )
        stopper = None
        if x_val is not None:
            stopper = _EarlyStopping(settings.n_iter_no_change, settings.tol)
        try:  # (fit checks these Splits again, by check_split: a float32 read, 50 ms per 188 MB)
            result = fit_loop(
                make_elbo(model),
                _adam(settings.learning_rate),
                _unlabelled(x_train),
                x_test=None if x_val is None else _unlabelled(x_val),
                options=options,
                on_epoch_end=stopper,
                progress=bool(self.verbose),
                initial_state=start,
            )
        except DivergenceError as error:  # (fit's advice names the CLI's flags)
            raise type(error)(
                error.problem,
                f"training stopped: lower learning_rate (it is {settings.learning_rate:g})",
            ) from None
        if stopper is not None:
            return stopper.trained()
        records = result.records
        last = records[-1]["epoch"] if records else done
        return _Trained(jax.device_get(result.state), records, last, False)

    # ------------------------------------------------------------------ input checks

    def _validate(self, X: Any, *, reset: bool, unit_interval: bool = False) -> np.ndarray:
        """X checked (dense, real, finite as float32, 2-D or images, the fitted shape unless
        `reset`, in [0, 1] when `unit_interval`) and returned as a float64 or float32 array:
        scikit-learn's `validate_data` first (it records ``n_features_in_`` /
        ``feature_names_in_`` when `reset`), then `vae_jax.arrays.check_values`."""
        if sparse.issparse(X):
            raise TypeError(
                f"VAEEstimator needs dense data, got a sparse {type(X).__name__}: convert it "
                "with X.toarray() (the encoder reads every value, zeros included)"
            )
        # (an ndarray is looked at as it is; anything else, lists included, through asarray)
        peek = X if isinstance(X, np.ndarray) else np.asarray(X)
        ndim, shape = peek.ndim, peek.shape
        if peek.dtype.kind == "c":
            raise ValueError(
                "Complex data not supported: a VAE's likelihoods are for real values "
                f"(X has dtype {peek.dtype})"
            )
        if ndim not in (2, 3, 4):
            raise ValueError(
                f"X must be [n_samples, n_features] (or [N, H, W] / [N, H, W, C] images), got "
                f"{ndim}-D data of shape {shape}. Reshape your data: X.reshape(-1, 1) for one "
                "feature, X.reshape(1, -1) for one sample"
            )
        x = validate_data(
            self,
            X,
            reset=reset,
            dtype=(np.float64, np.float32),
            ensure_all_finite=False,  # checked below, in one line
            allow_nd=True,
            ensure_2d=ndim == 2,  # images: the number of features is checked below
        )
        if 0 in x.shape[1:]:
            raise ValueError(f"X has no features: shape {x.shape}")
        if not reset:
            shape = tuple(x.shape[1:])
            if shape != self.feature_shape_:
                raise ValueError(
                    f"X has examples of shape {shape}; this VAEEstimator was fitted on examples "
                    f"of shape {self.feature_shape_}"
                )
        # The library's finite / [0, 1] rule (finite as float32; round-off clipped), as fit's.
        return check_values(
            x,
            name="X",
            unit_interval=unit_interval,
            advice="rescale; in a pipeline MinMaxScaler(clip=True) keeps held-out data in [0, 1]; "
            "or use likelihood='gaussian_pixel' for real values",
        )

    # ------------------------------------------------------------------ inference

    @property
    def _n_features_out(self) -> int:
        """`transform`'s width (for `get_feature_names_out`: vaeestimator0, ...)."""
        return int(self.model_.z_dim)

    def _latent_kl(self, rows: np.ndarray) -> np.ndarray:
        """[z_dim] mean over `rows` of each latent's KL(q(z_j|x) || N(0, 1)), nats."""
        mean, logvar = _map_rows(_programs(self.model_).encode, self.params_, rows)
        mean, logvar = mean.astype(np.float64), logvar.astype(np.float64)
        return np.mean(0.5 * (np.exp(logvar) + mean**2 - 1.0 - logvar), axis=0)

    def transform(self, X: ArrayLike) -> np.ndarray:
        """Posterior means E_q(z|x)[z]: [n_samples, z_dim], float32 for float32 X, else
        float64 (computed in float32). Any finite X is encoded (no [0, 1] check)."""
        check_is_fitted(self)
        return self._posterior_mean(self._validate(X, reset=False))

    def _posterior_mean(self, x: np.ndarray) -> np.ndarray:
        """`transform` of checked rows `x` ([n, *feature_shape], float32 or float64): also
        the behavioural fingerprint a save records (`vae_jax.estimator_files`)."""
        mean, _ = _map_rows(
            _programs(self.model_).encode, self.params_, _model_input(x, self.feature_shape_)
        )
        return mean.astype(x.dtype)

    def inverse_transform(self, X: ArrayLike) -> np.ndarray:
        """Decode latent codes: the mean of p(x|z) at each row z of X ([n, z_dim]), shaped
        like the training examples; sigmoid of the logits (in [0, 1]) for a Bernoulli
        likelihood. float32 for float32 X, else float64."""
        check_is_fitted(self)
        z = check_array(X, dtype=(np.float64, np.float32), input_name="X")
        if z.shape[1] != self.model_.z_dim:
            raise ValueError(
                f"X has {z.shape[1]} columns; inverse_transform decodes codes of z_dim = "
                f"{self.model_.z_dim} columns"
            )
        # (finite as float32: 1e300 decoded to NaN with only numpy's overflow warning)
        z = check_values(z, name="X", advice="latent codes are finite numbers")
        loc, _ = _map_rows(_programs(self.model_).decode, self.params_, z.astype(np.float32))
        return loc.reshape(len(z), *self.feature_shape_).astype(z.dtype)

    def reconstruct(self, X: ArrayLike) -> np.ndarray:
        """``inverse_transform(transform(X))``: each example's posterior mean decoded."""
        return self.inverse_transform(self.transform(X))

    def sample(
        self, n_samples: int = 1, *, random_state: Any = None, mean: bool = False
    ) -> np.ndarray:
        """Draw from the model: z ~ N(0, I), then x ~ p(x|z) (or its mean).

        Args:
          n_samples: how many (>= 1).
          random_state: None (the fitted ``seed_``: the same draws each call), an int seed,
            a `RandomState` / `Generator` (a seed drawn from it) or a `jax.random` key.
          mean: False: true samples of p(x|z) (0/1 values for a Bernoulli likelihood,
            mean + std * noise for a Gaussian one); True: the means of p(x|z).

        Returns:
          [n_samples, *feature_shape_] float32.
        """
        check_is_fitted(self)
        n = _check_int("n_samples", n_samples, 1)
        require_bool("mean", mean)
        nbytes = n * (math.prod(self.feature_shape_) + self.model_.z_dim) * 4
        if nbytes > machine_memory():  # (before: it allocated until the machine ran out)
            raise ValueError(
                f"n_samples={n:,} needs {nbytes / 2**30:,.1f} GiB for the samples, more than "
                f"this machine's memory ({machine_memory() / 2**30:,.1f} GiB): draw them in parts"
            )
        key_z, key_x = jax.random.split(_key_from(random_state, self.seed_, "random_state"))
        z = np.asarray(jax.random.normal(key_z, (n, self.model_.z_dim)))
        loc, std = _map_rows(_programs(self.model_).decode, self.params_, z)
        if not mean:
            if self.model_.likelihood == "bernoulli":
                loc = np.asarray(jax.random.bernoulli(key_x, loc), np.float32)
            else:
                loc = loc + std * np.asarray(jax.random.normal(key_x, loc.shape))
        return loc.reshape(n, *self.feature_shape_)

    def generate(self, n: int, key: Any = None, *, mean: bool = True) -> np.ndarray:
        """`sample` with decoder means by default: [n, *feature_shape_] float32.

        Args:
          n: number of samples (>= 1).
          key: a `jax.random` key or an int seed (default: the fitted ``seed_``).
          mean: True: means of p(x|z); False: true samples of p(x|z).
        """
        return self.sample(n, random_state=key, mean=mean)

    def score_samples(
        self,
        X: ArrayLike,
        *,
        num_samples: int = 100,
        key: Any = None,
        sample_chunk: int = 20,
    ) -> np.ndarray:
        """Per-example log-density estimates of X as given, in nats: [n_samples] float64.

        ``num_samples = k > 1`` (default 100): the importance-sampled estimate
        ``log (1/k) sum_i p(x, z_i) / q(z_i|x)``, z_i ~ q(z|x) (Burda et al., 2016), a
        lower bound of log p(x) in expectation that tightens as k grows and is >= the ELBO.
        ``num_samples = 1``: the ELBO, E_q[log p(x|z)] (one sample) minus the closed-form KL.
        Summed over each example's features. With the Gaussian likelihoods this is a
        log-density of X in its own units (comparable with any density model of the same
        X); with the Bernoulli likelihood it is a log-probability for binary X and, for
        values between 0 and 1, minus a cross-entropy (not a normalised density).

        Args:
          X: examples shaped like the training data (values in [0, 1] for Bernoulli).
          num_samples: k >= 1 importance samples per example.
          key: a `jax.random` key or an int seed (default: the fitted ``seed_``); an
            example's noise depends on the key and a checksum (CRC-32) of its values only,
            so its score does not depend on the other rows or their order.
          sample_chunk: samples decoded at once (memory; not the result).
        """
        check_is_fitted(self)
        use_compilation_cache()
        k = _check_int("num_samples", num_samples, 1)
        chunk = _check_int("sample_chunk", sample_chunk, 1)
        self._check_score_memory(min(chunk, k))
        jax_key = _key_from(key, self.seed_, "key")
        x = self._validate(X, reset=False, unit_interval=self.model_.likelihood == "bernoulli")
        rows = _model_input(x, self.feature_shape_)
        evaluate = make_batch_evaluator(self.model_, num_samples=k, sample_chunk=min(chunk, k))
        ids = _row_ids(rows)
        n = len(rows)
        size = _SCORE_BATCH  # one compiled shape for every X (see _BATCH)
        values = []
        for start in range(0, n, size):
            part = jnp.asarray(_pad(rows[start : start + size], size))
            part_ids = jnp.asarray(_pad(ids[start : start + size], size))
            terms, _ = evaluate(self.params_, part, None, part_ids, jax_key)
            keep = min(size, n - start)
            values.append(np.asarray(terms.elbo if k == 1 else terms.log_px)[:keep])
        return np.concatenate(values).astype(np.float64)

    def score(
        self,
        X: ArrayLike,
        y: Any = None,
        *,
        num_samples: int = 100,
        key: Any = None,
        sample_chunk: int = 20,
    ) -> float:
        """Mean of `score_samples`: nats per example, higher is better. y is ignored.

        The unit depends on the likelihood. With the Gaussian ones (the default
        "gaussian_pixel", "gaussian_global", "gaussian") it is a log-density of X in X's own
        units: comparable with any density model of the same X (`GaussianMixture.score`,
        `FactorAnalysis.score`), and it changes by ``-sum(log scale)`` when X is rescaled.
        With "bernoulli" it is a log-probability mass (of binary X; minus a cross-entropy
        for values between 0 and 1). A Bernoulli score and a Gaussian score are therefore
        not comparable: do not pick between them by `score` (``set_params`` warns with an
        `IncomparableScoreWarning` when it changes a fitted estimator's likelihood from one
        kind to the other). The Gaussian likelihoods' scores are comparable with each other.
        """
        del y
        values = self.score_samples(X, num_samples=num_samples, key=key, sample_chunk=sample_chunk)
        return float(np.mean(values))

    # ------------------------------------------------------------------ persistence

    def __getstate__(self) -> dict[str, Any]:
        """Pickle state: scikit-learn's, plus the vae_jax version (``_vae_jax_version``)."""
        state = dict(super().__getstate__())
        state["_vae_jax_version"] = __version__
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle; a pickle of another vae_jax version warns (`VersionWarning`, both
        versions). A pickle runs code as it loads: unpickle only files you trust."""
        state = dict(state)
        warn_other_version("this pickled VAEEstimator", state.pop("_vae_jax_version", None), 2)
        super().__setstate__(state)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the fitted estimator to the directory `path`: Orbax parameters, and
        ``estimator.json`` with the settings, the fitted attributes and the SHA-256 of
        every parameter file and of its own content (`vae_jax.estimator_files`).

        Raises:
          FileExistsError: `path` exists and `overwrite` is False, or `path` is not a saved
            estimator (overwrite replaces only one; the new save is swapped in atomically).
        """
        check_is_fitted(self)
        require_bool("overwrite", overwrite)  # (a truthy "no" would replace a save)
        return save_estimator(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, *, allow_unverified: bool = False) -> VAEEstimator:
        """Read an estimator written by `save`, after checking every file's digest
        (a version 1 save, which has none, only with ``allow_unverified=True``).

        Raises:
          FileNotFoundError: `path` holds no ``estimator.json``.
          SavedEstimatorError (a ValueError): a damaged, truncated, incomplete or foreign
            directory; one line naming the file.
        """
        require_bool("allow_unverified", allow_unverified)
        estimator = load_estimator(cls, path, allow_unverified=allow_unverified)
        assert isinstance(estimator, cls)
        return estimator

    def _check_score_memory(self, chunk: int) -> None:
        """Refuse (ValueError, one line) a `sample_chunk` whose batch of decoded samples
        cannot fit in the device's memory, before anything is allocated (before: XLA's
        RESOURCE_EXHAUSTED after compiling). The estimate is the experiments' own
        (`ExperimentConfig.activation_bytes`)."""
        m = self.model_
        config = ExperimentConfig(
            model=ModelConfig(hidden=tuple(m.hidden), z_dim=m.z_dim, likelihood=m.likelihood)
        )
        nbytes = config.activation_bytes(tuple(m.image_shape), _SCORE_BATCH * chunk)
        memory = device_memory(make_mesh(1))
        if nbytes > memory:
            raise ValueError(
                f"sample_chunk={chunk:,}: {_SCORE_BATCH} examples x {chunk:,} samples at once "
                f"need about {nbytes / 2**30:,.1f} GiB of activations, more than the device's "
                f"{memory / 2**30:,.1f} GiB: a smaller sample_chunk (the scores do not change)"
            )

    def _build_model(self, feature_shape: tuple[int, ...]) -> VAE:
        """The `VAE` that `fit` trains for examples of `feature_shape` (`load` rebuilds it)."""
        return _model(self._check_params(), _image_shape(feature_shape))


# ----------------------------------------------------------------------------- early stopping


class _EarlyStopping:
    """``on_epoch_end`` hook: track the held-out -ELBO (``records[-1]["test_loss"]``), keep
    a host copy of the best epoch's state (parameters, Adam's state, step: what warm_start
    continues from), and return True (stop) after
    `n_iter_no_change` epochs without an improvement of more than `tol`."""

    def __init__(self, n_iter_no_change: int, tol: float) -> None:
        self.n_iter_no_change, self.tol = n_iter_no_change, tol
        self.best_loss = math.inf
        self.best_epoch = 0
        self.best_state: Any = None
        self.waited = 0
        self.records: list[dict[str, Any]] = []

    def __call__(self, epoch: int, state: Any, records: list[dict[str, Any]]) -> bool:
        self.records = records
        loss = float(records[-1]["test_loss"])
        if self.best_state is None or loss < self.best_loss - self.tol:
            self.best_loss, self.best_epoch, self.waited = loss, epoch, 0
            self.best_state = jax.device_get(state)  # host copy: the state is donated
            return False
        self.waited += 1
        return self.waited >= self.n_iter_no_change  # (True: fit stops after this epoch)

    def trained(self) -> _Trained:
        stopped = self.waited >= self.n_iter_no_change
        return _Trained(self.best_state, list(self.records), self.best_epoch, stopped)


# ----------------------------------------------------------------------------- helpers


def _model(settings: _Settings, image_shape: tuple[int, ...]) -> VAE:
    """The `VAE` (a `LinearPathVAE` with ``linear_path``) for examples of `image_shape`."""
    model = settings.model.build(image_shape)
    assert isinstance(model, VAE)  # (the estimator's ModelConfig is a one-layer VAE)
    if not settings.linear_path:
        return model
    fields = {f: getattr(model, f) for f in ("image_shape", "z_dim", "architecture", "hidden")}
    fields.update({f: getattr(model, f) for f in ("activation", "likelihood", "obs_std", "dtype")})
    return LinearPathVAE(**fields)


def _factor_analysis_params(model: VAE, params: Any, rows: np.ndarray, seed: int) -> Any:
    """`params` of a `LinearPathVAE` with a Gaussian likelihood set to a factor-analysis fit
    of `rows` ([N, *image_shape]): ``x_shift`` and ``x_log_scale`` X's mean and log std (a
    constant feature: the mean std), and, fitted on the standardized values u, the linear
    decoder's kernel the loadings (rows rotated so that W diag(1/noise) W^T is diagonal,
    which makes FA's posterior diagonal), the linear encoder and the encoder's output bias
    FA's exact posterior mean and log-variance, ``obs_logvar`` the log noise variances in
    X's units (their mean for "gaussian_global"; the fixed "gaussian" has none), and both
    MLPs' output layers 0: the model is then FA, whose ELBO is its exact log-likelihood.
    Latents beyond the data's rank (z_dim >= min(N, D)) get zero loadings (posterior =
    prior). The noise variances are at least 1e-6 (of the variance of u: 1). NumPy's BLAS
    runs on one thread here: the same numbers on any machine, and on a busy one much faster
    for data of this size (docs/benchmarks.md)."""
    from sklearn.decomposition import FactorAnalysis
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        flat = rows.reshape(len(rows), -1).astype(np.float64)
        n, d = flat.shape
        k = model.z_dim
        mean = flat.mean(axis=0)
        scale = np.std(flat, axis=0)
        varied = scale > 0
        scale = np.where(varied, scale, np.mean(scale[varied]) if varied.any() else 1.0)
        u = (flat - mean) / scale
        loadings = np.zeros((k, d))
        noise = np.where(varied, 1.0, 0.0)  # (FA with no factor: the variances of u)
        k_fa = min(k, d, n - 1)
        if k_fa >= 1 and varied.any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                fa = FactorAnalysis(n_components=k_fa, random_state=seed % (2**31)).fit(u)
            noise = fa.noise_variance_
            loadings[:k_fa] = fa.components_
        noise = np.maximum(noise, 1e-6)
        # Rotate the loadings: M = W diag(1/noise) W^T = Q diag(e) Q^T, W <- Q^T W.
        eigen, q = np.linalg.eigh(loadings @ (loadings / noise).T)
        eigen = np.maximum(eigen, 0.0)
        loadings = q.T @ loadings
        post_var = 1.0 / (1.0 + eigen)  # [k] exact posterior variances
        encoder_kernel = (loadings / noise).T * post_var  # [d, k]: posterior mean = u @ this
        params = jax.tree.map(np.asarray, params)
        enc_out = _last_dense(params["encoder"])
        dec_out = _last_dense(params["decoder"])
        params["encoder"][enc_out]["kernel"] = np.zeros_like(params["encoder"][enc_out]["kernel"])
        params["encoder"][enc_out]["bias"] = np.concatenate([np.zeros(k), np.log(post_var)]).astype(
            np.float32
        )
        params["decoder"][dec_out]["kernel"] = np.zeros_like(params["decoder"][dec_out]["kernel"])
        params["decoder"][dec_out]["bias"] = np.zeros_like(params["decoder"][dec_out]["bias"])
        params["x_shift"] = mean.astype(np.float32)
        params["x_log_scale"] = np.log(scale).astype(np.float32)
        params["linear_encoder"]["kernel"] = encoder_kernel.astype(np.float32)
        params["linear_decoder"]["kernel"] = loadings.astype(np.float32)
        params["linear_decoder"]["bias"] = np.zeros(d, np.float32)
        noise_x = noise * scale**2
        if model.likelihood == "gaussian_pixel":
            params["obs_logvar"] = np.log(noise_x).reshape(model.image_shape).astype(np.float32)
        elif model.likelihood == "gaussian_global":
            params["obs_logvar"] = np.asarray(np.log(np.mean(noise_x)), np.float32)
        return params


def _last_dense(tree: dict[str, Any]) -> str:
    """The name of an MLP's output layer: the Dense_i with the largest i."""
    return max((name for name in tree if name.startswith("Dense_")), key=lambda n: int(n[6:]))


class _Programs(NamedTuple):
    encode: Any  # (params, x [B, *image_shape]) -> (mean, logvar) [B, z_dim] each
    decode: Any  # (params, z [B, z_dim]) -> (mean, std) of p(x|z), [B, *image_shape] each


@functools.lru_cache(maxsize=16)
def _programs(model: VAE) -> _Programs:
    """The jitted encoder and decoder of `model`, compiled once per model and batch shape
    (equal models share them: a refit or a clone does not recompile)."""

    def encode(params: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean, logvar = encode_(model, params, x)
        return mean.astype(jnp.float32), jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX).astype(
            jnp.float32
        )

    def decode_(params: Any, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = decode(model, params, z)
        loc = out.loc.astype(jnp.float32)
        if model.likelihood == "bernoulli":
            return jax.nn.sigmoid(loc), jnp.zeros_like(loc)
        assert out.logvar is not None
        std = jnp.exp(0.5 * out.logvar.astype(jnp.float32))
        return loc, jnp.broadcast_to(std, loc.shape)

    return _Programs(jax.jit(encode), jax.jit(decode_))


@functools.lru_cache(maxsize=16)
def _initializer(model: VAE) -> Any:
    """``key -> init_params(model, key)``, jitted once per model (a refit compiles nothing)."""
    return jax.jit(lambda key: init_params(model, key))


@functools.lru_cache(maxsize=16)
def _adam(learning_rate: float) -> optax.GradientTransformation:
    """`optax.adam(learning_rate)`, one object per rate: the trainer reuses compiled programs
    for an equal objective and the same optimizer object (`vae_jax.trainer._reused`), so
    fits of one configuration and shape compile once per process."""
    return optax.adam(learning_rate)


def _map_rows(fn: Any, params: Any, rows: np.ndarray) -> Any:
    """``fn(params, batch)`` over `rows` in batches of `_BATCH` rows (the last one padded and
    trimmed), so every input shares one compiled program
    and a row's result does not depend on the other rows."""
    use_compilation_cache()
    n = len(rows)
    size = _BATCH
    outputs = []
    for start in range(0, n, size):
        keep = min(size, n - start)
        out = jax.device_get(fn(params, jnp.asarray(_pad(rows[start : start + size], size))))
        outputs.append(jax.tree.map(lambda a, k=keep: a[:k], out))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


def _pad(rows: np.ndarray, size: int) -> np.ndarray:
    """`rows` with zero rows appended up to `size` rows."""
    if len(rows) == size:
        return rows
    return np.concatenate([rows, np.zeros((size - len(rows), *rows.shape[1:]), rows.dtype)])


def _row_ids(rows: np.ndarray) -> np.ndarray:
    """[N] int32 ids from each row's bytes (CRC-32): `score_samples` seeds an example's
    noise with its id, so its estimate does not depend on the other rows or their order."""
    flat = np.ascontiguousarray(rows).reshape(len(rows), -1)
    return np.array([zlib.crc32(row.tobytes()) for row in flat], np.uint32).view(np.int32)


def _pow2(n: int) -> int:
    """The smallest power of two >= n (n >= 1)."""
    return 1 << max(n - 1, 0).bit_length()


def _unlabelled(rows: np.ndarray) -> Split:
    """Checked float32 rows as the `Split` fit takes (no labels: the model is unconditional)."""
    return Split(rows, np.zeros(len(rows), np.int32))


def _model_input(x: np.ndarray, feature_shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(x, np.float32).reshape(len(x), *_image_shape(feature_shape))


def _image_shape(feature_shape: tuple[int, ...]) -> tuple[int, ...]:
    """One example's shape -> the model's (H, W, C): (D,) -> (D, 1, 1), (H, W) -> (H, W, 1)."""
    if len(feature_shape) == 1:
        return (feature_shape[0], 1, 1)
    if len(feature_shape) == 2:
        return (*feature_shape, 1)
    return tuple(feature_shape)


def _quiet(message: str) -> None:
    del message


def _is_str(value: Any, text: str = _DEPRECATED) -> bool:
    return isinstance(value, str) and value == text


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _seed_from(random_state: Any) -> int:
    """An int seed in 0..MAX_SEED from None (fresh OS entropy), an int, or a NumPy
    `RandomState` / `Generator` (one draw from it)."""
    if random_state is None:
        return int(np.random.default_rng().integers(MAX_SEED + 1))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, MAX_SEED + 1, dtype=np.int64))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(MAX_SEED + 1))
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if 0 <= int(random_state) <= MAX_SEED:
            return int(random_state)
    raise ValueError(
        f"random_state must be None, an int in 0..{MAX_SEED}, or a numpy RandomState or "
        f"Generator, got {random_state!r}"
    )


def _key_from(value: Any, default_seed: int, name: str) -> jax.Array:
    """A `jax.random` key from None (`default_seed`), a seed or NumPy generator, or a key
    (a typed one, or a legacy ``jax.random.PRNGKey``: uint32 [2], before refused)."""
    if value is None:
        return jax.random.key(default_seed)
    if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        return value
    if isinstance(value, jax.Array) and value.dtype == jnp.uint32 and value.shape == (2,):
        return jax.random.wrap_key_data(value)
    try:
        return jax.random.key(_seed_from(value))
    except ValueError:
        raise ValueError(
            f"{name} must be None, an int in 0..{MAX_SEED}, a numpy RandomState or Generator, "
            f"or a jax.random key, got {value!r}"
        ) from None
