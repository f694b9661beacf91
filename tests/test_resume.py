"""Exact resumption: runs SIGKILLed at random points, then resumed, end bitwise equal to an
uninterrupted run; corrupt checkpoints are skipped with a warning; failed writes keep the
previous checkpoint.

The kill test runs the real CLI in subprocesses on tiny data (256 training images, batch 32:
8 steps per epoch, 3 epochs, a checkpoint every 2 steps) and kills it at points chosen by a
seeded generator (set VAE_JAX_KILL_SEED to replay or vary them): while a checkpoint is
being written (its temporary directory exists), or a random delay after a checkpoint
appeared (during training, evaluation, image writing or pruning). It is compared with an
uninterrupted run of the same command, made in this process (the `reference` fixture).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from experiments import mnist
from tests.fit_config import fit_config
from tests.idx_files import write_random_mnist
from tests.kill_helpers import TMP_SUFFIX, _entries, _kill_when, _steps, _writing, start_cli
from vae_jax import VAE, FitOptions, fit, load_checkpoint, make_elbo
from vae_jax import mnist as data
from vae_jax.checkpoint import Checkpointer, CheckpointError, CheckpointMismatchError
from vae_jax.loop import Preempted
from vae_jax.optim import make_optimizer
from vae_jax.train import init_train_state, make_keys
from vae_jax.workdir import CHECKPOINT_SUBDIR, WorkdirError, read_config

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST, BATCH, EPOCHS = 256, 64, 32, 3
STEPS = EPOCHS * N_TRAIN // BATCH  # 24
FLAGS = (
    "--epochs", str(EPOCHS), "--batch_size", str(BATCH), "--eval_batch_size", str(N_TEST),
    "--hidden", "32", "--z_dim", "4", "--steps_per_call", "2", "--checkpoint_every_steps", "2",
    "--keep_checkpoints", "3", "--no_progress",
)  # fmt: skip
TIMING_KEYS = ("seconds", "eval_seconds")


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory):
    """IDX files of 256 + 64 random images, prepared once (so runs only read them)."""
    root = tmp_path_factory.mktemp("resume_mnist")
    rng = np.random.default_rng(0)
    write_random_mnist(root / "idx", N_TRAIN, N_TEST, rng)
    data.prepare_mnist(root / "tfds", mnist_dir=root / "idx", allow_download=False, allow_pip=False)
    return {"mnist_dir": str(root / "idx"), "data_dir": str(root / "tfds")}


def _argv(tiny_mnist, workdir, *flags):
    return [
        "--mnist_dir", tiny_mnist["mnist_dir"], "--data_dir", tiny_mnist["data_dir"],
        "--workdir", str(workdir), *FLAGS, *flags,
    ]  # fmt: skip


def _start(tiny_mnist, workdir, log_path, *flags):
    cache = Path(tiny_mnist["data_dir"]).parent / "jax_cache"
    argv = ["experiments.mnist", *_argv(tiny_mnist, workdir, *flags)]
    return start_cli(argv, log_path, cache)


def _target(config):
    model = config.model.build(config.data.image_shape)
    tx, key = optax.adam(config.train.learning_rate), make_keys(0).init
    return jax.eval_shape(lambda: init_train_state(model, tx, key))


def _check_all_checkpoints_restore(workdir):
    """Every complete checkpoint restores, digest verified, without a warning."""
    target = _target(read_config(workdir))
    checkpointer = Checkpointer(workdir, read_only=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for step in checkpointer.steps():
                _, _, restored_step = checkpointer.restore(target, step)
                assert restored_step == step
    finally:
        checkpointer.close()


def _records(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def test_runs_killed_at_random_points_resume_to_bitwise_equal_parameters(
    tiny_mnist, reference, tmp_path
):
    seed = int(os.environ.get("VAE_JAX_KILL_SEED", "20240611"))
    rng = np.random.default_rng(seed)
    workdir = tmp_path / "killed"
    # Five kill points: steps spread over the run, each killed while the first checkpoint at
    # or after that step is being written, or a random delay after that checkpoint is done.
    targets = np.sort(rng.choice(np.arange(2, STEPS - 5, 2), size=5, replace=False))
    modes = [str(m) for m in rng.permutation(["during write"] * 3 + ["after"] * 2)]
    plan = list(zip(targets.tolist(), modes, strict=True))
    # (trial, newest checkpoint at its start, target step, mode, checkpoints after the kill,
    # checkpoints being written when killed)
    kills: list[tuple[int, int, int, str, list[int], list[str]]] = []

    def landed_in_a_write():
        return any(mode == "during write" and left for *_, mode, _, left in kills)

    for trial in range(9):  # (extra trials only if the polling missed every write)
        latest = max(_steps(workdir), default=0)
        if (len(kills) >= 5 and landed_in_a_write()) or latest >= STEPS - 2:
            break
        planned, mode = plan[trial] if trial < len(plan) else (0, "during write")
        target = max(planned, latest + 2)
        proc = _start(tiny_mnist, workdir, tmp_path / f"trial{trial}.log")
        if mode == "during write":  # (if the poll misses the write: just after the next one)
            killed = _kill_when(proc, _writing(workdir, target))
        else:
            delay = float(rng.uniform(0.0, 0.15))
            killed = _kill_when(proc, lambda t=target: _steps(workdir)[-1:] >= [t], delay)
        if killed:
            leftovers = sorted(n for n in _entries(workdir) if n.endswith(TMP_SUFFIX))
            kills.append((trial, latest, target, mode, _steps(workdir), leftovers))
            _check_all_checkpoints_restore(workdir)  # none is corrupt
    final = _start(tiny_mnist, workdir, tmp_path / "final.log")
    assert final.wait(timeout=300) == 0, (tmp_path / "final.log").read_text()[-3000:]

    report = f"seed {seed}, kills (trial, start, target, mode, after, being written): {kills}"
    assert len(kills) >= 5 and landed_in_a_write(), report
    for trial, latest, *_ in kills:
        log = (tmp_path / f"trial{trial}.log").read_text()
        assert not latest or f"resumed from the checkpoint at step {latest} " in log, report
    expected, got = load_checkpoint(reference), load_checkpoint(workdir)
    assert got.step == expected.step == STEPS, report
    leaves = zip(jax.tree.leaves(expected.params), jax.tree.leaves(got.params), strict=True)
    assert all(np.array_equal(a, b) for a, b in leaves), f"parameters differ; {report}"
    # metrics.jsonl: each epoch once, the same numbers (timings aside); the same pictures
    assert [r["epoch"] for r in _records(workdir)] == list(range(1, EPOCHS + 1))
    assert _records(workdir) == _records(reference), report
    for image in sorted((reference / "images").glob("*.png")):
        assert (workdir / "images" / image.name).read_bytes() == image.read_bytes(), image.name
    _check_all_checkpoints_restore(workdir)
    assert sorted(os.listdir(workdir / CHECKPOINT_SUBDIR)) == ["20", "22", "24"], report
    print(f"bitwise equal after {len(kills)} kills; {report}")  # (pytest -rP shows it)


def test_sigterm_at_a_random_point_checkpoints_exits_75_and_resumes_bitwise(
    tiny_mnist, reference, tmp_path
):
    """SIGTERM (what schedulers and `timeout` send) at a random moment: the run finishes
    its compiled call, writes a checkpoint there (checkpoints are otherwise only written
    at epoch ends here), says so in one line and exits 75; the same command then ends
    bitwise equal to the uninterrupted reference."""
    seed = int(os.environ.get("VAE_JAX_KILL_SEED", "20240611"))
    rng = np.random.default_rng(seed + 1)
    only_epoch_ends = ("--checkpoint_every_steps", "0")
    for attempt in range(6):  # (the signal may come after a fast run has finished)
        workdir = tmp_path / f"preempted{attempt}"
        log = tmp_path / f"preempted{attempt}.log"
        proc = _start(tiny_mnist, workdir, log, *only_epoch_ends)
        delay = float(rng.uniform(0.0, 0.2))
        epoch_1_done = lambda log=log: "epoch   1 " in log.read_text()  # noqa: E731
        assert _signal_when(proc, epoch_1_done, delay, signal.SIGTERM), log.read_text()
        status = proc.wait(timeout=120)
        if status == 75:
            break
        # (the signal came after training: the run had finished, or was ending, which a
        # signal then stops as usual; try again)
        assert status in (0, -signal.SIGTERM), log.read_text()[-3000:]
    else:
        pytest.fail("every run finished training before the signal")
    text = log.read_text()
    (line,) = [x for x in text.splitlines() if "preempted" in x]
    match = re.search(r"stopped by SIGTERM .*; the checkpoint at step (\d+) is written", line)
    assert match, text[-3000:]
    step = int(match.group(1))
    assert _steps(workdir)[-1] == step < STEPS, (line, _steps(workdir))
    final = _start(tiny_mnist, workdir, tmp_path / "final.log", *only_epoch_ends)
    assert final.wait(timeout=300) == 0, (tmp_path / "final.log").read_text()[-3000:]
    assert f"resumed from the checkpoint at step {step} " in (tmp_path / "final.log").read_text()
    _assert_same_result(workdir, reference)


def _signal_when(proc, predicate, delay, signum, timeout=120.0):
    """Send `signum` to `proc` `delay` s after `predicate()` holds; False if it exited."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if predicate():
            time.sleep(delay)
            if proc.poll() is not None:
                return True  # (finished first: the caller sees status 0)
            proc.send_signal(signum)
            return True
        time.sleep(0.01)
    return False


