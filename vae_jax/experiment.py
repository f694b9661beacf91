"""One experiment end to end: data, training, per-epoch pictures, metrics, checkpoints.

A work directory holds:
  config.json                 the configuration that owns the directory
  .lock                       locked (flock) while a run uses the directory
  metrics.jsonl               one JSON record per epoch (rewritten atomically each epoch)
  checkpoints/<step>/         Orbax checkpoints (the last `keep_checkpoints`, and the final)
  images/samples_epochNNN.png          64 samples from the prior (fixed z across epochs)
  images/reconstructions_epochNNN.png  32 test images above their reconstructions
  images/class_samples_epochNNN.png    conditional models: one row per digit
  images/training_curves.png           train and test loss per epoch
  tensorboard/events.out.tfevents.*    the numbers and grids per epoch (`vae_jax.tensorboard`)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import visualize
from vae_jax.arrays import Split, is_image_shape, to_float_np
from vae_jax.config import ExperimentConfig
from vae_jax.distributed import is_primary, on_primary
from vae_jax.fields import require_callable, require_path
from vae_jax.loop import FitResult, RunDir, fit
from vae_jax.models import decoder_mean, reconstruct
from vae_jax.optim import make_optimizer
from vae_jax.sources import check_paths, prepare_data
from vae_jax.tensorboard import TensorBoardWriter
from vae_jax.train import TrainState, make_mesh, steps_per_epoch
from vae_jax.trainer import device_memory
from vae_jax.workdir import workdir_lock, writable_dir, write_metrics


def make_epoch_pictures(
    workdir: Path, model: nn.Module, images: np.ndarray, labels: np.ndarray, seed: int
) -> Callable[[int, TrainState], dict[str, np.ndarray]]:
    """A hook that writes the per-epoch PNGs and returns their uint8 grids by name (none on
    other processes than the primary); the prior samples use one fixed z throughout (a model
    with ``sample_prior``, `vae_jax.latents`, draws them from its prior with one fixed key).

    `images` (test images, or training images when there is no test set) give the
    reconstructions: the first 32. Values are drawn clipped to [0, 1].
    """
    images_dir = workdir / "images"
    per_class = 10
    num_classes = max(model.num_classes, 1)

    @jax.jit  # one compiled call instead of one per eager op
    def fixed_z() -> tuple[jax.Array, jax.Array]:
        z = jax.random.normal(jax.random.key(seed + 1), (64, model.z_dim))
        class_z = jax.random.normal(jax.random.key(seed + 2), (per_class, model.z_dim))
        return z, jnp.tile(class_z, (num_classes, 1))  # the same 10 z for every class

    z, class_z = fixed_z()
    # (host arrays put on the device as they are: no eager op to compile)
    sample_labels = jnp.asarray(np.arange(64, dtype=np.int32) % num_classes)
    class_labels = jnp.asarray(np.repeat(np.arange(num_classes, dtype=np.int32), per_class))
    x = jnp.asarray(to_float_np(images[:32]))
    shown_labels = jnp.asarray(np.asarray(labels[:32], np.int32))
    conditional = model.num_classes > 0

    @jax.jit
    def pictures(params: Any):
        prior_z, prior_class_z = z, class_z
        if hasattr(model, "sample_prior"):  # a learned prior or several stochastic layers
            draw = functools.partial(model.apply, {"params": params}, method="sample_prior")
            prior_z = draw(jax.random.key(seed + 1), 64)
            one_per_class = draw(jax.random.key(seed + 2), per_class)
            prior_class_z = jax.tree.map(lambda a: jnp.tile(a, (num_classes, 1)), one_per_class)
        samples = decoder_mean(model, params, prior_z, sample_labels if conditional else None)
        recon = reconstruct(model, params, x, shown_labels if conditional else None)
        by_class = decoder_mean(model, params, prior_class_z, class_labels) if conditional else None
        return samples, recon, by_class

    def hook(epoch: int, state: TrainState) -> dict[str, np.ndarray]:
        # (every process computes them: the parameters may span several processes' devices)
        samples, recon, by_class = jax.device_get(pictures(state.params))
        if not is_primary():
            return {}
        visualize.save_image_grid(
            images_dir / f"samples_epoch{epoch:03d}.png",
            samples,
            ncols=8,
            title=f"prior samples (mean of p(x|z)), epoch {epoch}",
        )
        visualize.save_reconstructions(
            images_dir / f"reconstructions_epoch{epoch:03d}.png",
            np.asarray(x),
            recon,
            ncols=8,
            title=f"test images and reconstructions, epoch {epoch}",
        )
        if by_class is not None:
            visualize.save_class_conditional_grid(
                images_dir / f"class_samples_epoch{epoch:03d}.png",
                by_class,
                num_classes=num_classes,
                per_class=per_class,
                title=f"class-conditional samples, epoch {epoch}",
            )
        grids = {"samples": visualize.image_grid(samples, ncols=8)}
        grids["reconstructions"] = visualize.reconstruction_grid(np.asarray(x), recon, ncols=8)
        if by_class is not None:
            grids["class_samples"] = visualize.image_grid(by_class, ncols=per_class)
        return grids

    return hook


RUN_ONLY = ("placement", "skip_nonfinite", "checkpoint_every_steps")
"""The `FitOptions` a run sets beside its configuration (`run_experiment`'s `run`)."""


def run_experiment(
    config: ExperimentConfig,
    workdir: str | os.PathLike,
    *,
    data_dir: str | None = None,
    mnist_dir: str | None = None,
    overwrite: bool = False,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
    **run: Any,
) -> FitResult:
    """Train `config` on its data set into `workdir`: checkpoints, metrics.jsonl, PNGs and
    (unless ``config.train.tensorboard`` is False) TensorBoard event files.

    The data set is ``config.data.dataset`` (`vae_jax.sources.load_dataset`: "mnist", a
    prepared TFDS name, or a .npz/.npy path). `run` holds the `FitOptions` that are not
    part of the configuration: placement, skip_nonfinite, checkpoint_every_steps.

    See `vae_jax.workdir.claim` for when `workdir` is resumed, refused or (with `overwrite`)
    cleared, and `vae_jax.loop.fit` for the rest.

    Raises:
      ValueError: a bad configuration, path or data file (`WorkdirError` for the work
        directory); the message is one line.
      CheckpointError, DivergenceError, Preempted, DataUnavailableError, OSError: see `fit`.
    """
    others = sorted(set(run) - set(RUN_ONLY))
    if others:  # (before: they replaced the configuration's values, which config.json kept)
        raise TypeError(
            f"run_experiment() got {others}: the configuration sets those (change it with "
            f"dataclasses.replace); the run-only options are {list(RUN_ONLY)}"
        )
    if not isinstance(config, ExperimentConfig):
        raise TypeError(f"config must be an ExperimentConfig, got {type(config).__name__}")
    path = require_path("workdir", workdir)
    require_callable("log", log)
    check_paths(data_dir=data_dir, mnist_dir=mnist_dir)
    # The model and objective are built once, by the configuration's one check that needs
    # the data's event shape: before anything is read or written when the configuration
    # gives it (MNIST), else once the data are read.
    memory = devices_memory(config.train.num_devices)
    built = config.build(memory=memory) if config.data.image_shape else None
    # With several processes (`vae_jax.distributed`), process 0 owns the work directory
    # and prepares the data first (a first MNIST run writes its TFDS copy); the others then
    # read the data, and all of them train.
    primary = is_primary()
    # (the lock first: the directory is probed by `claim`, inside it)
    with workdir_lock(writable_dir(path, probe=False)) if primary else contextlib.nullcontext():

        def load() -> tuple[ExperimentConfig, Split, Split | None]:
            return prepare_data(config, data_dir=data_dir, mnist_dir=mnist_dir, log=log)

        loaded = on_primary(load, "prepare the data")
        read, train, test = loaded if loaded is not None else load()
        if built is None or read != config:  # (the data gave the event shape or classes)
            built = read.build(memory=memory)
        config = read
        options = config.fit_options(**run)
        n_steps_epoch = steps_per_epoch(len(train.image), config.train.batch_size)
        tx = make_optimizer(config.train, n_steps_epoch)  # (refuses a schedule that does not fit)
        model = built.model
        shown = test if test is not None else train
        pictures = None
        if is_image_shape(config.data.image_shape):
            seed = config.train.seed
            pictures = make_epoch_pictures(path, model, shown.image, shown.label, seed)
        else:
            log(
                f"no per-epoch pictures: examples of shape {config.data.image_shape} are not images"
            )

        board = TensorBoardWriter(path) if config.train.tensorboard else None

        def on_epoch_end(epoch: int, state: TrainState, records: list[dict[str, Any]]) -> None:
            grids = pictures(epoch, state) if pictures is not None else {}
            if primary:
                write_metrics(path, records)
            if board is not None:
                board.write(epoch, records, grids)

        result = fit(
            built.objective,
            tx,
            train,  # (Splits from prepare_data; fit checks them against the model)
            x_test=test,
            options=dataclasses.replace(options, log=log),
            # (claimed there, once, when the data and the model are known to fit)
            workdir=RunDir(path, record=config, resume=resume, overwrite=overwrite),
            on_epoch_end=on_epoch_end,
            progress=progress,
        )
        if not primary:
            return result
        write_metrics(path, result.records)
        if result.records:
            visualize.save_training_curves(
                path / "images" / "training_curves.png",
                result.records,
                title=f"{result.objective.name} training, {config.data.variant}",
            )
        if int(result.state.step) == 0:
            log(f"nothing was trained (0 epochs): {path} holds no checkpoint")
        else:
            pictures_written = "" if pictures is None else f", {path}/images/"
            log(
                f"wrote {path}/metrics.jsonl{pictures_written} and the checkpoints in "
                f"{path}/checkpoints/"
            )
        return result


def devices_memory(num_devices: int) -> int:
    """Bytes of memory of the devices a run of `num_devices` uses, together (batches are
    split over them); ValueError if there are fewer devices."""
    mesh = make_mesh(num_devices)
    return device_memory(mesh) * mesh.size
