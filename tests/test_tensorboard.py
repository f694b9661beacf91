"""TensorBoard event files: a run's scalars and grids, read back with TensorBoard's own reader."""

import io
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import (
    IMAGES,
    SCALARS,
    EventAccumulator,
)

from experiments import mnist
from tests.idx_files import write_random_mnist
from vae_jax.tensorboard import SUBDIR, TensorBoardWriter, last_step_written, numbers
from vae_jax.workdir import WorkdirError

N_TRAIN, N_TEST = 96, 48  # (tests/test_experiment.py's sizes: the same compiled programs)
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_mnist")
    rng = np.random.default_rng(0)
    write_random_mnist(root / "idx", N_TRAIN, N_TEST, rng)
    return {"mnist_dir": str(root / "idx"), "data_dir": str(root / "tfds")}


def run(tiny_mnist, workdir, *flags):
    argv = [
        "--mnist_dir", tiny_mnist["mnist_dir"], "--data_dir", tiny_mnist["data_dir"],
        "--workdir", str(workdir), "--no_progress", "--batch_size", "16",
        "--eval_batch_size", "16", "--hidden", "32", "--z_dim", "4", *flags,
    ]  # fmt: skip
    return mnist.main(argv)


def read(directory: Path) -> EventAccumulator:
    """Every event file in `directory`, as TensorBoard reads them (nothing subsampled)."""
    return EventAccumulator(str(directory), size_guidance={SCALARS: 0, IMAGES: 0}).Reload()


def metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def decode(image_event) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image_event.encoded_image_string)))


def test_a_run_writes_metrics_and_grids_per_epoch_and_a_resume_repeats_no_step(
    tiny_mnist, tmp_path
):
    workdir = tmp_path / "run"
    assert run(tiny_mnist, workdir, "--epochs", "2") == 0
    files = list((workdir / SUBDIR).iterdir())
    assert len(files) == 1 and "tfevents" in files[0].name
    events = read(workdir / SUBDIR)
    records = metrics(workdir)
    tags = set(events.Tags()["scalars"])
    assert {"train_loss", "train_log_likelihood", "train_kl", "test_loss"} <= tags
    assert {"test_log_likelihood", "test_kl", "seconds"} <= tags
    assert tags == set(numbers(records[0]))  # every number of metrics.jsonl, nothing else
    for tag in tags:
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2], tag
        expected = [np.float32(r[tag]) for r in records]  # (TensorBoard keeps float32)
        assert [np.float32(s.value) for s in scalars] == expected, tag
    assert set(events.Tags()["images"]) == {"samples", "reconstructions"}
    for tag in ("samples", "reconstructions"):
        assert [i.step for i in events.Images(tag)] == [1, 2]
    # The image is the grid the epoch's PNG shows (there upscaled 2x below a title band).
    grid = decode(events.Images("samples")[-1])  # (grey: [H, W])
    assert grid.shape == (8 * 28 + 9 * 2,) * 2
    png = np.asarray(Image.open(workdir / "images" / "samples_epoch002.png"))
    np.testing.assert_array_equal(png[-2 * grid.shape[0] :: 2, ::2], grid)

    # Resumed to 3 epochs: one more file with step 3 alone.
    assert run(tiny_mnist, workdir, "--epochs", "3") == 0
    assert len(list((workdir / SUBDIR).iterdir())) == 2
    events = read(workdir / SUBDIR)
    for tag in events.Tags()["scalars"]:
        assert [s.step for s in events.Scalars(tag)] == [1, 2, 3], tag
    for tag in events.Tags()["images"]:
        assert [i.step for i in events.Images(tag)] == [1, 2, 3], tag
    assert events.Scalars("test_loss")[-1].value == np.float32(metrics(workdir)[-1]["test_loss"])


def test_tensorboard_false_writes_no_event_file_and_turning_it_on_resumes(
    tiny_mnist, tmp_path, capsys
):
    workdir = tmp_path / "run"
    assert run(tiny_mnist, workdir, "--epochs", "1", "--no_tensorboard") == 0
    assert (workdir / "metrics.jsonl").exists() and not (workdir / SUBDIR).exists()
    assert json.loads((workdir / "config.json").read_text())["train"]["tensorboard"] is False
    # The same run resumed with the files on: not another configuration. Epoch 1's numbers
    # come from its record; its pictures are gone with its parameters.
    assert run(tiny_mnist, workdir, "--epochs", "2") == 0
    assert "resumed from the checkpoint" in capsys.readouterr().out
    events = read(workdir / SUBDIR)
    assert [s.step for s in events.Scalars("train_loss")] == [1, 2]
    assert [i.step for i in events.Images("samples")] == [2]


