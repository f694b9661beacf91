"""Typed, frozen configuration: one dataclass per concern, and the named recipes.

The CLI (`experiments/mnist.py`) maps its flags onto these; `ExperimentConfig.to_dict()`
is what a work directory records so a resumed run can be checked against its origin.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vae_jax.latents import IAFVAE, HierarchicalVAE, VampPriorVAE
from vae_jax.models import VAE, check_model
from vae_jax.objectives import Objective
from vae_jax.options import FitOptions

PRIORS = ("standard", "vamp")
POSTERIORS = ("gaussian", "iaf")
FLOAT32_MAX = float(np.finfo(np.float32).max)  # larger values overflow to inf in training


def _check_floats(section: Any) -> None:
    """Every float field of a configuration dataclass is finite in float32."""
    for field in dataclasses.fields(section):
        value = getattr(section, field.name)
        if isinstance(value, float) and not abs(value) <= FLOAT32_MAX:
            raise ValueError(f"{field.name} must be a finite float32 number, got {value}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network. Defaults: the PyTorch `examples/vae` MLP 784-400-20 (ReLU, Bernoulli)."""

    architecture: str = "mlp"  # "mlp" | "conv"
    hidden: tuple[int, ...] = (400,)
    activation: str = "relu"
    z_dim: int = 20
    conv_channels: tuple[int, ...] = (32, 64)
    likelihood: str = "bernoulli"  # bernoulli | gaussian | gaussian_global | gaussian_pixel
    obs_std: float = 1.0  # std of the fixed-variance Gaussian likelihood
    conditional: bool = False  # condition encoder and decoder on the one-hot label
    num_classes: int = 10  # label values 0..num_classes-1 (conditional models only)
    dtype: str = "float32"  # compute dtype; "bfloat16" = mixed precision (params stay f32)
    # Beyond one diagonal-Gaussian layer with an N(0, I) prior (vae_jax/latents.py):
    upper_latent_dims: tuple[int, ...] = ()  # stochastic layers above z (HierarchicalVAE)
    upper_hidden: tuple[int, ...] = ()  # hidden widths of each upper layer's MLPs
    prior: str = "standard"  # "standard" N(0, I) | "vamp" (VampPriorVAE)
    num_pseudo_inputs: int = 500  # the VampPrior's K
    posterior: str = "gaussian"  # "gaussian" | "iaf" (IAFVAE)
    flow_depth: int = 2  # IAF steps (posterior "iaf")
    flow_hidden: tuple[int, ...] = (128,)  # hidden widths of each IAF step's MADE

    def __post_init__(self) -> None:
        _check_floats(self)
        # The options that do not depend on the data's shape: built once on a stand-in shape
        # that any conv depth divides (the shape is checked again when data arrive).
        side = 2 ** len(self.conv_channels)
        self.build((side, side, 1))

    def build(self, image_shape: tuple[int, ...]) -> nn.Module:
        """The model for examples of `image_shape` (any shape for the MLP, (H, W, C) for the
        conv VAE); raises ValueError if inconsistent.

        A `VAE`; with `upper_latent_dims`, a `HierarchicalVAE` whose bottom layer is the
        MLP (`hidden`, `z_dim`) and whose upper layers have `upper_hidden` widths; with
        ``prior="vamp"`` a `VampPriorVAE`, with ``posterior="iaf"`` an `IAFVAE`, around it.
        """
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.conditional and self.num_classes < 1:
            raise ValueError(f"a conditional model needs num_classes >= 1, got {self.num_classes}")
        if self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {self.prior!r}")
        if self.posterior not in POSTERIORS:
            raise ValueError(f"posterior must be one of {POSTERIORS}, got {self.posterior!r}")
        if self.num_pseudo_inputs < 1:
            raise ValueError(f"num_pseudo_inputs must be >= 1, got {self.num_pseudo_inputs}")
        if self.flow_depth < 1:
            raise ValueError(f"flow_depth must be >= 1, got {self.flow_depth}")
        if self.prior != "standard" and self.posterior != "gaussian":
            raise ValueError("prior vamp and posterior iaf cannot be combined (one at a time)")
        dtype = jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32
        num_classes = self.num_classes if self.conditional else 0
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
        check_model(model)
        if self.prior == "vamp":
            return VampPriorVAE(model, num_pseudo_inputs=self.num_pseudo_inputs)
        if self.posterior == "iaf":
            return IAFVAE(model, flow_depth=self.flow_depth, flow_hidden=tuple(self.flow_hidden))
        return model


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """The training objective. Evaluation always reports the plain ELBO (beta = 1) too."""

    bound: str = "elbo"  # "elbo" (with beta, L samples, free bits) | "iwae" (k samples)
    beta: float = 1.0
    num_samples: int = 1  # L for the ELBO, k for IWAE
    free_bits: float = 0.0  # nats per latent dimension (0 = off)
    kl_warmup_steps: int = 0  # KL weight rises linearly from 0 to beta over this many steps

    def __post_init__(self) -> None:
        _check_floats(self)
        if self.bound not in ("elbo", "iwae"):
            raise ValueError(f"bound must be 'elbo' or 'iwae', got {self.bound!r}")
        FitOptions(kl_warmup_steps=self.kl_warmup_steps)  # (checked where fit's options are)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.beta < 0 or self.free_bits < 0:
            raise ValueError(f"beta and free_bits must be >= 0, got {self.beta}, {self.free_bits}")

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

    dataset: str = "mnist"
    binarize: str = "none"  # "none" (values as given) | "dynamic" (Bernoulli resampling)
    image_size: int = 28  # MNIST only: 28, or 32 (zero-padded by 2 pixels on each side)
    test_binarize_seed: int = 0  # the fixed seed that binarizes the test set once
    event_shape: tuple[int, ...] = ()  # one example's shape (not MNIST); () = from the data

    def __post_init__(self) -> None:
        if self.binarize not in ("none", "dynamic"):
            raise ValueError(f"binarize must be 'none' or 'dynamic', got {self.binarize!r}")
        if self.image_size not in (28, 32):
            raise ValueError(f"image_size must be 28 or 32, got {self.image_size}")
        if not self.dataset:
            raise ValueError("dataset must be a non-empty name")
        if any(d < 1 for d in self.event_shape):
            raise ValueError(f"event_shape must have sizes >= 1, got {self.event_shape}")
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


