"""Where a data set comes from: MNIST, any TFDS dataset prepared as array_record, or files.

`load_dataset(spec)` reads a data set named by one string into memory, as a `Dataset` of
`vae_jax.arrays.Split`s:

- ``"mnist"``: MNIST through its offline preparation chain (`vae_jax.mnist.load_mnist`);
- a path ending in ``.npz``: arrays ``x_train`` (required), ``x_test``, ``y_train``,
  ``y_test`` (optional); read without pickle, each array's header checked first against
  the bytes stored and the machine's memory (`check_headers`);
- a path ending in ``.npy``: one array ``[N, *event_shape]``, the training set, memory-mapped
  (uint8 and float32 arrays are never copied whole: with ``--data_placement host`` they can
  be larger than memory; its header is checked against the file's size first);
- any other name: a TFDS dataset already prepared as ``array_record`` in the TFDS data
  directory, read with ``tfds.data_source`` (no TensorFlow). Its example feature is the
  ``tfds.features.Image`` (or else the numeric ``Tensor``) among its features, preferring one
  named ``image``; its label the ``ClassLabel`` feature, if any. Splits "train" and, if
  present, "test".

`load_dataset` only reads; `prepare_data` checks what it read (`vae_jax.arrays.check_split`,
before binarizing the test split once) and returns `Split`s, which `fit` checks again
against the model (free for uint8, one read of float32 data).
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vae_jax.arrays import (
    Split,
    binarize_once,
    check_dtype,
    check_labels,
    check_shape,
    check_split,
    is_real_dtype,
    pad_images,
)
from vae_jax.config import ExperimentConfig
from vae_jax.fields import require_path
from vae_jax.tfds_io import DATA_DIR_ENV, resolve_data_dir
from vae_jax.workdir import one_line

FILE_SUFFIXES = (".npz", ".npy")


class Dataset(NamedTuple):
    """A data set in memory, as read (unchecked: `prepare_data` checks it).

    Attributes:
      x_train: [N, *event_shape] training examples.
      y_train: [N] integer labels, or None.
      x_test, y_test: the test split, or None when the source has none.
      num_classes: the label count when the source declares it (a TFDS ClassLabel), else
        None.
      source: where the data came from, for logs.
    """

    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    num_classes: int | None
    source: str


def is_file_spec(spec: str) -> bool:
    """Whether `spec` names a file (.npz or .npy) rather than a dataset."""
    return spec.lower().endswith(FILE_SUFFIXES)


def load_dataset(
    spec: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    mnist_dir: str | None = None,
) -> Dataset:
    """Read the data set `spec` names (see the module docstring; a path object is a
    file's path) into memory.

    Raises:
      ValueError: a missing or malformed file, or a TFDS dataset that is not prepared as
        array_record in the data directory (the message says how to prepare it).
      DataUnavailableError: MNIST could not be prepared from any source.
    """
    if isinstance(spec, os.PathLike):
        return load_file(spec)
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a dataset name or a file's path, got {type(spec).__name__}")
    if spec == "mnist":
        from vae_jax.mnist import load_mnist_with_source

        splits, source = load_mnist_with_source(data_dir, mnist_dir=mnist_dir)
        train, test = splits["train"], splits["test"]
        return Dataset(train.image, train.label, test.image, test.label, 10, source)
    if is_file_spec(spec):
        return load_file(spec)
    return load_tfds(spec, data_dir)


def load_file(path: str | os.PathLike) -> Dataset:
    """Read a .npz (``x_train``, ``x_test``, ``y_train``, ``y_test``) or .npy file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"data file {path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(6)
    if not magic.startswith((b"\x93NUMPY", b"PK")):  # .npy header, zip (.npz) header
        raise ValueError(f"{path} is not a .npy or .npz file (it starts with {magic!r})")
    check_headers(path)  # (before numpy allocates what a header claims)
    try:  # a .npy is memory-mapped: rows are read when used (--data_placement host)
        if path.suffix.lower() == ".npy":
            loaded = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"cannot read {path} as a NumPy file: {one_line(error)}") from None
    if isinstance(loaded, np.ndarray):  # .npy: the training set, no labels
        _check_structure(path, loaded, None, None, None)
        return Dataset(loaded, None, None, None, None, f"{path}")
    with loaded:
        names = set(loaded.files)
        known = {"x_train", "x_test", "y_train", "y_test"}
        if "x_train" not in names:
            raise ValueError(
                f"{path} has no array x_train (it has {sorted(names) or 'none'}); expected "
                "x_train, and optionally x_test, y_train, y_test"
            )
        if names - known:
            raise ValueError(f"{path} has unexpected arrays {sorted(names - known)}")
        if "y_test" in names and "x_test" not in names:
            raise ValueError(f"{path} has y_test but no x_test")
        try:
            arrays = {name: loaded[name] for name in names}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"cannot read the arrays of {path}: {one_line(error)}") from None
    get = arrays.get
    _check_structure(path, arrays["x_train"], get("y_train"), get("x_test"), get("y_test"))
    return Dataset(arrays["x_train"], get("y_train"), get("x_test"), get("y_test"), None, f"{path}")


