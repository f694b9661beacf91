"""Checkpoints with Orbax: atomic saves, keep-last-K, verified restores, no pickle.

A work directory holds ``config.json`` (the `ExperimentConfig` that made it) and
``checkpoints/<step>/`` written by an Orbax `CheckpointManager`: ``state`` (the `TrainState`
arrays, tensorstore/OCDBT) and ``meta`` (JSON: epoch, per-epoch records, partial-epoch
sums, the configuration and a SHA-256 ``digest`` of the arrays and the rest of the meta).

Failure modes and what they leave:
- killed while writing: Orbax writes ``<step>.orbax-checkpoint-tmp/`` and renames it to
  ``<step>/`` when complete, so earlier checkpoints are untouched; the next writer removes
  the temporary directory.
- killed while pruning: old checkpoints (beyond `max_to_keep`) are first renamed into
  ``checkpoints/.trash/`` (atomic), then deleted, so no half-deleted ``<step>/`` remains.
- disk full or unwritable while saving: `CheckpointError` names the step that is intact.
- truncated, garbled or missing files: each checkpoint lists its files with their sizes and
  SHA-256 (``vae_jax_files.json``, written once the checkpoint is complete), checked before
  reading; the digest of the restored arrays is checked after. A damaged checkpoint is
  skipped with a `RuntimeWarning` and the previous one is used (a writer also moves it to
  ``checkpoints/.unreadable/<step>`` so it is never tried again, nor deleted).

Nothing is pickled: arrays are tensorstore/zarr chunks, everything else is JSON.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp

from vae_jax.config import ExperimentConfig
from vae_jax.distributed import is_primary
from vae_jax.optim import make_optimizer
from vae_jax.train import TrainState, init_train_state
from vae_jax.workdir import (
    CHECKPOINT_SUBDIR,
    CONFIG_FILE,
    UNREADABLE_SUBDIR,
    WorkdirError,
    atomic_write_text,
    one_line,
    read_config,
    read_record,
)

log = logging.getLogger("vae_jax.checkpoint")

TRASH_SUBDIR = ".trash"  # pruned checkpoints are renamed here, then deleted
FILES_MANIFEST = "vae_jax_files.json"  # in each checkpoint: {path: [size, sha256]}


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says what is intact."""


class NoReadableCheckpointError(CheckpointError):
    """A work directory has checkpoints and none of them can be read."""


