"""Checkpoints with Orbax: atomic saves, keep-last-K, verified restores, no pickle.

A work directory holds ``config.json`` (the `ExperimentConfig` that made it) and
``checkpoints/<step>/`` written by an Orbax `CheckpointManager`: ``state`` (the `TrainState`
arrays, tensorstore/OCDBT) and ``meta`` (JSON: epoch, per-epoch records, partial-epoch
sums, the configuration, the run's ``identity`` when the writer has one, a SHA-256
``digest`` of the arrays and the rest of the meta, and a ``params_digest`` of the parameters
and the meta, checked when the parameters alone are read).

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
  ``checkpoints/.unreadable/<step>`` so it is never tried again, nor deleted). Only
  damaged bytes count: a checkpoint that is intact but does not fit the model (parameter
  paths or shapes) or the run (its identity) is refused in one line
  (`CheckpointMismatchError`) and nothing is moved.
- links: nothing is written, renamed or deleted through a symbolic link that leads out of the
  work directory (`vae_jax.workdir.check_entries`, `remove_tree`).

Nothing is pickled: arrays are tensorstore/zarr chunks, everything else is JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import os
import sys
import threading
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
from vae_jax.digests import DigestError, check_tree, file_digest, list_files
from vae_jax.distributed import is_primary
from vae_jax.fields import (
    require_bool,
    require_callable,
    require_int,
    require_optimizer,
    require_path,
)
from vae_jax.models import init_params
from vae_jax.train import TrainState, init_train_state
from vae_jax.workdir import (
    CHECKPOINT_SUBDIR,
    CONFIG_FILE,
    TRASH_SUBDIR,
    UNREADABLE_SUBDIR,
    PiecesRunError,
    WorkdirError,
    atomic_write,
    check_entries,
    describe_difference,
    one_line,
    read_config,
    read_record,
    remove_tree,
)

log = logging.getLogger("vae_jax.checkpoint")

FILES_MANIFEST = "vae_jax_files.json"  # in each checkpoint: {path: [size, sha256]}


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says what is intact."""


class NoReadableCheckpointError(CheckpointError):
    """A work directory has checkpoints and none of them can be read."""


class CheckpointMismatchError(WorkdirError):
    """A checkpoint is intact but is not one of this run: its parameters do not fit the
    model (a path or a shape differs), or its recorded identity (configuration, data) differs
    from the current one. Nothing is set aside; the message says what differs."""