def _check_structure(path: Path, x_train: Any, y_train: Any, x_test: Any, y_test: Any) -> None:
    """Raise ValueError (one line) unless the arrays read from `path` have a data set's
    shapes and dtypes: [N >= 1, *event] of a real dtype (the test split: the training
    split's event shape), integer labels [N] (before: a 1-D x_train, 3 labels for 10
    examples or a string array were returned as read). Values are `prepare_data`'s."""
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x is None:
            continue
        name = f"{path}: x_{split}"
        event = None if split == "train" else tuple(x_train.shape[1:])
        check_shape(x.shape, name=name, event_shape=event)
        check_dtype(x.dtype, name=name)
        if y is not None:
            check_labels(y, x.shape[0], name=f"{path}: y_{split}")


def check_headers(path: Path) -> None:
    """Raise ValueError (one line) unless every array header of the .npy or .npz at `path`
    claims at most the bytes stored for it and, for a .npz (read into memory), at most the
    machine's memory in all: numpy allocates what a header claims before it reads (a header
    claiming 10^12 rows was a MemoryError traceback). Only headers are read; nothing is
    unpickled."""
    try:
        if path.suffix.lower() == ".npy":
            with open(path, "rb") as f:
                _check_header(f, path.stat().st_size, f"{path}")
            return
        total = 0
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if member.filename.endswith(".npy"):
                    with archive.open(member) as f:
                        where = f"{path}: array {member.filename[:-4]!r}"
                        total += _check_header(f, member.file_size, where)
    except HeaderError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"cannot read {path} as a NumPy file: {one_line(error)}") from None
    memory = machine_memory()
    if total > memory:
        raise HeaderError(
            f"{path}: its array headers claim {total:,} bytes, more than this machine's memory "
            f"({memory:,} bytes): a damaged or crafted file, or data too large for a .npz (a "
            ".npy is memory-mapped)"
        )


def machine_memory() -> int:
    """Bytes of physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class HeaderError(ValueError):
    """An array header claims more bytes than its file holds or the machine has."""


def _check_header(f: Any, size: int, where: str) -> int:
    """The bytes of data the .npy header at the start of `f` (of `size` bytes in all)
    claims; HeaderError if the file holds fewer (object arrays are left to np.load, which
    refuses them without pickle)."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise HeaderError(f"{where} has .npy format version {version}; this reads 1.0 and 2.0")
    if dtype.hasobject:
        return 0
    nbytes = math.prod(shape) * dtype.itemsize
    stored = size - f.tell()
    if nbytes > stored:
        raise HeaderError(
            f"{where}: its header claims shape {shape} {dtype} = {nbytes:,} bytes, but the "
            f"file holds {max(stored, 0):,} (truncated, damaged or crafted)"
        )
    return nbytes


