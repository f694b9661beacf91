"""The work directory: one owner for its configuration record, its lock and its claim.

A work directory holds:
  config.json                 the configuration that owns the directory
  .lock                       locked (flock) while a run uses the directory
  metrics.jsonl               one JSON record per epoch (rewritten atomically each epoch)
  checkpoints/<step>/         Orbax checkpoints (`vae_jax.checkpoint`)
  images/                     the experiment's pictures

`claim` decides whether a configuration may use a directory (resume, refuse, or with
``overwrite`` start afresh); `fit` calls it (and so `run_experiment`). Every file written here
is written atomically (`atomic_write`), and nothing
the library writes or deletes there is reached through a symbolic link that leads out of it
(`check_entries`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from vae_jax._version import __version__
from vae_jax.config import ExperimentConfig, check_config
from vae_jax.fields import require_path

CONFIG_FILE = "config.json"
# config.json's record of the library version that wrote it (not part of the configuration:
# readers drop it, and a run of another version resumes).
VERSION_FIELD = "vae_jax_version"
CHECKPOINT_SUBDIR = "checkpoints"
UNREADABLE_SUBDIR = ".unreadable"  # in CHECKPOINT_SUBDIR: unreadable checkpoints, kept
TRASH_SUBDIR = ".trash"  # in CHECKPOINT_SUBDIR: pruned checkpoints, renamed here then deleted
METRICS_FILE = "metrics.jsonl"
IMAGES_SUBDIR = "images"
TENSORBOARD_SUBDIR = "tensorboard"  # TensorBoard event files (vae_jax.tensorboard)
LOCK_FILE = ".lock"
PROBE_FILE = ".write_test"
DISCARDED_SUBDIR = ".discarded"  # a previous run's outputs, renamed here then deleted


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # (POSIX; 0 elsewhere)
# The names a run writes inside its output directories (`foreign_outputs`): anything else
# there is not the library's, and is never deleted. (".tmp": an atomic write cut short.)
_OURS_IN = {
    CHECKPOINT_SUBDIR: re.compile(
        rf"\d+|\d+\.orbax-checkpoint-tmp.*|{re.escape(UNREADABLE_SUBDIR)}|{re.escape(TRASH_SUBDIR)}"
    ),
    IMAGES_SUBDIR: re.compile(
        r"((samples|reconstructions|class_samples)_epoch\d+|training_curves)\.png(\.tmp)?"
    ),
    TENSORBOARD_SUBDIR: re.compile(r"events\.out\.tfevents\..+"),
}
# The work directories whose lock this thread holds (`workdir_lock`; a context variable,
# so another thread's `fit` on one of them is refused like another process's).
_HELD: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "vae_jax_held_workdirs", default=frozenset()
)
_PIECES_RECORD_KEYS = frozenset({"objective", "model", "event_shape", "options", "run"})
_MAX_METRICS_BYTES = 64 << 20  # a run's metrics.jsonl is one short line per epoch


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[BinaryIO], object]) -> Path:
    """Write a file atomically: a reader, or a run killed meanwhile, sees the old file or the
    new one, never half of one. The one function every file the library writes goes through
    (configuration, metrics, reports, pictures, file lists, saved estimators).

    The bytes go to ``<name>.tmp`` beside `path`, created inside the parent directory's file
    descriptor with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (a stale temporary file, or a symbolic
    link planted under that name, is unlinked first: the link, never its target), then
    renamed over `path` within that directory. A symbolic link at `path` itself is replaced
    by the file, and what it pointed to is not touched. The parent directory is created if
    missing.

    Args:
      path: the file to write.
      data: its bytes, its text (UTF-8), or a function that writes into the open binary file.

    Returns:
      `path` as a `Path`.

    Raises:
      IsADirectoryError: `path` is a directory (before: "[Errno 21] 'out.tmp' -> 'out'");
        ValueError / TypeError: `path` is "" or not a path.
    """
    path = require_path("path", path)
    if path.is_dir() and not path.is_symlink():
        raise IsADirectoryError(f"{path} is a directory: give a file's path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path.name}.tmp"
    directory = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=directory)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
        fd = os.open(tmp, flags, 0o666, dir_fd=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                if callable(data):
                    data(handle)
                else:
                    handle.write(data.encode() if isinstance(data, str) else data)
            os.replace(tmp, path.name, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=directory)
            raise
    finally:
        os.close(directory)
    return path


def replace_dir(new: str | os.PathLike, path: str | os.PathLike) -> None:
    """Put the directory `new` in the place of `path` (a sibling of it) with one atomic
    rename, then delete what was at `path`: a process killed at any point leaves either
    the old directory or the new one at `path`, whole.

    On Linux an existing `path` is swapped with `new` by ``renameat2(RENAME_EXCHANGE)``;
    where that is missing, `path` is first renamed beside itself, then `new` into its place
    (a kill between the two leaves the old directory under ``<new>.old``). Nothing is
    followed through a link: a link at `path` is refused (`WorkdirError`).
    """
    new, path = Path(new), Path(path)
    if path.is_symlink():
        raise WorkdirError(f"{path} is a symbolic link; it is not replaced through the link")
    if not path.exists():
        os.rename(new, path)
        return
    if not _exchange(new, path):
        old = new.with_name(f"{new.name}.old")
        os.rename(path, old)
        os.rename(new, path)
        new = old
    remove_tree(new, ignore_errors=True)  # (the old contents, now under the new name)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where
    the system or the file system cannot."""
    import ctypes
    import errno

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(b))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write` of `text` (UTF-8)."""
    return atomic_write(path, text)


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """`atomic_write` of `value` as indented, key-sorted JSON."""
    return atomic_write(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


class WorkdirError(ValueError):
    """The work directory cannot be used (unwritable, or owned by another configuration)."""


class PiecesRunError(WorkdirError):
    """The work directory holds a run that `fit` made from your own model: there is no
    `ExperimentConfig` to rebuild its model and data from."""


def claim(
    workdir: str | os.PathLike,
    config: ExperimentConfig | dict[str, Any],
    *,
    resume: bool = True,
    overwrite: bool = False,
) -> Path:
    """Create `workdir`, check it is writable and that it belongs to `config`; record it.

    `config` is an `ExperimentConfig`, or the JSON record of a run made from pieces
    (`vae_jax.loop.fit` without one: its "run" section may change between runs).

    Nothing is lost by mistake: a directory whose ``config.json`` holds a different
    configuration (other than the epoch budget and the checkpoint cadence), is unreadable,
    or is missing while outputs exist, is refused unless `overwrite`; so is a directory
    with checkpoints of this configuration when `resume` is False. With `overwrite`, those
    checkpoints, metrics, images and event files are deleted and the run starts afresh,
    but only when all of them are the library's: a directory with files vae_jax did not
    write at those names (`foreign_outputs`) is refused, `overwrite` or not. A directory of
    the same configuration is resumed (unless `resume` is False), `overwrite` or not.

    Raises:
      WorkdirError: the directory cannot be used; the message says how to proceed.
    """
    path = writable_dir(workdir)
    steps = _checkpoint_steps(path)
    try:
        existing = read_config(path) if isinstance(config, ExperimentConfig) else read_record(path)
    except WorkdirError as error:
        problem = str(error)
    else:
        set_aside = _checkpoint_steps(path / CHECKPOINT_SUBDIR, UNREADABLE_SUBDIR)
        outputs = [n for n in _OUTPUTS if n != CONFIG_FILE and _present(path / n)]
        if existing is None:  # (a fresh start would replace what is at the outputs' names)
            problem = f"{path} holds {', '.join(outputs)} but no {CONFIG_FILE}" if outputs else ""
            if steps:
                problem = f"{path} has checkpoints but no {CONFIG_FILE}"
        elif set_aside and not steps:
            problem = (
                f"{path} holds no readable checkpoint (those of steps {set_aside} could not be "
                f"read and are kept in {path / CHECKPOINT_SUBDIR / UNREADABLE_SUBDIR}); starting "
                "afresh would replace its metrics and pictures"
            )
        elif _identity(existing) != _identity(config):
            diff = describe_difference(_identity(existing), _identity(config))
            problem = f"{path} holds a run of a different configuration ({diff})"
        elif steps and not resume:
            problem = (
                f"{path} holds checkpoints of this configuration (the newest at step "
                f"{steps[-1]}), which a fresh start (--no_resume, resume=False) would discard; "
                "resume instead"
            )
        else:
            problem = ""
    if problem:
        foreign = foreign_outputs(path)
        if foreign:  # (before: --overwrite deleted them with the run's outputs)
            shown = ", ".join(foreign[:5]) + (
                f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            )
            raise WorkdirError(
                f"{problem}; it holds files vae_jax did not write ({shown}), which it never "
                "deletes: move them away, or use another --workdir"
            )
        if not overwrite:
            raise WorkdirError(
                f"{problem}; use another --workdir, or --overwrite to start afresh there"
            )
        _discard_outputs(path)
    if isinstance(config, ExperimentConfig):
        write_config(path, config)
    else:
        write_json(path / CONFIG_FILE, {**config, VERSION_FIELD: __version__})
    return path


_OUTPUTS = (CHECKPOINT_SUBDIR, METRICS_FILE, IMAGES_SUBDIR, TENSORBOARD_SUBDIR, CONFIG_FILE)


def _present(path: Path) -> bool:
    """Whether `path` is there: a file, a link, or a directory with something in it."""
    if path.is_symlink() or path.is_file():
        return True
    return path.is_dir() and any(path.iterdir())


def foreign_outputs(path: str | os.PathLike) -> list[str]:
    """The entries at a run's output names in `path` that vae_jax did not write, which
    `claim` refuses to discard (so --overwrite deletes only a run's own outputs): a
    config.json that is not a vae_jax record (an `ExperimentConfig`'s sections, or the record
    `fit` writes for its pieces), a metrics.jsonl that is not one JSON record with an
    "epoch" per line, and in checkpoints/, images/ and tensorboard/ any name a run does not
    write there (or a file where the directory goes). Nothing is deleted here."""
    path = Path(path)
    found = []
    if (path / CONFIG_FILE).is_file() and not _is_our_record(path / CONFIG_FILE):
        found.append(CONFIG_FILE)
    if (path / METRICS_FILE).is_file() and not _is_our_metrics(path / METRICS_FILE):
        found.append(METRICS_FILE)
    for name, ours in _OURS_IN.items():
        where = path / name
        if where.is_dir() and not where.is_symlink():
            found += [
                f"{name}/{p.name}" for p in sorted(where.iterdir()) if not ours.fullmatch(p.name)
            ]
        elif where.is_file():
            found.append(name)
    return found


def _is_pieces_record(values: Any) -> bool:
    """Whether a config.json's object is the record `fit` writes for a run made from your
    own model (its model's repr, objective, options; no `ExperimentConfig`)."""
    if not isinstance(values, dict):
        return False
    keys = set(values) - {VERSION_FIELD}
    return "event_shape" in keys and keys <= _PIECES_RECORD_KEYS


def _is_our_record(config: Path) -> bool:
    try:
        values = json.loads(config.read_text())
    except (OSError, ValueError, RecursionError):
        return False
    if not isinstance(values, dict):
        return False
    keys = set(values) - {VERSION_FIELD}
    sections = {f.name for f in dataclasses.fields(ExperimentConfig)}
    return bool(keys) and (keys <= sections or keys <= _PIECES_RECORD_KEYS)


def _is_our_metrics(metrics: Path) -> bool:
    try:
        if metrics.stat().st_size > _MAX_METRICS_BYTES:
            return False
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    except (OSError, ValueError, RecursionError):
        return False
    return all(isinstance(r, dict) and "epoch" in r for r in records)


def _identity(config: ExperimentConfig | dict[str, Any]) -> dict[str, Any]:
    if isinstance(config, ExperimentConfig):
        return config.identity()
    return {key: value for key, value in config.items() if key not in ("run", VERSION_FIELD)}


def read_record(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON object in ``workdir/config.json`` as it is, or None if there is none.

    Raises:
      WorkdirError: the file is not a JSON object.
    """
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as error:
        raise WorkdirError(f"{path} is not readable JSON: {one_line(error)[:300]}") from error
    if not isinstance(values, dict):
        raise WorkdirError(f"{path} is not a JSON object")
    return values


def writable_dir(workdir: str | os.PathLike, *, probe: bool = True) -> Path:
    """Create `workdir` if needed and check that the library may write there: its entries
    are not links out of it (`check_entries`) and (with `probe`) a probe file can be created
    (without following a link). Returns it as a `Path`.

    The probe has one name: call it with `probe` only while holding `workdir_lock`, so a
    run that is refused the lock never removes the probe of the run that holds it.

    Raises:
      WorkdirError: one line saying why not.
    """
    if not os.fspath(workdir):
        raise WorkdirError("the work directory is an empty path")
    path = Path(workdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WorkdirError(
            f"work directory {path} is not writable: {error.strerror or error}"
        ) from error
    check_entries(path)
    if not probe:
        return path
    try:
        directory = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(PROBE_FILE, dir_fd=directory)  # (a link: the link goes, not its target)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
            os.close(os.open(PROBE_FILE, flags, 0o666, dir_fd=directory))
            os.unlink(PROBE_FILE, dir_fd=directory)
        finally:
            os.close(directory)
    except OSError as error:
        raise WorkdirError(
            f"work directory {path} is not writable: {error.strerror or error}"
        ) from error
    return path


# The entries of a work directory that the library writes, renames or deletes.
WRITTEN_ENTRIES = (
    CONFIG_FILE,
    LOCK_FILE,
    METRICS_FILE,
    IMAGES_SUBDIR,
    TENSORBOARD_SUBDIR,
    CHECKPOINT_SUBDIR,
    PROBE_FILE,
    DISCARDED_SUBDIR,
    f"{CHECKPOINT_SUBDIR}/{UNREADABLE_SUBDIR}",
    f"{CHECKPOINT_SUBDIR}/{TRASH_SUBDIR}",
)


def check_entries(workdir: str | os.PathLike) -> None:
    """Raise `WorkdirError` (one line) if an entry of `workdir` that the library writes
    (`WRITTEN_ENTRIES`: checkpoints/, images/, config.json, metrics.jsonl, .lock, ...) is a
    symbolic link leading out of `workdir`: writing, renaming or deleting through it would
    change files elsewhere. (`workdir` itself may be a link: the user named it.)"""
    root = os.path.realpath(workdir)
    for name in WRITTEN_ENTRIES:
        entry = Path(workdir, name)
        if not entry.is_symlink():
            continue
        target = os.path.realpath(entry)
        if os.path.commonpath([root, target]) != root or target == root:
            raise WorkdirError(
                f"{entry} is a symbolic link to {target}, outside the work directory; vae_jax "
                "never writes or deletes through a link out of it: remove the link, or use "
                "another --workdir"
            )


def remove_tree(
    path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    ignore_errors: bool = False,
) -> None:
    """Delete the directory `path` and everything in it, never through a symbolic link.

    `path` itself, and every directory between `root` (when given) and it, must not be a
    link: a link is refused with a one-line `WorkdirError` and nothing is deleted. Links
    inside `path` are removed, not followed (`shutil.rmtree`). A missing `path` is no error;
    with `ignore_errors`, neither is a failure to delete (a link is still refused).
    """
    path = Path(path)
    parts = [path]
    if root is not None:
        relative = path.relative_to(root)
        parts = [Path(root, *relative.parts[: i + 1]) for i in range(len(relative.parts))]
    for part in parts:
        if part.is_symlink():
            raise WorkdirError(
                f"{part} is a symbolic link; vae_jax deletes only directories it made, never "
                "through a link"
            )
    if path.exists():
        shutil.rmtree(path, ignore_errors=ignore_errors)


def _checkpoint_steps(path: Path, subdir: str = CHECKPOINT_SUBDIR) -> list[int]:
    """The complete checkpoints in `path/subdir`, by their directory names (nothing is
    opened)."""
    directory = path / subdir
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def _discard_outputs(path: Path) -> None:
    """Delete a previous run's outputs: moved aside first (atomic renames), then deleted,
    so a run killed meanwhile leaves either the old outputs or none, never half of them.
    (Links among them are removed, never followed: `check_entries` refused links out.)"""
    trash = path / DISCARDED_SUBDIR
    if trash.is_symlink():
        trash.unlink()
    remove_tree(trash, ignore_errors=True)
    trash.mkdir()
    for name in _OUTPUTS:
        if (path / name).exists() or (path / name).is_symlink():
            (path / name).rename(trash / name)
    remove_tree(trash, ignore_errors=True)


@contextlib.contextmanager
def workdir_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path/.lock`` (released when the process dies, even by
    SIGKILL), so two runs never write the same work directory. The lock file is opened
    without following a link (a link there is refused). Not re-entrant: a second run in
    this process is refused like one in another (`held_workdir_lock` is the caller's)."""
    key = os.path.realpath(path)
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    lock = path / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o666)
    except OSError as error:
        if not lock.is_symlink():  # (the first write in the directory: no probe before it)
            why = error.strerror or str(error)
            raise WorkdirError(f"work directory {path} is not writable: {why}") from None
        raise WorkdirError(f"cannot open the lock file {lock}: a symbolic link") from None
    with os.fdopen(fd, "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise WorkdirError(
                f"{path} is in use by another run (pid {holder}); wait for it to finish, "
                "or use another --workdir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        token = _HELD.set(_HELD.get() | {key})
        try:
            yield
        finally:
            _HELD.reset(token)
            fcntl.flock(handle, fcntl.LOCK_UN)


def held_workdir_lock(path: Path) -> contextlib.AbstractContextManager[None]:
    """`workdir_lock`, unless this thread's caller already holds it (`run_experiment`
    around `fit`): `fit` takes the lock for its own callers, who did not."""
    if os.path.realpath(path) in _HELD.get():
        return contextlib.nullcontext()
    return workdir_lock(path)


def write_config(workdir: str | os.PathLike, config: ExperimentConfig) -> None:
    """Record the configuration that owns `workdir` (written atomically)."""
    write_json(Path(workdir) / CONFIG_FILE, {**config.to_dict(), VERSION_FIELD: __version__})


def read_config(workdir: str | os.PathLike) -> ExperimentConfig | None:
    """The configuration recorded in `workdir`, or None if it has none.

    Every value is checked: its type (against the field's default), its range (through the
    configuration's own checks and by building the model and objective).

    Raises:
      PiecesRunError: the file is `fit`'s record of a run made from your own model.
      WorkdirError: the file exists but is not a valid configuration.
    """
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        values = json.loads(path.read_text())
        if _is_pieces_record(values):
            raise PiecesRunError(
                f"{path} records a run that fit made from your own model, not an "
                "ExperimentConfig: load it with load_checkpoint(workdir, model=<the module "
                "it trained>)"
            )
        if isinstance(values, dict):
            values.pop(VERSION_FIELD, None)
        check_config_types(values)
        config = ExperimentConfig.from_dict(values)
        check_config(config)
    except PiecesRunError:
        raise
    except (OSError, ValueError, TypeError, AttributeError, RecursionError) as error:
        raise WorkdirError(
            f"{path} is not a valid vae_jax configuration: {one_line(error)[:300]}"
        ) from error
    return config


def check_config_types(values: Any) -> None:
    """Raise ValueError unless `values` (a `to_dict()` read back from JSON) has, in every
    field, a value of the type of the field's default (ints not bools, finite floats)."""
    defaults = ExperimentConfig().to_dict()
    if not isinstance(values, dict):
        raise ValueError(f"expected a JSON object, got {type(values).__name__}")
    for section, fields in values.items():
        if section not in defaults:
            raise ValueError(f"unknown section {section!r}")
        if not isinstance(fields, dict):
            raise ValueError(f"{section} must be a JSON object, got {type(fields).__name__}")
        for name, value in fields.items():
            if name in defaults[section] and not _same_kind(value, defaults[section][name]):
                kind = type(defaults[section][name]).__name__
                raise ValueError(f"{section}.{name} must be of type {kind}, got {value!r}")


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, int | float) and math.isfinite(value)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, tuple):
        return isinstance(value, list | tuple) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        )
    return False


def one_line(error: BaseException) -> str:
    """An error's message on one line (the CLI prints one line per failure)."""
    return " ".join(str(error).split())


def describe_difference(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> str:
    """'section.field: A there, B here; ...' for the fields where two config dicts differ."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            inner = describe_difference(va, vb, f"{prefix}{key}.")
            if inner:
                out.append(inner)
        elif va != vb:
            out.append(f"{prefix}{key}: {va} there, {vb} here")
    return "; ".join(out)


def write_metrics(workdir: Path, records: list[dict[str, Any]]) -> Path:
    """Rewrite metrics.jsonl (one record per line) atomically."""
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    return atomic_write(workdir / METRICS_FILE, lines)
