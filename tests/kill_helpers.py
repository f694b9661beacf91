"""Test helpers: start the CLI in a subprocess, and kill it at a chosen point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vae_jax.workdir import CHECKPOINT_SUBDIR

ROOT = Path(__file__).resolve().parents[1]
TMP_SUFFIX = ".orbax-checkpoint-tmp"


def start_cli(argv, log_path, cache_dir, env=None):
    """`python -m ARGV...` from the repository root, output to `log_path`, sharing compiled
    executables (the same ones, so the same numbers) through the suite's compilation cache
    (tests/conftest.py), or `cache_dir` outside the suite; `env` adds environment variables."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",  # a killed run's log keeps its last lines
        # Each process after the first starts in about half the time.
        "JAX_COMPILATION_CACHE_DIR": os.environ.get("VAE_JAX_TEST_JIT_CACHE", str(cache_dir)),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        **(env or {}),
    }
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", *map(str, argv)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _entries(workdir):
    try:
        return os.listdir(workdir / CHECKPOINT_SUBDIR)
    except FileNotFoundError:
        return []


def _steps(workdir):
    return sorted(int(name) for name in _entries(workdir) if name.isdigit())


def _writing(workdir, target):
    """A predicate: the checkpoint at `target` or later is being written (or, if the poll
    missed that, the one after it is complete). A temporary directory left by an earlier
    killed run counts only once it has been cleaned up and made again."""
    stale = {n for n in _entries(workdir) if n.endswith(TMP_SUFFIX)}

    def predicate():
        entries = _entries(workdir)
        stale.intersection_update(entries)
        return any(
            (n.isdigit() and int(n) >= target + 2)
            or (n.endswith(TMP_SUFFIX) and n not in stale and int(n.split(".")[0]) >= target)
            for n in entries
        )

    return predicate


def _kill_when(proc, predicate, delay=0.0, timeout=240.0):
    """SIGKILL `proc` `delay` s after `predicate()` holds; False if it exited first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if predicate():
            time.sleep(delay)
            if proc.poll() is not None:
                return False
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"no kill point reached in {timeout} s")
        time.sleep(0.001)
    return False
