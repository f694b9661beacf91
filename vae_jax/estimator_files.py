"""`VAEEstimator.save` / `load`: Orbax parameters plus ``estimator.json``, with digests.

A saved estimator is a directory::

    estimator.json   format, version, the vae_jax version that wrote it ("vae_jax_version"),
                     settings, fitted attributes, the SHA-256 of every file under params/
                     ("files"), the posterior means of a fixed probe input
                     ("fingerprint") and the SHA-256 of this JSON's own content ("sha256")
    params/          the parameters, written by Orbax (no pickle)

`load_estimator` checks the JSON's digest, then every file's (`vae_jax.digests`), before
Orbax reads anything, so a damaged, truncated, incomplete, added-to (in ``params/`` or beside
it) or foreign directory is a one-line `SavedEstimatorError` naming the file instead of an
Orbax traceback or, worse, parameters that load and give NaN. The settings are then checked
against the stored parameters' paths and shapes (Orbax's metadata, before any array is read):
an edited ``z_dim`` or ``hidden`` whose digest was recomputed is refused in one line too.
Once the parameters are read, `transform` of a fixed probe input (`probe_input`) must give
the means recorded at save ("fingerprint"), so an edit that changes no shape (``activation``
relu -> tanh) is refused as well; a save without a fingerprint (written before it) loads
as before.
A save written by another vae_jax version loads (its format version says it can be read)
with a `VersionWarning` naming both versions; a format version this one cannot read is
refused. Version 1 directories (written before the digests) load only when the caller says so
(``allow_unverified=True``), with a warning that they cannot be checked. The file list
names files inside ``params/`` only (`vae_jax.digests.check_name`). A save writes a new
sibling directory and swaps it in with one rename, so a save killed at any point leaves the
previous one loadable; the next save to that path removes the sibling it left
(`_remove_leftovers`: only a dead save's, holding only what save writes).

The digests find accidental damage; they are no signature: whoever can write the directory
can change a file and its digest together (docs/robustness.md), and the fingerprint with them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import stat
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from vae_jax._version import __version__
from vae_jax.digests import DigestError, check_tree, list_files, tree_digests
from vae_jax.fields import require_path
from vae_jax.models import init_params
from vae_jax.workdir import one_line, remove_tree, replace_dir, write_json

FORMAT = "vae_jax.VAEEstimator"
FORMAT_VERSION = 2  # 2: SHA-256 digests of every file; 1 (no digests) still loads
META_FILE = "estimator.json"
PARAMS_DIR = "params"
_ORBAX_TMP = f"{PARAMS_DIR}.orbax-checkpoint-tmp"  # (Orbax writes there, then renames)
PROBE_ROWS = 4  # rows of the fingerprint's probe input (np.random.default_rng(0))


class SavedEstimatorError(ValueError):
    """A saved estimator's directory is damaged, incomplete or not one at all."""


class VersionWarning(UserWarning):
    """A saved or pickled estimator was written by another vae_jax version: it loads (its
    format can be read), but that version's numbers may differ from this one's."""


def warn_other_version(what: str, saved: Any, stacklevel: int) -> None:
    """Warn (`VersionWarning`, one line) when `saved`, the vae_jax version recorded in `what`,
    is not this one. None (a save or pickle from before versions were recorded) is silent:
    every such file was written by 0.1.0, and its format version still guards it."""
    if saved is not None and saved != __version__:
        warnings.warn(
            VersionWarning(
                f"{what} was written by vae_jax {saved}; this is vae_jax {__version__}: it "
                "loads, but check its results (save it again to record this version)"
            ),
            stacklevel=stacklevel + 1,
        )


