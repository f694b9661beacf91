"""Typed, frozen configuration: one dataclass per concern, each field declared once.

Every field is declared with `option(default, help, ...)`: its type (the default's), its
help text and its bounds live in that one line, and from it come the command-line flag
(`vae_jax.cli`: ``--name``, the help text, the parser that turns a string into the type),
the check of the value (`check_fields`, run by each dataclass's ``__post_init__``) and the
JSON record (`ExperimentConfig.to_dict`, which a work directory records and ``--config``
reads back).

Where the checks live (each once):
  - a field's type, range and choices: `check_fields`, from the field's declaration;
  - rules between fields of one section: that section's ``__post_init__``;
  - rules between sections that need no data: `ExperimentConfig.__post_init__`;
  - the model against the data's event shape (conv strides, free bits against the
    posterior, the memory of a batch): `ExperimentConfig.build`, once per run, which also
    builds the model and the objective that the run uses.

Numeric bounds are what the machine can hold: integers fit the int32 arithmetic of step
counters and shapes (`INT32_MAX`; seeds 32 bits), floats are finite float32 numbers, depths
(layer counts) are at most `MAX_LAYERS` (each layer is traced in Python), and the memory of
one training and one evaluation batch is checked against one device's before anything is
allocated (`ExperimentConfig.build` with ``memory``). The model's size is checked by
`vae_jax.loop.fit` (parameters and optimizer state against one device's memory).

A field added later must default to what the library did before it existed (``adam_b1``:
0.9, optax's): a work directory recorded before it, its config.json and its checkpoints'
identities, is read with that default (`ExperimentConfig.from_dict`,
`vae_jax.loop.upgrade_identity`) and resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from vae_jax.fields import MAX_LAYERS, MAX_SEED, check_fields, option, require_int, require_ints
from vae_jax.latents import IAFVAE, HierarchicalVAE, VampPriorVAE
from vae_jax.models import ACTIVATIONS, ARCHITECTURES, LIKELIHOODS, VAE, check_model
from vae_jax.objectives import Objective
from vae_jax.options import FitOptions

PRIORS = ("standard", "vamp")
POSTERIORS = ("gaussian", "iaf")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine", "exponential", "iwae_paper")
DTYPES = ("float32", "bfloat16")
MNIST_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network. Defaults: the PyTorch `examples/vae` MLP 784-400-20 (ReLU, Bernoulli)."""

    architecture: str = option("mlp", "encoder/decoder family", choices=ARCHITECTURES)
    hidden: tuple[int, ...] = option(
        (400,), "MLP hidden widths, comma-separated (the decoder mirrors them)", low=1
    )
    activation: str = option("relu", "MLP activation", choices=tuple(sorted(ACTIVATIONS)))
    z_dim: int = option(20, "latent dimension", low=1)
    conv_channels: tuple[int, ...] = option((32, 64), "conv widths, one stride-2 layer each", low=1)
    likelihood: str = option(
        "bernoulli",
        "p(x|z): bernoulli (logits), gaussian (fixed --obs_std), gaussian_global or "
        "gaussian_pixel (learned variance)",
        choices=LIKELIHOODS,
    )
    obs_std: float = option(
        1.0, "standard deviation of the fixed-variance Gaussian likelihood", above=0
    )
    conditional: bool = option(False, "conditional VAE: encoder and decoder see the one-hot label")
    num_classes: int = option(
        10,
        "labels 0..N-1 of a conditional model (a TFDS ClassLabel's count replaces it; "
        "MNIST has 10)",
        low=1,
    )
    dtype: str = option(
        "float32",
        "compute dtype (bfloat16: mixed precision, parameters stay float32)",
        choices=DTYPES,
    )
    # Beyond one diagonal-Gaussian layer with an N(0, I) prior (vae_jax/latents.py):
    upper_latent_dims: tuple[int, ...] = option(
        (),
        "sizes of the stochastic layers above z, comma-separated (Burda et al.'s 2-layer "
        "model: --z_dim 100 --hidden 200,200 --upper_latent_dims 50 --upper_hidden 100,100); "
        "empty: one stochastic layer. MLP, standard prior, gaussian posterior only",
        low=1,
    )
    upper_hidden: tuple[int, ...] = option(
        (),
        "hidden widths of each upper stochastic layer's MLPs, comma-separated (with "
        "--upper_latent_dims)",
        low=1,
    )
    prior: str = option(
        "standard",
        "p(z): standard (N(0, I)), or vamp (the VampPrior, a mixture of the posterior at "
        "--num_pseudo_inputs learned pseudo-inputs; unconditional models only)",
        choices=PRIORS,
    )
    num_pseudo_inputs: int = option(
        500, "the VampPrior's number of pseudo-inputs K (with --prior vamp)", low=1
    )
    posterior: str = option(
        "gaussian",
        "q(z|x): gaussian (diagonal), or iaf (the diagonal Gaussian followed by "
        "--flow_depth inverse autoregressive flow steps)",
        choices=POSTERIORS,
    )
    flow_depth: int = option(2, "IAF steps (with --posterior iaf)", low=1, high=MAX_LAYERS)
    flow_hidden: tuple[int, ...] = option(
        (128,),
        "hidden widths of each IAF step's autoregressive (MADE) network, comma-separated",
        low=1,
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.prior != "standard" and self.posterior != "gaussian":
            raise ValueError("prior vamp and posterior iaf cannot be combined (one at a time)")
        if self.upper_latent_dims or self.upper_hidden:
            if self.prior != "standard" or self.posterior != "gaussian":
                raise ValueError(
                    "upper_latent_dims (several stochastic layers) takes the standard prior "
                    "and the gaussian posterior only"
                )
            if self.architecture != "mlp":
                raise ValueError("upper_latent_dims (several stochastic layers) needs the mlp")
            if not self.upper_latent_dims or not self.upper_hidden:
                raise ValueError(
                    "several stochastic layers need both upper_latent_dims and upper_hidden, "
                    f"got {self.upper_latent_dims} and {self.upper_hidden}"
                )
        if self.architecture == "conv" and not self.conv_channels:
            raise ValueError("the conv VAE needs at least one conv layer")
        if self.prior == "vamp" and self.conditional:  # (as VampPriorVAE says, before data)
            raise ValueError("the VampPrior is not supported on a conditional model (num_classes)")

    def build(self, image_shape: tuple[int, ...]) -> nn.Module:
        """The model for examples of `image_shape` (any shape for the MLP, (H, W, C) for the
        conv VAE); raises ValueError if they do not fit (`vae_jax.models.check_model`).

        A `VAE`; with `upper_latent_dims`, a `HierarchicalVAE` whose bottom layer is the
        MLP (`hidden`, `z_dim`) and whose upper layers have `upper_hidden` widths; with
        ``prior="vamp"`` a `VampPriorVAE`, with ``posterior="iaf"`` an `IAFVAE`, around it.
        """
        dtype = jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32
        num_classes = self.num_classes if self.conditional else 0
        if self.upper_latent_dims:
            return HierarchicalVAE(
                image_shape=tuple(image_shape),
                latent_dims=(self.z_dim, *self.upper_latent_dims),
                hidden=(tuple(self.hidden),)
                + (tuple(self.upper_hidden),) * len(self.upper_latent_dims),
                activation=self.activation,
                likelihood=self.likelihood,
                obs_std=self.obs_std,
                num_classes=num_classes,
                dtype=dtype,
            )
        model = VAE(
            image_shape=tuple(image_shape),
            z_dim=self.z_dim,
            architecture=self.architecture,
            hidden=tuple(self.hidden),
            activation=self.activation,
            conv_channels=tuple(self.conv_channels),
            likelihood=self.likelihood,
            obs_std=self.obs_std,
            num_classes=num_classes,
            dtype=dtype,
        )
        check_model(model)  # (the event shape: conv strides against H and W)
        if self.prior == "vamp":
            return VampPriorVAE(model, num_pseudo_inputs=self.num_pseudo_inputs)
        if self.posterior == "iaf":
            return IAFVAE(model, flow_depth=self.flow_depth, flow_hidden=tuple(self.flow_hidden))
        return model


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """The training objective. Evaluation always reports the plain ELBO (beta = 1) too.

    beta and free bits are bounded by 1e4 nats: MNIST holds at most 784 * ln(256) = 4347
    nats per image, so larger values only overflow the loss.
    """

    bound: str = option("elbo", "training objective", choices=("elbo", "iwae"))
    beta: float = option(1.0, "KL weight (1 = the ELBO)", low=0, high=1e4)
    num_samples: int = option(1, "posterior samples per example: L for the ELBO, k for IWAE", low=1)
    free_bits: float = option(
        0.0, "minimum KL per latent dimension in nats (0 = off)", low=0, high=1e4
    )
    kl_warmup_steps: int = option(
        0, "KL weight rises linearly from 0 to --beta over this many steps", low=0
    )

    def __post_init__(self) -> None:
        check_fields(self)

    def build(self, model: nn.Module) -> Objective:
        if self.bound == "iwae":
            return Objective(model, "iwae", num_samples=self.num_samples)
        return Objective(
            model, "elbo", beta=self.beta, num_samples=self.num_samples, free_bits=self.free_bits
        )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data, and how it is presented to the model.

    `dataset` names the data ("mnist" for the experiments' MNIST; "array" or any other name
    for arrays of your own). MNIST's examples are ``(image_size, image_size, 1)``; for
    other data `event_shape` is one example's shape, taken from the data by
    `vae_jax.sources.prepare_data` (`run_experiment`) when left
    empty, and recorded so that a work directory is only resumed with data of that shape.
    """

    dataset: str = option(
        "mnist",
        "the data: mnist; the name of a TFDS dataset prepared as array_record in --data_dir; "
        "or a .npz file (x_train, optional x_test, y_train, y_test) or .npy file (one array "
        "[N, *event_shape]). uint8 arrays are levels scaled by 1/255, other dtypes are used "
        "as given",
    )
    binarize: str = option(
        "none",
        "none: grey levels in [0,1]; dynamic: resample pixels ~ Bernoulli(grey) at every "
        "training use, test set binarized once with a fixed seed",
        choices=("none", "dynamic"),
    )
    image_size: int = option(
        28, "MNIST only: 28, or 32 (zero-padded, for the conv VAE)", choices=(28, 32)
    )
    test_binarize_seed: int = option(
        0, "the fixed seed that binarizes the test set once", low=0, high=MAX_SEED, flag=False
    )
    event_shape: tuple[int, ...] = option(
        (), "one example's shape (not MNIST); () = from the data", low=1, flag=False
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.dataset.strip():
            raise ValueError("dataset must be a non-empty name")
        if self.dataset != "mnist" and self.image_size != 28:
            raise ValueError("image_size applies to MNIST only (other data keep their shape)")
        if self.dataset == "mnist" and self.event_shape:
            raise ValueError("MNIST's event shape comes from image_size; leave event_shape ()")

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One example's shape; () when it is still to be taken from the data."""
        if self.dataset == "mnist":
            return (self.image_size, self.image_size, 1)
        return self.event_shape

    @property
    def variant(self) -> str:
        """The data variant's name, as written in logs and metrics."""
        if self.dataset != "mnist":
            name = "values as given" if self.binarize == "none" else "dynamically binarized"
            shape = "x".join(map(str, self.event_shape)) or "?"
            return f"{self.dataset} [{shape}], {name}"
        name = "grey-level" if self.binarize == "none" else "dynamically binarized"
        return f"{name} {self.dataset} {self.image_size}x{self.image_size}"


# TrainConfig's fields that are `fit`'s options as they are (the rest make the optimizer).
LOOP_FIELDS = (
    "epochs",
    "batch_size",
    "seed",
    "eval_batch_size",
    "steps_per_call",
    "num_devices",
    "checkpoint_every",
    "keep_checkpoints",
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The optimisation. Defaults: the PyTorch recipe (Adam 1e-3, batch 128, 10 epochs).

    The learning rate follows `schedule` (`vae_jax.optim.make_schedule`): "constant";
    "cosine" (to 0 at the run's last step); "exponential" (times `decay_rate` per epoch);
    "iwae_paper" (Burda et al., 2016: ``learning_rate * 10**(-i/7)`` for 3**i epochs,
    i = 0..7, 3280 epochs in all). `warmup_steps` > 0 prepends a linear ramp from 0.
    """

    epochs: int = option(10, "passes over the training set", low=0)
    batch_size: int = option(128, "examples per update", low=1)
    learning_rate: float = option(
        1e-3, "peak learning rate (the schedule's starting value)", above=0
    )
    optimizer: str = option(
        "adam", "adam, or adamw (Adam with decoupled --weight_decay)", choices=OPTIMIZERS
    )
    weight_decay: float = option(
        0.0, "AdamW's decoupled weight decay (with --optimizer adamw)", low=0
    )
    adam_eps: float = option(1e-8, "Adam's epsilon (IWAE paper: 1e-4)", above=0)
    adam_b1: float = option(
        0.9,
        "Adam's beta1, the decay of its gradient average (the IWAE paper's text: 0.9; the "
        "code that made its numbers, yburda/iwae: 0.99)",
        low=0.0,
        high=0.9999,
    )
    schedule: str = option(
        "constant",
        "learning-rate schedule: constant; cosine (to 0 at the last step of --epochs); "
        "exponential (times --decay_rate per epoch, continuously); iwae_paper (Burda et al. "
        "2016: rate * 10^(-i/7) for 3^i epochs, i = 0..7, 3280 epochs; fewer epochs "
        "truncate it)",
        choices=SCHEDULES,
    )
    warmup_steps: int = option(
        0,
        "linear learning-rate warm-up from 0 over this many steps; the schedule starts after it",
        low=0,
    )
    decay_rate: float = option(
        1.0,
        "learning-rate factor per epoch of the exponential schedule, in (0, 1]",
        above=0,
        high=1,
    )
    clip_norm: float = option(
        0.0, "clip gradients to this global norm before the optimizer (0 = off)", low=0
    )
    seed: int = option(
        0,
        "seed of every random stream (init, data order, samples, evaluation)",
        low=0,
        high=MAX_SEED,
    )
    eval_batch_size: int = option(
        1000,
        "examples per evaluation call (memory). Each batch draws its own noise for the "
        "1-sample test ELBO, so that estimate changes with it (MNIST after 1 epoch: 121.180 "
        "at 1000, 121.060 at 500; equally valid); training does not. It may differ on resume",
        low=1,
    )
    steps_per_call: int = option(
        64,
        "train steps fused into one compiled call (progress-bar granularity); rounded to the "
        "nearest divisor of the epoch's steps within a factor of 2, if any, so that one "
        "compiled call serves the whole epoch (469 steps: 67)",
        low=1,
    )
    checkpoint_every: int = option(1, "epochs between checkpoints", low=1)
    keep_checkpoints: int = option(3, "how many recent checkpoints to keep", low=1)
    num_devices: int = option(0, "devices for data parallelism (0 = all local devices)", low=0)
    tensorboard: bool = option(
        True,
        "no TensorBoard event files (by default they go to WORKDIR/tensorboard/, beside "
        "metrics.jsonl; view them with tensorboard --logdir runs/)",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.weight_decay > 0 and self.optimizer != "adamw":
            raise ValueError(
                f"weight_decay must be >= 0 and needs optimizer adamw, got {self.weight_decay} "
                f"with {self.optimizer}"
            )
        if self.decay_rate != 1 and self.schedule != "exponential":
            raise ValueError("decay_rate applies to the exponential schedule only")


class Built(NamedTuple):
    """What `ExperimentConfig.build` makes for one run: the model and its objective."""

    model: nn.Module
    objective: Objective


# Activation memory: float32 values per layer output, kept for the backward pass, and its
# gradient, with room for XLA's temporaries (a coarse upper bound, not a measurement).
_ACTIVATION_FACTOR = 4


# `ExperimentConfig.build`'s results, by configuration and event shape (the newest
# `_BUILT_SIZE`): modules and objectives are immutable, so one made is one to reuse.
_BUILT: dict[tuple[Any, tuple[int, ...]], Built] = {}
_BUILT_SIZE = 32


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    model: ModelConfig = ModelConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()

    def __post_init__(self) -> None:
        for name, kind in (
            ("model", ModelConfig),
            ("objective", ObjectiveConfig),
            ("data", DataConfig),
            ("train", TrainConfig),
        ):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name} must be a {kind.__name__}")
        model = self.model
        gaussian = model.prior == "standard" and model.posterior == "gaussian"
        free_bits = self.objective.bound == "elbo" and self.objective.free_bits > 0
        if free_bits and not (gaussian and not model.upper_latent_dims):
            # (as `Objective` says of such a model, but before any data is read)
            raise ValueError("free_bits needs the per-latent KL of a diagonal-Gaussian encode()")
        if self.data.dataset == "mnist" and model.conditional:
            if model.num_classes != MNIST_CLASSES:
                raise ValueError(
                    f"MNIST has {MNIST_CLASSES} classes: a conditional model on it needs "
                    f"num_classes {MNIST_CLASSES}, got {model.num_classes}"
                )

    def build(self, event_shape: tuple[int, ...] | None = None, *, memory: int = 0) -> Built:
        """The run's model and objective, made once: the check that needs the data.

        Args:
          event_shape: one example's shape (default ``data.image_shape``, known before the
            data for MNIST).
          memory: bytes of one device's memory; when given, a training batch
            (batch_size x num_samples) and an evaluation batch that would not fit are
            refused before anything is allocated.

        Raises:
          ValueError (one line): the model does not fit the event shape (conv strides),
            the objective does not fit the model (free bits need a diagonal-Gaussian
            posterior), or a batch does not fit in `memory`.
        """
        shape = event_shape if event_shape is not None else self.data.image_shape
        require_ints("event_shape", shape)  # (before: build(4) said 'int' is not iterable)
        if not shape:
            raise ValueError("the data's event shape is not known yet (read the data first)")
        if require_int("memory", memory) < 0:  # (before: "more than the devices' -0.0 GiB")
            raise ValueError(f"memory must be >= 0 bytes (0: not checked), got {memory}")
        shape = tuple(shape)
        try:
            built = _BUILT.get((self, shape))
        except TypeError:  # (an unhashable field: built afresh)
            built = None
        if built is None:  # (made once: `fit` checks its record against what run_experiment built)
            model = self.model.build(shape)
            built = Built(model, self.objective.build(model))
            with contextlib.suppress(TypeError):
                if len(_BUILT) >= _BUILT_SIZE:
                    _BUILT.pop(next(iter(_BUILT)))
                _BUILT[self, shape] = built
        if memory:
            self._check_batch_memory(shape, memory)
        return built

    def activation_bytes(self, shape: tuple[int, ...], rows: int) -> int:
        """A coarse upper bound of the activation memory of `rows` model inputs (examples x
        samples) of `shape`: every layer's output and its gradient, in float32 (the
        VampPrior's pseudo-inputs, encoded at every step, are added)."""
        m = self.model
        widths = sum(m.hidden) + sum(m.upper_hidden) + sum(m.upper_latent_dims) + m.z_dim
        if m.architecture == "conv":  # each conv layer's output: channels x (H / 2^i)^2
            side = math.prod(shape[:2])
            widths += sum(c * side // 4 ** (i + 1) for i, c in enumerate(m.conv_channels))
        if m.conditional:  # the one-hot label, into the encoder and the decoder
            widths += 2 * m.num_classes
        if m.posterior == "iaf":
            widths += m.flow_depth * (sum(m.flow_hidden) + 2 * m.z_dim)
        per_row = 2 * math.prod(shape) + 2 * widths
        extra = m.num_pseudo_inputs if m.prior == "vamp" else 0
        return _ACTIVATION_FACTOR * 4 * (rows + extra) * per_row

    def _check_batch_memory(self, shape: tuple[int, ...], memory: int) -> None:
        """Refuse a training or evaluation batch whose activations cannot fit in `memory`."""
        t, k = self.train, self.objective.num_samples
        for name, batch, samples in (
            ("batch_size", t.batch_size, k),
            ("eval_batch_size", t.eval_batch_size, k if self.objective.bound == "iwae" else 1),
        ):
            nbytes = self.activation_bytes(shape, batch * samples)
            if nbytes > memory:
                what = f"{batch:,} examples" + (f" x {samples:,} samples" if samples > 1 else "")
                if self.model.prior == "vamp":
                    what += f" and {self.model.num_pseudo_inputs:,} pseudo-inputs"
                raise ValueError(
                    f"{name} {batch}: one batch of {what} needs about {nbytes / 2**30:,.1f} "
                    f"GiB of activations, more than the devices' {memory / 2**30:,.1f} GiB "
                    "(a smaller batch, fewer samples or a smaller model)"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fit_options(self, **run: Any) -> FitOptions:
        """`fit`'s options for this configuration; `run` adds the run-only ones
        (placement, skip_nonfinite, checkpoint_every_steps) or replaces others."""
        values = {name: getattr(self.train, name) for name in LOOP_FIELDS}
        values.update(
            binarize=self.data.binarize == "dynamic",
            kl_warmup_steps=self.objective.kl_warmup_steps,
            data_variant=self.data.variant,
        )
        return FitOptions(**{**values, **run})

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: ExperimentConfig | None = None) -> ExperimentConfig:
        """The configuration `d` (a `to_dict()`, as JSON gives it back: lists for tuples)
        describes; a section or field it leaves out keeps `base`'s value (default: the
        defaults). Raises ValueError (one line) for an unknown section or field, or a value
        of the wrong type or range."""
        base = base if base is not None else cls()
        if not isinstance(base, ExperimentConfig):
            raise TypeError(f"base must be an ExperimentConfig or None, got {type(base).__name__}")
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object of sections, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown configuration sections: {sorted(unknown)}")
        sections = {}
        for name, values in d.items():
            section = getattr(base, name)
            if not isinstance(values, dict):
                raise ValueError(f"{name} must be an object of fields, got {values!r}")
            kind = type(section)
            unknown = set(values) - {f.name for f in dataclasses.fields(kind)}
            if unknown:
                raise ValueError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
            sections[name] = dataclasses.replace(section, **values)
        return dataclasses.replace(base, **sections)

    def identity(self) -> dict[str, Any]:
        """What must match for a work directory's checkpoints to be resumed by this config.

        Everything except the number of epochs (a run may be extended; not with the cosine
        schedule, whose length it sets), the checkpoint cadence, the device count, the
        evaluation batch size (it changes only the test ELBO's noise draws, not training) and
        whether TensorBoard files are written.
        """
        d = self.to_dict()
        run_only = ("checkpoint_every", "keep_checkpoints", "num_devices", "eval_batch_size")
        for key in (*run_only, "tensorboard"):
            d["train"].pop(key)
        if self.train.schedule != "cosine":
            d["train"].pop("epochs")
        return d


def check_config(config: ExperimentConfig) -> None:
    """Raise ValueError (one line) unless the model fits the data's event shape, when it is
    known (`ExperimentConfig.build`; a recorded configuration, `vae_jax.workdir`)."""
    if config.data.image_shape:
        config.build()
