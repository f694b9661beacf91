"""Test helper: write MNIST-format IDX files (tests build tiny MNIST copies with it)."""

from __future__ import annotations

import gzip as gzip_lib
import os
from pathlib import Path

import numpy as np

from vae_jax.mnist import _IDX_FILES, NUM_CLASSES, _idx_bytes


def write_idx_files(
    directory: str | os.PathLike,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    gzip: bool = True,
) -> None:
    """Writes the four MNIST IDX files (the layout of the original distribution).

    Args:
        directory: Output directory (created if needed). Files are named
            ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
            and ``t10k-labels-idx1-ubyte``, with a ``.gz`` suffix when ``gzip``.
        train_images: ``uint8`` array ``[N, 28, 28]`` or ``[N, 28, 28, 1]``.
        train_labels: Integer array ``[N]`` with values in 0-9.
        test_images: ``uint8`` array ``[M, 28, 28]`` or ``[M, 28, 28, 1]``.
        test_labels: Integer array ``[M]`` with values in 0-9.
        gzip: Whether to gzip the files.

    Raises:
        ValueError: If shapes, dtypes or label values are invalid.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"train": (train_images, train_labels), "test": (test_images, test_labels)}
    for split, (images, labels) in arrays.items():
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(
                f"{split} images must be uint8 [N, 28, 28(, 1)], got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"{split} labels must have shape [{len(images)}], got {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise ValueError(f"{split} labels must be in 0..{NUM_CLASSES - 1}")
        image_name, label_name = _IDX_FILES[split]
        for name, array in ((image_name, images), (label_name, labels.astype(np.uint8))):
            content = _idx_bytes(array)
            if gzip:
                (directory / f"{name}.gz").write_bytes(gzip_lib.compress(content, mtime=0))
            else:
                (directory / name).write_bytes(content)


def write_random_mnist(
    directory: str | os.PathLike, n_train: int, n_test: int, rng: np.random.Generator
) -> None:
    """IDX files of `n_train` + `n_test` blurry random 28x28 'digits' with random labels,
    drawn from `rng` (images first, then labels: callers that draw more afterwards get the
    same stream as before this helper existed)."""
    n = n_train + n_test
    images = (rng.random((n, 28, 28)) ** 3 * 255).astype(np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    write_idx_files(
        directory, images[:n_train], labels[:n_train], images[n_train:], labels[n_train:]
    )