OPTIMIZERS = ("adam", "adamw")
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
SCHEDULES = ("constant", "cosine", "exponential", "iwae_paper")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The optimisation. Defaults: the PyTorch recipe (Adam 1e-3, batch 128, 10 epochs).

    The learning rate follows `schedule` (`vae_jax.optim.make_schedule`): "constant";
    "cosine" (to 0 at the run's last step); "exponential" (times `decay_rate` per epoch);
    "iwae_paper" (Burda et al., 2016: ``learning_rate * 10**(-i/7)`` for 3**i epochs,
    i = 0..7, 3280 epochs in all). `warmup_steps` > 0 prepends a linear ramp from 0.
    """

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    optimizer: str = "adam"  # "adam" | "adamw" (decoupled weight decay)
    weight_decay: float = 0.0  # AdamW's decoupled weight decay (adamw only)
    adam_eps: float = 1e-8  # Adam's epsilon (the IWAE paper used 1e-4)
    schedule: str = "constant"  # a name from SCHEDULES
    warmup_steps: int = 0  # linear learning-rate warm-up from 0 over this many steps
    decay_rate: float = 1.0  # "exponential": the learning rate's factor per epoch
    clip_norm: float = 0.0  # clip gradients to this global norm (0 = off)
    seed: int = 0
    eval_batch_size: int = 1000
    steps_per_call: int = 64  # train steps per compiled call (see `train.chunk_size`)
    checkpoint_every: int = 1  # epochs between checkpoints
    keep_checkpoints: int = 3
    num_devices: int = 0  # data-parallel devices (0 = all local devices)
    tensorboard: bool = True  # also write TensorBoard event files (vae_jax.tensorboard)

    def __post_init__(self) -> None:
        _check_floats(self)
        FitOptions(**{name: getattr(self, name) for name in LOOP_FIELDS})  # checks them
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.weight_decay < 0 or (self.weight_decay > 0 and self.optimizer != "adamw"):
            raise ValueError(
                f"weight_decay must be >= 0 and needs optimizer adamw, got {self.weight_decay} "
                f"with {self.optimizer}"
            )
        if not self.adam_eps > 0:
            raise ValueError(f"adam_eps must be > 0, got {self.adam_eps}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 < self.decay_rate <= 1:
            raise ValueError(f"decay_rate must be in (0, 1], got {self.decay_rate}")
        if self.decay_rate != 1 and self.schedule != "exponential":
            raise ValueError("decay_rate applies to the exponential schedule only")
        if self.clip_norm < 0:
            raise ValueError(f"clip_norm must be >= 0 (0 = off), got {self.clip_norm}")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    model: ModelConfig = ModelConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()

    def __post_init__(self) -> None:
        # The objective against the model (free bits need a diagonal-Gaussian encode()), on
        # the stand-in shape of ModelConfig's own check, so a bad pair fails before any data.
        side = 2 ** len(self.model.conv_channels)
        self.objective.build(self.model.build((side, side, 1)))

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
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        def build(kind: type, values: dict[str, Any]) -> Any:
            fields = {f.name for f in dataclasses.fields(kind)}
            unknown = set(values) - fields
            if unknown:
                raise ValueError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
            return kind(**values)

        return cls(
            model=build(ModelConfig, d.get("model", {})),
            objective=build(ObjectiveConfig, d.get("objective", {})),
            data=build(DataConfig, d.get("data", {})),
            train=build(TrainConfig, d.get("train", {})),
        )

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
    """Raise ValueError (one line) unless the model fits the data's event shape.

    Each dataclass checks its own fields when it is made; what needs the data (a conv VAE's
    strides against H and W) is checked here, once the event shape is known: from the
    configuration for MNIST, from the data for anything else (`prepare_data`).
    """
    if config.data.image_shape:
        config.model.build(config.data.image_shape)
