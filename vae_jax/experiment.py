"""One experiment end to end: data, training, per-epoch pictures, metrics, checkpoints.

A work directory holds:
  config.json                 the configuration that owns the directory
  metrics.jsonl               one JSON record per epoch (rewritten atomically each epoch)
  checkpoints/<step>/         Orbax checkpoints (the last `keep_checkpoints`, and the final)
  images/samples_epochNNN.png          64 samples from the prior (fixed z across epochs)
  images/reconstructions_epochNNN.png  32 test images above their reconstructions
  images/class_samples_epochNNN.png    conditional models: one row per digit
  images/training_curves.png           train and test loss per epoch
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import data as data_lib
from vae_jax import visualize
from vae_jax.checkpoint import read_config, write_config
from vae_jax.config import ExperimentConfig
from vae_jax.loop import FitResult, fit
from vae_jax.models import VAE
from vae_jax.train import TrainState


class WorkdirError(ValueError):
    """The work directory cannot be used (unwritable, or owned by another configuration)."""


def pad_images(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad uint8 [N, H, W, C] images symmetrically to [N, size, size, C]."""
    h, w = images.shape[1:3]
    if (h, w) == (size, size):
        return images
    if size < h or size < w or (size - h) % 2 or (size - w) % 2:
        raise ValueError(f"cannot pad {h}x{w} images symmetrically to {size}x{size}")
    ph, pw = (size - h) // 2, (size - w) // 2
    return np.pad(images, ((0, 0), (ph, ph), (pw, pw), (0, 0)))


def binarize_once(images: np.ndarray, seed: int) -> np.ndarray:
    """Binarize uint8 grey levels once: pixel ~ Bernoulli(grey / 255), returned as 0/255."""
    u = np.random.default_rng(seed).random(images.shape, dtype=np.float32)
    return np.where(u < images.astype(np.float32) / 255.0, 255, 0).astype(np.uint8)


def prepare_workdir(
    workdir: str | os.PathLike, config: ExperimentConfig, *, overwrite: bool
) -> Path:
    """Create `workdir`, check it is writable and that it belongs to `config`.

    A directory made by a different configuration (other than the epoch budget and the
    checkpoint cadence) is refused unless `overwrite`, so no earlier run is lost by mistake.
    """
    path = Path(workdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise WorkdirError(
            f"work directory {path} is not writable: {error.strerror or error}"
        ) from error
    existing = read_config(path)
    if existing is not None and existing.identity() != config.identity():
        if not overwrite:
            diff = _diff(existing.identity(), config.identity())
            raise WorkdirError(
                f"{path} holds a run of a different configuration ({diff}); "
                "use another --workdir, or --overwrite to start afresh there"
            )
        import shutil

        shutil.rmtree(path / "checkpoints", ignore_errors=True)
        (path / "metrics.jsonl").unlink(missing_ok=True)
    write_config(path, config)
    return path


def _diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> str:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            inner = _diff(va, vb, f"{prefix}{key}.")
            if inner:
                out.append(inner)
        elif va != vb:
            out.append(f"{prefix}{key}: {va} there, {vb} here")
    return "; ".join(out)


def decoder_mean(model: VAE, params: Any, z: jax.Array, label: jax.Array | None) -> jax.Array:
    """The mean of p(x|z) in [0, 1]: sigmoid(logits), or the clipped Gaussian mean."""
    output = model.apply({"params": params}, z, label, method="decode")
    if model.likelihood == "bernoulli":
        return jax.nn.sigmoid(output.loc.astype(jnp.float32))
    return jnp.clip(output.loc.astype(jnp.float32), 0.0, 1.0)


def reconstruct(model: VAE, params: Any, x: jax.Array, label: jax.Array | None) -> jax.Array:
    """Decode the posterior mean of each image: [batch, *image_shape] in [0, 1]."""
    mean, _ = model.apply({"params": params}, x, label, method="encode")
    return decoder_mean(model, params, mean, label)


def make_epoch_pictures(
    workdir: Path, model: VAE, test_images: np.ndarray, test_labels: np.ndarray, seed: int
) -> Callable[[int, TrainState], None]:
    """A hook that writes the per-epoch PNGs; the prior samples use one fixed z throughout."""
    images_dir = workdir / "images"
    z = jax.random.normal(jax.random.key(seed + 1), (64, model.z_dim))
    sample_labels = jnp.arange(64) % 10
    x = jnp.asarray(test_images[:32], jnp.float32) / 255.0
    labels = jnp.asarray(test_labels[:32], jnp.int32)
    conditional = model.num_classes > 0
    per_class = 10
    class_z = jax.random.normal(jax.random.key(seed + 2), (per_class, model.z_dim))
    class_z = jnp.tile(class_z, (10, 1))  # the same 10 z for every digit
    class_labels = jnp.repeat(jnp.arange(10), per_class)

    @jax.jit
    def pictures(params: Any):
        samples = decoder_mean(model, params, z, sample_labels if conditional else None)
        recon = reconstruct(model, params, x, labels if conditional else None)
        by_class = decoder_mean(model, params, class_z, class_labels) if conditional else None
        return samples, recon, by_class

    def hook(epoch: int, state: TrainState) -> None:
        samples, recon, by_class = jax.device_get(pictures(state.params))
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
                num_classes=10,
                per_class=per_class,
                title=f"class-conditional samples, epoch {epoch}",
            )

    return hook


