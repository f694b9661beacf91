"""`FitOptions`: how `vae_jax.loop.fit` runs, apart from what it trains and with what.

`fit` takes the pieces (an objective, which holds the model; an optax optimizer; arrays)
and one `FitOptions`. The experiments make theirs from the configuration
(`ExperimentConfig.fit_options`); the configuration's own checks of these fields are the
ones here, so each is checked in one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

MAX_SEED = 2**32 - 1  # jax.random.key keeps 32 bits: seeds 0 and 2**32 would collide
PLACEMENTS = ("auto", "device", "host")
STEP_LOOPS = ("auto", "scan", "host")  # ("auto": `vae_jax.train.step_loop_for` decides)


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """Batches, length, randomness, devices and checkpoints of one `fit` run.

    Attributes:
      epochs: passes over the training set (0: nothing is trained).
      batch_size: examples per update (at most the training set's size). The last batch
        of an epoch is padded with zero-weight examples, so every example counts once.
      seed: every random stream (initialisation, epoch order, reparameterization noise,
        the evaluation key) is a function of it and the step.
      eval_batch_size: examples per compiled call when evaluating the test split (memory;
        each batch draws its own noise, so the 1-sample test ELBO changes with it).
      steps_per_call: train steps per compiled call (`vae_jax.train.chunk_size`).
      num_devices: data-parallel devices (0 = all local devices); batch sizes must
        divide over them.
      binarize: resample every training value ~ Bernoulli(value) at each step (dynamic
        binarization; values must be in [0, 1]).
      kl_warmup_steps: the KL weight rises linearly from 0 to the objective's beta over
        this many steps (0 = off).
      placement: where the training set lives while training: "device", "host" (streamed
        from host memory, for data larger than the device's), or "auto"
        (`vae_jax.trainer.default_placement`).
      skip_nonfinite: skip (and count) updates with a non-finite loss or gradient instead
        of stopping with `NonFiniteError`.
      checkpoint_every: epochs between checkpoints (with a work directory).
      checkpoint_every_steps: also checkpoint once this many steps have passed since the
        last one (at the end of a compiled call); 0 = off.
      keep_checkpoints: how many checkpoints are kept (the newest ones).
      data_variant: the data's name in each epoch record and log line ("" = its event
        shape and whether it is binarized).
      step_loop: how a compiled call runs its steps: "scan" (one `lax.scan`), "host" (a
        host loop of compiled steps), or "auto" (`vae_jax.train.step_loop_for`: "host" on
        CPU for a model whose program has convolutions, else "scan").
      log: where `fit`'s one-line messages go (epoch summaries, resume); not recorded.
    """

    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    eval_batch_size: int = 1000
    steps_per_call: int = 64
    num_devices: int = 0
    binarize: bool = False
    kl_warmup_steps: int = 0
    placement: str = "auto"
    skip_nonfinite: bool = False
    checkpoint_every: int = 1
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 3
    data_variant: str = ""
    step_loop: str = "auto"
    log: Callable[[str], None] = dataclasses.field(default=print, compare=False, repr=False)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value, default = getattr(self, field.name), field.default
            if isinstance(default, bool) and not isinstance(value, bool | np.bool_):
                raise ValueError(f"{field.name} must be True or False, got {value!r}")
            if isinstance(default, str) and not isinstance(value, str):
                raise ValueError(f"{field.name} must be a string, got {value!r}")
            if type(default) is int:
                if not isinstance(value, int | np.integer) or isinstance(value, bool):
                    raise ValueError(f"{field.name} must be an integer, got {value!r}")
                object.__setattr__(self, field.name, int(value))  # (JSON-able)
            elif isinstance(default, bool):
                object.__setattr__(self, field.name, bool(value))
        for name in ("batch_size", "eval_batch_size", "steps_per_call", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("epochs", "num_devices", "kl_warmup_steps", "checkpoint_every_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be in 0..{MAX_SEED}, got {self.seed}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.step_loop not in STEP_LOOPS:
            raise ValueError(f"step_loop must be 'auto', 'scan' or 'host', got {self.step_loop!r}")
        if not callable(self.log):
            raise ValueError(f"log must be callable (like print), got {self.log!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(
                f"placement must be 'auto', 'device' or 'host', got {self.placement!r}"
            )