class Checkpointer:
    """Saves and restores `TrainState` plus JSON metadata under ``workdir/checkpoints``.

    Args:
      workdir: the experiment's work directory.
      max_to_keep: how many of the newest checkpoints a writer keeps.
      read_only: only restore (never create, prune, clean up or move anything); what
        `load_checkpoint` uses, so that reading a directory a run is writing is safe.
    """

    def __init__(
        self, workdir: str | os.PathLike, *, max_to_keep: int = 3, read_only: bool = False
    ) -> None:
        self.directory = Path(workdir).absolute() / CHECKPOINT_SUBDIR
        self.read_only = read_only
        self._after_failure = contextlib.ExitStack()
        if read_only:  # (Orbax's own read_only option logs warnings on every use)
            options = ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False)
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                create=True,
                enable_async_checkpointing=False,
                cleanup_tmp_directories=True,  # what a run killed mid-save left behind
                todelete_subdir=TRASH_SUBDIR,  # prune by atomic rename, then delete
            )
        try:
            if not read_only:
                self.directory.mkdir(parents=True, exist_ok=True)  # fails if it is a file
            self.manager = ocp.CheckpointManager(self.directory, options=options)
        except (OSError, ValueError) as error:
            raise CheckpointError(
                f"cannot use {self.directory} for checkpoints ({type(error).__name__}: {error})"
            ) from error
        # Several processes write each checkpoint together (Orbax); process 0 alone keeps
        # the files that are this class's own (file lists, the trash, set-aside copies).
        self.owner = is_primary() and not read_only
        if self.owner:
            self._empty_trash()

    def steps(self) -> list[int]:
        """The steps of the complete checkpoints on disk, oldest first."""
        if self.read_only and not self.directory.is_dir():
            return []
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: TrainState, meta: dict[str, Any]) -> None:
        """Write a checkpoint for `step`, atomically; raise `CheckpointError` on failure.

        `meta` must be JSON-serializable; a ``digest`` entry is added to it.
        """
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read-only")
        meta = {**meta, "digest": state_digest(state, meta)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        quiet = contextlib.ExitStack()
        quiet.enter_context(_closed_event_loop_reports_dropped())
        try:
            self.manager.save(step, args=args, force=True)
            self.manager.wait_until_finished()
        except Exception as error:  # disk full, permissions, ...: say what is intact
            previous: list[int] = []
            # (until this checkpointer is closed: the failed write's callbacks report late)
            self._after_failure.enter_context(quiet.pop_all())
            with contextlib.suppress(Exception):
                self.manager.wait_until_finished()
            with contextlib.suppress(Exception):
                previous = [s for s in self.steps() if s != step]
            kept = (
                f"the checkpoint at step {previous[-1]} is intact"
                if previous
                else "no earlier checkpoint exists"
            )
            raise CheckpointError(
                f"could not write the checkpoint at step {step} in {self.directory} "
                f"({type(error).__name__}: {one_line(error)}); {kept}"
            ) from error
        finally:
            quiet.close()
        if self.owner:
            try:
                _write_manifest(self.directory / str(step))
            except OSError as error:  # the checkpoint itself is complete: it is just unlisted
                log.warning("could not list the files of checkpoint %d: %s", step, error)
            self._empty_trash()

    def restore(
        self,
        target: TrainState,
        step: int | None = None,
        *,
        check: Callable[[TrainState, dict[str, Any]], None] | None = None,
    ) -> tuple[TrainState, dict[str, Any], int] | None:
        """Restore the newest readable checkpoint (or exactly `step`), shaped like `target`.

        A checkpoint that fails to load (truncated, garbled or missing files, a digest that
        does not match, a different structure, or `check(state, meta)` raising) is skipped
        with a `RuntimeWarning` and the previous one is tried; a writer also moves it to
        ``checkpoints/.unreadable/``. Returns (state, meta, step), or None when there is no
        checkpoint at all.
        """
        steps = self.steps()
        if step is not None:
            steps = [s for s in steps if s == step]
            if not steps:
                raise CheckpointError(f"no checkpoint at step {step} in {self.directory}")
        abstract = jax.tree.map(_abstract_here, target)
        for candidate in reversed(steps):
            args = ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            )
            try:
                _check_manifest(self.directory / str(candidate))
                _check_stored_like(self.directory / str(candidate) / "state", abstract)
                restored = self.manager.restore(candidate, args=args)
                state, meta = restored.state, restored.meta
                _check_like(state, target)
                _check_digest(state, meta, candidate)
                if check is not None:
                    check(state, meta)
            except Exception as error:  # corrupt or incompatible: fall back, loudly
                # A failed Orbax restore leaves coroutines behind; collect them now, so that
                # what they report is not attributed to whatever runs next.
                gc.collect()
                # (moved aside only by a single writer: with several processes, another
                # one may still be reading it)
                alone = self.owner and jax.process_count() == 1
                moved = self._set_aside(candidate) if alone else ""
                message = (
                    f"checkpoint at step {candidate} in {self.directory} is unreadable "
                    f"({type(error).__name__}: {one_line(error)[:200]}){moved}; "
                    "trying the previous one"
                )
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                continue
            return state, meta, candidate
        if steps:
            raise NoReadableCheckpointError(
                f"no readable checkpoint in {self.directory} (tried {steps}; the warnings above "
                "say why); to start afresh in this work directory, rerun with --overwrite"
            )
        return None

    def close(self) -> None:
        try:
            self.manager.close()
            gc.collect()  # (reports of a failed write come now, while they are dropped)
        finally:
            self._after_failure.close()

    def _set_aside(self, step: int) -> str:
        """Move an unreadable checkpoint out of the way (renamed, not deleted)."""
        source = self.directory / str(step)
        destination = self.directory / UNREADABLE_SUBDIR / str(step)
        try:
            destination.parent.mkdir(exist_ok=True)
            shutil.rmtree(destination, ignore_errors=True)
            source.rename(destination)
            self.manager.reload()
        except OSError:
            return ""
        return f"; moved to {destination}"

    def _empty_trash(self) -> None:
        shutil.rmtree(self.directory / TRASH_SUBDIR, ignore_errors=True)


