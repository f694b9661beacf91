"""Arrays in, PNG out: image grids, reconstructions, latent manifolds, scatters and curves.

No model code and no JAX: every function takes numpy arrays or anything `np.asarray` accepts
(JAX arrays included). Image grids are assembled with numpy and written with Pillow; plots
use `matplotlib.figure.Figure` with the Agg canvas directly, never pyplot, so no global
matplotlib state (backend, rcParams, open figures) is touched and no GUI is needed.

Image conventions used throughout:
    * A batch of images is `[N, H, W]` or `[N, H, W, C]` with `C` in {1, 3}.
    * Float (or bool) images are intensities in [0, 1]; they are clipped to [0, 1] and NaN is
      drawn as 0, so a diverged model still produces a picture. `uint8` images are used as is.
      Other integer dtypes are rejected because their range is ambiguous.
    * MNIST digits are white on black; grid padding is white, so tiles stay distinguishable.
    * Grids are upscaled with nearest-neighbour repetition (`scale` pixels per image pixel),
      so 28x28 digits stay sharp and visible.

References:
    Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014 (learned manifold figure:
    a unit-square grid mapped through the Gaussian inverse CDF).
    White, "Sampling Generative Networks", 2016 (spherical interpolation of Gaussian latents).
"""

import math
import os
import pathlib
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image, ImageDraw, ImageFont

from vae_jax.fields import require_int

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# matplotlib is imported inside the three functions that draw with it (the manifold, the
# scatter, the training curves): it is a quarter of `import vae_jax`'s time (about 0.29 of
# 1.54 s, `python -X importtime`), paid by every process that never draws a figure.

__all__ = [
    "image_grid",
    "interpolate_latents",
    "latent_manifold",
    "project_2d",
    "reconstruction_grid",
    "save_class_conditional_grid",
    "save_image_grid",
    "save_interpolations",
    "save_latent_manifold",
    "save_latent_scatter",
    "save_reconstructions",
    "save_training_curves",
]

PathLike = str | os.PathLike[str]

_DPI = 100  # matplotlib figures: pixels = inches * _DPI.
_TITLE_FONT_PX = 16
_MARGIN_PX = 6
_MIN_TITLED_WIDTH_PX = 480  # narrow grids are widened (centred) so a title stays legible.
_STANDARD_NORMAL = statistics.NormalDist()


# ----------------------------------------------------------------------------- image grids


def _to_uint8_images(images: ArrayLike) -> np.ndarray:
    """Validates a batch of images and converts it to `uint8` `[N, H, W, C]`."""
    x = np.asarray(images)
    if x.ndim not in (3, 4):
        raise ValueError(f"images must have shape [N, H, W] or [N, H, W, C]; got shape {x.shape}")
    if x.ndim == 3:
        x = x[..., None]
    n, h, w, c = x.shape
    if n == 0:
        raise ValueError("images is empty (N == 0); nothing to draw")
    if h == 0 or w == 0:
        raise ValueError(f"images have zero height or width: shape {x.shape}")
    if c not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels; got C={c} (shape {x.shape})")
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.bool_ or np.issubdtype(x.dtype, np.floating):
        x = np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ValueError(f"images must be float in [0, 1] or uint8 in [0, 255]; got dtype {x.dtype}")


def _count(name: str, value: Any, low: int) -> int:
    """`value` as an int; ValueError (one line) unless it is an integer (NumPy's too) >= low
    (before: floats gave numpy TypeErrors, np.int64 scales were refused)."""
    if require_int(name, value) < low:
        raise ValueError(f"{name} must be >= {low}; got {value}")
    return int(value)


def _check_title(title: Any) -> None:
    if title is not None and not isinstance(title, str):
        raise ValueError(f"title must be a string or None; got {type(title).__name__}")


