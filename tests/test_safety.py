"""Nothing outside the work directory, nothing run from data, no silent wrong result on resume.

Each hostile case puts a symbolic link where the library writes, pointing at a directory
outside the work directory that holds a sentinel file, runs the operation and checks that the
sentinel is untouched and that any error is one line. docs/robustness.md lists the cases.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from experiments import train as train_cli
from tests.cli_runner import run_cli
from vae_jax import visualize as vis
from vae_jax.checkpoint import Checkpointer, CheckpointError
from vae_jax.config import ModelConfig
from vae_jax.train import init_train_state
from vae_jax.workdir import (
    WorkdirError,
    atomic_write,
    remove_tree,
    workdir_lock,
    writable_dir,
    write_json,
    write_metrics,
)

SENTINEL = "outside, not vae_jax's\n"


@pytest.fixture
def outside(tmp_path):
    """A directory outside the work directory, holding ``sentinel.txt`` and ``2/sentinel.txt``."""
    directory = tmp_path / "outside"
    (directory / "2").mkdir(parents=True)
    (directory / "sentinel.txt").write_text(SENTINEL)
    (directory / "2" / "sentinel.txt").write_text(SENTINEL)
    return directory


def _untouched(outside: Path) -> bool:
    return sorted(p.relative_to(outside).as_posix() for p in outside.rglob("*")) == [
        "2",
        "2/sentinel.txt",
        "sentinel.txt",
    ] and all(p.read_text() == SENTINEL for p in outside.rglob("sentinel.txt"))


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message.strip(), message
    return message


# ---------------------------------------------------------------- work directory entries

LINKED_ENTRIES = ["config.json", "metrics.jsonl", ".lock", "images", "checkpoints", ".write_test"]


@pytest.mark.parametrize("entry", LINKED_ENTRIES)
def test_workdir_whose_entry_links_outside_is_refused(tmp_path, outside, entry):
    workdir = tmp_path / "run"
    workdir.mkdir()
    target = outside / "sentinel.txt" if "." in entry else outside
    (workdir / entry).symlink_to(target)
    with pytest.raises(WorkdirError, match="is a symbolic link to .*outside the work directory"):
        writable_dir(workdir)
    assert _untouched(outside)


def test_a_link_inside_the_workdir_is_accepted(tmp_path):
    workdir = tmp_path / "run"
    (workdir / "pictures").mkdir(parents=True)
    (workdir / "images").symlink_to(workdir / "pictures")
    assert writable_dir(workdir) == workdir


@pytest.mark.parametrize("entry", ["images", "checkpoints", ".lock", "metrics.jsonl"])
def test_train_cli_refuses_a_workdir_with_a_link_out_in_one_line(tmp_path, outside, capsys, entry):
    np.savez(tmp_path / "x.npz", x_train=np.zeros((16, 4), np.float32))
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / entry).symlink_to(outside / "sentinel.txt" if "." in entry else outside)
    argv = ["--dataset", tmp_path / "x.npz", "--workdir", workdir, "--epochs", "1"]
    status, err = run_cli(train_cli.main, [*argv, "--batch_size", "8", "--no_progress"], capsys)
    assert status == 2 and "outside the work directory" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _untouched(outside)


def test_lock_file_link_is_not_followed(tmp_path, outside):
    """(Before: the pid was written into the link's target.)"""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / ".lock").symlink_to(outside / "sentinel.txt")
    with pytest.raises(WorkdirError) as error, workdir_lock(workdir):
        pass
    assert "symbolic link" in _one_line(error.value)
    assert _untouched(outside)


# ---------------------------------------------------------------- atomic writes


@pytest.mark.parametrize(
    "write",
    [
        lambda d: write_json(d / "config.json", {"a": 1}),
        lambda d: write_metrics(d, [{"epoch": 1}]),
        lambda d: atomic_write(d / "report.json", b"{}"),
        lambda d: vis.save_image_grid(d / "grid.png", np.zeros((4, 3, 3, 1)), ncols=2),
    ],
    ids=["config", "metrics", "report", "png"],
)
def test_temporary_file_of_an_atomic_write_that_is_a_link_is_not_followed(tmp_path, outside, write):
    """A link planted at ``<name>.tmp`` is replaced, its target untouched (before: the
    target was overwritten, and the link renamed over the file)."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    for name in ("config.json", "metrics.jsonl", "report.json", "grid.png"):
        (workdir / f"{name}.tmp").symlink_to(outside / "sentinel.txt")
    path = write(workdir)
    assert path.is_file() and not path.is_symlink() and path.stat().st_size > 0
    assert _untouched(outside)


def test_atomic_write_replaces_a_link_at_the_path_itself(tmp_path, outside):
    (tmp_path / "config.json").symlink_to(outside / "sentinel.txt")
    write_json(tmp_path / "config.json", {"a": 1})
    assert not (tmp_path / "config.json").is_symlink()
    assert json.loads((tmp_path / "config.json").read_text()) == {"a": 1}
    assert _untouched(outside)


def test_an_interrupted_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = atomic_write(tmp_path / "a.json", "old")

    def dies(handle):
        handle.write(b"ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, dies)
    assert path.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["a.json"]


# ---------------------------------------------------------------- deletes


def test_remove_tree_refuses_a_link_and_a_path_below_one(tmp_path, outside):
    (tmp_path / "link").symlink_to(outside)
    with pytest.raises(WorkdirError) as error:
        remove_tree(tmp_path / "link")
    assert "symbolic link" in _one_line(error.value)
    with pytest.raises(WorkdirError):
        remove_tree(tmp_path / "link" / "2", root=tmp_path)
    assert _untouched(outside)


def _tiny_state():
    model = ModelConfig(hidden=(8,), z_dim=2).build((4,))
    return init_train_state(model, optax.adam(1e-3), jax.random.key(0))


def test_setting_aside_into_an_unreadable_link_deletes_nothing_outside(tmp_path, outside):
    """``checkpoints/.unreadable`` a link to a directory holding ``2/``: a damaged checkpoint
    at step 2 is refused in one line (before: the outside ``2/`` was deleted)."""
    workdir = tmp_path / "run"
    state = _tiny_state()
    checkpointer = Checkpointer(workdir)
    checkpointer.save(2, state, {"epoch": 1})
    checkpointer.close()
    metadata = workdir / "checkpoints" / "2" / "meta" / "metadata"
    metadata.write_text(metadata.read_text().replace('"epoch": 1', '"epoch": 7'))  # damaged
    with pytest.raises(WorkdirError, match="is a symbolic link to"):
        (workdir / "checkpoints" / ".unreadable").symlink_to(outside)
        Checkpointer(workdir)  # (a writer refuses the directory up front)
    checkpointer = Checkpointer(workdir, read_only=True)
    checkpointer.owner = True  # (the link appears once a writer has checked the directory)
    try:
        with pytest.raises(WorkdirError) as error:
            checkpointer.restore(state)
    finally:
        checkpointer.close()
    assert "symbolic link" in _one_line(error.value)
    assert _untouched(outside)
    assert (workdir / "checkpoints" / "2").is_dir()


# ---------------------------------------------------------------- no code from data


def write_hostile_tfds(tmp_path: Path, class_name: str = "evil.Pwn") -> Path:
    """A prepared-looking TFDS dataset ``hostile`` whose features.json names `class_name`,
    and ``evil.py`` beside it (in the current directory, on sys.path: where ``python -m``
    finds modules) that writes ``pwned`` when imported. Returns the data directory."""
    data_dir = tmp_path / "tfds"
    version = data_dir / "hostile" / "1.0.0"
    version.mkdir(parents=True)
    info = {"name": "hostile", "version": "1.0.0", "fileFormat": "array_record"}
    (version / "dataset_info.json").write_text(json.dumps(info))
    image = {"pythonClassName": class_name, "jsonFeature": {"json": "{}"}}
    features = {
        "pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
        "featuresDict": {"features": {"image": image}},
    }
    (version / "features.json").write_text(json.dumps(features))
    marker = tmp_path / "pwned"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return data_dir


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield write_hostile_tfds(tmp_path)
    import sys

    sys.modules.pop("evil", None)


def test_tfds_features_naming_a_module_of_the_data_are_refused_unimported(tmp_path, hostile):
    from vae_jax import tfds_io

    for read in (
        lambda: tfds_io.read_split("hostile", "train", hostile),
        lambda: tfds_io.builder("hostile", hostile),
    ):
        with pytest.raises(ValueError, match="names the feature class 'evil.Pwn'") as error:
            read()
        _one_line(error.value)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "features",
    [
        {"type": "evil.Pwn", "content": {}},  # (the legacy form)
        {"python_class_name": "evil.Pwn"},
        {"featuresDict": {"features": {"x": {"sequence": {"feature": {"type": "evil.X"}}}}}},
    ],
)
def test_every_place_tfds_reads_a_class_name_is_checked(tmp_path, features):
    from vae_jax import tfds_io

    version = tmp_path / "other" / "cfg" / "2.0.0"
    version.mkdir(parents=True)
    (version / "features.json").write_text(json.dumps(features))
    with pytest.raises(ValueError, match="names the feature class 'evil"):
        tfds_io.check_feature_classes("other/cfg:2.0.0", tmp_path)
    (version / "features.json").unlink()
    (version / "dataset_info.json").write_text(json.dumps({"features": features}))
    with pytest.raises(ValueError, match="names the feature class 'evil"):
        tfds_io.check_feature_classes("other", tmp_path)


# ---------------------------------------------------------------- checkpoints of another run


def _checkpointed(workdir, *, identity=None, hidden=(8,), tx=None):
    model = ModelConfig(hidden=hidden, z_dim=2).build((4,))
    state = init_train_state(model, tx or optax.adam(1e-3), jax.random.key(0))
    checkpointer = Checkpointer(workdir, identity=identity)
    checkpointer.save(2, state, {"epoch": 1})
    checkpointer.close()
    return model, state


def _restore(workdir, target, **kwargs):
    checkpointer = Checkpointer(workdir, **kwargs)
    try:
        return checkpointer.restore(target)
    finally:
        checkpointer.close()


def test_a_checkpoint_of_another_identity_is_refused_and_kept(tmp_path):
    """The identity (the run's configuration and data fingerprint, passed by fit) differs:
    one line naming the field, nothing set aside (before: an edited config.json resumed relu
    parameters as tanh; another .npz of the same name resumed silently)."""
    from vae_jax.checkpoint import CheckpointMismatchError

    identity = {"model": {"activation": "relu"}, "data": {"shape": [64, 4], "sha256": "ab"}}
    _, state = _checkpointed(tmp_path, identity=identity)
    edited = {**identity, "model": {"activation": "tanh"}}
    with pytest.raises(CheckpointMismatchError) as error:
        _restore(tmp_path, state, identity=edited)
    assert "model.activation: relu there, tanh here" in _one_line(error.value)
    assert isinstance(error.value, ValueError)
    other_data = {**identity, "data": {"shape": [80, 4], "sha256": "cd"}}
    with pytest.raises(CheckpointMismatchError, match=r"data.shape: \[64, 4\] there, \[80, 4\]"):
        _restore(tmp_path, state, identity=other_data)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]
    assert _restore(tmp_path, state, identity=identity)[2] == 2  # the same run resumes
    assert _restore(tmp_path, state)[2] == 2  # (no identity to compare: accepted)


def test_a_checkpoint_without_a_stored_identity_is_accepted(tmp_path):
    _, state = _checkpointed(tmp_path)  # (an older run: no identity stored)
    restored = _restore(tmp_path, state, identity={"model": {"activation": "tanh"}})
    assert restored[2] == 2 and "identity" not in restored[1]


def test_an_older_identity_is_read_in_todays_terms_before_it_is_compared(tmp_path):
    """`upgrade_identity`: a configuration field added since (absent from the stored
    identity) takes its default, and only its default matches."""
    import dataclasses

    from vae_jax.checkpoint import CheckpointMismatchError
    from vae_jax.config import ExperimentConfig
    from vae_jax.loop import upgrade_identity

    config = ExperimentConfig()
    identity = {"config": config.identity(), "data": {"sha256": "ab"}}
    older = json.loads(json.dumps(identity))
    del older["config"]["train"]["adam_b1"]
    _, state = _checkpointed(tmp_path, identity=older)
    assert _restore(tmp_path, state, identity=identity, upgrade=upgrade_identity)[2] == 2
    with pytest.raises(CheckpointMismatchError, match="adam_b1: None there"):
        _restore(tmp_path, state, identity=identity)  # (without the upgrade)
    train = dataclasses.replace(config.train, adam_b1=0.99)
    other = {**identity, "config": dataclasses.replace(config, train=train).identity()}
    with pytest.raises(CheckpointMismatchError) as error:
        _restore(tmp_path, state, identity=other, upgrade=upgrade_identity)
    assert "config.train.adam_b1: 0.9 there, 0.99 here" in _one_line(error.value)
    assert upgrade_identity({"config": {"event_shape": [4]}}) == {"config": {"event_shape": [4]}}


def test_a_checkpoint_that_does_not_fit_the_model_is_refused_not_set_aside(tmp_path):
    """(Before: every good checkpoint was moved to .unreadable and --overwrite advised.)"""
    from vae_jax.checkpoint import CheckpointMismatchError

    _checkpointed(tmp_path, hidden=(8,))
    wider = ModelConfig(hidden=(16,), z_dim=2).build((4,))
    target = jax.eval_shape(lambda: init_train_state(wider, optax.adam(1e-3), jax.random.key(0)))
    with pytest.raises(CheckpointMismatchError) as error:
        _restore(tmp_path, target)  # (a writer: it would set damaged ones aside)
    message = _one_line(error.value)
    assert "does not fit this model" in message
    assert "params/decoder/Dense_0/bias is (8,) float32 there, (16,) float32 expected" in message
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]


def test_load_checkpoint_reads_the_parameters_without_the_optimizer(tmp_path):
    """(Before: load_checkpoint(workdir, model=...) needed the exact optimizer; another one
    reported every checkpoint unreadable and advised --overwrite.)"""
    from vae_jax import load_checkpoint

    model, state = _checkpointed(tmp_path, tx=optax.sgd(0.1, momentum=0.9))
    loaded = load_checkpoint(tmp_path, model=model)
    assert loaded.step == 2 and loaded.config is None
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, b)
    full = load_checkpoint(tmp_path, model=model, tx=optax.sgd(0.1, momentum=0.9))
    assert full.step == 2
    from vae_jax.checkpoint import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError, match="opt_state"):  # (resuming needs it)
        load_checkpoint(tmp_path, model=model, tx=optax.adam(1e-3))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]


def test_parameters_read_alone_are_still_verified(tmp_path):
    from vae_jax import load_checkpoint

    model, _ = _checkpointed(tmp_path)
    metadata = tmp_path / "checkpoints" / "2" / "meta" / "metadata"
    metadata.write_text(metadata.read_text().replace('"epoch": 1', '"epoch": 7'))
    (tmp_path / "checkpoints" / "2" / "vae_jax_files.json").unlink()  # (only the digest is left)
    with pytest.warns(RuntimeWarning, match="do not match the digest"):
        with pytest.raises(CheckpointError, match="no readable checkpoint"):
            load_checkpoint(tmp_path, model=model)
