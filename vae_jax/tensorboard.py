"""TensorBoard event files for a run: each epoch's numbers and picture grids, no TensorFlow.

`TensorBoardWriter(workdir).write(epoch, records, grids)` appends, on the primary process
only (`vae_jax.distributed.is_primary`), to an event file in ``<workdir>/tensorboard/`` (one
per run; each resumption adds one); view it with ``tensorboard --logdir runs/``. One step per epoch
(the step is the epoch number, from 1). What is written:

- scalars: every number of each epoch record, under its ``metrics.jsonl`` key (train_loss,
  train_log_likelihood, train_kl, test_loss, test_log_likelihood, test_kl, test_iwae_loss
  when training with IWAE, seconds, eval_seconds, skipped_updates; a list of numbers, such
  as a KL per layer, as ``key/0``, ``key/1``, ...); strings, ``epoch`` and ``step`` are not.
  TensorBoard stores them as float32: they equal metrics.jsonl's to float32 rounding.
- images: the uint8 grids the per-epoch PNGs are drawn from (``samples``,
  ``reconstructions``, ``class_samples``), without title or upscaling.

A resumed run does not repeat a step: the first write reads the largest step already in the
directory's event files and writes only the records after it (the epochs a resumed run
redoes keep the values written first: the same numbers, resumption being exact, apart from
the seconds). `--overwrite`
discards the directory with the rest of the run's outputs (`vae_jax.workdir.claim`).
Each write opens the run's event file, appends whole records and closes it: no thread, no
queue, nothing to close, and what a run killed afterwards leaves is complete.

Why tensorboardX (2.6.5, 0.7 MB; needs numpy, packaging and protobuf, which vae_jax already
has; protobuf 7 works): its compiled event and summary protocol buffers, scalar summaries and
record CRC write TensorBoard's format without TensorFlow. This module adds the synchronous
append (tensorboardX's `SummaryWriter` runs a writer thread with a multiprocessing queue,
registers an atexit hook per writer and flushes every 120 s) and writes grey grids as grey
PNGs (its `summary.image` stores them as RGB: twice the bytes). Measured on the 2-core dev
machine (`python -X importtime`, shared, so rough): ``import tensorboardX`` takes about
40 ms, but it imports PyTorch when PyTorch is installed (about 1.8 s, once per process), so
the import here waits for the first write, and ``--no_tensorboard`` avoids it. The
alternatives: clu's `metric_writers` writes TensorBoard files through TensorFlow
(`tf.summary`) or PyTorch, and brings ml_collections, etils and wrapt; TensorBoard's own
writer (`tensorboard.summary.writer`) imports in about 150 ms but needs about 50 MB of
dependencies (grpcio, tensorboard-data-server, werkzeug, markdown).
"""

from __future__ import annotations

import io
import itertools
import os
import socket
import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError
from PIL import Image

from vae_jax.distributed import is_primary
from vae_jax.fields import require_path
from vae_jax.workdir import TENSORBOARD_SUBDIR, WorkdirError, writable_dir

SUBDIR = TENSORBOARD_SUBDIR  # in the work directory
_SKIPPED_KEYS = ("epoch", "step")  # the x axis, and the train-step count (not a metric)