@contextlib.contextmanager
def _closed_event_loop_reports_dropped() -> Iterator[None]:
    """After a failed Orbax write, tensorstore's callbacks report, as unraisable exceptions,
    "RuntimeError: Event loop is closed" into an asyncio loop that is gone: ~150 lines of
    tracebacks before the one line that says what failed (a full disk, measured). Those
    reports, and only those, are dropped while this is active."""
    previous = sys.unraisablehook

    def hook(report: Any) -> None:
        if not (
            isinstance(report.exc_value, RuntimeError)
            and str(report.exc_value) == "Event loop is closed"
        ):
            previous(report)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _abstract_here(x: Any) -> jax.ShapeDtypeStruct:
    """`x`'s shape and dtype, placed where `x` is, or on this process's first device when
    `x` has no placement (a `jax.eval_shape` target): a checkpoint is then read onto the
    devices of the process that loads it, whatever devices wrote it."""
    abstract = ocp.utils.to_shape_dtype_struct(x)
    if getattr(abstract, "sharding", None) is None:
        device = jax.local_devices()[0]
        sharding = jax.sharding.SingleDeviceSharding(device)
        abstract = jax.ShapeDtypeStruct(abstract.shape, abstract.dtype, sharding=sharding)
    return abstract


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_manifest(directory: Path) -> None:
    """List every file of a complete checkpoint with its size and SHA-256 (atomically)."""
    files = {
        p.relative_to(directory).as_posix(): [p.stat().st_size, _file_sha256(p)]
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != FILES_MANIFEST
    }
    atomic_write_text(directory / FILES_MANIFEST, json.dumps({"files": files}, indent=1))


def _check_manifest(directory: Path) -> None:
    """Raise ValueError if a file listed in the checkpoint's manifest is missing or differs.

    (A checkpoint without a manifest, from a run killed just after writing it, is read as
    is: the digest of its arrays is still checked.)
    """
    path = directory / FILES_MANIFEST
    if not path.exists():
        return
    try:
        files = json.loads(path.read_text())["files"]
        items = [(name, int(size), str(sha)) for name, (size, sha) in files.items()]
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ValueError(f"its file list {FILES_MANIFEST} is damaged ({error})") from None
    for name, size, sha in items:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"its file list {FILES_MANIFEST} names {name!r}, outside it")
        file = directory / name
        if not file.is_file():
            raise ValueError(f"its file {name} is missing")
        actual = file.stat().st_size
        if actual != size:
            raise ValueError(f"its file {name} has {actual} bytes, {size} were written")
        if _file_sha256(file) != sha:
            raise ValueError(f"its file {name} has changed since it was written (SHA-256)")


def _host_array(x: Any) -> np.ndarray:
    """A host copy of a (replicated) array, also when it spans several hosts."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_shards[0].data
    return np.asarray(x)


def state_digest(state: Any, meta: dict[str, Any]) -> str:
    """SHA-256 over `meta` (canonical JSON, without its own digest) and every array of
    `state` (tree path, dtype, shape and bytes): a restored checkpoint must reproduce it."""
    h = hashlib.sha256()
    meta = {k: v for k, v in meta.items() if k != "digest"}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        array = np.ascontiguousarray(_host_array(leaf))
        h.update(f"{jax.tree_util.keystr(path)} {array.dtype.str} {array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def _check_digest(state: Any, meta: Any, step: int) -> None:
    if not isinstance(meta, dict):
        raise ValueError("its metadata is not a JSON object")
    if "digest" not in meta:  # written before digests existed: cannot be verified
        log.info("checkpoint at step %d has no digest; its contents are not verified", step)
        return
    if state_digest(state, meta) != meta["digest"]:
        raise ValueError("its arrays or metadata do not match the digest written with them")


def _path_names(path: tuple[Any, ...]) -> tuple[str, ...]:
    names = []
    for key in path:
        for attribute in ("name", "key", "idx"):
            if hasattr(key, attribute):
                names.append(str(getattr(key, attribute)))
                break
        else:
            names.append(str(key))
    return tuple(names)


def _check_stored_like(directory: Path, target: Any) -> None:
    """Raise ValueError unless the arrays stored in `directory` (from their metadata) have
    `target`'s paths, shapes and dtypes; checked before reading any array."""
    from etils import epath

    stored = ocp.StandardCheckpointHandler().metadata(epath.Path(directory))
    have = {
        _path_names(path): (tuple(leaf.shape), np.dtype(leaf.dtype))
        for path, leaf in jax.tree_util.tree_flatten_with_path(stored)[0]
    }
    want = {
        _path_names(path): (tuple(leaf.shape), np.dtype(leaf.dtype))
        for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]
    }
    if set(have) != set(want):
        missing = sorted("/".join(p) for p in set(want) - set(have))[:3]
        raise ValueError(f"checkpoint has a different structure than this model (lacks {missing})")
    for path, (shape, dtype) in sorted(want.items()):
        if have[path] != (shape, dtype):
            stored_shape, stored_dtype = have[path]
            raise ValueError(
                f"checkpoint array {'/'.join(path)} is {stored_shape} {stored_dtype}, "
                f"the model's is {shape} {dtype}"
            )


