"""Reading a TFDS dataset prepared as ``array_record``, without TensorFlow.

`read_split` reads a whole split into memory through ``tfds.data_source``: grey-level PNG
images are inflated and unfiltered here in vectorized numpy (several times faster than
decoding example by example, and than PIL), anything else through the TFDS features' own
decoders. `vae_jax.mnist` prepares MNIST; `vae_jax.sources` reads other datasets by name.

No code is run from data: a prepared dataset's ``features.json`` (and the ``features`` of its
``dataset_info.json``) names Python classes, and TFDS imports the module of any class it does
not know (``FeatureConnector.cls_from_name``). `check_feature_classes` reads those files
first, as plain JSON, and refuses every class name that is not one of TFDS's own feature
classes in `ALLOWED_FEATURE_CLASSES`; `builder` and `read_split` call it before TFDS sees
the directory.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vae_jax.arrays import Split
from vae_jax.fields import require_path

DATA_DIR_ENV = "TFDS_DATA_DIR"
_READ_CHUNK = 8192


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The TFDS data directory: `data_dir` (a path: TypeError / ValueError, one line, for
    anything else or ""), else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or "~/tensorflow_datasets"
    return require_path("data_dir", data_dir).expanduser().absolute()


# The feature classes a prepared dataset may name: TFDS's own, already imported with TFDS.
# Any other name would make TFDS import the module it names, from wherever Python finds it
# (the current directory included): code chosen by the data.
_FEATURES = "tensorflow_datasets.core.features."
ALLOWED_FEATURE_CLASSES = frozenset(
    _FEATURES + name
    for name in (
        "features_dict.FeaturesDict",
        "image_feature.Image",
        "class_label_feature.ClassLabel",
        "tensor_feature.Tensor",
        "feature.Tensor",  # (the name older TFDS versions wrote)
        "scalar.Scalar",
        "text_feature.Text",
    )
)
_CLASS_KEYS = ("pythonClassName", "python_class_name", "type")  # where TFDS reads a class
_MAX_INFO_BYTES = 64 << 20  # a dataset_info.json of many splits is a few MB
_MAX_DEPTH = 3  # <data_dir>/<name>[/<config>]/<version>/features.json


def check_feature_classes(name: str, data_dir: str | os.PathLike | None) -> None:
    """Raise ValueError (one line) unless every feature class named by the prepared copies of
    dataset `name` in `data_dir` (``features.json``, and the ``features`` entry of
    ``dataset_info.json``, in every config and version) is in `ALLOWED_FEATURE_CLASSES`.

    The files are read as JSON; nothing is imported. Call it before ``tfds.builder``.
    """
    base = name.split(":", 1)[0].split("/", 1)[0]
    root = resolve_data_dir(data_dir)
    if not base or base in (".", "..") or os.sep in base:
        raise ValueError(f"{name!r} is not a TFDS dataset name")
    for path in _info_files(root / base):
        try:
            if path.stat().st_size > _MAX_INFO_BYTES:
                raise ValueError(f"it has over {_MAX_INFO_BYTES >> 20} MiB")
            value = json.loads(path.read_bytes())
        except (OSError, ValueError, RecursionError) as error:
            raise ValueError(
                f"{path} cannot be read as JSON ({type(error).__name__}: "
                f"{' '.join(str(error).split())[:200]})"
            ) from None
        if path.name == "dataset_info.json":
            value = value.get("features") if isinstance(value, dict) else None
        for class_name in _class_names(value):
            if class_name not in ALLOWED_FEATURE_CLASSES:
                allowed = ", ".join(sorted(c.rsplit(".", 1)[1] for c in ALLOWED_FEATURE_CLASSES))
                raise ValueError(
                    f"{path} names the feature class {class_name!r}, which vae_jax does not "
                    f"read (only TFDS's own {allowed}): TFDS would import and run the code it "
                    "names"
                )


def _info_files(directory: Path, depth: int = 0) -> Iterator[Path]:
    """The ``features.json`` and ``dataset_info.json`` files under `directory`, at most
    `_MAX_DEPTH` levels down."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.name in ("features.json", "dataset_info.json"):
            yield Path(entry.path)
        elif depth + 1 < _MAX_DEPTH and entry.is_dir():
            yield from _info_files(Path(entry.path), depth + 1)