class Checkpointer:
    """Saves and restores `TrainState` plus JSON metadata under ``workdir/checkpoints``.

    Args:
      workdir: the experiment's work directory.
      max_to_keep: how many of the newest checkpoints a writer keeps.
      read_only: only restore (never create, prune, clean up or move anything); what
        `load_checkpoint` uses, so that reading a directory a run is writing is safe.
      identity: what makes a checkpoint one of this run, as a JSON-able dict (the caller,
        `fit`, passes the run's recorded configuration and a fingerprint of its data).
        When given, it is stored in every checkpoint's metadata (``meta["identity"]``), and
        `restore` refuses a checkpoint whose stored identity differs from it:
        `CheckpointMismatchError`, one line naming the differing fields
        (`vae_jax.workdir.describe_difference`), nothing set aside. A checkpoint without a
        stored identity (written by an older vae_jax, or with ``identity=None``) is
        accepted; so is any checkpoint when ``identity`` is None.
      upgrade: applied to a stored identity before it is compared: what an older vae_jax
        recorded, in today's terms (`vae_jax.loop.upgrade_identity` gives a configuration
        field added since its default). A checkpoint is of this run when its stored
        identity, as it is or upgraded, equals ``identity``.

    Contract of `restore`: only bytes that fail their digest or do not deserialise are
    "unreadable" (skipped with a warning, and set aside by a writer). A checkpoint that is
    intact but does not fit (its parameter paths or shapes differ from the model's, or its
    identity differs) is not damaged: `CheckpointMismatchError`, nothing moved.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        max_to_keep: int = 3,
        read_only: bool = False,
        identity: dict[str, Any] | None = None,
        upgrade: Callable[[Any], Any] | None = None,
    ) -> None:
        require_int("max_to_keep", max_to_keep, low=1)
        require_bool("read_only", read_only)  # (a truthy "no" would open it read-only)
        self.directory = require_path("workdir", workdir).absolute() / CHECKPOINT_SUBDIR
        self.read_only = read_only
        self.identity = _jsonable_identity(identity)
        self.upgrade = upgrade
        self._after_failure = contextlib.ExitStack()
        if read_only:  # (Orbax's own read_only option logs warnings on every use)
            options = ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False)
        else:
            check_entries(workdir)  # (no checkpoints/, .trash or .unreadable linking out)
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

        `meta` must be JSON-serializable; added to it: ``identity`` (when the checkpointer
        has one), ``params_digest`` (of the parameters and the meta, checked when the
        parameters alone are read) and ``digest`` (of the whole state and the meta).
        """
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read-only")
        require_int("step", step, low=0)  # (Orbax lists only steps named 0, 1, 2, ...)
        if self.identity is not None:
            meta = {**meta, "identity": self.identity}
        meta = {**meta, "params_digest": params_digest(state.params, meta)}
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
            except (OSError, DigestError) as error:  # the checkpoint is complete, just unlisted
                log.warning("could not list the files of checkpoint %d: %s", step, error)
            self._empty_trash()

    def restore(
        self,
        target: Any,
        step: int | None = None,
        *,
        check: Callable[[Any, dict[str, Any]], None] | None = None,
        params_only: bool = False,
    ) -> tuple[Any, dict[str, Any], int] | None:
        """Restore the newest readable checkpoint (or exactly `step`), shaped like `target`.

        Args:
          target: a `TrainState` (concrete, or from `jax.eval_shape`) giving the structure,
            shapes, dtypes and placement; with `params_only`, the parameter tree alone.
          step: a specific checkpoint; default the newest readable one.
          check: called as ``check(state, meta)`` on what was read; a ValueError marks the
            checkpoint unreadable (any other exception, a bug in `check`, propagates and
            nothing is set aside).
          params_only: read only the parameters (no optimizer needed); their own digest
            (``params_digest``) is checked, and the file list when there is one.

        A checkpoint whose bytes are damaged (its file list's sizes or SHA-256, truncated,
        garbled or missing files, metadata that does not parse, a digest that does not
        match, or `check` raising) is skipped with a `RuntimeWarning` and the previous one
        is tried; a writer also moves it to ``checkpoints/.unreadable/``.

        Returns:
          (state, meta, step), or None when there is no checkpoint at all; with
          `params_only`, (params, meta, step).

        Raises:
          CheckpointMismatchError: a checkpoint is intact but not of this run (identity,
            parameter paths or shapes differ); nothing is set aside.
          NoReadableCheckpointError: checkpoints exist and none can be read.
        """
        require_bool("params_only", params_only)  # (a truthy "no" read the parameters only)
        if check is not None:
            require_callable("check", check)
        if step is not None:
            step = require_int("step", step)  # (before: "2" found no checkpoint at step 2)
        steps = self.steps()
        if step is not None:
            steps = [s for s in steps if s == step]
            if not steps:
                raise CheckpointError(f"no checkpoint at step {step} in {self.directory}")
        abstract = jax.tree.map(_abstract_here, target)
        for candidate in reversed(steps):
            with _loops_finish_their_tasks():  # (no read outlives a failed restore)
                restored = self._restore_candidate(candidate, target, abstract, check, params_only)
            if restored is not None:
                return restored
        if steps:
            raise NoReadableCheckpointError(
                f"no readable checkpoint in {self.directory} (tried {steps}; the warnings above "
                "say why); to start afresh in this work directory, rerun with --overwrite"
            )
        return None

    def _restore_candidate(
        self,
        candidate: int,
        target: Any,
        abstract: Any,
        check: Callable[[Any, dict[str, Any]], None] | None,
        params_only: bool,
    ) -> tuple[Any, dict[str, Any], int] | None:
        """`restore` for the checkpoint at `candidate`: what it returns, or None (after the
        warning) when the checkpoint is unreadable."""
        directory = self.directory / str(candidate)
        try:
            _check_manifest(directory)
            meta = self._restore_meta(candidate)
            stored = _stored_arrays(directory / "state")
        except Exception as error:  # damaged bytes: fall back, loudly
            self._unreadable(candidate, error)
            return None
        # intact, but perhaps not of this run: that is no damage, and nothing is moved
        self._check_identity(candidate, meta)
        where = f"at step {candidate} in {self.directory}"
        _check_fits(where, stored, abstract, params_only=params_only)
        try:
            if params_only:
                state = self._restore_params(candidate, abstract)
                _check_params_digest(state, meta, candidate)
            else:
                args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
                state = self.manager.restore(candidate, args=args).state
                _check_like(state, target)
                _check_digest(state, meta, candidate)
        except Exception as error:  # corrupt: fall back, loudly
            self._unreadable(candidate, error)
            return None
        if check is not None:
            try:
                check(state, meta)
            except ValueError as error:  # (what was read is not what the caller wrote)
                self._unreadable(candidate, error)
                return None
        return state, meta, candidate

    def close(self) -> None:
        try:
            self.manager.close()
            gc.collect()  # (reports of a failed write come now, while they are dropped)
        finally:
            self._after_failure.close()

    def _restore_meta(self, step: int) -> dict[str, Any]:
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        if not isinstance(meta, dict):
            raise ValueError("its metadata is not a JSON object")
        return meta

    def _restore_params(self, step: int, abstract_params: Any) -> Any:
        """The parameter subtree of the checkpoint's state alone (Orbax partial restore)."""
        item = {"params": abstract_params}
        args = ocp.args.PyTreeRestore(
            item=item,
            restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True,
        )
        checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
        try:
            restored = checkpointer.restore(self.directory / str(step) / "state", args=args)
        finally:
            checkpointer.close()
        return restored["params"]

    def _check_identity(self, step: int, meta: dict[str, Any]) -> None:
        stored = meta.get("identity")
        if self.identity is None or stored is None or stored == self.identity:
            return
        if self.upgrade is not None:
            stored = self.upgrade(stored)
            if stored == self.identity:
                return
        if isinstance(stored, dict):
            diff = describe_difference(stored, self.identity)
        else:
            diff = f"identity: {stored!r} there"
        raise CheckpointMismatchError(
            f"the checkpoint at step {step} in {self.directory} is of another run ({diff}); "
            "it is kept as it is: run with what made it, or use another --workdir (or "
            "--overwrite to start afresh there)"
        )

    def _unreadable(self, step: int, error: Exception) -> None:
        """Warn that the checkpoint at `step` cannot be read; a single writer sets it aside."""
        # (nothing of a failed Orbax restore is left to report, see _loops_finish_their_tasks;
        # were it otherwise, it would be reported now, not in whatever runs next)
        gc.collect()
        # (moved aside only by a single writer: with several processes, another one may
        # still be reading it)
        alone = self.owner and jax.process_count() == 1
        moved = self._set_aside(step) if alone else ""
        message = (
            f"checkpoint at step {step} in {self.directory} is unreadable "
            f"({type(error).__name__}: {one_line(error)[:200]}){moved}; "
            "trying the previous one"
        )
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _set_aside(self, step: int) -> str:
        """Move an unreadable checkpoint out of the way (renamed, not deleted). Nothing is
        done through a link: ``.unreadable`` (or its ``<step>``) being one is refused with
        a one-line `WorkdirError`."""
        source = self.directory / str(step)
        aside = self.directory / UNREADABLE_SUBDIR
        destination = aside / str(step)
        remove_tree(destination, root=self.directory, ignore_errors=True)  # (refuses links)
        try:
            aside.mkdir(exist_ok=True)
            source.rename(destination)
            self.manager.reload()
        except OSError:
            return ""
        return f"; moved to {destination}"

    def _empty_trash(self) -> None:
        remove_tree(self.directory / TRASH_SUBDIR, root=self.directory, ignore_errors=True)


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


