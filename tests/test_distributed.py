"""Several processes, one run: 2 local processes x 2 CPU devices on 127.0.0.1.

Each process is the CLI with ``--distributed`` and the variables docs/parallel.md gives
(``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``); the CPU
collectives are JAX's default, gloo. Checked: both processes exit 0 and print the same
losses, which match a 1-process run on 4 devices to float rounding (the same data, order
and keys; only the sums' order differs); process 0 alone writes the work directory's files; a run
whose process 1 is SIGKILLed (and then process 0, as a scheduler would) resumes on a
restart of both to bitwise the parameters of the uninterrupted 2-process run; and the
result loads in this 1-device process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import vae_jax
from tests.kill_helpers import _steps, start_cli

ROOT = Path(__file__).resolve().parents[1]
FLAGS = (
    "--hidden",
    "16",
    "--z_dim",
    "2",
    "--batch_size",
    "32",
    "--eval_batch_size",
    "32",
    "--epochs",
    "3",
    "--steps_per_call",
    "2",
    "--checkpoint_every_steps",
    "2",
    "--keep_checkpoints",
    "2",
    "--no_progress",
)  # fmt: skip  (192 training examples: 6 steps per epoch, 18 in all)
STEPS = 18


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    x = (np.random.default_rng(0).random((256, 8, 8, 1)) ** 3 * 255).astype(np.uint8)
    np.savez(root / "x.npz", x_train=x[:192], x_test=x[192:])
    return root / "x.npz"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_both(data, workdir, logs, cache):
    """Start processes 0 and 1 of one run; returns them."""
    port = _free_port()
    procs = []
    for index in (0, 1):
        env = {
            "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(index),
        }
        argv = ["experiments.train", "--distributed", "--dataset", data, *FLAGS]
        procs.append(start_cli([*argv, "--workdir", workdir], logs[index], cache, env=env))
    return procs


def _wait_both(procs, logs, timeout=240):
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("a process did not finish: " + logs[0].read_text()[-2000:])
    return [p.returncode for p in procs]


def _losses(log: Path) -> list[str]:
    return [
        line.split("nats/example")[0] for line in log.read_text().splitlines() if "-ELBO" in line
    ]


def test_two_processes_train_as_one_and_resume_bitwise_after_a_kill(data, tmp_path):
    cache = tmp_path / "jax_cache"
    logs = [tmp_path / "p0.log", tmp_path / "p1.log"]
    reference = tmp_path / "reference"
    statuses = _wait_both(_start_both(data, reference, logs, cache), logs)
    assert statuses == [0, 0], logs[0].read_text()[-2000:] + logs[1].read_text()[-2000:]
    assert len(_losses(logs[0])) == 3 and _losses(logs[0]) == _losses(logs[1])
    # process 0 alone wrote the directory's files; no temporary file is left
    assert sorted(p.name for p in reference.iterdir()) == [
        ".lock",
        "checkpoints",
        "config.json",
        "images",
        "metrics.jsonl",
        "tensorboard",
    ]
    assert len(list((reference / "tensorboard").iterdir())) == 1  # (process 0's)
    assert _steps(reference) == [16, 18]
    assert not [p for p in reference.rglob("*") if p.name.endswith(".tmp")]

    # the same run in one process with 4 devices: the same numbers to float rounding
    alone = tmp_path / "alone"
    argv = ["experiments.train", "--dataset", data, *FLAGS, "--workdir", alone]
    four = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = start_cli(argv, tmp_path / "alone.log", cache, env=four)
    assert proc.wait(timeout=240) == 0, (tmp_path / "alone.log").read_text()[-2000:]
    records = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in (alone / "metrics.jsonl").read_text().splitlines()]
    for name in ("train_loss", "test_loss"):
        np.testing.assert_allclose([r[name] for r in records], [r[name] for r in single], rtol=1e-5)

    # process 1 killed after the checkpoint at step 8, then process 0; both restarted
    killed = tmp_path / "killed"
    kill_logs = [tmp_path / "k0.log", tmp_path / "k1.log"]
    procs = _start_both(data, killed, kill_logs, cache)
    deadline = time.monotonic() + 240
    while not [s for s in _steps(killed) if s >= 8] and time.monotonic() < deadline:
        assert procs[1].poll() is None, kill_logs[1].read_text()[-2000:]
        time.sleep(0.005)
    procs[1].kill()
    procs[0].kill()
    for proc in procs:
        proc.wait()
    assert _steps(killed) and _steps(killed)[-1] < STEPS, _steps(killed)
    resume_logs = [tmp_path / "r0.log", tmp_path / "r1.log"]
    statuses = _wait_both(_start_both(data, killed, resume_logs, cache), resume_logs)
    assert statuses == [0, 0], resume_logs[0].read_text()[-2000:]
    assert "resumed from the checkpoint at step" in resume_logs[0].read_text()

    # both 2-process runs load here, on 1 device, at their newest step: bitwise equal
    expected, got = vae_jax.load_checkpoint(reference), vae_jax.load_checkpoint(killed)
    assert jax.device_count() == 1 and expected.step == got.step == STEPS
    leaves = zip(jax.tree.leaves(expected.params), jax.tree.leaves(got.params), strict=True)
    assert all(np.array_equal(a, b) for a, b in leaves)


def test_distributed_variables_that_are_not_numbers_are_one_line_errors(tmp_path):
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
        "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1",
        "JAX_NUM_PROCESSES": "two",
        "JAX_PROCESS_ID": "0",
    }
    argv = ["-m", "experiments.train", "--distributed", "--workdir", str(tmp_path / "run")]
    proc = subprocess.run(
        [sys.executable, *argv], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "python -m experiments.train: error: --distributed: JAX_NUM_PROCESSES must be an "
        "integer, got 'two'"
    ]
    env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"] = "2", "2"
    proc = subprocess.run(
        [sys.executable, *argv], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "JAX_PROCESS_ID=2 must be below JAX_NUM_PROCESSES=2" in proc.stderr
