"""Several processes, one run: 2 local processes x 2 CPU devices on 127.0.0.1.

Each process is the CLI with ``--distributed`` and the variables docs/parallel.md gives
(``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``); the CPU
collectives are JAX's default, gloo. Checked: with process 0's data preparation slowed past
Gloo's 30 s connection timeout (`tests.cluster_driver`), both processes exit 0 and print the
same losses, which match a 1-process run on 4 devices to float rounding (the same data, order
and keys; only the sums' order differs); process 0 alone writes the work directory's files;
a second run of another configuration there ends both processes with process 0's one line;
a run whose process 1 is SIGKILLed ends process 0 by itself with one line, and resumes on a
restart of both to bitwise the parameters of the uninterrupted 2-process run; the result
loads in this 1-device process. Start-up failures (a peer that never starts, nothing at the
coordinator's address, different counts, an index process 0 does not expect) end every process
with one line within the bound; so does process 0's death (JAX's abort, its C++ log filtered).
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
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
PREPARE_SLEEP_S = 35  # past Gloo's 30 s
XLA_FLAGS = os.environ.get("XLA_FLAGS", "")  # (the suite's, tests/conftest.py: kept, added to)


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


def _start_both(
    data, workdir, logs, cache, *, flags=FLAGS, slow_prepare=0, sleeper=0, full_disk=False, port=0
):
    """Start processes 0 and 1 of one run (process 0 listening on `port`, else a free one);
    returns them. `slow_prepare` (seconds) makes process `sleeper`'s data preparation that
    much slower, `full_disk` process 0's metrics unwritable after epoch 2
    (`tests.cluster_driver`)."""
    port = port or _free_port()
    procs = []
    for index in (0, 1):
        env = {
            "XLA_FLAGS": f"{XLA_FLAGS} --xla_force_host_platform_device_count=2",
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(index),
            "VAE_JAX_TEST_PREPARE_SLEEP": str(slow_prepare),
            "VAE_JAX_TEST_SLEEPER": str(sleeper),
            "VAE_JAX_TEST_FULL_DISK": "1" if full_disk else "",
        }
        argv = ["tests.cluster_driver", "--distributed", "--dataset", data, *flags]
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


def _errors(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if ": error: " in line]


ABORTED = -signal.SIGABRT  # JAX's abort() (a shell's status 134): its C++ log is filtered
SHOW_LOG = "(TF_CPP_MIN_LOG_LEVEL=0 shows JAX's own log)"


def _last_line_of(log: Path, timeout: float = 10.0) -> str:
    """The log of a process that JAX aborted, once its stderr filter (a process of its own,
    vae_jax/_cpp_log_filter.py, which outlives it by a few milliseconds) printed its line."""
    deadline = time.monotonic() + timeout
    while SHOW_LOG not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    return log.read_text()


def _logs_on_failure(test):
    """On a failure of `test` (an assertion, a process past its time), add the tail of every
    process log in its `tmp_path` to the message: these runs are bounded in time, and a rare
    failure is only explained by what the processes printed (pytest's tmp_path is gone by
    the next session)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        try:
            return test(*args, **kwargs)
        except (AssertionError, subprocess.TimeoutExpired) as error:
            logs = sorted(Path(kwargs["tmp_path"]).glob("*.log"))
            tail = lambda log: log.read_text(errors="replace")[-3000:]  # noqa: E731
            tails = "".join(
                f"\n--- {log.name}, last 3000 characters ---\n{tail(log)}" for log in logs
            )
            raise AssertionError(f"{error}{tails}") from error

    return wrapper


