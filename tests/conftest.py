"""Strict JAX settings for the whole suite: CPU backend, no silent promotion."""

import os

# The README's test command runs on the JAX CPU backend, whatever accelerators exist.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

# Catch silent broadcasting bugs (as equinox's tests do). Strict dtype promotion is not set:
# optax's Adam mixes its int32 step count with Python floats, which strict mode rejects.
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)