def test_a_preemption_signal_after_an_epoch_stops_fit_and_resumes_bitwise(tmp_path):
    """SIGUSR1 (SLURM's early warning) arriving during an epoch's hook: fit writes that
    epoch's checkpoint and raises Preempted; the same call again ends where an
    uninterrupted run ends, bitwise."""
    x = np.random.default_rng(7).integers(0, 256, (64, 6, 6, 1), dtype=np.uint8)
    model = VAE(image_shape=(6, 6, 1), hidden=(8,), z_dim=2)

    def run(workdir, hook=None):
        return fit(
            make_elbo(model),
            optax.adam(1e-3),
            x,
            x_test=x[:16],
            options=FitOptions(epochs=3, batch_size=16, eval_batch_size=16, log=lambda _: None),
            workdir=workdir,
            on_epoch_end=hook,
            progress=False,
        )

    def signal_after_epoch_1(epoch, state, records):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(Preempted, match="stopped by SIGUSR1 after epoch 1 .step 4.; the chec"):
        run(tmp_path / "preempted", signal_after_epoch_1)
    assert signal.getsignal(signal.SIGUSR1) == previous  # the handler is put back
    assert _steps(tmp_path / "preempted") == [4]
    resumed, expected = run(tmp_path / "preempted"), run(tmp_path / "reference")
    assert int(resumed.state.step) == int(expected.state.step) == 12
    final = jax.tree.leaves(expected.state.params)
    leaves = zip(jax.tree.leaves(resumed.state.params), final, strict=True)
    assert all(np.array_equal(a, b) for a, b in leaves)
    assert [r["test_loss"] for r in resumed.records] == [r["test_loss"] for r in expected.records]