_loop_patch_lock = threading.Lock()
_loop_patch_threads: dict[int, int] = {}  # thread id -> depth of _loops_finish_their_tasks
_plain_new_event_loop: list[Callable[[], asyncio.AbstractEventLoop]] = []  # (while patched)


@contextlib.contextmanager
def _loops_finish_their_tasks() -> Iterator[None]:
    """While active, an asyncio event loop that this thread creates runs its unfinished
    tasks to their end before it closes.

    Orbax reads a checkpoint's arrays in concurrent tasks (`asyncio.gather`) on an event
    loop of its own, which it closes as soon as the first read fails (damaged bytes) without
    waiting for the other reads. Those were then closed when collected (Orbax turns the
    ``GeneratorExit`` into an exception: "Exception ignored in: <coroutine object
    _read_array_index_and_device_put>" and a traceback on stderr), or tensorstore completed
    them into the closed loop ("RuntimeError: Event loop is closed", from its threads). Here
    those reads finish (or fail) before the loop closes, so nothing is left to report; the
    first error still propagates as before (after the reads in flight, which a successful
    restore would have waited for too).

    How: `asyncio.new_event_loop` (what Orbax calls for each loop) is replaced meanwhile
    by `_new_event_loop_finishing_tasks`; loops that other threads create are left as they
    are, and the original is put back when no thread is inside any more.
    """
    thread = threading.get_ident()
    with _loop_patch_lock:
        if not _loop_patch_threads:
            _plain_new_event_loop.append(asyncio.new_event_loop)
            asyncio.new_event_loop = _new_event_loop_finishing_tasks
        _loop_patch_threads[thread] = _loop_patch_threads.get(thread, 0) + 1
    try:
        yield
    finally:
        with _loop_patch_lock:
            _loop_patch_threads[thread] -= 1
            if not _loop_patch_threads[thread]:
                del _loop_patch_threads[thread]
            if not _loop_patch_threads:
                asyncio.new_event_loop = _plain_new_event_loop.pop()


