"""`vae_jax.jit_cache`: where the estimator's persistent compilation cache goes, and when it
is left alone (no compilation in this process; nothing is written outside tmp_path); and, in
a new process, that the cache it turns on is written and read back without a warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from vae_jax import jit_cache

SETTINGS = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_compilation_cache_max_size",
)


@pytest.fixture
def fresh(monkeypatch):
    """`use_compilation_cache` as in a new process with no cache set up, JAX's settings
    restored afterwards (the suite's own cache, conftest.py, stays in use: JAX builds its
    cache object once, at the first compilation)."""
    saved = {name: getattr(jax.config, name) for name in SETTINGS}
    monkeypatch.setattr(jit_cache, "_checked", False)
    jax.config.update("jax_compilation_cache_dir", None)
    yield
    for name, value in saved.items():
        jax.config.update(name, value)


def test_the_cache_directory_is_per_user_and_can_be_turned_off(monkeypatch, tmp_path):
    monkeypatch.delenv(jit_cache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert jit_cache.cache_dir() == tmp_path / "vae_jax" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert jit_cache.cache_dir() == jit_cache.Path.home() / ".cache" / "vae_jax" / "jax"
    for off in ("0", "off", "OFF", ""):
        monkeypatch.setenv(jit_cache.ENV, off)
        assert jit_cache.cache_dir() is None
    monkeypatch.setenv(jit_cache.ENV, str(tmp_path / "mine"))
    assert jit_cache.cache_dir() == tmp_path / "mine"


def test_a_cache_the_caller_set_up_is_left_as_it_is(monkeypatch, tmp_path):
    monkeypatch.setattr(jit_cache, "_checked", False)
    monkeypatch.setenv(jit_cache.ENV, str(tmp_path / "ours"))
    before = jax.config.jax_compilation_cache_dir  # (conftest.py's)
    assert before is not None
    jit_cache.use_compilation_cache()
    assert jax.config.jax_compilation_cache_dir == before and not (tmp_path / "ours").exists()


def test_the_cache_is_turned_on_in_a_private_directory(fresh, monkeypatch, tmp_path):
    monkeypatch.setenv(jit_cache.ENV, str(tmp_path / "cache"))
    jit_cache.use_compilation_cache()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    assert jax.config.jax_persistent_cache_min_compile_time_secs == jit_cache.MIN_COMPILE_SECONDS
    assert jax.config.jax_compilation_cache_max_size == jit_cache.MAX_BYTES


def test_turned_off_it_creates_nothing(fresh, monkeypatch, tmp_path):
    monkeypatch.setenv(jit_cache.ENV, "0")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    jit_cache.use_compilation_cache()
    assert jax.config.jax_compilation_cache_dir is None and os.listdir(tmp_path) == []


def test_a_directory_others_may_write_to_is_not_used(fresh, monkeypatch, tmp_path):
    """JAX runs what it finds in its cache: a directory another user may write is refused
    (one warning, the cache stays off; it costs time, never a result)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv(jit_cache.ENV, str(shared))
    with pytest.warns(UserWarning, match="is not private") as record:
        jit_cache.use_compilation_cache()
    assert len(record) == 1 and "\n" not in str(record[0].message)
    assert jax.config.jax_compilation_cache_dir is None
    jit_cache.use_compilation_cache()  # (once per process: no second warning)


FIT_TWICE = """
import sys, warnings
import numpy as np
import vae_jax.jit_cache as jit_cache
jit_cache.MIN_COMPILE_SECONDS = 0  # (every program: a fast CPU compiles some in < 0.2 s)
from vae_jax import VAEEstimator
warnings.simplefilter("error")
x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
VAEEstimator(z_dim=1, hidden=(8,), max_epochs=2, early_stopping=False).fit(x)
"""


def test_the_cache_it_turns_on_is_written_and_read_without_a_warning(tmp_path):
    """Two new processes fit with the estimator's own cache (as a user's would: the suite's
    cache variables removed). Before filelock was a dependency, JAX warned on every read
    ("Please install the `filelock` package to set `jax_compilation_cache_max_size`") and
    wrote nothing, so a warm cache never helped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["VAE_JAX_COMPILATION_CACHE"] = str(tmp_path / "cache")
    root = Path(__file__).resolve().parents[1]
    for _ in range(2):  # (the second reads what the first wrote)
        done = subprocess.run(
            [sys.executable, "-c", FIT_TWICE], cwd=root, env=env, capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "cache").iterdir())