def save_estimator(estimator: Any, path: str | os.PathLike, *, overwrite: bool) -> Path:
    """Write a fitted `VAEEstimator` to the directory `path` (see the module docstring).

    The save is written into a new sibling directory (``.<name>.<random>.saving``) and swapped in
    with one rename (`vae_jax.workdir.replace_dir`), so a save killed at any point leaves
    the previous save at `path` whole and loadable (and, at worst, that sibling behind: the
    next save to `path` removes it, `_remove_leftovers`).
    `overwrite` replaces only a directory that is a saved estimator (it holds an
    ``estimator.json`` written by save); anything else, or a symbolic link, is refused.

    Raises:
      FileExistsError: `path` exists and `overwrite` is False, or `path` is not a saved
        estimator (one line; nothing is touched).
    """
    path = require_path("path", path).absolute()
    if path.is_symlink():
        raise FileExistsError(
            f"{path} is a symbolic link; save writes a directory there, never through a link"
        )
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        _check_is_saved_estimator(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    new = path.with_name(f".{path.name}.{secrets.token_hex(4)}.saving")
    new.mkdir()  # (a new directory, the usual permissions; never an existing one or a link)
    # (held while it is written, so it is a leftover only once its save died; waits for
    # a save that is looking at it to see that it is empty and let go)
    lock = _lock_dir(new, wait=True)
    try:
        _write(estimator, new)
        replace_dir(new, path)
    except BaseException:
        remove_tree(new, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)
    return path


def _lock_dir(path: Path, *, wait: bool = False) -> int | None:
    """A descriptor of the directory `path` holding an exclusive ``flock`` on it (released
    when it is closed or the process dies), or None when it is taken (unless `wait`) or
    cannot be had."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _remove_leftovers(path: Path) -> None:
    """Delete the ``.<name>.<8 hex>.saving`` directories beside `path` that a killed save
    left: only a real directory (no link) of exactly that name, holding nothing but what
    save writes there (``estimator.json``, its ``.tmp``, ``params`` and Orbax's
    ``params.orbax-checkpoint-tmp*``, none a link), and whose save is dead (its lock,
    held by a live save, is free). Anything else is left as it is. (A ``.saving.old``, left
    where the system cannot swap directories, may hold the only previous save: never
    touched.)"""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{8}}\.saving")
    with contextlib.suppress(OSError):
        names = [n for n in os.listdir(path.parent) if pattern.fullmatch(n)]
        for name in names:
            leftover = path.parent / name
            if not stat.S_ISDIR(os.lstat(leftover).st_mode):
                continue
            lock = _lock_dir(leftover)
            if lock is None:  # (a save writing it now, or not ours to open)
                continue
            try:
                if _holds_only_save_files(leftover):
                    remove_tree(leftover, ignore_errors=True)
            finally:
                os.close(lock)


def _holds_only_save_files(path: Path) -> bool:
    """Whether `path` holds something and every entry is one save writes: the JSON files
    regular files, the parameter directories real directories (links inside those are
    removed, not followed). An empty one may be a save's between its mkdir and its lock."""
    with os.scandir(path) as listing:
        entries = list(listing)
    if not entries:
        return False
    for entry in entries:
        if entry.is_symlink():
            return False
        if entry.name in (META_FILE, f"{META_FILE}.tmp"):
            if not entry.is_file(follow_symlinks=False):
                return False
        elif entry.name == PARAMS_DIR or entry.name.startswith(_ORBAX_TMP):
            if not entry.is_dir(follow_symlinks=False):
                return False
        else:
            return False
    return True


def _write(estimator: Any, path: Path) -> None:
    """The files of a save, into the (new, empty) directory `path`."""
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    try:
        checkpointer.save(path / PARAMS_DIR, args=ocp.args.StandardSave(estimator.params_))
    finally:
        checkpointer.close()
    fitted: dict[str, Any] = {
        "seed_": estimator.seed_,
        "n_iter_": estimator.n_iter_,
        "best_epoch_": estimator.best_epoch_,
        "latent_kl_": [float(v) for v in estimator.latent_kl_],
        "history_": estimator.history_,
    }
    if hasattr(estimator, "feature_names_in_"):
        fitted["feature_names_in_"] = [str(v) for v in estimator.feature_names_in_]
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "vae_jax_version": __version__,
        "hyperparameters": {k: _jsonable(v) for k, v in estimator.get_params().items()},
        "feature_shape": list(estimator.feature_shape_),
        "fitted": fitted,
        "files": tree_digests(path / PARAMS_DIR),
        "fingerprint": _fingerprint(estimator),
    }
    meta["sha256"] = _meta_digest(meta)
    write_json(path / META_FILE, meta)


def _check_is_saved_estimator(path: Path) -> None:
    """Raise FileExistsError (one line) unless `path` is a directory holding an
    ``estimator.json`` (a regular file) that says it was written by save."""
    meta_path = path / META_FILE
    format_ = None
    if path.is_dir() and meta_path.is_file() and not meta_path.is_symlink():
        with contextlib.suppress(OSError, ValueError, RecursionError):
            meta = json.loads(meta_path.read_text())
            format_ = meta.get("format") if isinstance(meta, dict) else None
    if format_ != FORMAT:
        raise FileExistsError(
            f"{path} exists and is not a saved VAEEstimator (no {META_FILE} written by save); "
            "overwrite=True replaces only a saved estimator: choose another path, or remove "
            "it yourself"
        )