def write_metrics(workdir: Path, records: list[dict[str, Any]]) -> Path:
    """Rewrite metrics.jsonl (one record per line) atomically."""
    path = workdir / "metrics.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    os.replace(tmp, path)
    return path


def load_data(
    config: ExperimentConfig,
    *,
    data_dir: str | None,
    mnist_dir: str | None,
    log: Callable[[str], None] = print,
) -> tuple[data_lib.Split, data_lib.Split]:
    """Load MNIST, pad to the configured size and binarize the test set once if needed."""
    if config.data.dataset != "mnist":
        raise ValueError(f"unknown dataset {config.data.dataset!r} (the CLI supports mnist)")
    _, source = data_lib.prepare_mnist(data_dir, mnist_dir=mnist_dir)
    splits = data_lib.load_mnist(data_dir, mnist_dir=mnist_dir)
    train, test = splits["train"], splits["test"]
    log(
        f"data: {config.data.variant}, {len(train.image)} train / {len(test.image)} test "
        f"examples (source: {source})"
    )
    size = config.data.image_size
    train = data_lib.Split(pad_images(train.image, size), train.label)
    test_image = pad_images(test.image, size)
    if config.data.binarize == "dynamic":
        test_image = binarize_once(test_image, config.data.test_binarize_seed)
    return train, data_lib.Split(test_image, test.label)


def run_experiment(
    config: ExperimentConfig,
    workdir: str | os.PathLike,
    *,
    data_dir: str | None = None,
    mnist_dir: str | None = None,
    overwrite: bool = False,
    resume: bool = True,
    progress: bool = True,
    skip_nonfinite: bool = False,
    checkpoint_every_steps: int = 0,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Train `config` on MNIST into `workdir`: checkpoints, metrics.jsonl and PNGs."""
    path = prepare_workdir(workdir, config, overwrite=overwrite)
    train, test = load_data(config, data_dir=data_dir, mnist_dir=mnist_dir, log=log)
    model = config.model.build(config.data.image_shape)
    pictures = make_epoch_pictures(path, model, test.image, test.label, config.train.seed)

    def on_epoch_end(epoch: int, state: TrainState, records: list[dict[str, Any]]) -> None:
        pictures(epoch, state)
        write_metrics(path, records)

    result = fit(
        config,
        train.image,
        train.label,
        test.image,
        test.label,
        workdir=path,
        resume=resume,
        on_epoch_end=on_epoch_end,
        progress=progress,
        skip_nonfinite=skip_nonfinite,
        checkpoint_every_steps=checkpoint_every_steps,
        log=log,
    )
    write_metrics(path, result.records)
    if result.records:
        visualize.save_training_curves(
            path / "images" / "training_curves.png",
            result.records,
            title=f"{result.objective.name} training, {config.data.variant}",
        )
    log(f"wrote {path}/metrics.jsonl, {path}/images/ and the checkpoint in {path}/checkpoints/")
    return result
