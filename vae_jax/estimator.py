"""`VAEEstimator`: a scikit-learn-style VAE for any array of images or vectors.

For people who want ``fit`` / ``transform`` rather than a training loop::

    from sklearn.datasets import load_digits
    X = load_digits().images / 16.0                      # [1797, 8, 8] in [0, 1]
    vae = VAEEstimator(z_dim=2, hidden=(128,), epochs=50).fit(X)
    codes = vae.transform(X)                             # [1797, 2] posterior means
    fakes = vae.generate(16, key=0)                      # [16, 8, 8] decoder means
    print(vae.score(X, num_samples=1000))                # mean IS log-likelihood, nats
    vae.save("digits_vae"); same = VAEEstimator.load("digits_vae")

Training runs `vae_jax.loop.fit` (the same jitted, scanned step as the MNIST experiments).
The estimator needs no scikit-learn; it follows its conventions (constructor arguments are
stored unvalidated and checked by `fit`; fitted attributes end in ``_``; `get_params` /
`set_params`). Saving writes the parameters with Orbax and the rest as JSON: no pickle.

X is used exactly as given (as float32) by `fit`, `transform`, `reconstruct` and `score`:
values in [0, 1] for the Bernoulli likelihood (float round-off at the edges is tolerated),
any real values for the Gaussian ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from numpy.typing import ArrayLike

from vae_jax.arrays import UNIT_INTERVAL_TOLERANCE
from vae_jax.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from vae_jax.evaluate import evaluate_dataset
from vae_jax.loop import fit as fit_loop
from vae_jax.models import decoder_mean, init_params
from vae_jax.optim import make_optimizer
from vae_jax.train import steps_per_epoch
from vae_jax.workdir import write_json

_FORMAT = "vae_jax.VAEEstimator"
_FORMAT_VERSION = 1
_META_FILE = "estimator.json"
_PARAMS_DIR = "params"
_BATCH = 1000  # examples per compiled call in transform / reconstruct


class NotFittedError(ValueError, AttributeError):
    """The estimator is used before `fit` (the same bases as scikit-learn's)."""


@dataclasses.dataclass
class VAEEstimator:
    """A VAE (MLP encoder and decoder, diagonal-Gaussian q(z|x), N(0, I) prior).

    Attributes:
      z_dim: latent dimension.
      hidden: MLP hidden widths (the decoder mirrors them).
      activation: "relu", "tanh", "softplus", "elu", "gelu", "silu" or "leaky_relu".
      likelihood: "bernoulli" (the default, for data in [0, 1]: binary, or grey levels
        where the "likelihood" is a cross-entropy loss, not a normalised density),
        "gaussian" (fixed std `obs_std`), "gaussian_global" or "gaussian_pixel" (learned
        variance).
      obs_std: std of the fixed-variance Gaussian likelihood.
      epochs: passes over the training data.
      batch_size: examples per Adam update (at most N).
      learning_rate: Adam learning rate.
      seed: seed of every random stream (initialisation, data order, samples).
      binarize: resample every training value ~ Bernoulli(value) at each use (dynamic
        binarization; Bernoulli likelihood only).
      verbose: print one line per epoch and show a progress bar.

    Fitted attributes: ``model_`` (the `VAE`), ``params_``, ``feature_shape_`` (one
    example's shape as given to `fit`), ``n_features_in_``, ``history_`` (per-epoch
    records, losses in nats per example).
    """

    z_dim: int = 2
    hidden: tuple[int, ...] = (256,)
    activation: str = "relu"
    likelihood: str = "bernoulli"
    obs_std: float = 0.1
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    binarize: bool = False
    verbose: bool = False

    # ------------------------------------------------------------------ sklearn protocol

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments, as a dict (scikit-learn protocol)."""
        del deep
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def set_params(self, **params: Any) -> VAEEstimator:
        """Set constructor arguments; returns self (scikit-learn protocol)."""
        names = {f.name for f in dataclasses.fields(self)}
        for name, value in params.items():
            if name not in names:
                raise ValueError(f"unknown parameter {name!r}; valid: {sorted(names)}")
            setattr(self, name, value)
        return self

    # ------------------------------------------------------------------ training

    def _config(self, num_examples: int | None = None) -> ExperimentConfig:
        batch_size = int(self.batch_size)
        if num_examples is not None:
            batch_size = min(batch_size, num_examples)  # a small X is one batch per epoch
        if self.binarize and self.likelihood != "bernoulli":
            raise ValueError("binarize=True needs likelihood='bernoulli'")
        return ExperimentConfig(
            model=ModelConfig(
                architecture="mlp",
                hidden=tuple(int(h) for h in self.hidden),
                activation=self.activation,
                z_dim=int(self.z_dim),
                likelihood=self.likelihood,
                obs_std=float(self.obs_std),
            ),
            data=DataConfig(dataset="array", binarize="dynamic" if self.binarize else "none"),
            train=TrainConfig(
                epochs=int(self.epochs),
                batch_size=batch_size,
                learning_rate=float(self.learning_rate),
                seed=int(self.seed),
            ),
        )

    def fit(self, X: ArrayLike, y: ArrayLike | None = None) -> VAEEstimator:
        """Train on X by maximising the ELBO (Adam, `epochs` passes); returns self.

        Args:
          X: [N, D] vectors, [N, H, W] or [N, H, W, C] images, finite; values in [0, 1] for
            the Bernoulli likelihood, any real values for the Gaussian ones. Used as given.
          y: ignored (present for scikit-learn compatibility).
        """
        del y
        x = _check_array(X, likelihood=self.likelihood)
        config = self._config(len(x))
        feature_shape = tuple(x.shape[1:])
        image_shape = _image_shape(feature_shape)
        model = config.model.build(image_shape)
        variant = "binarized" if self.binarize else "values as given"
        result = fit_loop(
            config.objective.build(model),
            make_optimizer(config.train, steps_per_epoch(len(x), config.train.batch_size)),
            x.reshape(len(x), *image_shape).astype(np.float32),
            options=config.fit_options(
                data_variant=f"array of {len(x)} x {list(feature_shape)}, {variant}"
            ),
            progress=self.verbose,
            log=print if self.verbose else _quiet,
        )
        self.model_ = result.model
        self.params_ = jax.device_get(result.state.params)
        self.feature_shape_ = feature_shape
        self.n_features_in_ = math.prod(feature_shape)
        self.history_ = result.records
        return self

    def fit_transform(self, X: ArrayLike, y: ArrayLike | None = None) -> np.ndarray:
        """`fit`, then `transform` the same X."""
        return self.fit(X, y).transform(X)

    # ------------------------------------------------------------------ inference

    def _check_fitted(self) -> None:
        if not hasattr(self, "params_"):
            raise NotFittedError(
                "this VAEEstimator is not fitted yet: call fit(X) (or VAEEstimator.load)"
            )

    def _check_input(self, X: ArrayLike) -> np.ndarray:
        self._check_fitted()
        x = _check_array(X, likelihood=self.likelihood)
        if tuple(x.shape[1:]) != self.feature_shape_:
            raise ValueError(
                f"X has examples of shape {tuple(x.shape[1:])}; this estimator was fitted on "
                f"examples of shape {self.feature_shape_}"
            )
        return x.reshape(len(x), *_image_shape(self.feature_shape_)).astype(np.float32)

    def _encode_fn(self):
        model, params = self.model_, self.params_

        @jax.jit
        def encode(x):
            mean, _ = model.apply({"params": params}, x, method="encode")
            return mean, decoder_mean(model, params, mean, None)

        return encode

    def _encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        encode = self._encode_fn()
        means, recons = [], []
        for start in range(0, len(x), _BATCH):
            mean, recon = jax.device_get(encode(jnp.asarray(x[start : start + _BATCH])))
            means.append(mean)
            recons.append(recon)
        return np.concatenate(means), np.concatenate(recons)

    def transform(self, X: ArrayLike) -> np.ndarray:
        """Posterior means E_q(z|x)[z] of each example: [N, z_dim] float32."""
        x = self._check_input(X)
        return self._encode(x)[0]

    def reconstruct(self, X: ArrayLike) -> np.ndarray:
        """Decode each example's posterior mean: the mean of p(x|z) (sigmoid of the logits
        for a Bernoulli likelihood), shaped like X, float32 in [0, 1]."""
        x = self._check_input(X)
        return self._encode(x)[1].reshape(len(x), *self.feature_shape_)

    def generate(self, n: int, key: jax.Array | int | None = None) -> np.ndarray:
        """Decode n draws z ~ N(0, I): means of p(x|z), [n, *feature_shape] in [0, 1].

        Args:
          n: number of samples (>= 1).
          key: a `jax.random` key or an int seed (default: the estimator's seed).
        """
        self._check_fitted()
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        key = _as_key(self.seed if key is None else key)
        z = jax.random.normal(key, (int(n), self.model_.z_dim))
        images = jax.jit(lambda z: decoder_mean(self.model_, self.params_, z, None))(z)
        return np.asarray(images).reshape(int(n), *self.feature_shape_)

    def score(
        self,
        X: ArrayLike,
        y: ArrayLike | None = None,
        *,
        num_samples: int = 1,
        key: jax.Array | int | None = None,
        sample_chunk: int = 20,
    ) -> float:
        """Mean log-likelihood bound of X, in nats per example (higher is better).

        ``num_samples=1``: the ELBO, E_q[log p(x|z)] (one sample per example) minus the
        closed-form KL. ``num_samples=k > 1``: the importance-sampled estimate of log p(x)
        with k samples per example (`vae_jax.evaluate.importance_terms`), which is >= the
        ELBO and tends to log p(x) as k grows. Summed over each example's values, averaged
        over examples. With a Bernoulli likelihood on non-binary values this is minus a
        cross-entropy loss, not a normalised log-likelihood.

        Args:
          X: examples shaped like the training data.
          y: ignored.
          num_samples: 1 for the ELBO, k > 1 for the IS estimate.
          key: a `jax.random` key or an int seed (default: the estimator's seed).
          sample_chunk: samples decoded at once (memory; not the result).
        """
        del y
        x = self._check_input(X)
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        result = evaluate_dataset(
            self.model_,
            self.params_,
            x,
            None,
            _as_key(self.seed if key is None else key),
            num_samples=int(num_samples),
            sample_chunk=min(int(sample_chunk), int(num_samples)),
            batch_size=100,
            progress=False,
        )
        values = result.terms.elbo if num_samples == 1 else result.terms.log_px
        return float(np.mean(values))

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the fitted estimator to the directory `path` (Orbax parameters + JSON).

        Raises:
          FileExistsError: `path` exists and `overwrite` is False.
        """
        self._check_fitted()
        path = Path(path).absolute()
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
            import shutil

            shutil.rmtree(path)
        path.mkdir(parents=True)
        checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
        try:
            checkpointer.save(path / _PARAMS_DIR, args=ocp.args.StandardSave(self.params_))
        finally:
            checkpointer.close()
        meta = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "hyperparameters": {k: _jsonable(v) for k, v in self.get_params().items()},
            "feature_shape": list(self.feature_shape_),
            "history": self.history_,
        }
        write_json(path / _META_FILE, meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> VAEEstimator:
        """Read an estimator written by `save`."""
        path = Path(path).absolute()
        meta_path = path / _META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{path} holds no {_META_FILE}: not a saved VAEEstimator")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != _FORMAT or meta.get("version") != _FORMAT_VERSION:
            raise ValueError(f"{meta_path} is not a {_FORMAT} version {_FORMAT_VERSION} file")
        hyper = dict(meta["hyperparameters"])
        hyper["hidden"] = tuple(hyper["hidden"])
        estimator = cls(**hyper)
        feature_shape = tuple(meta["feature_shape"])
        model = estimator._config().model.build(_image_shape(feature_shape))
        target = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
        checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
        try:
            params = checkpointer.restore(path / _PARAMS_DIR, args=ocp.args.StandardRestore(target))
        finally:
            checkpointer.close()
        estimator.model_ = model
        estimator.params_ = params
        estimator.feature_shape_ = feature_shape
        estimator.n_features_in_ = math.prod(feature_shape)
        estimator.history_ = meta["history"]
        return estimator


# ----------------------------------------------------------------------------- helpers


def _quiet(message: str) -> None:
    del message


def _as_key(key: jax.Array | int) -> jax.Array:
    if isinstance(key, int | np.integer):
        return jax.random.key(int(key))
    return key


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _image_shape(feature_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """One example's shape -> the model's (H, W, C): (D,) -> (D, 1, 1), (H, W) -> (H, W, 1)."""
    if len(feature_shape) == 1:
        return (feature_shape[0], 1, 1)
    if len(feature_shape) == 2:
        return (*feature_shape, 1)
    return tuple(feature_shape)  # type: ignore[return-value]


def _check_array(X: ArrayLike, *, likelihood: str) -> np.ndarray:
    """Validate X: numeric, [N, D] / [N, H, W] / [N, H, W, C], N >= 1, finite; in [0, 1]
    (round-off clipped) for a Bernoulli likelihood."""
    x = np.asarray(X)
    if x.dtype == object or not (
        np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.bool_)
    ):
        raise ValueError(f"X must be a numeric array, got dtype {x.dtype}")
    if x.ndim not in (2, 3, 4):
        raise ValueError(
            f"X must be [N, D] vectors, [N, H, W] or [N, H, W, C] images; got shape {x.shape}"
        )
    if x.shape[0] == 0 or 0 in x.shape[1:]:
        raise ValueError(f"X is empty: shape {x.shape}")
    x = x.astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        raise ValueError(f"X contains {int(bad.sum())} NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    tol = UNIT_INTERVAL_TOLERANCE
    if likelihood == "bernoulli" and (low < -tol or high > 1.0 + tol):
        raise ValueError(
            f"X has values in [{low:g}, {high:g}]; a Bernoulli likelihood needs values in "
            "[0, 1] (rescale, e.g. X / X.max(), or use likelihood='gaussian_pixel')"
        )
    return np.clip(x, 0.0, 1.0) if likelihood == "bernoulli" else x