def load_estimator(cls: type, path: str | os.PathLike, *, allow_unverified: bool = False) -> Any:
    """An instance of `cls` (`VAEEstimator`) read from `path`, every digest checked first.

    A version 1 save (written before the digests) cannot be checked: it loads only with
    `allow_unverified` (and a warning), else a one-line `SavedEstimatorError`.
    """
    path = require_path("path", path).absolute()
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} holds no {META_FILE}: not a saved VAEEstimator")
    meta = _read_meta(meta_path)
    params_dir = path / PARAMS_DIR
    if meta["version"] >= 2:
        extra = sorted(set(os.listdir(path)) - {META_FILE, PARAMS_DIR})
        if extra:  # (a save holds these two entries only)
            raise SavedEstimatorError(
                f"{path / extra[0]} was not written by save (an unexpected file)"
            )
        try:
            check_tree(params_dir, meta["files"])
        except DigestError as error:
            raise SavedEstimatorError(str(error)) from None
    elif not allow_unverified:
        raise SavedEstimatorError(
            f"{meta_path}: a version 1 save has no digests, so its files cannot be checked; "
            "load it with allow_unverified=True if you trust it, then save it again to add them"
        )
    else:
        try:
            list_files(params_dir)  # (no link out of the directory, even unverified)
        except DigestError as error:
            raise SavedEstimatorError(str(error)) from None
        warnings.warn(
            f"{meta_path}: a version 1 save has no digests; its files are not checked "
            "(save it again to add them)",
            UserWarning,
            stacklevel=3,
        )
    try:
        with warnings.catch_warnings():  # (settings saved as given: deprecated names too)
            warnings.simplefilter("ignore", FutureWarning)
            estimator = cls(**_hyperparameters(meta))
            feature_shape = tuple(int(d) for d in meta["feature_shape"])
            model = estimator._build_model(feature_shape)
            default_seed = estimator._check_params().seed
        target = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    except (TypeError, ValueError, KeyError) as error:
        raise SavedEstimatorError(f"{meta_path}: invalid settings: {one_line(error)}") from None
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    try:
        _check_fits(meta_path, params_dir, checkpointer, target)
        params = checkpointer.restore(params_dir, args=ocp.args.StandardRestore(target))
    except SavedEstimatorError:
        raise
    except Exception as error:  # Orbax/tensorstore raise many kinds; name the directory
        raise SavedEstimatorError(
            f"{params_dir}: the parameters cannot be read: {one_line(error)[:300]}"
        ) from None
    finally:
        checkpointer.close()
    estimator.model_ = model
    estimator.params_ = jax.device_get(params)
    estimator.feature_shape_ = feature_shape
    estimator.n_features_in_ = math.prod(feature_shape)
    fitted = meta.get("fitted", {})
    if "feature_names_in_" in fitted:
        estimator.feature_names_in_ = np.asarray(fitted["feature_names_in_"], dtype=object)
    estimator.history_ = fitted.get("history_", meta.get("history", []))
    estimator.n_iter_ = fitted.get("n_iter_", len(estimator.history_))
    estimator.best_epoch_ = fitted.get("best_epoch_", estimator.n_iter_)
    estimator.seed_ = fitted.get("seed_", default_seed)
    kl = fitted.get("latent_kl_")
    estimator.latent_kl_ = np.asarray(kl) if kl is not None else np.full(model.z_dim, np.nan)
    if "fingerprint" in meta:  # (a save from before fingerprints has none: loads as before)
        _check_fingerprint(meta_path, meta["fingerprint"], estimator)
    # (once it has loaded: a damaged save is an error, not a warning and then an error)
    warn_other_version(str(meta_path), meta.get("vae_jax_version"), stacklevel=3)
    return estimator


def _check_fits(meta_path: Path, params_dir: Path, checkpointer: Any, target: Any) -> None:
    """Raise SavedEstimatorError (one line) unless the parameters stored in `params_dir` have
    the paths and shapes of `target` (those the settings in `meta_path` make), read from
    Orbax's metadata before any array: an edited setting (``z_dim``, ``hidden``, ...) with
    its digest recomputed loaded, then failed in `transform` with a Flax traceback. A
    setting that changes no shape (``activation``) cannot be told apart this way."""
    try:
        stored = checkpointer.metadata(params_dir).item_metadata
        have = _shapes(stored.tree)
    except Exception as error:  # (no metadata, or unreadable: Orbax raises many kinds)
        raise SavedEstimatorError(
            f"{params_dir}: the parameters' metadata cannot be read: {one_line(error)[:300]}"
        ) from None
    want = _shapes(target)
    why = next(
        (
            f"{name}: {want.get(name, 'none')} for these settings, {have.get(name, 'none')} saved"
            for name in sorted(set(want) | set(have))
            if want.get(name) != have.get(name)
        ),
        None,
    )
    if why is not None:
        raise SavedEstimatorError(
            f"{meta_path}: its settings do not fit the saved parameters ({why}): a setting was "
            "edited, or the parameters are another model's"
        )