def _new_event_loop_finishing_tasks() -> asyncio.AbstractEventLoop:
    """`asyncio.new_event_loop`, whose loop (if created in a thread that is inside
    `_loops_finish_their_tasks`) first runs its pending tasks to their end when closed."""
    with _loop_patch_lock:  # (empty: no longer patched, asyncio.new_event_loop is plain)
        plain = _plain_new_event_loop[0] if _plain_new_event_loop else asyncio.new_event_loop
        ours = threading.get_ident() in _loop_patch_threads
    loop = plain()
    if not ours:
        return loop
    close = loop.close

    def finish_tasks_then_close() -> None:
        if not loop.is_closed() and not loop.is_running():
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            if pending:  # (their exceptions are retrieved here: nothing more is logged)
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        close()

    loop.close = finish_tasks_then_close  # type: ignore[method-assign]
    return loop


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


def _write_manifest(directory: Path) -> None:
    """List every file of a complete checkpoint with its size and SHA-256 (atomically)."""
    names = list_files(directory, exclude=[FILES_MANIFEST])
    files = {
        name: [(directory / name).stat().st_size, file_digest(directory / name)] for name in names
    }
    atomic_write(directory / FILES_MANIFEST, json.dumps({"files": files}, indent=1))


def _check_manifest(directory: Path) -> None:
    """Raise ValueError if a file listed in the checkpoint's manifest is missing or differs
    (`vae_jax.digests.check_tree`; names outside the checkpoint are refused unread).

    (A checkpoint without a manifest, from a run killed just after writing it, is read as
    is: the digest of its arrays is still checked.)
    """
    path = directory / FILES_MANIFEST
    if not path.exists() and not path.is_symlink():
        return
    try:
        if path.is_symlink():
            raise ValueError("it is a symbolic link")
        files = json.loads(path.read_text())["files"]
        items = {name: (int(size), str(sha)) for name, (size, sha) in files.items()}
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ValueError(f"its file list {FILES_MANIFEST} is damaged ({error})") from None
    check_tree(
        directory,
        {name: sha for name, (_, sha) in items.items()},
        sizes={name: size for name, (size, _) in items.items()},
        exclude=[FILES_MANIFEST],
        extra_ok=True,
    )


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