@_logs_on_failure
def test_two_processes_train_as_one_and_resume_bitwise_after_a_kill(data, tmp_path):
    cache = tmp_path / "jax_cache"
    logs = [tmp_path / "p0.log", tmp_path / "p1.log"]
    reference = tmp_path / "reference"
    # Process 0 prepares the data for 35 s: process 1 waits past Gloo's 30 s connection
    # timeout (before: both aborted, exit 134 with a C++ stack trace), and says so.
    procs = _start_both(data, reference, logs, cache, slow_prepare=PREPARE_SLEEP_S)
    statuses = _wait_both(procs, logs, timeout=240 + PREPARE_SLEEP_S)
    assert statuses == [0, 0], logs[0].read_text()[-2000:] + logs[1].read_text()[-2000:]
    assert len(_losses(logs[0])) == 3 and _losses(logs[0]) == _losses(logs[1])
    assert "process 1: waiting for process 0 to prepare the data" in logs[1].read_text()
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
    four = {"XLA_FLAGS": f"{XLA_FLAGS} --xla_force_host_platform_device_count=4"}
    proc = start_cli(argv, tmp_path / "alone.log", cache, env=four)
    assert proc.wait(timeout=240) == 0, (tmp_path / "alone.log").read_text()[-2000:]
    records = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in (alone / "metrics.jsonl").read_text().splitlines()]
    for name in ("train_loss", "test_loss"):
        np.testing.assert_allclose([r[name] for r in records], [r[name] for r in single], rtol=1e-5)

    # a second run of another configuration there: process 0 refuses the directory, and
    # process 1 stops with its line at once (before: a 15-line traceback)
    other_logs = [tmp_path / "o0.log", tmp_path / "o1.log"]
    other = [*FLAGS[:1], "8", *FLAGS[2:]]  # --hidden 8
    statuses = _wait_both(_start_both(data, reference, other_logs, cache, flags=other), other_logs)
    assert statuses == [2, 1], other_logs[1].read_text()[-2000:]
    (refusal,) = _errors(other_logs[0])
    assert "holds a run of a different configuration" in refusal
    message = refusal.split(": error: ", 1)[1]
    assert _errors(other_logs[1]) == [
        f"python -m experiments.train: error: process 0 could not claim the work directory: "
        f"{message}"
    ]

    # process 1 killed while the checkpoint at step 8 is written: process 0 ends by itself,
    # with one line (before: an abort with a C++ stack trace); both restarted
    killed = tmp_path / "killed"
    kill_logs = [tmp_path / "k0.log", tmp_path / "k1.log"]
    procs = _start_both(data, killed, kill_logs, cache)
    deadline = time.monotonic() + 240
    while not [s for s in _steps(killed) if s >= 8] and time.monotonic() < deadline:
        assert procs[1].poll() is None, kill_logs[1].read_text()[-2000:]
        time.sleep(0.005)
    procs[1].kill()
    procs[1].wait()
    assert procs[0].wait(timeout=120) == 1, kill_logs[0].read_text()[-2000:]
    (lost,) = _errors(kill_logs[0])  # (in a collective: at once; in a barrier: 20 s later)
    assert "process 0: another process stopped during a collective" in lost or (
        "process 0: process 1 gave no sign of life for 20 s" in lost
    ), lost
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


@_logs_on_failure
def test_a_peer_that_never_starts_ends_the_others_with_one_line(tmp_path):
    """Start-up is bounded (here lowered to 10 s by `tests.cluster_driver`; 60 s by
    default): process 0 alone; process 1 alone, nothing at the coordinator's address; two
    processes with different counts (before: six minutes, then exit 134 and a C++ trace);
    and index 2 of 3 against that process 0 of 2, which JAX aborts at once (exit 134; before,
    "Unexpected task registered with task=2" and a C++ stack trace: now one line)."""
    cache, bound = tmp_path / "jax_cache", 10
    runs = {  # name: (port, count, index)
        "alone0": (alone := _free_port(), 2, 0),
        "index2": (alone, 3, 2),  # (an index alone0's count of 2 does not expect)
        "alone1": (_free_port(), 2, 1),
        "count0": (port := _free_port(), 2, 0),
        "count1": (port, 3, 1),
    }
    procs = {}
    for name, (port, count, index) in runs.items():
        env = {
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": str(count),
            "JAX_PROCESS_ID": str(index),
            "VAE_JAX_TEST_INIT_TIMEOUT": str(bound),
        }
        argv = ["tests.cluster_driver", "--distributed", "--workdir", tmp_path / name]
        procs[name] = start_cli(argv, tmp_path / f"{name}.log", cache, env=env)
    prefix = "python -m experiments.train: error: --distributed: "
    expected = {
        "alone0": f"process 0 of 2: not every process connected to the coordinator at "
        f"127.0.0.1:{runs['alone0'][0]} within {bound} s",
        "alone1": f"process 1 of 2: nothing answers at the coordinator address "
        f"127.0.0.1:{runs['alone1'][0]} (JAX_COORDINATOR_ADDRESS) after {bound} s",
        "count0": "process 0 has JAX_NUM_PROCESSES=2 but process 1 has 3",
        "count1": "process 1 has JAX_NUM_PROCESSES=3 but process 0 has 2",
        "index2": f"process 2 of 3: the coordinator at 127.0.0.1:{alone} does not expect this "
        "process: is JAX_PROCESS_ID below process 0's JAX_NUM_PROCESSES",
    }
    for name, proc in procs.items():
        try:
            status = proc.wait(timeout=180)  # (the start-up of Python and JAX, then `bound`)
        except subprocess.TimeoutExpired:
            for p in procs.values():
                p.kill()
            pytest.fail(f"{name} did not end: " + (tmp_path / f"{name}.log").read_text())
        text = _last_line_of(tmp_path / f"{name}.log") if status == ABORTED else ""
        text = text or (tmp_path / f"{name}.log").read_text()
        assert status == (ABORTED if name == "index2" else 1), text[-2000:]
        (line,) = text.strip().splitlines()
        assert line.startswith(prefix + expected[name]), line


