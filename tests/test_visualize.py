"""Tests for vae_jax.visualize: grid arithmetic, PNG output, manifold, PCA, interpolation."""

import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vae_jax import visualize as vis


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _phi(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF via math.erf (independent of the inverse CDF under test)."""
    return np.array([0.5 * (1.0 + math.erf(float(v) / math.sqrt(2.0))) for v in np.ravel(z)])


def _upscale(grid: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)


def _read_png(path: pathlib.Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im)


# ----------------------------------------------------------------------------- image_grid


def test_grid_shape_arithmetic_and_placement(rng):
    images = rng.random((7, 5, 4))  # N=7, H=5, W=4
    grid = vis.image_grid(images, ncols=3, padding=2, pad_value=1.0)
    # 3 rows x 3 cols: H' = 3*5 + 4*2, W' = 3*4 + 4*2; single channel squeezed to 2-D.
    assert grid.shape == (23, 20)
    assert grid.dtype == np.uint8
    expected_tiles = np.round(images * 255).astype(np.uint8)
    for i in range(7):
        r, c = divmod(i, 3)
        top, left = 2 + r * 7, 2 + c * 6
        np.testing.assert_array_equal(grid[top : top + 5, left : left + 4], expected_tiles[i])
    # Border, gutters and the two empty slots of the partial last row are pad_value.
    mask = np.ones(grid.shape, bool)
    for i in range(7):
        r, c = divmod(i, 3)
        mask[2 + r * 7 : 7 + r * 7, 2 + c * 6 : 6 + c * 6] = False
    assert np.all(grid[mask] == 255)
    assert mask[16:21, 8:12].all() and mask[16:21, 14:18].all()  # empty slots 7 and 8


def test_grid_padding_value_rgb_and_few_images(rng):
    images = rng.random((2, 3, 3, 3))
    grid = vis.image_grid(images, ncols=5, padding=1, pad_value=0.0)
    assert grid.shape == (1 * 3 + 2, 2 * 3 + 3, 3)  # ncols > N: only N columns
    assert grid[0].max() == 0 and grid[:, 0].max() == 0
    no_pad = vis.image_grid(images, ncols=2, padding=0)
    assert no_pad.shape == (3, 6, 3)


def test_uint8_and_float_inputs_give_identical_grids(rng):
    u8 = rng.integers(0, 256, size=(5, 6, 7, 1), dtype=np.uint8)
    as_float32 = (u8 / 255.0).astype(np.float32)
    np.testing.assert_array_equal(vis.image_grid(u8, ncols=2), vis.image_grid(as_float32, ncols=2))
    np.testing.assert_array_equal(vis.image_grid(u8[..., 0], ncols=2), vis.image_grid(u8, ncols=2))


def test_float_input_is_clipped_and_nan_drawn_black():
    images = np.array([[[-0.5, 0.0, 0.5, 1.0, 1.5, np.nan, np.inf]]])  # [1, 1, 7]
    grid = vis.image_grid(images, ncols=1, padding=0)
    np.testing.assert_array_equal(grid, [[0, 0, 128, 255, 255, 0, 255]])


def test_accepts_jax_arrays(rng):
    jnp = pytest.importorskip("jax.numpy")
    images = rng.random((3, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(
        vis.image_grid(jnp.asarray(images), ncols=2), vis.image_grid(images, ncols=2)
    )


@pytest.mark.parametrize(
    "images, kwargs",
    [
        (np.zeros((4, 4)), {}),  # missing batch axis
        (np.zeros((1, 2, 4, 4, 1)), {}),  # 5-D
        (np.zeros((2, 4, 4, 2)), {}),  # two channels
        (np.zeros((0, 4, 4)), {}),  # empty
        (np.zeros((2, 0, 4)), {}),  # zero height
        (np.zeros((2, 4, 4), dtype=np.int32), {}),  # ambiguous integer range
        (np.zeros((2, 4, 4)), {"ncols": 0}),
        (np.zeros((2, 4, 4)), {"padding": -1}),
        (np.zeros((2, 4, 4)), {"pad_value": 2.0}),
    ],
)
def test_bad_input_raises_value_error(images, kwargs):
    with pytest.raises(ValueError):
        vis.image_grid(images, **{"ncols": 2, **kwargs})


# ----------------------------------------------------------------------------- PNG writers


def test_save_image_grid_writes_exact_upscaled_png(tmp_path, rng):
    images = rng.random((6, 28, 28))
    path = vis.save_image_grid(tmp_path / "a" / "b" / "grid.png", images, ncols=3, scale=2)
    assert path == tmp_path / "a" / "b" / "grid.png"
    pixels = _read_png(path)
    np.testing.assert_array_equal(pixels, _upscale(vis.image_grid(images, ncols=3), 2))


def test_save_image_grid_title_adds_band_above(tmp_path, rng):
    images = rng.random((16, 28, 28, 3))
    grid = vis.image_grid(images, ncols=8)  # 8 * 28 + 9 * 2 = 242 wide -> 726 at scale 3
    path = vis.save_image_grid(tmp_path / "t.png", images, ncols=8, scale=3, title="samples")
    pixels = _read_png(path)
    body = _upscale(grid, 3)
    assert pixels.shape[1] == body.shape[1] and pixels.shape[0] > body.shape[0]
    np.testing.assert_array_equal(pixels[-body.shape[0] :], body)
    band = pixels[: -body.shape[0]]
    assert band.min() < 100 and np.median(band) == 255  # dark text on white


def test_narrow_grid_with_long_title_is_widened_and_wrapped(tmp_path, rng):
    path = vis.save_image_grid(
        tmp_path / "n.png", rng.random((1, 8, 8)), ncols=1, title="word " * 40
    )
    with Image.open(path) as im:
        width, height = im.size
    assert width == 480  # widened to the minimum titled width, not to the full title length
    assert height > 8 * 2 + 60  # several wrapped lines


def test_save_reconstructions_pairs_each_original_above_its_reconstruction(tmp_path, rng):
    n, ncols, scale, h = 12, 8, 2, 28
    originals = rng.random((n, h, h))
    recons = rng.random((n, h, h))
    path = vis.save_reconstructions(
        tmp_path / "recon.png", originals, recons, ncols=ncols, scale=scale, title="epoch 3"
    )
    # Expected body: [x0..x7], [y0..y7], [x8..x11 + blanks], [y8..y11 + blanks].
    blank = np.ones((h, h))
    tiles = [*originals[:8], *recons[:8], *originals[8:], *[blank] * 4, *recons[8:]]
    tiles += [blank] * 4
    body = _upscale(vis.image_grid(np.stack(tiles), ncols=ncols), scale)
    pixels = _read_png(path)
    # The body sits at the bottom right, after the title band and the row-label column.
    assert pixels.shape[0] > body.shape[0] and pixels.shape[1] > body.shape[1]
    np.testing.assert_array_equal(pixels[-body.shape[0] :, -body.shape[1] :], body)
    label_column = pixels[-body.shape[0] :, : -body.shape[1]]
    assert label_column.min() < 100  # row labels drawn


def test_save_reconstructions_rejects_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError, match="same shape"):
        vis.save_reconstructions(tmp_path / "r.png", np.zeros((4, 28, 28)), np.zeros((4, 784)))


def test_save_class_conditional_grid(tmp_path, rng):
    images = rng.random((10 * 6, 28, 28))
    path = vis.save_class_conditional_grid(
        tmp_path / "cc.png", images, num_classes=10, per_class=6, scale=2
    )
    body = _upscale(vis.image_grid(images, ncols=6), 2)
    pixels = _read_png(path)
    np.testing.assert_array_equal(pixels[-body.shape[0] :, -body.shape[1] :], body)
    assert pixels[-body.shape[0] :, : -body.shape[1]].min() < 100  # class labels 0-9
    with pytest.raises(ValueError, match="class-major"):
        vis.save_class_conditional_grid(
            tmp_path / "bad.png", images[:-1], num_classes=10, per_class=6
        )


def test_save_interpolations(tmp_path, rng):
    rows = rng.random((3, 10, 28, 28))
    path = vis.save_interpolations(tmp_path / "interp.png", rows, scale=2)
    body = _upscale(vis.image_grid(rows.reshape(30, 28, 28), ncols=10), 2)
    pixels = _read_png(path)
    np.testing.assert_array_equal(pixels[-body.shape[0] :], body)
    with pytest.raises(ValueError):
        vis.save_interpolations(tmp_path / "bad.png", rows[0])


# ----------------------------------------------------------------------------- manifold


def _coordinate_decoder(calls: list[np.ndarray]):
    """decode(z) -> [n*n, 2, 1] images holding (Phi(z1), Phi(z2)); records its input."""

    def decode(z: np.ndarray) -> np.ndarray:
        calls.append(z)
        return _phi(z).reshape(-1, 2, 1)

    return decode


@pytest.mark.parametrize("n", [4, 5, 20])
def test_latent_manifold_ordering_and_inverse_cdf_coordinates(n):
    calls: list[np.ndarray] = []
    images = vis.latent_manifold(_coordinate_decoder(calls), n=n)
    (z,) = calls
    assert z.shape == (n * n, 2) and z.dtype == np.float32
    assert images.shape == (n * n, 2, 1)
    u = images[:, :, 0].reshape(n, n, 2)  # [row, col, (Phi(z1), Phi(z2))]
    centres = (np.arange(n) + 0.5) / n
    # z1 increases left to right (same in every row); z2 increases bottom to top.
    np.testing.assert_allclose(u[:, :, 0], np.broadcast_to(centres, (n, n)), atol=1e-6)
    np.testing.assert_allclose(u[:, :, 1], np.broadcast_to(centres[::-1, None], (n, n)), atol=1e-6)
    axis = np.unique(z[:, 0])
    assert axis.size == n
    np.testing.assert_allclose(axis, -axis[::-1], atol=1e-6)  # symmetric about 0
    if n % 2 == 0:
        assert np.min(np.abs(axis)) > 0.01  # even n: no point at exactly 0
    else:
        assert np.min(np.abs(axis)) < 1e-6
    if n == 20:  # quantile spacing, not linspace(-3, 3): extremes are +-1.96, gaps uneven
        np.testing.assert_allclose(axis[[0, -1]], [-1.959964, 1.959964], atol=1e-5)
        gaps = np.diff(axis)
        assert gaps[0] > 2 * gaps[n // 2]


def test_latent_manifold_quantile_eps_and_errors():
    calls: list[np.ndarray] = []
    vis.latent_manifold(_coordinate_decoder(calls), n=7, quantile_eps=0.05)
    axis = np.unique(calls[0][:, 0])
    np.testing.assert_allclose(_phi(axis), np.linspace(0.05, 0.95, 7), atol=1e-6)
    with pytest.raises(ValueError):
        vis.latent_manifold(_coordinate_decoder([]), n=3, quantile_eps=0.5)
    with pytest.raises(ValueError, match="decode must return"):
        vis.latent_manifold(lambda z: np.zeros((z.shape[0], 784)), n=3)


def test_latent_manifold_accepts_jax_decoder():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy

    @jax.jit
    def decode(z):
        return jnp.broadcast_to(jax.nn.sigmoid(z.sum(axis=1))[:, None, None], (z.shape[0], 3, 3))

    images = vis.latent_manifold(decode, n=4)
    assert isinstance(images, np.ndarray) and images.shape == (16, 3, 3)


def test_save_latent_manifold_png(tmp_path):
    def decode(z):
        return np.broadcast_to(_phi(z[:, 0]).reshape(-1, 1, 1), (z.shape[0], 28, 28))

    path = vis.save_latent_manifold(tmp_path / "m" / "manifold.png", decode, n=6, scale=3)
    # Axes of exactly 6 * 28 * 3 pixels plus fixed margins (left 70, right 20, bottom 60, top 50).
    assert _read_png(path).shape[:2] == (504 + 110, 504 + 90)
    small = vis.save_latent_manifold(tmp_path / "small.png", decode, n=2, scale=1)
    assert _read_png(small).shape[:2] == (400 + 110, 400 + 90)  # padded to fit the labels


# ----------------------------------------------------------------------------- projection


def test_project_2d_identity_for_two_dimensions(rng):
    z = rng.normal(size=(50, 2)).astype(np.float32)
    points, desc = vis.project_2d(z)
    np.testing.assert_allclose(points, z)
    assert desc == "z (2-D latent)"


def test_project_2d_plane_in_10d_keeps_all_variance(rng):
    coords = rng.normal(size=(200, 2)) * [3.0, 1.0]
    basis = np.linalg.qr(rng.normal(size=(10, 2)))[0].T  # [2, 10], orthonormal rows
    z = coords @ basis + rng.normal(size=10)
    points, desc = vis.project_2d(z)
    assert desc == "PCA of 10-D posterior means (100% of variance)"
    # Distances within the plane are preserved by the projection.
    d_true = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    d_proj = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.testing.assert_allclose(d_proj, d_true, atol=1e-8)


def test_project_2d_matches_covariance_eigendecomposition(rng):
    z = rng.normal(size=(300, 20)) * np.linspace(3.0, 0.2, 20)
    points, desc = vis.project_2d(z, method="pca")
    eigval, eigvec = np.linalg.eigh(np.cov(z, rowvar=False))  # ascending
    top = eigvec[:, ::-1][:, :2]
    expected = (z - z.mean(axis=0)) @ top
    for k in range(2):  # eigenvectors are defined up to sign
        sign = np.sign(expected[:, k] @ points[:, k])
        np.testing.assert_allclose(points[:, k], sign * expected[:, k], atol=1e-8)
    frac = eigval[::-1][:2].sum() / eigval.sum()
    assert desc == f"PCA of 20-D posterior means ({round(100 * frac)}% of variance)"
    np.testing.assert_allclose(points.mean(axis=0), 0.0, atol=1e-10)


def test_project_2d_errors(rng):
    with pytest.raises(ValueError):
        vis.project_2d(rng.normal(size=(5, 1)))
    with pytest.raises(ValueError):
        vis.project_2d(rng.normal(size=(5,)))
    with pytest.raises(ValueError, match="unknown projection"):
        vis.project_2d(rng.normal(size=(5, 3)), method="tsne")


@pytest.mark.parametrize("dim", [2, 20])
def test_save_latent_scatter(tmp_path, rng, dim):
    z = rng.normal(size=(500, dim))
    labels = rng.integers(0, 10, size=500)
    path = vis.save_latent_scatter(tmp_path / f"scatter{dim}.png", z, labels)
    pixels = _read_png(path)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300
    with pytest.raises(ValueError):
        vis.save_latent_scatter(tmp_path / "bad.png", z, labels[:-1])


# ----------------------------------------------------------------------------- interpolation


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_interpolation_endpoints_exact(rng, method):
    a, b = rng.normal(size=(2, 16)).astype(np.float32)
    path = vis.interpolate_latents(a, b, steps=7, method=method)
    assert path.shape == (7, 16) and path.dtype == np.float32
    np.testing.assert_array_equal(path[0], a)
    np.testing.assert_array_equal(path[-1], b)


def test_linear_interpolation_is_evenly_spaced(rng):
    a, b = rng.normal(size=(2, 5))
    path = vis.interpolate_latents(a, b, steps=5)
    np.testing.assert_allclose(path[2], (a + b) / 2)
    np.testing.assert_allclose(np.diff(path, axis=0), np.broadcast_to((b - a) / 4, (4, 5)))


def test_slerp_keeps_norm_for_equal_norm_endpoints(rng):
    a, b = rng.normal(size=(2, 20))
    b *= np.linalg.norm(a) / np.linalg.norm(b)
    slerp = vis.interpolate_latents(a, b, steps=9, method="slerp")
    np.testing.assert_allclose(np.linalg.norm(slerp, axis=1), np.linalg.norm(a), rtol=1e-12)
    linear = vis.interpolate_latents(a, b, steps=9)
    assert np.linalg.norm(linear[4]) < 0.9 * np.linalg.norm(a)  # linear cuts inside the shell
    # Equal angular steps along the great circle.
    cosines = np.sum(slerp[1:] * slerp[:-1], axis=1)
    np.testing.assert_allclose(cosines, cosines[0], rtol=1e-10)


def test_slerp_degenerate_cases_fall_back_to_linear(rng):
    a = rng.normal(size=4)
    for b in (-a, 2 * a, np.zeros(4)):
        path = vis.interpolate_latents(a, b, steps=5, method="slerp")
        assert np.all(np.isfinite(path))
        np.testing.assert_allclose(path, vis.interpolate_latents(a, b, steps=5))


def test_interpolation_errors(rng):
    a = rng.normal(size=4)
    with pytest.raises(ValueError):
        vis.interpolate_latents(a, a[:3])
    with pytest.raises(ValueError):
        vis.interpolate_latents(a, a, steps=1)
    with pytest.raises(ValueError):
        vis.interpolate_latents(a, a, method="cubic")


# ----------------------------------------------------------------------------- curves


def test_training_curves_with_missing_keys(tmp_path):
    records = [
        {"epoch": 1, "train_loss": 164.9, "test_loss": 127.4},
        {"epoch": 2, "train_loss": np.float32(121.0)},  # no test loss this epoch
        {"epoch": 3, "train_loss": 114.5, "test_loss": 112.0, "elbo": -112.0},
        {"epoch": 4, "test_loss": None},
    ]
    path = vis.save_training_curves(tmp_path / "c" / "curves.png", records, title="seed")
    assert _read_png(path).shape[:2] == (450, 700)
    path = vis.save_training_curves(tmp_path / "none.png", records, keys=("kl",))
    assert path.exists()
    with pytest.raises(ValueError, match="epoch"):
        vis.save_training_curves(tmp_path / "bad.png", [{"train_loss": 1.0}])
    with pytest.raises(ValueError, match=r"record 1's epoch must be an integer, got 1\.5"):
        vis.save_training_curves(tmp_path / "bad.png", [{"epoch": 1}, {"epoch": 1.5}])
    # one name, not a sequence of them (before: a line per character, "no values for t, r")
    with pytest.raises(ValueError, match="keys must be a sequence of metric names, got 'kl'"):
        vis.save_training_curves(tmp_path / "one.png", records, keys="kl")
    assert not (tmp_path / "one.png").exists()


def test_no_pyplot_imported(tmp_path):
    """The module and its plots never import pyplot, so no global backend/GUI state changes."""
    module = pathlib.Path(vis.__file__)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('v', {str(module)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        f"m.save_training_curves({str(tmp_path / 'c.png')!r}, [{{'epoch': 1, 'loss': 1.0}}])\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_picture_interrupted_while_written_leaves_the_previous_one(tmp_path):
    """Pictures are written to a temporary name and renamed (before: a run killed while
    writing left a 0-byte PNG)."""
    path = vis.save_image_grid(tmp_path / "grid.png", np.zeros((4, 3, 3, 1)), ncols=2)
    before = path.read_bytes()

    def dies_half_way(f):
        f.write(before[:10])
        raise KeyboardInterrupt  # (what a kill looks like from inside the writer)

    with pytest.raises(KeyboardInterrupt):
        vis._write_atomically(path, dies_half_way)
    assert path.read_bytes() == before


def test_arguments_of_the_wrong_kind_are_one_line_errors(tmp_path):
    """(Before: float counts gave numpy TypeErrors, a NumPy integer scale was refused, a
    non-string title an AttributeError, string labels a ufunc TypeError, NaN codes an
    empty plot or an SVD error, and a directory as the path "[Errno 21] 'out.tmp' -> 'out'".)"""
    images = np.zeros((4, 3, 3), np.float32)
    z, labels = np.random.default_rng(0).normal(size=(6, 3)), np.arange(6)
    cases = [
        (
            lambda: vis.image_grid(images, ncols=2.0),
            ValueError,
            "ncols must be an integer, got 2.0",
        ),
        (lambda: vis.image_grid(images, ncols=2, padding=-1), ValueError, "padding must be >= 0"),
        (
            lambda: vis.interpolate_latents(z[0], z[1], steps=2.5),
            ValueError,
            "steps must be an integer",
        ),
        (
            lambda: vis.latent_manifold(lambda u: u, n=2.5),
            ValueError,
            "n must be an integer, got 2.5",
        ),
        (
            lambda: vis.save_image_grid(tmp_path / "a.png", images, ncols=2, title=3),
            ValueError,
            "title must be a string or None; got int",
        ),
        (
            lambda: vis.save_latent_scatter(tmp_path / "b.png", z, labels.astype(str)),
            ValueError,
            "labels must be integers; got dtype <U",
        ),
        (
            lambda: vis.save_latent_scatter(tmp_path / "c.png", np.where(z > 1, np.nan, z), labels),
            ValueError,
            "z contains NaN or infinite values",
        ),
        (
            lambda: vis.save_image_grid(tmp_path, images, ncols=2),
            IsADirectoryError,
            "is a directory: give a file's path",
        ),
        (lambda: vis.save_image_grid("", images, ncols=2), ValueError, "path is empty"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message) as caught:
            call()
        assert "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    path = vis.save_image_grid(tmp_path / "d.png", images, ncols=np.int64(2), scale=np.int64(2))
    assert _read_png(path).shape[:2] == (24, 24)  # (2 x 3-pixel rows, 3 x 2 padding) x 2