# ----------------------------------------------------------------------------------------------
# In-process: corrupt checkpoints and failed writes.


@pytest.fixture(scope="module")
def reference(tiny_mnist, tmp_path_factory):
    """An uninterrupted run keeping every checkpoint (steps 2, 4, ..., 24)."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    argv = _argv(tiny_mnist, workdir, "--keep_checkpoints", "12")
    assert mnist.main(argv) == 0
    assert _steps(workdir) == list(range(2, 25, 2))
    return workdir


def _copy(reference, tmp_path, last=16):
    """The reference's work directory as a run killed after its checkpoint at `last` left
    it: the checkpoints at `last` - 4, `last` - 2 and `last` (and later metrics and images,
    which a resumed run rewrites)."""
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    for step in _steps(workdir):
        if not last - 4 <= step <= last:
            shutil.rmtree(workdir / CHECKPOINT_SUBDIR / str(step))
    return workdir


def _assert_same_result(workdir, reference):
    expected, got = load_checkpoint(reference), load_checkpoint(workdir)
    assert got.step == expected.step == 24
    leaves = zip(jax.tree.leaves(expected.params), jax.tree.leaves(got.params), strict=True)
    assert all(np.array_equal(a, b) for a, b in leaves)
    assert _records(workdir) == _records(reference)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bytes(path):
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 8] = bytes(b ^ 0xFF for b in raw[middle : middle + 8])
    path.write_bytes(bytes(raw))


def _largest_file(directory):
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


DAMAGE = {
    # the arrays: tensorstore/OCDBT files (the largest holds the parameter chunks)
    "array data truncated": lambda c: _truncate(_largest_file(c / "state")),
    "array data bytes flipped (caught by the digest)": lambda c: _flip_bytes(
        _largest_file(c / "state")
    ),
    "array data bytes flipped, file list deleted (caught by the digest)": lambda c: (
        (c / "vae_jax_files.json").unlink(),
        _flip_bytes(_largest_file(c / "state")),
    ),
    "file list garbage": lambda c: (c / "vae_jax_files.json").write_text("{]"),
    "array data emptied": lambda c: _largest_file(c / "state").write_bytes(b""),
    "array index garbage": lambda c: (c / "state" / "manifest.ocdbt").write_bytes(b"\x00" * 64),
    "array metadata deleted": lambda c: (c / "state" / "_METADATA").unlink(),
    "array metadata not JSON": lambda c: (c / "state" / "_METADATA").write_text("{not json"),
    "meta truncated": lambda c: _truncate(c / "meta" / "metadata"),
    "meta deleted": lambda c: shutil.rmtree(c / "meta"),
    "meta edited (digest differs)": lambda c: (c / "meta" / "metadata").write_text(
        (c / "meta" / "metadata").read_text().replace('"epoch": 2', '"epoch": 3', 1)
    ),
    "meta of the wrong structure": lambda c: (c / "meta" / "metadata").write_text("[1, 2, 3]"),
    # Without the file list (a run killed just after writing the checkpoint has none), the
    # digest of what was restored catches the damage, or tensorstore fails to read it (then
    # Orbax's other reads still in flight end before its event loop closes: nothing
    # reports "Exception ignored" on stderr, which pytest would turn into an error).
    "array data truncated, file list deleted (tensorstore fails)": lambda c: (
        (c / "vae_jax_files.json").unlink(),
        _truncate(_largest_file(c / "state")),
    ),
    "meta edited, file list deleted (caught by the digest)": lambda c: (
        (c / "vae_jax_files.json").unlink(),
        (c / "meta" / "metadata").write_text(
            (c / "meta" / "metadata").read_text().replace('"epoch": 2', '"epoch": 3', 1)
        ),
    ),
    "meta of the wrong structure, file list deleted": lambda c: (
        (c / "vae_jax_files.json").unlink(),
        (c / "meta" / "metadata").write_text("[1, 2, 3]"),
    ),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_latest_checkpoint_is_skipped_with_a_warning(reference, tmp_path, damage):
    workdir = _copy(reference, tmp_path)
    DAMAGE[damage](workdir / CHECKPOINT_SUBDIR / "16")
    tx = make_optimizer(read_config(workdir).train, steps_per_epoch=1)
    with pytest.warns(RuntimeWarning, match="checkpoint at step 16 .* is unreadable"):
        loaded = load_checkpoint(workdir, tx=tx)  # the whole state, as a resume reads it
    assert loaded.step == 14
    assert (workdir / CHECKPOINT_SUBDIR / "16").is_dir()  # a reader moves nothing
    # The parameters alone: skipped too, unless the damage lies only in the optimizer's
    # state (flipped bytes land there or in the parameters); then they are intact.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        params_only = load_checkpoint(workdir)
    assert params_only.step in (14, 16)
    if params_only.step == 16:
        expected = jax.tree.leaves(load_checkpoint(reference, 16).params)  # (not its newest)
        got = jax.tree.leaves(params_only.params)
        assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))


def test_reads_in_flight_when_one_fails_end_before_orbax_closes_its_loop(
    reference, tmp_path, monkeypatch, caplog
):
    """Orbax reads the arrays concurrently and, when one read fails (damaged bytes), closes
    its event loop at once; the reads still in flight were then closed when collected and
    reported "Exception ignored in: <coroutine object _read_array_index_and_device_put>"
    with a traceback on stderr (or "Event loop is closed" from tensorstore's threads), in
    about 1 load in 5 to 60 depending on the machine's load. Each shard read is delayed here
    by a random 0-50 ms so that other reads are in flight when the first one fails, every
    time (without the fix: reports in 20 of 20 loads, and asyncio logged "Future exception
    was never retrieved"). Nothing may be reported."""
    import asyncio
    import gc
    import random

    from orbax.checkpoint._src.serialization import serialization

    plain_read_shard = serialization._read_shard
    rng = random.Random(0)

    async def delayed_read_shard(*args, **kwargs):
        await asyncio.sleep(rng.random() * 0.05)
        return await plain_read_shard(*args, **kwargs)

    monkeypatch.setattr(serialization, "_read_shard", delayed_read_shard)
    reports = []
    monkeypatch.setattr(sys, "unraisablehook", reports.append)
    workdir = _copy(reference, tmp_path)
    checkpoint = workdir / CHECKPOINT_SUBDIR / "16"
    (checkpoint / "vae_jax_files.json").unlink()
    _truncate(_largest_file(checkpoint / "state"))
    tx = make_optimizer(read_config(workdir).train, steps_per_epoch=1)
    for _ in range(3):
        with pytest.warns(RuntimeWarning, match="step 16 .* unreadable .*reading array"):
            assert load_checkpoint(workdir, tx=tx).step == 14
        gc.collect()
    assert [f"{report.exc_value!r} in {report.object!r}"[:300] for report in reports] == []
    assert [record.getMessage() for record in caplog.records if record.name == "asyncio"] == []


def test_checkpoint_of_other_shapes_is_refused_and_kept(tiny_mnist, reference, tmp_path, capsys):
    """A checkpoint that does not fit the model (here: the module's code changed its width)
    is no damaged checkpoint: one line saying what differs, nothing set aside (before: every
    good checkpoint was moved to .unreadable, and --overwrite advised)."""
    workdir = _copy(reference, tmp_path)
    shutil.rmtree(workdir / CHECKPOINT_SUBDIR / "16")
    config = read_config(workdir)
    other = dataclasses.replace(config.model, hidden=(16,)).build(config.data.image_shape)
    state = jax.jit(lambda k: init_train_state(other, optax.adam(1e-3), k))(make_keys(0).init)
    checkpointer = Checkpointer(workdir)
    checkpointer.save(16, state.replace(step=state.step + 16), {"epoch": 2})
    checkpointer.close()
    with pytest.raises(CheckpointMismatchError) as error:
        load_checkpoint(workdir)
    message = str(error.value)
    assert "the checkpoint at step 16" in message and "does not fit this model" in message
    assert "params/decoder/Dense_0/bias is (16,) float32 there, (32,) float32 expected" in message
    with pytest.raises(SystemExit) as exit_info:  # resuming: the same, status 2
        mnist.main(_argv(tiny_mnist, workdir))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "does not fit this model" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _steps(workdir) == [12, 14, 16]
    assert not (workdir / CHECKPOINT_SUBDIR / ".unreadable").exists()


def test_a_checkpoint_from_before_a_field_was_added_resumes(tiny_mnist, reference, tmp_path):
    """A configuration field added after a checkpoint was written (here train.adam_b1,
    added with its old value, 0.9) takes its default when the checkpoint's identity is
    compared, as config.json's does (before: "is of another run (config.train.adam_b1:
    None there, 0.9 here)", and the IWAE k=5 run could not resume after 914 epochs)."""
    workdir = _copy(reference, tmp_path)
    checkpointer = Checkpointer(workdir)
    state, meta, step = checkpointer.restore(_target(read_config(workdir)), 16)
    checkpointer.close()
    identity = meta["identity"]
    del identity["config"]["train"]["adam_b1"]  # (what a vae_jax older than the field wrote)
    shutil.rmtree(workdir / CHECKPOINT_SUBDIR / "16")
    older = Checkpointer(workdir, identity=identity)
    kept = {k: v for k, v in meta.items() if "digest" not in k and k != "identity"}
    older.save(step, state, kept)
    older.close()
    assert mnist.main(_argv(tiny_mnist, workdir)) == 0
    _assert_same_result(workdir, reference)


def test_training_continues_from_the_previous_checkpoint_and_matches(
    tiny_mnist, reference, tmp_path, capsys
):
    workdir = _copy(reference, tmp_path)
    _flip_bytes(_largest_file(workdir / CHECKPOINT_SUBDIR / "16" / "state"))
    with pytest.warns(RuntimeWarning, match="step 16 .* unreadable.*moved to"):
        assert mnist.main(_argv(tiny_mnist, workdir)) == 0
    assert "resumed from the checkpoint at step 14" in capsys.readouterr().out
    assert (workdir / CHECKPOINT_SUBDIR / ".unreadable" / "16").is_dir()  # kept, not deleted
    _assert_same_result(workdir, reference)


def test_a_resume_may_change_the_evaluation_batch_size(tiny_mnist, reference, tmp_path, capsys):
    """Only the test ELBO's noise draws depend on it (before: the resume was refused)."""
    workdir = _copy(reference, tmp_path)
    assert mnist.main([*_argv(tiny_mnist, workdir), "--eval_batch_size", "32"]) == 0
    assert "resumed from the checkpoint at step 16" in capsys.readouterr().out
    expected, got = load_checkpoint(reference), load_checkpoint(workdir)
    leaves = zip(jax.tree.leaves(expected.params), jax.tree.leaves(got.params), strict=True)
    assert all(np.array_equal(a, b) for a, b in leaves)  # training is the same


def test_no_readable_checkpoint_is_a_one_line_error(tiny_mnist, reference, tmp_path, capsys):
    workdir = _copy(reference, tmp_path)
    for step in ("12", "14", "16"):
        _truncate(_largest_file(workdir / CHECKPOINT_SUBDIR / step / "state"))
    with pytest.warns(RuntimeWarning), pytest.raises(SystemExit) as exit_info:
        mnist.main(_argv(tiny_mnist, workdir))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "no readable checkpoint" in err and "Traceback" not in err
    assert "rerun with --overwrite" in err and "resume" not in err
    # The same command again is refused (before: it restarted from step 0 silently,
    # overwriting the metrics and pictures); --overwrite starts afresh.
    with pytest.raises(SystemExit) as exit_info:
        mnist.main(_argv(tiny_mnist, workdir))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "holds no readable checkpoint (those of steps [12, 14, 16] could not be read" in err
    assert _records(workdir) == _records(reference)  # untouched
    assert mnist.main([*_argv(tiny_mnist, workdir), "--overwrite", "--epochs", "1"]) == 0
    assert _steps(workdir) == [4, 6, 8]  # a fresh run of 1 epoch


def _fail_commit_at(monkeypatch, step, error):
    """Make the last write of the checkpoint at `step` fail (its data is already written)."""
    from orbax.checkpoint._src.path import atomicity

    original = atomicity.on_commit_callback

    async def on_commit_callback(tmpdir, *args, **kwargs):
        if tmpdir.get_final().name == str(step):
            raise error
        return await original(tmpdir, *args, **kwargs)

    monkeypatch.setattr(atomicity, "on_commit_callback", on_commit_callback)


def _run_failing(tiny_mnist, workdir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        mnist.main(_argv(tiny_mnist, workdir))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(
    tiny_mnist, reference, tmp_path, capsys, monkeypatch
):
    workdir = _copy(reference, tmp_path)
    _fail_commit_at(monkeypatch, 20, OSError(errno.ENOSPC, "No space left on device"))
    err = _run_failing(tiny_mnist, workdir, capsys)
    assert "could not write the checkpoint at step 20" in err
    assert "No space left on device" in err and "the checkpoint at step 18 is intact" in err
    assert _steps(workdir) == [14, 16, 18]
    _check_all_checkpoints_restore(workdir)
    monkeypatch.undo()  # the disk has room again: the same command resumes and completes
    assert mnist.main(_argv(tiny_mnist, workdir)) == 0
    assert "resumed from the checkpoint at step 18" in capsys.readouterr().out
    assert _steps(workdir) == [20, 22, 24]
    assert not any(name.endswith(TMP_SUFFIX) for name in _entries(workdir))
    _assert_same_result(workdir, reference)


def test_unwritable_checkpoint_directory_keeps_the_previous_one(reference, tmp_path, monkeypatch):
    workdir = _copy(reference, tmp_path)
    _fail_commit_at(monkeypatch, 18, PermissionError(errno.EACCES, "Permission denied"))
    checkpointer = Checkpointer(workdir)
    state, _, _ = checkpointer.restore(_target(read_config(workdir)))
    with pytest.raises(CheckpointError) as error:
        checkpointer.save(18, state, {"epoch": 2})
    checkpointer.close()
    message = str(error.value)
    assert "could not write the checkpoint at step 18" in message and "Permission denied" in message
    assert message.endswith("the checkpoint at step 16 is intact")
    assert _steps(workdir) == [12, 14, 16]
    _check_all_checkpoints_restore(workdir)


def test_checkpoints_path_that_is_a_file_is_a_one_line_error(tiny_mnist, tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / CHECKPOINT_SUBDIR).write_text("not a directory")
    with pytest.raises(SystemExit) as exit_info:  # (a file vae_jax did not write: kept)
        mnist.main(_argv(tiny_mnist, workdir))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "holds checkpoints but no config.json; it holds files vae_jax did not write" in err
    assert (workdir / CHECKPOINT_SUBDIR).read_text() == "not a directory"


def test_fit_refuses_a_fresh_start_over_checkpoints(reference, tmp_path):
    workdir = _copy(reference, tmp_path)
    config = read_config(workdir)
    images = np.zeros((N_TRAIN, 28, 28, 1), np.uint8)
    labels = np.zeros(N_TRAIN, np.int32)
    with pytest.raises(WorkdirError, match="holds checkpoints of this configuration .* step 16"):
        fit_config(config, images, labels, workdir=workdir, resume=False, progress=False)
    # (before: any truthy value was True: overwrite="no" deleted the checkpoints)
    for flags, message in [
        ({"resume": False, "overwrite": "no"}, "overwrite must be True or False, got 'no'"),
        ({"resume": "no"}, "resume must be True or False, got 'no'"),
    ]:
        with pytest.raises(ValueError, match=message):
            fit_config(config, images, labels, workdir=workdir, progress=False, **flags)
    with pytest.raises(TypeError, match=r"workdir must be a path \(a str .*\), got int"):
        fit_config(config, images, labels, workdir=3, progress=False)
    with pytest.raises(ValueError, match="progress must be True or False, got 'no'"):
        fit_config(config, images, labels, workdir=workdir, progress="no")
    assert _steps(workdir) == [12, 14, 16]


def test_after_a_failed_write_only_closed_event_loop_reports_are_dropped(capsys):
    """A full disk made Orbax's callbacks report ~150 lines of "RuntimeError: Event loop is
    closed" tracebacks (unraisable exceptions) before the one-line error; those, and only
    those, are dropped."""
    from vae_jax.checkpoint import _closed_event_loop_reports_dropped

    class RaisesWhenCollected:
        def __init__(self, error):
            self.error = error

        def __del__(self):
            raise self.error

    reported = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda report: reported.append(str(report.exc_value))
    try:
        with _closed_event_loop_reports_dropped():
            RaisesWhenCollected(RuntimeError("Event loop is closed"))
            RaisesWhenCollected(RuntimeError("something else"))
        RaisesWhenCollected(RuntimeError("Event loop is closed"))
    finally:
        sys.unraisablehook = previous
    assert reported == ["something else", "Event loop is closed"]


def test_a_checkpointer_refuses_steps_and_settings_it_cannot_keep(reference, tmp_path):
    """(Before: save(-1) or save(1.5) wrote a complete checkpoint that steps() and restore()
    never found; max_to_keep=2.5 failed the third save as a write error; read_only="no"
    opened it read-only; a bug in a restore check moved every intact checkpoint into
    .unreadable.)"""
    workdir = _copy(reference, tmp_path)
    config = read_config(workdir)
    for settings, error, message in [
        ({"max_to_keep": 2.5}, ValueError, "max_to_keep must be an integer, got 2.5"),
        ({"max_to_keep": 0}, ValueError, "max_to_keep must be >= 1, got 0"),
        ({"read_only": "no"}, ValueError, "read_only must be True or False, got 'no'"),
    ]:
        with pytest.raises(error, match=message):
            Checkpointer(workdir, **settings)
    checkpointer = Checkpointer(workdir)
    state, meta, _ = checkpointer.restore(_target(config))
    for step, message in [(-1, "step must be >= 0, got -1"), (1.5, "step must be an integer")]:
        with pytest.raises(ValueError, match=message):
            checkpointer.save(step, state, {})

    for kwargs, error, message in [
        ({"params_only": "no"}, ValueError, "params_only must be True or False, got 'no'"),
        ({"step": "16"}, ValueError, "step must be an integer, got '16'"),
        ({"check": 3}, TypeError, "check must be callable, got int"),
    ]:  # (before: "no" read the parameters only; "16" found no checkpoint at step 16)
        with pytest.raises(error, match=message):
            checkpointer.restore(_target(config), **kwargs)

    def buggy(state, meta):
        return meta["no such key"]

    with pytest.raises(KeyError, match="no such key"):
        checkpointer.restore(_target(config), check=buggy)
    checkpointer.close()
    assert _steps(workdir) == [12, 14, 16]
    assert not (workdir / CHECKPOINT_SUBDIR / ".unreadable").exists()