def probe_input(feature_shape: tuple[int, ...], likelihood: str) -> np.ndarray:
    """[PROBE_ROWS, *feature_shape] float32 rows the fingerprint encodes: uniform in [0, 1)
    for the Bernoulli likelihood (the values it accepts), standard normal for the Gaussian
    ones; from ``np.random.default_rng(0)``, so every save and load draws the same rows."""
    rng = np.random.default_rng(0)
    shape = (PROBE_ROWS, *feature_shape)
    rows = rng.random(shape) if likelihood == "bernoulli" else rng.standard_normal(shape)
    return rows.astype(np.float32)


def _fingerprint(estimator: Any) -> list[float]:
    """`transform` of `probe_input`, flattened: [PROBE_ROWS * z_dim] floats (float32 values).

    Computed with full float32 matmuls: by default a recent GPU multiplies float32 in TF32
    (10-bit mantissa; JAX's default matmul precision), which moves a mean by ~1e-3 and
    would make a save from a CPU fail its check on a GPU. The CPU computes float32 anyway.
    (`transform` itself keeps the default precision.)"""
    probe = probe_input(estimator.feature_shape_, estimator.model_.likelihood)
    with jax.default_matmul_precision("float32"):
        mean = estimator._posterior_mean(probe)
    return [float(v) for v in mean.ravel()]


def _check_fingerprint(meta_path: Path, saved: Any, estimator: Any) -> None:
    """Raise SavedEstimatorError (one line) unless the loaded estimator's `transform` of the
    probe input gives the saved `fingerprint`: a setting that changes no parameter shape
    (``activation``), edited with its digest recomputed, loaded and scored differently.

    The tolerance (rtol 1e-3, atol 1e-4) lets a save from another CPU or a GPU load: their
    float32 matmuls sum in another order and their activations round differently, which
    moves a mean by ~1e-6 relative (`_fingerprint` rules out TF32); relu -> tanh moves
    them by ~1e-1 (tests/test_estimator.py)."""
    got = np.asarray(_fingerprint(estimator))
    try:
        want = np.asarray(saved, dtype=np.float64)
    except (TypeError, ValueError):
        want = None
    if want is None or want.shape != got.shape:
        raise SavedEstimatorError(
            f"{meta_path}: its fingerprint is not {got.size} numbers: the file was edited"
        )
    if not np.allclose(got, want, rtol=1e-3, atol=1e-4, equal_nan=True):
        worst = float(np.max(np.abs(got - want)))
        raise SavedEstimatorError(
            f"{meta_path}: its settings do not reproduce the saved model's outputs (transform "
            f"of the probe input differs from the recorded fingerprint by up to {worst:.3g}): "
            "a setting was edited, or the parameters are another model's"
        )


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{'encoder/Dense_0/kernel': shape} of every array of a parameter tree."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(
            int(d) for d in leaf.shape
        )
        for path, leaf in leaves
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.random.RandomState | np.random.Generator):
        return None  # (the seed actually used is saved as seed_)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _meta_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of ``estimator.json``'s content without its own ``sha256`` entry."""
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _read_meta(meta_path: Path) -> dict[str, Any]:
    """``estimator.json`` parsed and checked (format, version, own digest), or a one-line
    `SavedEstimatorError` naming it."""
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SavedEstimatorError(
            f"{meta_path} is not valid JSON (damaged or truncated?): {one_line(error)}"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SavedEstimatorError(f"{meta_path} was not written by {FORMAT}.save")
    version = meta.get("version")
    if type(version) is not int or version not in (1, FORMAT_VERSION):
        raise SavedEstimatorError(
            f"{meta_path} has format version {version!r}; this vae_jax reads 1 and {FORMAT_VERSION}"
        )
    if version >= 2:
        if meta.get("sha256") != _meta_digest(meta):
            raise SavedEstimatorError(
                f"{meta_path} is damaged: its content differs from its recorded SHA-256"
            )
        if not isinstance(meta.get("files"), dict):
            raise SavedEstimatorError(f"{meta_path} lists no parameter files")
    return meta


def _hyperparameters(meta: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments of a saved estimator (version 1 names mapped)."""
    hyper = dict(meta["hyperparameters"])
    hyper["hidden"] = tuple(hyper["hidden"])
    hyper.setdefault("linear_path", False)  # (a save from before linear_path: a plain VAE)
    if meta["version"] == 1:  # epochs and seed meant what max_epochs and random_state mean
        hyper["max_epochs"] = hyper.pop("epochs")
        hyper["early_stopping"] = False
        hyper["random_state"] = hyper.pop("seed")
    return hyper