def image_grid(
    images: ArrayLike, *, ncols: int, padding: int = 2, pad_value: float = 1.0
) -> np.ndarray:
    """Tiles a batch of images into one image, row-major.

    Image `i` goes to row `i // ncols`, column `i % ncols`. A partial last row is filled with
    `pad_value`. There is `padding` pixels of `pad_value` between tiles and around the border,
    so the result has `nrows * H + (nrows + 1) * padding` rows and
    `cols * W + (cols + 1) * padding` columns, where `cols = min(ncols, N)` and
    `nrows = ceil(N / cols)`.

    Args:
        images: `[N, H, W]` or `[N, H, W, C]` with `C` in {1, 3}; float in [0, 1] (clipped,
            NaN drawn as 0), bool, or `uint8`. Float and `uint8` inputs with the same
            intensities (`u8 / 255`) give identical grids.
        ncols: Tiles per row (at least 1).
        padding: Pixels between tiles and around the border (at least 0).
        pad_value: Padding intensity in [0, 1] (1.0 is white).

    Returns:
        `uint8` grid: `[H', W']` for single-channel input, `[H', W', 3]` for RGB.

    Raises:
        ValueError: On a bad shape, an empty batch, an unsupported dtype or a bad argument.
    """
    tiles = _to_uint8_images(images)  # [N, H, W, C]
    _count("ncols", ncols, 1)
    _count("padding", padding, 0)
    if not 0.0 <= pad_value <= 1.0:
        raise ValueError(f"pad_value must be in [0, 1]; got {pad_value}")
    n, h, w, c = tiles.shape
    cols = min(ncols, n)
    nrows = math.ceil(n / cols)
    grid = np.full(
        (nrows * h + (nrows + 1) * padding, cols * w + (cols + 1) * padding, c),
        round(pad_value * 255),
        dtype=np.uint8,
    )
    for i in range(n):
        top = padding + (i // cols) * (h + padding)
        left = padding + (i % cols) * (w + padding)
        grid[top : top + h, left : left + w] = tiles[i]
    return grid[..., 0] if c == 1 else grid


def _font(size: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _wrap(text: str, font: Any, max_width: float) -> str:
    """Greedy word wrap of each line of `text` to at most `max_width` pixels."""
    out: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and font.getlength(candidate) > max_width:
                out.append(line)
                line = word
            else:
                line = candidate
        out.append(line)
    return "\n".join(out)


def _write_grid_png(
    path: PathLike,
    grid: np.ndarray,
    *,
    scale: int,
    title: str | None,
    row_labels: Sequence[str] | None = None,
    row_centres: Sequence[float] | None = None,
    label_header: str | None = None,
) -> pathlib.Path:
    """Upscales a `uint8` grid, adds an optional left label column and title band, saves PNG.

    `row_centres` are the vertical centres of the labelled rows in *unscaled* grid pixels.
    """
    scale = _count("scale", scale, 1)
    _check_title(title)
    body = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    rgb = body.ndim == 3
    white: int | tuple[int, int, int] = (255, 255, 255) if rgb else 255
    black: int | tuple[int, int, int] = (0, 0, 0) if rgb else 0
    body_img = Image.fromarray(body)
    body_h, body_w = body.shape[:2]

    label_w = label_px = 0
    label_font = None
    if row_labels:
        if row_centres is None or len(row_centres) != len(row_labels):
            raise ValueError("row_centres must give one centre per row label")
        pitch = (row_centres[1] - row_centres[0]) * scale if len(row_centres) > 1 else body_h
        label_px = int(np.clip(0.4 * pitch, 11, 20))
        label_font = _font(label_px)
        texts = list(row_labels) + ([label_header] if label_header else [])
        label_w = int(max(label_font.getlength(t) for t in texts)) + 2 * _MARGIN_PX

    title_font = _font(_TITLE_FONT_PX)
    content_w = label_w + body_w
    canvas_w = content_w
    title_text = ""
    if title:
        natural = max(title_font.getlength(t) for t in title.split("\n")) + 2 * _MARGIN_PX
        canvas_w = max(content_w, int(min(natural, _MIN_TITLED_WIDTH_PX)))
        title_text = _wrap(title, title_font, canvas_w - 2 * _MARGIN_PX)
    header_h = 0
    if title_text:
        probe = ImageDraw.Draw(Image.new("L", (1, 1)))
        bbox = probe.multiline_textbbox((0, 0), title_text, font=title_font, spacing=4)
        header_h = math.ceil(bbox[3]) + 2 * _MARGIN_PX
    if label_header:  # its own strip below the title band, above the label column
        header_h += label_px + 2 * _MARGIN_PX

    canvas = Image.new(body_img.mode, (canvas_w, header_h + body_h), white)
    x0 = (canvas_w - content_w) // 2
    canvas.paste(body_img, (x0 + label_w, header_h))
    draw = ImageDraw.Draw(canvas)
    if title_text:
        draw.multiline_text(
            (canvas_w / 2, _MARGIN_PX),
            title_text,
            fill=black,
            font=title_font,
            anchor="ma",
            align="center",
            spacing=4,
        )
    if row_labels and label_font is not None and row_centres is not None:
        right = x0 + label_w - _MARGIN_PX
        for label, centre in zip(row_labels, row_centres, strict=True):
            draw.text(
                (right, header_h + centre * scale), label, fill=black, font=label_font, anchor="rm"
            )
        if label_header:
            draw.text(
                (right, header_h - _MARGIN_PX),
                label_header,
                fill=black,
                font=label_font,
                anchor="rd",
            )

    return _write_atomically(path, lambda f: canvas.save(f, format="PNG"))


def _row_centres(nrows: int, tile_h: int, padding: int) -> list[float]:
    return [padding + r * (tile_h + padding) + tile_h / 2 for r in range(nrows)]


def save_image_grid(
    path: PathLike, images: ArrayLike, *, ncols: int, scale: int = 2, title: str | None = None
) -> pathlib.Path:
    """Writes `image_grid(images, ncols=ncols)` as a PNG, upscaled `scale` times (nearest).

    Args:
        path: Output file; parent directories are created. Written as PNG.
        images: `[N, H, W]` or `[N, H, W, C]`, float in [0, 1] or `uint8` (see `image_grid`).
        ncols: Tiles per row.
        scale: Integer upscaling factor (pixels per image pixel).
        title: Optional text drawn in a band above the grid (wrapped to the image width).

    Returns:
        The path written.
    """
    return _write_grid_png(path, image_grid(images, ncols=ncols), scale=scale, title=title)


def save_reconstructions(
    path: PathLike,
    originals: ArrayLike,
    reconstructions: ArrayLike,
    *,
    ncols: int = 8,
    scale: int = 2,
    title: str | None = None,
) -> pathlib.Path:
    """Writes test images with each reconstruction directly below its original.

    Rows alternate: `ncols` originals, then their `ncols` reconstructions, then the next
    `ncols` originals, and so on. Rows are labelled "input" / "recon." on the left and the
    title always says which is which.

    Args:
        path: Output PNG path (parent directories created).
        originals: `[N, H, W(, C)]` images, float in [0, 1] or `uint8`.
        reconstructions: Same shape as `originals` (e.g. decoder means / Bernoulli
            probabilities, not logits).
        ncols: Pairs per row block.
        scale: Integer upscaling factor.
        title: Optional caption; the layout explanation is appended on its own line.

    Returns:
        The path written.
    """
    padding = 2
    grid = reconstruction_grid(originals, reconstructions, ncols=ncols, padding=padding)
    n, h = np.shape(originals)[:2]
    blocks = math.ceil(n / min(ncols, n))
    explanation = "rows labelled input: test images; the row below each: their reconstructions"
    return _write_grid_png(
        path,
        grid,
        scale=scale,
        title=f"{title}\n{explanation}" if title else explanation,
        row_labels=["input", "recon."] * blocks,
        row_centres=_row_centres(2 * blocks, h, padding),
    )


def reconstruction_grid(
    originals: ArrayLike, reconstructions: ArrayLike, *, ncols: int = 8, padding: int = 2
) -> np.ndarray:
    """The grid `save_reconstructions` draws, without labels, title or upscaling.

    Rows alternate: `ncols` originals, then their `ncols` reconstructions, then the next
    `ncols` originals, and so on; a partial last block is filled with white tiles.

    Args:
        originals: `[N, H, W(, C)]` images, float in [0, 1] or `uint8`.
        reconstructions: Same shape as `originals`.
        ncols: Pairs per row block (at least 1).
        padding: Pixels of white between tiles and around the border.

    Returns:
        `uint8` grid: `[H', W']` for single-channel input, `[H', W', 3]` for RGB (see
        `image_grid`).
    """
    if np.shape(originals) != np.shape(reconstructions):
        raise ValueError(
            "originals and reconstructions must have the same shape; got "
            f"{np.shape(originals)} and {np.shape(reconstructions)}"
        )
    x = _to_uint8_images(originals)
    y = _to_uint8_images(reconstructions)
    _count("ncols", ncols, 1)
    n, h, w, c = x.shape
    cols = min(ncols, n)
    blocks = math.ceil(n / cols)
    tiles = np.full((2 * blocks * cols, h, w, c), 255, dtype=np.uint8)  # blank = white
    for i in range(n):
        b, j = divmod(i, cols)
        tiles[2 * b * cols + j] = x[i]
        tiles[(2 * b + 1) * cols + j] = y[i]
    return image_grid(tiles, ncols=cols, padding=padding)


def save_class_conditional_grid(
    path: PathLike,
    images: ArrayLike,
    *,
    num_classes: int,
    per_class: int,
    scale: int = 2,
    title: str | None = None,
) -> pathlib.Path:
    """Writes class-conditional samples, one row per class, each row labelled with its class.

    Args:
        path: Output PNG path (parent directories created).
        images: `[num_classes * per_class, H, W(, C)]` ordered class-major: images
            `c * per_class ... (c + 1) * per_class - 1` belong to class `c`.
        num_classes: Number of rows (classes 0 .. num_classes - 1).
        per_class: Images per class (columns).
        scale: Integer upscaling factor.
        title: Optional caption (default: "class-conditional samples (one row per class)").

    Returns:
        The path written.
    """
    tiles = _to_uint8_images(images)
    _count("num_classes", num_classes, 1)
    _count("per_class", per_class, 1)
    if tiles.shape[0] != num_classes * per_class:
        raise ValueError(
            f"expected num_classes * per_class = {num_classes * per_class} images "
            f"(class-major); got {tiles.shape[0]}"
        )
    padding = 2
    grid = image_grid(tiles, ncols=per_class, padding=padding)
    return _write_grid_png(
        path,
        grid,
        scale=scale,
        title=title or "class-conditional samples (one row per class)",
        row_labels=[str(k) for k in range(num_classes)],
        row_centres=_row_centres(num_classes, tiles.shape[1], padding),
        label_header="class",
    )


def save_interpolations(
    path: PathLike, rows_of_images: ArrayLike, *, scale: int = 2, title: str | None = None
) -> pathlib.Path:
    """Writes latent interpolations, one per row, from start (left) to end (right).

    Args:
        path: Output PNG path (parent directories created).
        rows_of_images: `[R, steps, H, W(, C)]` decoded images, float in [0, 1] or `uint8`.
        scale: Integer upscaling factor.
        title: Optional caption (default explains the layout).

    Returns:
        The path written.
    """
    x = np.asarray(rows_of_images)
    if x.ndim not in (4, 5):
        raise ValueError(
            f"rows_of_images must have shape [R, steps, H, W(, C)]; got shape {x.shape}"
        )
    r, steps = x.shape[:2]
    if r == 0 or steps == 0:
        raise ValueError(f"rows_of_images is empty: shape {x.shape}")
    grid = image_grid(x.reshape(r * steps, *x.shape[2:]), ncols=steps)
    default = "latent interpolations: one per row, start (left) to end (right)"
    return _write_grid_png(path, grid, scale=scale, title=title or default)


# ----------------------------------------------------------------------------- latent manifold


def _manifold_u(n: int, quantile_eps: float | None) -> np.ndarray:
    """Unit-square coordinates `[n]` of the manifold grid, increasing."""
    _count("n", n, 1)
    if quantile_eps is None:
        return (np.arange(n) + 0.5) / n
    if not 0.0 < quantile_eps < 0.5:
        raise ValueError(f"quantile_eps must be in (0, 0.5); got {quantile_eps}")
    if n == 1:
        return np.array([0.5])
    return np.linspace(quantile_eps, 1.0 - quantile_eps, n)


def latent_manifold(
    decode: Callable[[np.ndarray], ArrayLike], *, n: int = 20, quantile_eps: float | None = None
) -> np.ndarray:
    """Decodes an `n x n` grid over a 2-D latent space (Kingma & Welling 2014, Fig. 4).

    Coordinates are linearly spaced on the unit square and mapped through the standard
    Gaussian inverse CDF, so the grid covers the prior by quantiles rather than
    `linspace(-3, 3)`. Per axis, `u_i = (i + 0.5) / n` for `i = 0 .. n-1` (the default: tile
    centres of an even partition of [0, 1]; for n=20 the outermost z is +-1.96 and, n being
    even, no point sits exactly at 0), or `u = linspace(eps, 1 - eps, n)` when `quantile_eps`
    is given. Then `z = Phi^-1(u)`; the coordinates are symmetric about 0.

    Ordering: the result is in row-major grid order for display. Row `r` (top to bottom)
    and column `c` (left to right) hold `z = (z1_c, z2_{n-1-r})`, i.e. z1 increases left to
    right and z2 increases bottom to top, as on a standard plot.

    Args:
        decode: Maps `z` `[n*n, 2]` float32 numpy to images `[n*n, H, W(, C)]` in [0, 1]
            (e.g. Bernoulli means); may return a JAX array.
        n: Grid points per axis.
        quantile_eps: If given, use `linspace(eps, 1 - eps, n)` on the unit square instead
            of the `(i + 0.5) / n` tile centres; must be in (0, 0.5).

    Returns:
        Decoded images `[n*n, H, W(, C)]` as a numpy array, in the grid order above (pass to
        `image_grid(..., ncols=n)`).
    """
    u = _manifold_u(n, quantile_eps)
    axis = np.array([_STANDARD_NORMAL.inv_cdf(float(ui)) for ui in u])  # [n], increasing
    z1 = np.tile(axis, n)  # column index c = k % n
    z2 = np.repeat(axis[::-1], n)  # row index r = k // n, top row = largest z2
    z = np.stack([z1, z2], axis=1).astype(np.float32)  # [n*n, 2]
    images = np.asarray(decode(z))
    if images.ndim not in (3, 4) or images.shape[0] != n * n:
        raise ValueError(
            f"decode must return images [n*n={n * n}, H, W(, C)]; got shape {images.shape}"
        )
    return images


def save_latent_manifold(
    path: PathLike,
    decode: Callable[[np.ndarray], ArrayLike],
    *,
    n: int = 20,
    scale: int = 2,
    title: str | None = None,
) -> pathlib.Path:
    """Writes the decoded 2-D latent manifold with axes ticked in latent units.

    Uses `latent_manifold(decode, n=n)` (tile centres `(i + 0.5) / n` through the Gaussian
    inverse CDF). Ticks mark round z values at their true positions on the quantile-spaced
    axes, so the non-linear spacing is visible.

    Args:
        path: Output PNG path (parent directories created).
        decode: See `latent_manifold`.
        n: Grid points per axis.
        scale: Integer upscaling factor (screen pixels per image pixel).
        title: Optional caption (default: "learned 2-D latent manifold (decoded means)").

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scale = _count("scale", scale, 1)
    _check_title(title)
    grid = image_grid(latent_manifold(decode, n=n), ncols=n, padding=0)
    img_h, img_w = grid.shape[0] * scale, grid.shape[1] * scale
    # Margins in pixels; small grids get wider margins so the labels and title still fit.
    extra_w, extra_h = max(0, 400 - img_w), max(0, 400 - img_h)
    left, right = 70 + extra_w // 2, 20 + extra_w - extra_w // 2
    bottom, top = 60 + extra_h // 2, 50 + extra_h - extra_h // 2
    fig_w, fig_h = img_w + left + right, img_h + bottom + top
    fig = Figure(figsize=(fig_w / _DPI, fig_h / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((left / fig_w, bottom / fig_h, img_w / fig_w, img_h / fig_h))
    # Axes in unit-square coordinates u: tile i spans [i/n, (i+1)/n], centre (i + 0.5) / n.
    ax.imshow(
        grid,
        cmap="gray" if grid.ndim == 2 else None,
        vmin=0,
        vmax=255,
        extent=(0.0, 1.0, 0.0, 1.0),
        origin="upper",
        interpolation="nearest",
        aspect="auto",
    )
    ticks_z = _manifold_ticks(n, img_w)
    ticks_u = [_STANDARD_NORMAL.cdf(t) for t in ticks_z]
    labels = [f"{t:g}" for t in ticks_z]
    ax.set_xticks(ticks_u, labels)
    ax.set_yticks(ticks_u, labels)
    ax.set_xlabel(r"$z_1$ (grid evenly spaced in $\Phi(z_1)$)")
    ax.set_ylabel(r"$z_2$ (grid evenly spaced in $\Phi(z_2)$)")
    ax.set_title(title or f"learned 2-D latent manifold ({n}x{n} decoded means)")
    return _save_figure(fig, path)


def _manifold_ticks(n: int, axis_px: int) -> list[float]:
    """Round z values inside the grid, at least ~40 px apart, symmetric about 0."""
    z_max = _STANDARD_NORMAL.inv_cdf(1.0 - 0.5 / n) if n > 1 else 0.0
    chosen = [0.0]
    for t in np.arange(0.5, 4.01, 0.5):
        if t > z_max + 1e-9:
            break
        gap = (_STANDARD_NORMAL.cdf(t) - _STANDARD_NORMAL.cdf(chosen[-1])) * axis_px
        if gap >= 40:
            chosen.append(float(t))
    return sorted({-t for t in chosen[1:]} | set(chosen))  # chosen[0] == 0.0: no '-0' tick


# ----------------------------------------------------------------------------- latent scatter


def _project(z: ArrayLike, method: str) -> tuple[np.ndarray, str, str, str]:
    """Like `project_2d`, plus the x and y axis labels."""
    if method != "pca":
        raise ValueError(f"unknown projection method {method!r}; supported: 'pca'")
    x = np.asarray(z, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2 or x.shape[0] < 1:
        raise ValueError(f"z must have shape [N >= 1, D >= 2]; got shape {x.shape}")
    if not np.isfinite(x).all():  # (before: an empty plot for D = 2, an SVD error for D > 2)
        raise ValueError("z contains NaN or infinite values")
    d = x.shape[1]
    if d == 2:
        return x.copy(), "z (2-D latent)", "$z_1$", "$z_2$"
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)  # vt: [min(N, D), D]
    components = np.zeros((2, d))  # first two principal axes; zero rows if N < 2
    components[: min(2, vt.shape[0])] = vt[:2]
    # Deterministic signs: the largest-magnitude loading of each component is positive.
    signs = np.sign(components[np.arange(2), np.argmax(np.abs(components), axis=1)])
    components = components * np.where(signs == 0, 1.0, signs)[:, None]
    projected = centred @ components.T  # [N, 2]
    var = np.zeros(max(2, s.size))
    var[: s.size] = s**2
    total = var.sum()
    if total > 0:
        desc = f"PCA of {d}-D posterior means ({var[:2].sum() / total:.0%} of variance)"
        pc = [f"PC {k + 1} ({var[k] / total:.0%} of variance)" for k in (0, 1)]
    else:
        desc = f"PCA of {d}-D posterior means (all points identical)"
        pc = ["PC 1", "PC 2"]
    return projected, desc, pc[0], pc[1]


def project_2d(z: ArrayLike, *, method: str = "pca") -> tuple[np.ndarray, str]:
    """Projects latent vectors to 2-D for plotting.

    Args:
        z: `[N, D]` latent vectors (e.g. test-set posterior means), `D >= 2`.
        method: Only "pca": principal components from numpy's SVD of the centred data.

    Returns:
        `(points, description)`: `points` `[N, 2]` float64. For `D == 2` the points are `z`
        unchanged and the description is "z (2-D latent)". For `D > 2` they are the
        coordinates of the centred data on the first two principal axes (signs fixed so
        each axis's largest loading is positive) and the description states the projection
        and the fraction of total variance it keeps, e.g.
        "PCA of 20-D posterior means (61% of variance)".

    Raises:
        ValueError: For an unknown method or a shape other than `[N >= 1, D >= 2]`.
    """
    points, desc, _, _ = _project(z, method)
    return points, desc


def save_latent_scatter(
    path: PathLike, z_mean: ArrayLike, labels: ArrayLike, *, title: str | None = None
) -> pathlib.Path:
    """Writes a scatter of posterior means coloured by class label (tab10, with a legend).

    Args:
        path: Output PNG path (parent directories created).
        z_mean: `[N, D]` posterior means, `D >= 2`; projected with `project_2d` (PCA if
            `D > 2`), and the axes and subtitle say which.
        labels: `[N]` integer class labels (digits 0-9 get the tab10 colours).
        title: Optional caption (default: "test-set posterior means by label").

    Returns:
        The path written.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    points, desc, xlabel, ylabel = _project(z_mean, "pca")
    y = np.asarray(labels)
    if y.shape != (points.shape[0],):
        raise ValueError(f"labels must have shape [N={points.shape[0]}]; got {y.shape}")
    _check_title(title)
    if y.size and y.dtype.kind not in "biuf":  # (strings: a numpy ufunc TypeError)
        raise ValueError(f"labels must be integers; got dtype {y.dtype}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("labels must be integers")
        y = y.astype(np.int64)
    classes = np.unique(y)
    if classes.size == 0 or (classes.min() >= 0 and classes.max() < 10):
        tab10 = colormaps["tab10"]
        palette = {int(k): tab10(int(k)) for k in classes}  # digit k -> tab10 colour k
    else:
        turbo = colormaps["turbo"]
        palette = {int(k): turbo(i / max(len(classes) - 1, 1)) for i, k in enumerate(classes)}

    fig = Figure(figsize=(7.5, 6.5), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # One scatter in a fixed random order, so no class is systematically drawn on top.
    order = np.random.default_rng(0).permutation(points.shape[0])
    colours = np.array([palette[int(k)] for k in y[order]]).reshape(-1, 4)
    size = 4.0 if points.shape[0] > 2000 else 12.0
    ax.scatter(points[order, 0], points[order, 1], c=colours, s=size, alpha=0.7, linewidths=0)
    handles = [
        Line2D([], [], linestyle="", marker="o", markersize=7, color=palette[int(k)], label=str(k))
        for k in classes
    ]
    ax.legend(
        handles=handles,
        title="label",
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        frameon=False,
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, alpha=0.3)
    heading = title or "test-set posterior means by label"
    ax.set_title(f"{heading}\n{desc}, N={points.shape[0]}")
    return _save_figure(fig, path)


# ----------------------------------------------------------------------------- interpolation


def interpolate_latents(
    z_start: ArrayLike, z_end: ArrayLike, *, steps: int = 10, method: str = "linear"
) -> np.ndarray:
    """Interpolates between two latent vectors, endpoints included.

    With `t = linspace(0, 1, steps)`:
        * "linear": `z(t) = (1 - t) z_start + t z_end`.
        * "slerp": `z(t) = sin((1 - t) w) / sin(w) z_start + sin(t w) / sin(w) z_end`, where
          `w` is the angle between the two vectors. It keeps the norm when both endpoints
          have the same norm, so intermediate points stay in the high-density shell of a
          Gaussian prior instead of cutting through its low-norm interior (White 2016).
          Falls back to linear when the vectors are (anti-)parallel (`sin(w) ~ 0`) or one
          is zero.

    Args:
        z_start: `[D]` start latent.
        z_end: `[D]` end latent.
        steps: Number of points, at least 2.
        method: "linear" or "slerp".

    Returns:
        `[steps, D]`; row 0 equals `z_start` and row `steps - 1` equals `z_end` exactly.
        The dtype is the inputs' float dtype (float64 for non-float inputs).
    """
    a, b = np.asarray(z_start), np.asarray(z_end)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"z_start and z_end must both have shape [D]; got {a.shape}, {b.shape}")
    _count("steps", steps, 2)  # (endpoints are included)
    if method not in ("linear", "slerp"):
        raise ValueError(f"unknown method {method!r}; supported: 'linear', 'slerp'")
    dtype = np.result_type(a.dtype, b.dtype)
    if not np.issubdtype(dtype, np.floating):
        dtype = np.dtype(np.float64)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    t = np.linspace(0.0, 1.0, steps)[:, None]  # [steps, 1]
    out = (1.0 - t) * a64 + t * b64
    if method == "slerp":
        na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
        if na > 0 and nb > 0:
            cos = np.clip(np.dot(a64, b64) / (na * nb), -1.0, 1.0)
            omega = np.arccos(cos)
            sin = np.sin(omega)
            if sin > 1e-6:
                out = (np.sin((1.0 - t) * omega) * a64 + np.sin(t * omega) * b64) / sin
    out = out.astype(dtype)
    out[0], out[-1] = a, b
    return out


# ----------------------------------------------------------------------------- training curves


def save_training_curves(
    path: PathLike,
    records: Sequence[Mapping[str, Any]],
    *,
    keys: Sequence[str] = ("train_loss", "test_loss"),
    ylabel: str = "loss (nats per example)",
    title: str | None = None,
) -> pathlib.Path:
    """Writes a per-epoch line plot (markers, legend, grid) of metrics from history records.

    Args:
        path: Output PNG path (parent directories created).
        records: One mapping per epoch with an integer "epoch" key and some of `keys`;
            values are numbers (numpy/JAX scalars fine). A key missing from a record (or
            None there) is skipped for that epoch; a key missing everywhere gets no line.
        keys: Metric names to plot, one line each, labelled by name.
        ylabel: Y axis label (state the units).
        title: Optional caption (default: "training curves").

    Returns:
        The path written.

    Raises:
        ValueError: If a record has no "epoch" or its epoch is not an integer >= 0, or
            `keys` is one string (its characters would be plotted as keys) or holds
            something else than strings.
    """
    if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"keys must be a sequence of metric names, got {keys!r}")
    _check_title(title)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7.0, 4.5), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    plotted = 0
    for i, record in enumerate(records):
        if "epoch" not in record:
            raise ValueError(f"record {i} has no 'epoch' key: {sorted(record)}")
        _count(f"record {i}'s epoch", record["epoch"], 0)  # (before: 1.5 drawn at 1)
    for key in keys:
        pairs = sorted(
            (int(r["epoch"]), float(np.asarray(r[key]))) for r in records if r.get(key) is not None
        )
        if not pairs:
            continue
        epochs, values = zip(*pairs, strict=True)
        ax.plot(epochs, values, marker="o", markersize=4, label=key)
        plotted += 1
    if plotted:
        ax.legend()
    else:
        ax.text(
            0.5,
            0.5,
            f"no values for {', '.join(keys)}",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "training curves")
    return _save_figure(fig, path)


def _save_figure(fig: "Figure", path: PathLike) -> pathlib.Path:
    return _write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=_DPI))


def _write_atomically(path: PathLike, write: Callable[[BinaryIO], object]) -> pathlib.Path:
    """`write` the picture with `vae_jax.workdir.atomic_write`: a run killed meanwhile
    leaves the previous picture (or none), never a truncated one, and no link is followed."""
    from vae_jax.workdir import atomic_write

    return atomic_write(path, write)
