"""Strict JAX settings for the whole suite: CPU backend, no silent promotion, and one
compilation cache shared by every test and worker of a run."""

import os
import shutil
import tempfile
from pathlib import Path

# The README's test command runs on the JAX CPU backend, whatever accelerators exist.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The suite is compile-bound, and XLA:CPU spends most of a compilation in LLVM: at -O0 a
# typical test compiles about 40% faster (tests/test_experiment.py's default run: 5.5 s of
# compilation -> 3.3 s) while its small programs run about as fast. The numbers can differ
# from a default build in the last bits of a float (LLVM fuses fewer multiply-adds); no test
# compares with a number recorded outside the suite. Every process of the run (workers and
# the subprocesses tests start, which inherit XLA_FLAGS) compiles the same way.
# VAE_JAX_TEST_XLA_OPT=default runs the suite as users' programs are compiled.
if os.environ.get("VAE_JAX_TEST_XLA_OPT", "0") != "default":
    _O0 = "--xla_backend_optimization_level=0"
    if _O0 not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_O0}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

# Catch silent broadcasting bugs (as equinox's tests do). Strict dtype promotion is not set:
# optax's Adam mixes its int32 step count with Python floats, which strict mode rejects.
jax.config.update("jax_numpy_rank_promotion", "raise")

# The suite is compile-bound and many tests compile the same programs (the same tiny model
# through fit, the CLI or a resumed run). JAX's persistent compilation cache, in a directory
# private to this pytest run (shared by its xdist workers, removed at the end), compiles
# each of them once: the same executables, so the same numbers.
# (The first process to import this, the pytest controller, makes the directory; its xdist
# workers inherit the variable.)
_CACHE_ENV = "VAE_JAX_TEST_JIT_CACHE"
_OWNER = _CACHE_ENV not in os.environ
if _OWNER:
    os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="vae_jax_test_jit_cache_")
CACHE_DIR = Path(os.environ[_CACHE_ENV])
jax.config.update("jax_compilation_cache_dir", str(CACHE_DIR))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# ...and every subprocess a test starts (the CLI, killed and resumed runs, clusters), which
# reads JAX's settings from the environment: one compilation per program for the whole run.
# (The estimator turns a persistent cache on in the user's home, vae_jax.jit_cache, unless
# VAE_JAX_COMPILATION_CACHE names another: no test writes to the home directory.)
os.environ.update(
    VAE_JAX_COMPILATION_CACHE=str(CACHE_DIR),
    JAX_COMPILATION_CACHE_DIR=str(CACHE_DIR),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` (pyproject.toml): one worker per core the process may use, plus one. The
    multi-process, kill and preemption tests spend much of their time waiting (for the
    processes they start, a peer's timeout, a 35 s data preparation); a spare worker runs
    other tests meanwhile (on 2 cores: 391 s with 3 workers against 414 s with 2, one
    fresh-clone run each). ``PYTEST_XDIST_AUTO_NUM_WORKERS`` still sets the number."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # (xdist's own hook reads it)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cores or 1) + 1


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _OWNER:  # the controller, once every worker is done
        shutil.rmtree(CACHE_DIR, ignore_errors=True)


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)
