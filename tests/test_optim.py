"""Optimizers and learning-rate schedules from `TrainConfig` (vae_jax/optim.py)."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vae_jax.config import ExperimentConfig, TrainConfig
from vae_jax.optim import (
    IWAE_PAPER_EPOCHS,
    check_schedule,
    iwae_paper_schedule,
    make_optimizer,
    make_schedule,
)
from vae_jax.recipes import RECIPES

SPE = 3  # steps per epoch


def test_iwae_paper_schedule_rates_at_every_boundary():
    assert IWAE_PAPER_EPOCHS == 3280
    schedule = jax.jit(iwae_paper_schedule(1e-3, SPE))
    starts = [0, 1, 4, 13, 40, 121, 364, 1093]  # epoch where stage i begins: (3^i - 1) / 2
    for i, epoch in enumerate(starts):
        want = 1e-3 * 10 ** (-i / 7)
        np.testing.assert_allclose(schedule(epoch * SPE), want, rtol=1e-5)
        np.testing.assert_allclose(schedule((epoch + 3**i) * SPE - 1), want, rtol=1e-5)
        if i:
            np.testing.assert_allclose(schedule(epoch * SPE - 1), want * 10 ** (1 / 7), rtol=1e-5)
    np.testing.assert_allclose(schedule(IWAE_PAPER_EPOCHS * SPE - 1), 1e-4, rtol=1e-5)


def test_iwae_paper_recipes_use_the_papers_protocol():
    for name in ("iwae_paper_vae", "iwae_paper_iwae"):
        tc = RECIPES[name]().train
        assert (tc.schedule, tc.epochs, tc.batch_size, tc.adam_eps) == (
            "iwae_paper",
            3280,
            20,
            1e-4,
        )
        assert tc.learning_rate == 1e-3


def test_cosine_warmup_and_exponential_schedules():
    tc = TrainConfig(epochs=4, schedule="cosine", warmup_steps=2, learning_rate=0.1)
    schedule = make_schedule(tc, SPE)  # 12 steps: 2 of warm-up, then cosine to 0 at step 12
    np.testing.assert_allclose([schedule(0), schedule(1), schedule(2)], [0.0, 0.05, 0.1], atol=1e-7)
    np.testing.assert_allclose(schedule(7), 0.05, rtol=1e-5)  # half-way through the decay
    np.testing.assert_allclose(schedule(12), 0.0, atol=1e-7)
    tc = TrainConfig(epochs=4, schedule="exponential", decay_rate=0.5, learning_rate=0.1)
    schedule = make_schedule(tc, SPE)
    np.testing.assert_allclose([schedule(0), schedule(SPE), schedule(2 * SPE)], [0.1, 0.05, 0.025])
    tc = TrainConfig(epochs=4, warmup_steps=4, learning_rate=0.1)  # constant after a warm-up
    schedule = make_schedule(tc, SPE)
    np.testing.assert_allclose([schedule(2), schedule(4), schedule(11)], [0.05, 0.1, 0.1])


def test_constant_adam_is_plain_optax_adam():
    """The default config must give the optimizer (state and updates) the library always used,
    so that results and checkpoints are unchanged."""
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    grads = jax.tree.map(lambda p: jnp.sin(p) + 0.5, params)
    ours, plain = make_optimizer(TrainConfig(), SPE), optax.adam(1e-3)
    s1, s2 = ours.init(params), plain.init(params)
    assert jax.tree.structure(s1) == jax.tree.structure(s2)
    for _ in range(3):
        u1, s1 = ours.update(grads, s1, params)
        u2, s2 = plain.update(grads, s2, params)
        for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), strict=True):
            np.testing.assert_array_equal(a, b)


def test_adam_b1_is_optaxs_beta1():
    params = {"w": jnp.zeros(3)}
    ours = make_optimizer(TrainConfig(adam_b1=0.99), SPE)
    plain, default = optax.adam(1e-3, b1=0.99), optax.adam(1e-3)
    states = [tx.init(params) for tx in (ours, plain, default)]
    for step in range(3):  # (gradients that change: with a constant one beta1 cancels out)
        grads = {"w": jnp.array([1.0, -2.0, 0.5]) * (-1.0) ** step}
        (u1, s1), (u2, s2), (u3, s3) = (
            tx.update(grads, state, params)
            for tx, state in zip((ours, plain, default), states, strict=True)
        )
        states = [s1, s2, s3]
        np.testing.assert_array_equal(u1["w"], u2["w"])
    assert not np.allclose(u1["w"], u3["w"])


def test_adamw_and_clipping_change_the_update_as_they_should():
    params = {"w": jnp.full((4,), 2.0)}
    grads = {"w": jnp.full((4,), 100.0)}  # global norm 200
    clipped = make_optimizer(TrainConfig(clip_norm=1.0, learning_rate=0.1), SPE)
    sgd_like = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.1))
    u1, _ = clipped.update(grads, clipped.init(params), params)
    u2, _ = sgd_like.update(grads, sgd_like.init(params), params)
    np.testing.assert_array_equal(u1["w"], u2["w"])
    adamw = make_optimizer(TrainConfig(optimizer="adamw", weight_decay=0.5), SPE)
    zero = {"w": jnp.zeros(4)}
    update, _ = adamw.update(zero, adamw.init(params), params)  # decay only: -lr * wd * w
    np.testing.assert_allclose(update["w"], -1e-3 * 0.5 * 2.0, rtol=1e-6)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"optimizer": "sgd"}, "optimizer must be one of ('adam', 'adamw'), got 'sgd'"),
        ({"schedule": "linear"}, "schedule must be one of"),
        ({"weight_decay": 0.1}, "weight_decay must be >= 0 and needs optimizer adamw"),
        ({"decay_rate": 0.5}, "decay_rate applies to the exponential schedule only"),
        ({"schedule": "exponential", "decay_rate": 1.5}, "decay_rate must be in (0, 1]"),
        ({"clip_norm": -1.0}, "clip_norm must be >= 0"),
        ({"adam_eps": 0.0}, "adam_eps must be > 0"),
        ({"adam_b1": 1.0}, "adam_b1 must be in [0.0, 0.9999], got 1.0"),
        ({"adam_b1": -0.1}, "adam_b1 must be in [0.0, 0.9999], got -0.1"),
    ],
)
def test_bad_optimizer_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**changes)


def test_schedule_that_does_not_fit_the_run_is_refused():
    with pytest.raises(ValueError, match=r"warmup_steps \(30\) must be shorter than the run"):
        check_schedule(TrainConfig(epochs=10, warmup_steps=30), SPE)
    with pytest.raises(ValueError, match="the iwae_paper schedule ends after 3280 epochs"):
        check_schedule(TrainConfig(epochs=3281, schedule="iwae_paper"), SPE)
    check_schedule(TrainConfig(epochs=50, schedule="iwae_paper"), SPE)  # truncated: fine
    # the optimizer applies the same rule (before: only the CLI did, so make_optimizer gave a
    # run whose learning rate stayed in its warm-up, 1e-5, to the end)
    with pytest.raises(ValueError, match=r"warmup_steps \(1000\) must be shorter than the run"):
        make_optimizer(TrainConfig(epochs=1, warmup_steps=1000), 10)
    with pytest.raises(ValueError, match="the iwae_paper schedule ends after 3280 epochs"):
        make_schedule(TrainConfig(epochs=5000, schedule="iwae_paper"), 10)


def test_cosine_schedule_ties_the_work_directory_to_its_epoch_count():
    plain = ExperimentConfig()
    longer = dataclasses.replace(plain, train=dataclasses.replace(plain.train, epochs=20))
    assert plain.identity() == longer.identity()  # a constant rate: the run may be extended
    cosine = dataclasses.replace(plain, train=dataclasses.replace(plain.train, schedule="cosine"))
    cosine20 = dataclasses.replace(cosine, train=dataclasses.replace(cosine.train, epochs=20))
    assert cosine.identity() != cosine20.identity()  # the schedule's length changes


@pytest.mark.parametrize(
    ("tc", "steps", "error", "message"),
    [
        (TrainConfig(schedule="cosine"), -1, ValueError, "steps_per_epoch must be >= 0, got -1"),
        (TrainConfig(), 2.5, ValueError, "steps_per_epoch must be an integer, got 2.5"),
        (TrainConfig(), True, ValueError, "steps_per_epoch must be an integer, got True"),
        (TrainConfig(schedule="exponential"), "10", ValueError, "must be an integer, got '10'"),
        (None, 10, TypeError, "tc must be a TrainConfig, got NoneType"),
    ],
)
def test_make_optimizer_refuses_bad_steps_per_epoch(tc, steps, error, message):
    """(Before: -1, 2.5 and True were accepted; a string or None gave a bare error. 0, what
    empty data give, is accepted: `fit` then names the data.)"""
    with pytest.raises(error, match=re.escape(message)):
        make_optimizer(tc, steps)