def load_tfds(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Read splits "train" and "test" (if present) of a prepared array_record TFDS dataset."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import file_adapters

    from vae_jax.tfds_io import check_feature_classes, read_split, resolve_data_dir

    root = resolve_data_dir(data_dir)
    check_feature_classes(name, root)  # (before TFDS reads it: no class named by data imported)
    how = (
        f"prepare it on a machine with TensorFlow (`tfds build {name} "
        f"--file_format=array_record --data_dir DIR`) and pass that DIR as --data_dir (or "
        "$TFDS_DATA_DIR)"
    )
    try:
        builder = tfds.builder(name, data_dir=os.fspath(root))
        prepared = builder.is_prepared()
    except Exception as error:  # DatasetNotFoundError, unreadable dataset_info.json, ...
        why = (
            f"no {root}/{name}/<version>/dataset_info.json, and TFDS knows no such dataset"
            if type(error).__name__ == "DatasetNotFoundError"
            else f"{type(error).__name__}: {one_line(error)[:200]}"
        )
        raise ValueError(f"no TFDS dataset {name!r} in {root} ({why}); {how}") from None
    if not prepared:
        raise ValueError(f"TFDS dataset {name!r} is not prepared in {root}; {how}")
    if builder.info.file_format != file_adapters.FileFormat.ARRAY_RECORD:
        fmt = getattr(builder.info.file_format, "value", builder.info.file_format)
        raise ValueError(
            f"TFDS dataset {name!r} in {root} is prepared as {fmt!r}, which needs TensorFlow "
            f"to read; {how}"
        )
    features = builder.info.features
    image_key, label_key, num_classes = _find_features(name, features)
    splits = set(builder.info.splits)
    if "train" not in splits:
        raise ValueError(f"TFDS dataset {name!r} has no 'train' split (it has {sorted(splits)})")
    try:
        train = read_split(builder, "train", None, image_key=image_key, label_key=label_key)
        x_test = y_test = None
        if "test" in splits:
            x_test, y_test = read_split(
                builder, "test", None, image_key=image_key, label_key=label_key
            )
    except Exception as error:  # a truncated or altered shard, a missing file, ...
        raise ValueError(
            f"the prepared copy of TFDS dataset {name!r} in {root} cannot be read "
            f"({type(error).__name__}: {one_line(error)[:200]}): it is damaged; delete "
            f"{root}/{name} and {how}"
        ) from None
    y_train = train.label if label_key else None
    y_test = y_test if label_key else None
    source = f"TFDS {name} in {root} (x: {image_key!r}, label: {label_key!r})"
    return Dataset(train.image, y_train, x_test, y_test, num_classes, source)


def _find_features(name: str, features: Any) -> tuple[str, str | None, int | None]:
    """(example key, label key or None, number of classes or None) of a FeaturesDict."""
    import tensorflow_datasets as tfds

    items = dict(features.items())
    images = [k for k, f in items.items() if isinstance(f, tfds.features.Image)]
    tensors = [
        k
        for k, f in items.items()
        if type(f) is tfds.features.Tensor and len(f.shape) >= 1 and is_real_dtype(f.np_dtype)
    ]
    candidates = images or tensors
    if not candidates:
        raise ValueError(
            f"TFDS dataset {name!r} has no image or numeric tensor feature to model "
            f"(features: {sorted(items)})"
        )
    image_key = "image" if "image" in candidates else candidates[0]
    if any(d is None for d in items[image_key].shape):
        raise ValueError(
            f"TFDS dataset {name!r}: feature {image_key!r} has no fixed shape "
            f"({items[image_key].shape}); only fixed-shape examples can be batched"
        )
    labels = [k for k, f in items.items() if isinstance(f, tfds.features.ClassLabel)]
    label_key = "label" if "label" in labels else (labels[0] if labels else None)
    num_classes = items[label_key].num_classes if label_key else None
    return image_key, label_key, num_classes


def check_paths(*, data_dir: str | os.PathLike | None, mnist_dir: str | os.PathLike | None) -> None:
    """Raise (one line) unless the data paths given (or set in the environment) can be used:
    TypeError for what is not a path, ValueError for "" or what is not a directory. Called
    by `run_experiment` and `evaluate_checkpoint` before they read or write anything."""
    if data_dir is not None and resolve_data_dir(data_dir).is_file():
        raise ValueError(f"data_dir {os.fspath(data_dir)!r} is not a directory")
    if data_dir is None and os.environ.get(DATA_DIR_ENV):
        if resolve_data_dir(None).is_file():
            raise ValueError(f"{DATA_DIR_ENV}={os.environ[DATA_DIR_ENV]!r} is not a directory")
    if mnist_dir is not None and not require_path("mnist_dir", mnist_dir).expanduser().is_dir():
        raise ValueError(f"mnist_dir {os.fspath(mnist_dir)!r} is not a directory")


def prepare_data(
    config: ExperimentConfig,
    *,
    data_dir: str | os.PathLike | None = None,
    mnist_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> tuple[ExperimentConfig, Split, Split | None]:
    """The data of `config` as the experiments train and evaluate on them.

    Reads ``config.data.dataset`` (`load_dataset`), zero-pads MNIST to
    ``config.data.image_size``, checks both splits (`vae_jax.arrays.check_split`: values in
    [0, 1] for a Bernoulli likelihood or binarization, labels for a conditional model),
    and binarizes the test set once with ``config.data.test_binarize_seed`` when training
    binarizes dynamically.

    Returns:
      (config, train, test): `config` with the data's event shape (and, for a conditional
      model, the source's class count) filled in; test is None when the source has none.
    """
    dataset = load_dataset(config.data.dataset, data_dir=data_dir, mnist_dir=mnist_dir)
    x_train, x_test = dataset.x_train, dataset.x_test
    if config.data.dataset == "mnist":
        x_train = pad_images(x_train, config.data.image_size)
        x_test = None if x_test is None else pad_images(x_test, config.data.image_size)
    else:
        config = replace(config, data=replace(config.data, event_shape=tuple(x_train.shape[1:])))
    model = config.model
    if model.conditional and dataset.num_classes and dataset.num_classes != model.num_classes:
        config = replace(config, model=replace(model, num_classes=dataset.num_classes))
    checks: dict[str, Any] = {
        "num_classes": config.model.num_classes if config.model.conditional else None,
        "unit_interval": model.likelihood == "bernoulli" or config.data.binarize == "dynamic",
    }
    if config.data.dataset == "mnist":  # (checked as read: uint8 28x28, labels 0..9)
        assert dataset.y_train is not None and dataset.y_test is not None
        train = Split(x_train, dataset.y_train)
        test = None if x_test is None else Split(x_test, dataset.y_test)
    else:
        train = check_split(x_train, dataset.y_train, name=f"{config.data.dataset} train", **checks)
        test = None
    if x_test is not None and test is None:
        test = check_split(
            x_test,
            dataset.y_test,
            name=f"{config.data.dataset} test",
            event_shape=train.image.shape[1:],
            **checks,
        )
    if test is not None:
        if config.data.binarize == "dynamic":
            test = Split(binarize_once(test.image, config.data.test_binarize_seed), test.label)
    n_test = 0 if test is None else len(test.image)
    log(
        f"data: {config.data.variant}, {len(train.image)} train / {n_test} test examples, "
        f"{train.image.dtype} (source: {dataset.source})"
    )
    return config, train, test
