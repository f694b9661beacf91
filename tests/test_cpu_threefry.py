"""The CPU's unrolled threefry (`vae_jax.cpu_threefry`) draws the bits JAX's rolled loop does."""

import json
import os
import subprocess
import sys

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np
import pytest

import vae_jax
from vae_jax import cpu_threefry

# Random123's known-answer tests for threefry2x32 with 20 rounds (as in JAX's own tests):
# (key, counter) -> output, each a pair of uint32 words.
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]

# Draws of every kind a train step makes, printed as JSON (run with and without the rolled loop)
DRAWS = """
import json, jax, jax.numpy as jnp, vae_jax
key = jax.random.fold_in(jax.random.key(7), 123)
data_key, sample_key = jax.random.split(key)
x = jnp.linspace(0, 1, 784).reshape(1, 784) * jnp.ones((5, 1))
draws = jax.jit(lambda k1, k2: (
    jax.random.bits(k1, (3, 333)),
    jax.random.bernoulli(k1, x),
    jax.random.normal(k2, (5, 50)),
))(data_key, sample_key)
print(json.dumps({"unrolled": vae_jax.cpu_threefry.UNROLLED,
                  "draws": [jnp.ravel(d).tolist() for d in draws]}))
"""


def test_the_unrolled_lowering_is_registered_on_this_jax():
    assert cpu_threefry.UNROLLED
    hlo = jax.jit(lambda k: jax.random.bits(k, (8,))).lower(jax.random.key(0)).compile()
    assert "while" not in hlo.as_text()  # JAX's rolled form is a while loop


@pytest.mark.parametrize("key, count, expected", KNOWN_ANSWERS)
def test_known_answers(key, count, expected):
    hash_ = jax.jit(jax.extend.random.threefry_2x32)
    out = hash_(jnp.array(key, jnp.uint32), jnp.array(count, jnp.uint32))
    np.testing.assert_array_equal(np.asarray(out), np.array(expected, np.uint32))


def test_the_draws_are_those_of_the_rolled_loop():
    def draws(rolled: bool) -> dict:
        env = {**os.environ, cpu_threefry.ENV: "1" if rolled else "0"}
        out = subprocess.run(
            [sys.executable, "-c", DRAWS], env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    rolled, unrolled = draws(rolled=True), draws(rolled=False)
    assert (rolled["unrolled"], unrolled["unrolled"]) == (False, True)
    assert unrolled["draws"] == rolled["draws"]
    assert len(set(unrolled["draws"][0])) > 900  # (real draws, not a constant)
    assert vae_jax.cpu_threefry.UNROLLED