def _check_like(state: Any, target: Any) -> None:
    """Raise ValueError unless `state` has `target`'s tree structure, shapes and dtypes."""
    if jax.tree.structure(state) != jax.tree.structure(target):  # type: ignore[operator]
        raise ValueError("checkpoint has a different structure than this model")
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(target), strict=True):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"checkpoint array {a.shape} {a.dtype} != model's {b.shape} {b.dtype}")


class LoadedModel(NamedTuple):
    """What `load_checkpoint` returns: the module, its parameters and their provenance
    (`config` is None for a run that `fit` made from pieces)."""

    model: nn.Module
    params: Any
    config: ExperimentConfig | None
    step: int
    meta: dict[str, Any]


def load_checkpoint(
    workdir: str | os.PathLike,
    step: int | None = None,
    *,
    model: nn.Module | None = None,
    tx: optax.GradientTransformation | None = None,
) -> LoadedModel:
    """Load a trained model from a work directory (read-only).

    Example:
      >>> loaded = load_checkpoint("runs/mnist")
      >>> mean, logvar = loaded.model.apply(
      ...     {"params": loaded.params}, images, method="encode")

    Args:
      workdir: the directory given to the experiment (`--workdir`) or to `fit`.
      step: a specific checkpoint; default the newest readable one.
      model, tx: for a run that `fit` made from your own pieces (no `ExperimentConfig`
        recorded): the module and the optimizer it was trained with (the optimizer gives
        the shapes of its state). By default both come from the recorded configuration.

    Raises:
      CheckpointError: no configuration, no checkpoint, or none readable.
    """
    config = None
    if (model is None) != (tx is None):
        raise ValueError("pass both model and tx (the ones the run was trained with), or neither")
    if model is None:
        try:
            config = read_config(workdir)
        except WorkdirError as error:
            raise CheckpointError(
                f"{one_line(error)} (a run that fit made from your own model and optimizer "
                "loads with load_checkpoint(workdir, model=..., tx=...))"
            ) from None
        if config is None:
            raise CheckpointError(f"{workdir} has no {CONFIG_FILE}: not a vae_jax work directory")
        model = config.model.build(config.data.image_shape)
        tx = make_optimizer(config.train, steps_per_epoch=1)  # (for the state's shapes only)
    assert tx is not None
    example = None
    if not getattr(model, "image_shape", None):
        record = read_record(workdir) or {}
        example = np.zeros((1, *record.get("event_shape", ())), np.float32)
    key = jax.random.key(0)  # (shapes only)
    target = jax.eval_shape(lambda: init_train_state(model, tx, key, example=example))
    checkpointer = Checkpointer(workdir, read_only=True)
    try:
        restored = checkpointer.restore(target, step)
    finally:
        checkpointer.close()
    if restored is None:
        raise CheckpointError(f"{workdir} holds no checkpoint")
    state, meta, found = restored
    return LoadedModel(model, state.params, config, found, meta)
