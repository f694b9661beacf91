"""Checkpoints with Orbax: atomic saves, keep-last-K, fall back past a corrupt latest one.

A work directory holds ``config.json`` (the `ExperimentConfig` that made it) and
``checkpoints/<step>/`` written by an Orbax `CheckpointManager`: ``state`` (the `TrainState`
arrays, tensorstore/OCDBT) and ``meta`` (JSON: epoch, per-epoch records, partial-epoch
sums). Orbax writes each step into a temporary directory and renames it when complete, so
a run killed mid-write leaves the previous checkpoints untouched. Nothing is pickled.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp

from vae_jax.config import ExperimentConfig
from vae_jax.models import VAE
from vae_jax.train import TrainState, init_train_state, make_keys, make_optimizer

log = logging.getLogger("vae_jax.checkpoint")

CHECKPOINT_SUBDIR = "checkpoints"
CONFIG_FILE = "config.json"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says what is intact."""


class Checkpointer:
    """Saves and restores `TrainState` plus JSON metadata under ``workdir/checkpoints``."""

    def __init__(self, workdir: str | os.PathLike, *, max_to_keep: int = 3) -> None:
        self.directory = Path(workdir).absolute() / CHECKPOINT_SUBDIR
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """The steps of the complete checkpoints on disk, oldest first."""
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: TrainState, meta: dict[str, Any]) -> None:
        """Write a checkpoint for `step`, atomically; raise `CheckpointError` on failure."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        try:
            self.manager.save(step, args=args, force=True)
            self.manager.wait_until_finished()
        except Exception as error:  # disk full, permissions, ...: say what is intact
            previous = [s for s in self.steps() if s != step]
            kept = f"the checkpoint at step {previous[-1]} is intact" if previous else "none kept"
            raise CheckpointError(
                f"could not write the checkpoint at step {step} in {self.directory} "
                f"({type(error).__name__}: {error}); {kept}"
            ) from error

    def restore(
        self, target: TrainState, step: int | None = None
    ) -> tuple[TrainState, dict[str, Any], int] | None:
        """Restore the newest readable checkpoint (or exactly `step`), shaped like `target`.

        A checkpoint that fails to load (truncated or corrupted files, wrong structure) is
        skipped with a warning and the previous one is tried. Returns (state, meta, step),
        or None when there is no checkpoint at all.
        """
        steps = self.steps()
        if step is not None:
            steps = [s for s in steps if s == step]
            if not steps:
                raise CheckpointError(f"no checkpoint at step {step} in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        for candidate in reversed(steps):
            args = ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            )
            try:
                restored = self.manager.restore(candidate, args=args)
                state, meta = restored.state, restored.meta
                _check_like(state, target)
            except Exception as error:  # corrupt or incompatible: fall back, loudly
                message = (
                    f"checkpoint at step {candidate} in {self.directory} is unreadable "
                    f"({type(error).__name__}: {str(error)[:200]}); trying the previous one"
                )
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                log.warning(message)
                continue
            return state, meta, candidate
        if steps:
            raise CheckpointError(f"no readable checkpoint in {self.directory} (tried {steps})")
        return None

    def close(self) -> None:
        self.manager.close()


def _check_like(state: Any, target: Any) -> None:
    """Raise ValueError unless `state` has `target`'s tree structure, shapes and dtypes."""
    if jax.tree.structure(state) != jax.tree.structure(target):
        raise ValueError("checkpoint has a different structure than this model")
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(target), strict=True):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"checkpoint array {a.shape} {a.dtype} != model's {b.shape} {b.dtype}")


def write_config(workdir: str | os.PathLike, config: ExperimentConfig) -> None:
    """Record the configuration that owns `workdir` (written atomically)."""
    path = Path(workdir) / CONFIG_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_config(workdir: str | os.PathLike) -> ExperimentConfig | None:
    """The configuration recorded in `workdir`, or None if it has none.

    Raises:
      CheckpointError: the file exists but is not a valid configuration.
    """
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        return ExperimentConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{path} is not a valid vae_jax configuration: {error}") from error


class LoadedModel(NamedTuple):
    """What `load_checkpoint` returns: the module, its parameters and their provenance."""

    model: VAE
    params: Any
    config: ExperimentConfig
    step: int
    meta: dict[str, Any]


def load_checkpoint(workdir: str | os.PathLike, step: int | None = None) -> LoadedModel:
    """Load a trained model from an experiment's work directory.

    Example:
      >>> loaded = load_checkpoint("runs/mnist")
      >>> mean, logvar = loaded.model.apply(
      ...     {"params": loaded.params}, images, method="encode")

    Args:
      workdir: the directory given to the experiment (`--workdir`).
      step: a specific checkpoint; default the newest readable one.
    """
    config = read_config(workdir)
    if config is None:
        raise CheckpointError(f"{workdir} has no {CONFIG_FILE}: not a vae_jax work directory")
    model = config.model.build(config.data.image_shape)
    tx = make_optimizer(config.train.learning_rate)
    target = init_train_state(model, tx, make_keys(config.train.seed).init)
    checkpointer = Checkpointer(workdir, max_to_keep=config.train.keep_checkpoints)
    try:
        restored = checkpointer.restore(target, step)
    finally:
        checkpointer.close()
    if restored is None:
        raise CheckpointError(f"{workdir} holds no checkpoint")
    state, meta, found = restored
    return LoadedModel(model, state.params, config, found, meta)