def _class_names(value: Any) -> Iterator[Any]:
    """Every value TFDS could read as a feature class name in a features JSON: those of
    the keys ``pythonClassName`` / ``python_class_name`` and, in the legacy form, a dotted
    ``type``."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key in _CLASS_KEYS:
                if key in item and (key != "type" or "." in str(item[key])):
                    yield item[key]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def builder(name: str, data_dir: str | os.PathLike | None) -> Any:
    """``tfds.builder(name, data_dir=...)`` after `check_feature_classes`: a prepared
    dataset that names a class TFDS would import is refused (ValueError) before TFDS reads
    it."""
    import tensorflow_datasets as tfds

    check_feature_classes(name, data_dir)
    return tfds.builder(name, data_dir=os.fspath(resolve_data_dir(data_dir)))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_scanlines(png: bytes, height: int, width: int) -> bytes | None:
    """Returns the inflated, still filtered scanlines of a plain 8-bit grayscale PNG.

    Returns ``None`` for anything else (other color types or bit depths, interlacing, extra
    chunks, bad CRCs), which the caller then decodes with PIL.
    """
    if not png.startswith(_PNG_SIGNATURE):
        return None
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pos, size, idat, seen_ihdr = 8, len(png), [], False
    while pos + 12 <= size:
        length, kind = struct.unpack_from(">I4s", png, pos)
        end = pos + 8 + length
        if (
            end + 4 > size
            or zlib.crc32(png[pos + 4 : end]) != struct.unpack_from(">I", png, end)[0]
        ):
            return None
        if kind == b"IHDR":
            if png[pos + 8 : end] != ihdr:
                return None
            seen_ihdr = True
        elif kind == b"IDAT" and seen_ihdr:
            idat.append(png[pos + 8 : end])
        elif kind == b"IEND" and idat:
            try:
                rows = zlib.decompress(b"".join(idat))
            except zlib.error:
                return None
            return rows if len(rows) == height * (width + 1) else None
        else:
            return None
        pos = end + 4
    return None


def _unfilter(scanlines: np.ndarray) -> np.ndarray:
    """Undoes PNG filtering (1 byte per pixel) for a batch of same-size images.

    Args:
        scanlines: ``uint8`` ``[N, H, 1 + W]``: per row, the filter type then the filtered bytes.

    Returns:
        ``uint8`` ``[N, H, W]`` pixels.
    """
    n, height, _ = scanlines.shape
    filters = scanlines[:, :, 0]
    if filters.max(initial=0) > 4:
        raise ValueError("invalid PNG filter type")
    data = scanlines[:, :, 1:]
    out = np.empty(data.shape, np.uint8)
    prev = np.zeros((n, data.shape[2]), np.uint8)
    for r in range(height):
        row = data[:, r].copy()
        kinds = filters[:, r]
        sub = kinds == 1
        if sub.any():
            row[sub] = np.cumsum(row[sub], axis=1, dtype=np.uint8)
        up = kinds == 2
        if up.any():
            row[up] += prev[up]
        for kind in (3, 4):  # Average, Paeth: sequential along the row.
            idx = np.flatnonzero(kinds == kind)
            if idx.size:
                row[idx] = _unfilter_sequential(row[idx], prev[idx], kind)
        out[:, r] = row
        prev = row
    return out


def _unfilter_sequential(row: np.ndarray, above: np.ndarray, kind: int) -> np.ndarray:
    x = row.astype(np.int16)
    b_row = above.astype(np.int16)
    left = np.zeros(len(x), np.int16)
    upper_left = np.zeros(len(x), np.int16)
    for c in range(x.shape[1]):
        b = b_row[:, c]
        if kind == 3:
            pred = (left + b) >> 1
        else:
            pa = np.abs(b - upper_left)
            pb = np.abs(left - upper_left)
            pc = np.abs(left + b - 2 * upper_left)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, b, upper_left))
        left = (x[:, c] + pred) & 0xFF
        x[:, c] = left
        upper_left = b
    return x.astype(np.uint8)


def _decode_images(pngs: Sequence[bytes], image_feature: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Decodes encoded grayscale images to ``uint8`` ``[N, *shape]``.

    Plain 8-bit grayscale PNGs (as written by PIL or TensorFlow) are inflated with zlib and
    unfiltered in vectorized numpy, several times faster than PIL one by one; anything else
    goes through the TFDS feature's own decoder.
    """
    height, width = shape[0], shape[1]
    out = np.empty((len(pngs), *shape), np.uint8)
    fast_idx, fast_rows = [], []
    for i, png in enumerate(pngs):
        rows = _png_scanlines(png, height, width)
        if rows is None:
            image = np.asarray(image_feature.decode_example_np(png))
            if image.shape != shape:
                raise ValueError(f"decoded image of shape {image.shape}, expected {shape}")
            out[i] = image
        else:
            fast_idx.append(i)
            fast_rows.append(rows)
    if fast_idx:
        scanlines = np.frombuffer(b"".join(fast_rows), np.uint8).reshape(-1, height, width + 1)
        out[fast_idx] = _unfilter(scanlines).reshape(-1, *shape)
    return out