def _leaf_specs(tree: Any) -> dict[tuple[str, ...], tuple[tuple[int, ...], np.dtype]]:
    return {
        _path_names(path): (tuple(leaf.shape), np.dtype(leaf.dtype))
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _stored_arrays(directory: Path) -> dict[tuple[str, ...], tuple[tuple[int, ...], np.dtype]]:
    """{path: (shape, dtype)} of the arrays stored in `directory`, from their metadata (no
    array is read); raises if the metadata cannot be read (damage)."""
    from etils import epath

    return _leaf_specs(ocp.StandardCheckpointHandler().metadata(epath.Path(directory)))


def _check_fits(
    where: str,
    stored: dict[tuple[str, ...], tuple[tuple[int, ...], np.dtype]],
    target: Any,
    *,
    params_only: bool,
) -> None:
    """Raise `CheckpointMismatchError` (one line: the first differing paths, the stored
    shape against the expected one) unless the stored arrays have `target`'s paths, shapes
    and dtypes (with `params_only`, the ``params`` subtree against `target`). The parameters'
    differences are named first."""
    if params_only:
        want = {("params", *path): spec for path, spec in _leaf_specs(target).items()}
        have = {path: spec for path, spec in stored.items() if path[:1] == ("params",)}
    else:
        want, have = _leaf_specs(target), stored
    differences = []
    for path in sorted(set(want) | set(have), key=lambda path: (path[:1] != ("params",), path)):
        name = "/".join(path)
        if path not in have:
            differences.append(f"{name} is in the model, not in the checkpoint")
        elif path not in want:
            differences.append(f"{name} is in the checkpoint, not in the model")
        elif have[path] != want[path]:
            (stored_shape, stored_dtype), (shape, dtype) = have[path], want[path]
            differences.append(
                f"{name} is {stored_shape} {stored_dtype} there, {shape} {dtype} expected"
            )
    if differences:
        more = f" (and {len(differences) - 3} more)" if len(differences) > 3 else ""
        raise CheckpointMismatchError(
            f"the checkpoint {where} does not fit this model: "
            f"{'; '.join(differences[:3])}{more}; it is intact and kept as it is: load it "
            "with the model (and, to resume, the optimizer) that wrote it, or use another "
            "--workdir"
        )


def params_digest(params: Any, meta: dict[str, Any]) -> str:
    """SHA-256 over `meta` (canonical JSON, without its digests) and the parameter arrays
    (path, dtype, shape and bytes, in path order): what reading the parameters alone checks."""
    h = hashlib.sha256()
    meta = {k: v for k, v in meta.items() if k not in ("digest", "params_digest")}
    h.update(json.dumps(meta, sort_keys=True).encode())
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in sorted(leaves, key=lambda item: _path_names(item[0])):
        array = np.ascontiguousarray(_host_array(leaf))
        h.update(f"{'/'.join(_path_names(path))} {array.dtype.str} {array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def _check_params_digest(params: Any, meta: dict[str, Any], step: int) -> None:
    if "params_digest" not in meta:  # an older checkpoint: its file list was checked
        log.info("checkpoint at step %d has no digest of its parameters alone", step)
        return
    if params_digest(params, meta) != meta["params_digest"]:
        raise ValueError("its parameters or metadata do not match the digest written with them")


def _jsonable_identity(identity: dict[str, Any] | None) -> dict[str, Any] | None:
    """`identity` as it reads back from a checkpoint's JSON (tuples become lists)."""
    if identity is None:
        return None
    if not isinstance(identity, dict):
        raise TypeError(f"identity must be a dict, got {type(identity).__name__}")
    try:
        value = json.loads(json.dumps(identity, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"identity must be JSON-able: {one_line(error)}") from None
    assert isinstance(value, dict)
    return value


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

    Only the parameters are read (no optimizer is needed, whatever the run trained with),
    after the checkpoint's file list (SHA-256 of every file) and the parameters' own digest
    are checked.

    Args:
      workdir: the directory given to the experiment (`--workdir`) or to `fit`.
      step: a specific checkpoint; default the newest readable one.
      model: for a run that `fit` made from your own pieces (no `ExperimentConfig`
        recorded): the module it trained. By default it comes from the recorded
        configuration.
      tx: optional, the optimizer the run trained with: then the whole train state is read
        (the optimizer's state too) and the digest of all of it checked, as a resume does.

    Raises:
      CheckpointError: no configuration, no checkpoint, or none readable.
      CheckpointMismatchError (a ValueError): the checkpoint's parameters do not fit
        `model` (one line: the parameter path, the stored shape and the expected one);
        nothing is set aside.
    """
    workdir = require_path("workdir", workdir)
    if step is not None:
        step = require_int("step", step)
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a Flax module or None, got {type(model).__name__}")
    if tx is not None:
        require_optimizer("tx", tx)
    config = None
    if model is None:
        try:
            config = read_config(workdir)
        except PiecesRunError as error:  # (its cause: evaluate_checkpoint's advice)
            raise CheckpointError(str(error)) from error
        except WorkdirError as error:
            raise CheckpointError(
                f"{one_line(error)} (a run that fit made from your own model loads with "
                "load_checkpoint(workdir, model=...))"
            ) from None
        if config is None:
            raise CheckpointError(f"{workdir} has no {CONFIG_FILE}: not a vae_jax work directory")
        model = config.model.build(config.data.image_shape)
    example = None
    if not getattr(model, "image_shape", None):
        record = read_record(workdir) or {}
        example = np.zeros((1, *record.get("event_shape", ())), np.float32)
    key = jax.random.key(0)  # (shapes only)
    if tx is None:
        target = jax.eval_shape(lambda: init_params(model, key, example))
    else:
        target = jax.eval_shape(lambda: init_train_state(model, tx, key, example=example))
    checkpointer = Checkpointer(workdir, read_only=True)
    try:
        restored = checkpointer.restore(target, step, params_only=tx is None)
    finally:
        checkpointer.close()
    if restored is None:
        raise CheckpointError(f"{workdir} holds no checkpoint")
    state, meta, found = restored
    params = state if tx is None else state.params
    return LoadedModel(model, params, config, found, meta)