class TensorBoardWriter:
    """Appends epoch records and picture grids to ``<workdir>/tensorboard/``.

    Nothing is created or read until the first `write` (so it may be made before the run
    claims the work directory); a symbolic link in place of the directory is refused now
    (before training) and again then.

    Raises:
      WorkdirError: ``<workdir>/tensorboard`` is a symbolic link.
    """

    def __init__(self, workdir: str | os.PathLike) -> None:
        self.directory = require_path("workdir", workdir) / SUBDIR
        self._file: Path | None = None
        self._last_step: int | None = None  # the largest step written (None: not read yet)
        self._refuse_link()

    def write(
        self,
        epoch: int,
        records: Sequence[Mapping[str, Any]],
        grids: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Write the records whose epoch is past the last step written, and `grids`
        (uint8 ``[H, W]`` or ``[H, W, 3]``) at step `epoch` unless that step was written.

        `records` are `fit`'s (all epochs so far, each with an int ``epoch``). Does nothing
        on a process other than the primary one.

        Raises:
          WorkdirError: ``<workdir>/tensorboard`` is a symbolic link, or cannot be written.
          OSError: the event file cannot be written.
        """
        if not is_primary():
            return
        from tensorboardX import summary  # (deferred: it imports PyTorch where installed)
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        if self._last_step is None:
            self._last_step = last_step_written(self._checked_directory())
        events = []
        for record in records:
            if record["epoch"] > self._last_step and numbers(record):
                values = [summary.scalar(k, v).value[0] for k, v in numbers(record).items()]
                events.append(Event(step=record["epoch"], summary=Summary(value=values)))
        if grids and epoch > self._last_step:
            images = [_image(Summary, tag, grid) for tag, grid in grids.items()]
            events.append(Event(step=epoch, summary=Summary(value=images)))
        if not events:
            return
        if self._file is None:
            self._file = self._create_file(Event(file_version="brain.Event:2"))
        for event in events:
            event.wall_time = time.time()
        _append(self._file, [event.SerializeToString() for event in events])
        self._last_step = max(self._last_step, *(event.step for event in events))

    def _refuse_link(self) -> None:
        if self.directory.is_symlink():
            raise WorkdirError(
                f"{self.directory} is a symbolic link; TensorBoard files are written only "
                "inside the work directory (remove it, or --no_tensorboard)"
            )

    def _checked_directory(self) -> Path:
        self._refuse_link()
        return writable_dir(self.directory)

    def _create_file(self, first: Any) -> Path:
        """A new event file (never an existing one, nor through a link), with `first`."""
        directory = self._checked_directory()
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        for n in itertools.count():  # (another writer of this process, in the same second)
            path = directory / f"{name}.{n}"
            try:
                os.close(os.open(path, flags, 0o644))
                break
            except FileExistsError:
                continue
        first.wall_time = time.time()
        _append(path, [first.SerializeToString()])
        return path


def _image(summary: Any, tag: str, grid: np.ndarray) -> Any:
    """An image summary value: `grid` (uint8 ``[H, W]`` or ``[H, W, 3]``) as a PNG.

    (tensorboardX's `summary.image` stores a grey image as RGB: twice the bytes.)
    """
    if grid.dtype != np.uint8 or not (grid.ndim == 2 or (grid.ndim == 3 and grid.shape[2] == 3)):
        raise ValueError(f"grid {tag!r} must be uint8 [H, W] or [H, W, 3], got {grid.shape}")
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    height, width = grid.shape[:2]
    colorspace = 1 if grid.ndim == 2 else 3
    image = summary.Image(height=height, width=width, colorspace=colorspace)
    image.encoded_image_string = buffer.getvalue()
    return summary.Value(tag=tag, image=image)


def numbers(record: Mapping[str, Any]) -> dict[str, float]:
    """The scalars a record gives TensorBoard, by tag: each number under its key, each list
    of numbers as ``key/0``, ``key/1``, ...; strings, booleans, epoch and step left out."""

    def is_number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    out: dict[str, float] = {}
    for key, value in record.items():
        if key in _SKIPPED_KEYS:
            continue
        if is_number(value):
            out[key] = float(value)
        elif isinstance(value, list | tuple) and value and all(map(is_number, value)):
            out.update({f"{key}/{i}": float(v) for i, v in enumerate(value)})
    return out


def last_step_written(directory: str | os.PathLike) -> int:
    """The largest step of an event with values in `directory`'s event files (0 if none).

    A file's truncated or unreadable tail (a run killed while writing) ends its reading.
    """
    from tensorboardX.proto.event_pb2 import Event

    last = 0
    for path in sorted(Path(directory).glob("*tfevents*")):
        if path.is_symlink() or not path.is_file():
            continue
        try:
            for data in _records(path):
                event = Event.FromString(data)
                if event.summary.value:
                    last = max(last, event.step)
        except DecodeError:  # (a damaged tail)
            continue
    return last


def _records(path: Path) -> Iterator[bytes]:
    """The records of a TFRecord file (length, its CRC, data, its CRC), up to the first
    damaged one: a length whose CRC does not match, or longer than the rest of the file,
    ends the reading (before: one flipped byte there made a 2**64-byte read, a MemoryError
    on every resume). The data's CRC is not checked (a damaged event fails to decode)."""
    from tensorboardX.record_writer import masked_crc32c

    size = path.stat().st_size
    with open(path, "rb") as file:
        while len(header := file.read(12)) == 12:
            (length,) = struct.unpack("<Q", header[:8])
            crc = struct.unpack("<I", header[8:])[0]
            if crc != masked_crc32c(header[:8]) or length > size - file.tell() - 4:
                return
            data = file.read(length)
            if len(data) < length or len(file.read(4)) < 4:
                return
            yield data


def _append(path: Path, records: list[bytes]) -> None:
    """Append TFRecord-framed `records` to `path` (not through a link)."""
    from tensorboardX.record_writer import masked_crc32c

    chunks = []
    for data in records:
        header = struct.pack("<Q", len(data))
        crcs = struct.pack("<I", masked_crc32c(header)), struct.pack("<I", masked_crc32c(data))
        chunks += [header, crcs[0], data, crcs[1]]
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "ab") as file:
        file.write(b"".join(chunks))