@_logs_on_failure
def test_a_process_that_fails_alone_ends_the_others_with_one_line(data, tmp_path):
    """Process 0 cannot write its metrics after epoch 2 (a full disk on its side) while
    process 1 goes on into the next collective, where it would wait for process 0 forever
    (before: both waited 300 s in JAX's shutdown barrier, then aborted). Process 1 learns it
    through the coordination service and leaves `LEAVE_GRACE_S` later."""
    cache = tmp_path / "jax_cache"
    logs = [tmp_path / "f0.log", tmp_path / "f1.log"]
    flags = [*FLAGS[: FLAGS.index("--epochs") + 1], "20", *FLAGS[FLAGS.index("--epochs") + 2 :]]
    procs = _start_both(data, tmp_path / "run", logs, cache, flags=flags, full_disk=True)
    assert _wait_both(procs, logs) == [1, 1], logs[1].read_text()[-2000:]
    (full,) = _errors(logs[0])
    assert "No space left on device (simulated); the checkpoints are intact" in full
    assert _errors(logs[1]) == [
        "python -m experiments.train: error: process 1: process 0 stopped (its output says "
        "why); leaving too: start them all again to resume"
    ]


@_logs_on_failure
def test_process_0_killed_ends_the_others_with_one_line(data, tmp_path):
    """Process 0 hosts JAX's coordination service; SIGKILLed while process 1 reads the data
    (outside any collective, where no error of Python's can tell it), its end makes JAX
    abort process 1 at once: exit 134 (before: with absl's FATAL record, GRPC detail and a
    C++ stack trace). Now the stderr filter prints one line instead."""
    cache = tmp_path / "jax_cache"
    logs = [tmp_path / "g0.log", tmp_path / "g1.log"]
    port = _free_port()
    procs = _start_both(data, tmp_path / "run", logs, cache, slow_prepare=60, sleeper=1, port=port)
    deadline = time.monotonic() + 180
    while "process 1: preparing the data" not in logs[1].read_text():
        if procs[1].poll() is not None or time.monotonic() > deadline:
            for p in procs:
                p.kill()
            pytest.fail("process 1 did not start: " + logs[1].read_text()[-2000:])
        time.sleep(0.05)
    procs[0].kill()
    procs[0].wait()
    try:
        status = procs[1].wait(timeout=30)  # (JAX's abort: 0.1-1 s after the kill)
    except subprocess.TimeoutExpired:
        procs[1].kill()
        pytest.fail("process 1 did not end: " + logs[1].read_text()[-2000:])
    text = _last_line_of(logs[1])
    assert status == ABORTED, text[-2000:]
    assert "@ 0x" not in text and "stack trace" not in text, text[-2000:]
    assert not re.search(r"^[EFW]\d{4} ", text, re.MULTILINE), text[-2000:]  # (absl's records)
    assert _errors(logs[1]) == [
        f"python -m experiments.train: error: process 1: process 0 (the coordinator at "
        f"127.0.0.1:{port}) is gone (killed or stopped); leaving too: start them all again "
        f"to resume {SHOW_LOG}"
    ]


@pytest.mark.parametrize(
    ("timeout", "address", "message"),
    [
        (-1, None, "timeout_seconds must be a number > 0, got -1"),
        ("5", None, "timeout_seconds must be a number > 0, got '5'"),
        (5, "127.0.0.1", "JAX_COORDINATOR_ADDRESS='127.0.0.1' must be host:port with a port in"),
        (5, "127.0.0.1:notaport", "must be host:port with a port in 1..65535"),
        (5, "127.0.0.1:99999", "must be host:port with a port in 1..65535"),
    ],
)
def test_initialize_refuses_bad_settings_before_connecting(monkeypatch, timeout, address, message):
    """(Before: -1 exited at once "within -1 s", "5" failed in the watchdog thread, an
    address without a port was an IndexError, "notaport" a JAX runtime error.)"""
    from vae_jax import distributed

    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    if address is not None:
        monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", address)
    with pytest.raises(ValueError, match=message):
        distributed.initialize(timeout)