def _read_split_decoded(
    source: Sequence[Mapping[str, Any]], image_key: str, label_key: str | None
) -> Split:
    """Reads a whole data source that decodes its examples itself (the general, slower path)."""
    images: list[np.ndarray] = []
    labels: list[int] = []
    getitems = getattr(source, "__getitems__", None)
    for start in range(0, len(source), _READ_CHUNK):
        keys = list(range(start, min(start + _READ_CHUNK, len(source))))
        batch = getitems(keys) if getitems is not None else [source[i] for i in keys]
        images.extend(np.asarray(example[image_key]) for example in batch)
        labels.extend(int(example[label_key]) if label_key else 0 for example in batch)
    return Split(np.stack(images), np.asarray(labels, np.int32))


def read_split(
    name: str | Any,
    split: str,
    data_dir: str | os.PathLike | None,
    *,
    image_key: str = "image",
    label_key: str | None = "label",
) -> Split:
    """Reads a whole split of a prepared array_record TFDS dataset into memory.

    Works for any dataset with a fixed-shape `image_key` feature (``tfds.features.Image``, or
    a numeric ``Tensor``) and, optionally, a scalar integer `label_key` feature. Grey-level
    PNG images (``mnist``) are read in batches through ``tfds.data_source`` as raw bytes and
    decoded here (much faster than decoding example by example); other layouts use the data
    source's own decoding (no TensorFlow either way).

    Args:
        name: TFDS dataset name, e.g. ``"mnist"`` (its feature classes are checked first:
            `check_feature_classes`), or a TFDS builder.
        split: Split name, e.g. ``"train"`` (TFDS split slicing syntax also works).
        data_dir: TFDS data directory (``None``: env ``TFDS_DATA_DIR``, else
            ``~/tensorflow_datasets``); unused when `name` is a builder.
        image_key, label_key: the features read (`label_key` None: labels are zeros).

    Returns:
        A :class:`Split` with ``image`` ``[N, *shape]`` (uint8 for images) and ``label``
        ``int32`` ``[N]``.
    """
    import tensorflow_datasets as tfds

    dataset = builder(name, data_dir) if isinstance(name, str) else name
    features = dataset.info.features
    image_feature = features[image_key]
    shape = tuple(image_feature.shape)
    fast = (
        isinstance(image_feature, tfds.features.Image)
        and len(shape) == 3
        and shape[-1] == 1
        and all(isinstance(d, int) for d in shape)
        and np.dtype(image_feature.np_dtype) == np.uint8
        and label_key is not None
        and tuple(features[label_key].shape) == ()
        and hasattr(tfds.decode, "DeserializeMethod")
    )
    if not fast:
        return _read_split_decoded(dataset.as_data_source(split=split), image_key, label_key)

    from tensorflow_datasets.proto import tf_example_pb2

    source = dataset.as_data_source(
        split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
    )
    n = len(source)
    image = np.empty((n, *shape), np.uint8)
    label = np.empty((n,), np.int32)
    for start in range(0, n, _READ_CHUNK):
        stop = min(start + _READ_CHUNK, n)
        pngs = []
        for i, record in enumerate(source.__getitems__(list(range(start, stop))), start):
            feature = tf_example_pb2.Example.FromString(record).features.feature
            pngs.append(feature[image_key].bytes_list.value[0])
            label[i] = feature[label_key].int64_list.value[0]
        image[start:stop] = _decode_images(pngs, image_feature, shape)
    return Split(image, label)
