"""The optimizer a `TrainConfig` describes: Adam or AdamW, a learning-rate schedule, clipping.

`make_optimizer(train_config, steps_per_epoch)` returns an `optax.GradientTransformation`;
`fit` also takes any transformation of your own instead. Schedules are functions of the
update count (0 for the first update), so a resumed run continues them exactly.
"""

from __future__ import annotations

import optax

from vae_jax.config import TrainConfig
from vae_jax.fields import require_int

# Burda et al. (2016), Section 5: "we used the schedule ... learning rate 0.001 * 10**(-i/7)
# for 3**i epochs, i = 0..7": 3280 epochs in all.
IWAE_PAPER_STAGES = 8
IWAE_PAPER_EPOCHS = sum(3**i for i in range(IWAE_PAPER_STAGES))  # 3280


def iwae_paper_schedule(learning_rate: float, steps_per_epoch: int) -> optax.Schedule:
    """``learning_rate * 10**(-i/7)`` during epochs [sum_{j<i} 3**j, sum_{j<=i} 3**j).

    Stage i starts at epoch (3**i - 1) / 2 (0, 1, 4, 13, 40, 121, 364, 1093); after epoch
    3280 the last rate stays. The update at step s uses ``schedule(s)``.
    """
    boundaries = {
        ((3**i - 1) // 2) * steps_per_epoch: 10 ** (-1 / 7) for i in range(1, IWAE_PAPER_STAGES)
    }
    return optax.piecewise_constant_schedule(learning_rate, boundaries)


def check_schedule(tc: TrainConfig, steps_per_epoch: int) -> None:
    """Raise ValueError (one line) unless `tc`'s schedule fits a run of `tc.epochs` epochs of
    `steps_per_epoch` steps: a warm-up shorter than the run, no more epochs than the IWAE
    paper's schedule has (fewer is that schedule truncated)."""
    total = tc.epochs * steps_per_epoch
    if tc.warmup_steps and tc.warmup_steps >= total:
        raise ValueError(
            f"warmup_steps ({tc.warmup_steps}) must be shorter than the run ({tc.epochs} epochs "
            f"of {steps_per_epoch} steps = {total} steps)"
        )
    if tc.schedule == "iwae_paper" and tc.epochs > IWAE_PAPER_EPOCHS:
        raise ValueError(
            f"the iwae_paper schedule ends after {IWAE_PAPER_EPOCHS} epochs; got epochs {tc.epochs}"
        )


def make_schedule(tc: TrainConfig, steps_per_epoch: int) -> float | optax.Schedule:
    """The learning rate of `tc` as a float (constant, no warm-up) or an `optax.Schedule`
    of the update count. The warm-up, if any, comes first and the schedule starts after it.

    Raises:
      ValueError: (one line) `check_schedule`'s: the schedule does not fit the run (a
        warm-up as long as the run, more epochs than the IWAE paper's schedule has).
    """
    if not isinstance(tc, TrainConfig):
        raise TypeError(f"tc must be a TrainConfig, got {type(tc).__name__}")
    # (before: -1 and 2.5 were accepted; 0, what empty data give, is left to `fit`, whose
    # message names the data)
    require_int("steps_per_epoch", steps_per_epoch)
    if steps_per_epoch < 0:
        raise ValueError(f"steps_per_epoch must be >= 0, got {steps_per_epoch}")
    if steps_per_epoch:  # (a warm-up never reached left the rate at 1e-5 for the whole run)
        check_schedule(tc, steps_per_epoch)
    total = tc.epochs * steps_per_epoch
    lr = tc.learning_rate
    schedule: float | optax.Schedule
    if tc.schedule == "constant":
        schedule = lr
    elif tc.schedule == "cosine":
        # warmup_cosine_decay_schedule counts its decay_steps from 0, warm-up included.
        return optax.warmup_cosine_decay_schedule(0.0, lr, tc.warmup_steps, max(total, 1))
    elif tc.schedule == "exponential":
        schedule = optax.exponential_decay(lr, steps_per_epoch, tc.decay_rate)
    elif tc.schedule == "iwae_paper":
        schedule = iwae_paper_schedule(lr, steps_per_epoch)
    else:  # (TrainConfig checks the name)
        raise ValueError(f"unknown schedule {tc.schedule!r}")
    if not tc.warmup_steps:
        return schedule
    warmup = optax.linear_schedule(0.0, lr, tc.warmup_steps)
    rest = schedule if callable(schedule) else optax.constant_schedule(schedule)
    return optax.join_schedules([warmup, rest], [tc.warmup_steps])


def make_optimizer(tc: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam or AdamW with `tc`'s schedule, after clipping by global norm if `tc.clip_norm`.

    A constant learning rate without warm-up and clipping gives ``optax.adam(lr)`` itself,
    whose state and updates are what the library always used (checkpoints stay readable).
    """
    lr = make_schedule(tc, steps_per_epoch)
    if tc.optimizer == "adamw":
        tx = optax.adamw(lr, b1=tc.adam_b1, eps=tc.adam_eps, weight_decay=tc.weight_decay)
    else:
        tx = optax.adam(lr, b1=tc.adam_b1, eps=tc.adam_eps)
    if tc.clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(tc.clip_norm), tx)
    return tx