def test_a_value_after_the_tensorboard_switch_is_a_one_line_error(tiny_mnist, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(tiny_mnist, tmp_path / "run", "--tensorboard", "yes please")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: yes please" in err and len(err.strip().splitlines()) == 1


def record(epoch: int) -> dict:
    return {"epoch": epoch, "step": 6 * epoch, "train_loss": 100.0 - epoch, "data": "x",
            "kl_per_layer": [1.5, 0.25], "skipped_updates": 0}  # fmt: skip


def test_a_new_writer_writes_only_steps_past_those_on_disk(tmp_path):
    """A run killed after writing epochs 1-2 but checkpointed at epoch 0 redoes them: they
    are not written twice; a damaged tail (killed while writing) is ignored."""
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    colour = np.arange(60, dtype=np.uint8).reshape(4, 5, 3)
    grids = {"samples": grey, "colour": colour}
    TensorBoardWriter(tmp_path).write(2, [record(1), record(2)], grids)
    (path,) = (tmp_path / SUBDIR).iterdir()
    with open(path, "ab") as file:
        file.write(b"\x40\x00\x00\x00\x00\x00\x00\x00\x00\x00")  # a cut-off record
    assert last_step_written(tmp_path / SUBDIR) == 2
    resumed = TensorBoardWriter(tmp_path)
    resumed.write(1, [record(1)], grids)
    resumed.write(2, [record(1), record(2)], grids)
    assert len(list((tmp_path / SUBDIR).iterdir())) == 1  # (nothing new: no file)
    resumed.write(3, [record(1), record(2), record(3)], grids)
    events = read(tmp_path / SUBDIR)
    assert set(events.Tags()["scalars"]) == {
        "train_loss", "kl_per_layer/0", "kl_per_layer/1", "skipped_updates"
    }  # fmt: skip
    assert [(s.step, s.value) for s in events.Scalars("train_loss")] == [
        (1, 99.0), (2, 98.0), (3, 97.0)
    ]  # fmt: skip
    assert [s.value for s in events.Scalars("kl_per_layer/1")] == [0.25] * 3
    assert [i.step for i in events.Images("samples")] == [2, 3]
    np.testing.assert_array_equal(decode(events.Images("samples")[0]), grey)
    np.testing.assert_array_equal(decode(events.Images("colour")[1]), colour)


def test_a_symlinked_tensorboard_entry_is_refused_before_training(tiny_mnist, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / SUBDIR).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(SystemExit) as exit_info:
        run(tiny_mnist, workdir, "--epochs", "1")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "tensorboard is a symbolic link" in err and len(err.strip().splitlines()) == 1
    assert not (workdir / "checkpoints").exists() and list(elsewhere.iterdir()) == []
    # (and again at the first write, should it appear during the run)
    writer = TensorBoardWriter(tmp_path)
    (tmp_path / SUBDIR).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(WorkdirError, match="is a symbolic link"):
        writer.write(1, [record(1)])
    assert list(elsewhere.iterdir()) == []


def test_readme_hook_example_logs_each_epoch(monkeypatch, capsys):
    """README's W&B example, as written, against a stand-in `wandb` that keeps what it is
    given: fit's hook is called once per epoch with the records so far."""
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
                if "on_epoch_end=" in b]  # fmt: skip
    logged = []
    wandb = types.SimpleNamespace(init=lambda **kw: None, log=lambda d, step: logged.append(step))
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    epochs = namespace["result"].records[-1]["epoch"]
    assert logged == list(range(1, epochs + 1)) and epochs >= 1


def test_a_damaged_record_length_ends_the_reading_instead_of_a_huge_read(tmp_path):
    """One flipped byte in a record's length (before: a read of up to 2**64 bytes, a
    MemoryError on every resume, before the epoch's checkpoint): the reading stops there,
    at the records before it."""
    TensorBoardWriter(tmp_path).write(2, [record(1), record(2)], {})
    (path,) = (tmp_path / SUBDIR).iterdir()
    data = bytearray(path.read_bytes())
    whole = last_step_written(tmp_path / SUBDIR)
    for value in (0xFF, 0x7F):  # the first record's length: 2**64 - 1 ... and a bit
        damaged = bytearray(data)
        damaged[7] = value
        path.write_bytes(bytes(damaged))
        assert last_step_written(tmp_path / SUBDIR) == 0  # (nothing readable before it)
    damaged = bytearray(data)
    damaged[0] ^= 0x01  # a length off by one, its CRC no longer matching
    path.write_bytes(bytes(damaged))
    assert last_step_written(tmp_path / SUBDIR) == 0
    path.write_bytes(bytes(data))
    assert last_step_written(tmp_path / SUBDIR) == whole == 2
