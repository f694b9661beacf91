"""`FitOptions`: how `vae_jax.loop.fit` runs, apart from what it trains and with what.

`fit` takes the pieces (an objective, which holds the model; an optax optimizer; arrays)
and one `FitOptions`, which checks its own fields when made (`vae_jax.fields.check_fields`:
types, ranges, int32 bounds): the boundary for code that calls `fit` directly. The
experiments make theirs once from the configuration (`ExperimentConfig.fit_options`), whose
`TrainConfig` declares the same fields with their help texts for the command line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from vae_jax.fields import MAX_SEED, check_fields, option

__all__ = ["MAX_SEED", "PLACEMENTS", "STEP_LOOPS", "FitOptions"]
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

    epochs: int = option(10, "passes over the training set", low=0)
    batch_size: int = option(128, "examples per update", low=1)
    seed: int = option(0, "seed of every random stream", low=0, high=MAX_SEED)
    eval_batch_size: int = option(1000, "examples per evaluation call", low=1)
    steps_per_call: int = option(64, "train steps per compiled call", low=1)
    num_devices: int = option(0, "data-parallel devices (0 = all local devices)", low=0)
    binarize: bool = option(False, "dynamic binarization")
    kl_warmup_steps: int = option(0, "KL warm-up steps", low=0)
    placement: str = option("auto", "where the training set lives", choices=PLACEMENTS)
    skip_nonfinite: bool = option(False, "skip non-finite updates")
    checkpoint_every: int = option(1, "epochs between checkpoints", low=1)
    checkpoint_every_steps: int = option(0, "steps between checkpoints (0 = off)", low=0)
    keep_checkpoints: int = option(3, "checkpoints kept", low=1)
    data_variant: str = option("", "the data's name in records and logs")
    step_loop: str = option("auto", "scan, host or auto (step_loop_for)", choices=STEP_LOOPS)
    log: Callable[[str], None] = dataclasses.field(default=print, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:  # (the message names them as a sentence)
            raise ValueError(
                f"placement must be 'auto', 'device' or 'host', got {self.placement!r}"
            )
        if not callable(self.log):
            raise ValueError(f"log must be callable (like print), got {self.log!r}")
        check_fields(self)
