"""The decoder's 4x4 stride-2 transposed convolution, in the form that is fast to train.

`ConvTranspose4x4(features)` is exactly
``nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")``: same parameter names,
shapes and initialisers, same outputs and gradients up to float rounding (tests/test_conv.py).
Only the arithmetic differs. A transposed convolution, and the gradient of one, is a
convolution of a zero-dilated input, which XLA:CPU runs on a slow generic path; the
sub-pixel form (Shi et al., 2016) computes each of the 4 output phases (row and column
parity) as a plain 2x2 stride-1 convolution of the input with that parity's taps, then
interleaves the phases (depth-to-space). No FLOP is added, none is spent on dilation zeros.

Measured on the 2-core CPU (`benchmarks/conv.py`; docs/benchmarks.md, "Convolutional VAE"):
train step 430 -> 152 ms for the conv32 VAE, 187 -> 85 ms for a 28x28 one. With few output
channels the phases' interleave has too little to vectorize over and XLA's own transposed
convolution is faster (sub-pixel everywhere: 193 and 117 ms), so layers with fewer than
`SUBPIXEL_MIN_FEATURES` outputs (the image layer) keep it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

SUBPIXEL_MIN_FEATURES = 8
_DIMS = ("NHWC", "HWIO", "NHWC")


def depth_to_space(x: jax.Array) -> jax.Array:
    """[batch, H, W, 4C] -> [batch, 2H, 2W, C]; channel (p, q, c) goes to pixel (2i+p, 2j+q)."""
    b, h, w, c4 = x.shape
    c = c4 // 4
    x = x.reshape(b, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, 2 * h, 2 * w, c)


def conv_transpose4x4(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """XLA's 4x4, stride-2, SAME transposed convolution (``transpose_kernel=False``, as Flax).

    Args:
      x: [batch, H, W, C] input.
      kernel: [4, 4, C, O].

    Returns:
      [batch, 2H, 2W, O].
    """
    return jax.lax.conv_transpose(x, kernel, (2, 2), "SAME", dimension_numbers=_DIMS)


def conv_transpose4x4_subpixel(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`conv_transpose4x4` as four 2x2 stride-1 convolutions, one per output phase.

    Per axis, lax.conv_transpose dilates x by 2 and pads it by (2, 2), so output 2m + r
    sums the taps k of parity r: y[2m] = x[m-1] w[0] + x[m] w[2] and
    y[2m+1] = x[m] w[1] + x[m+1] w[3]. Over x padded by one pixel (xp[m] = x[m-1]), phase r
    is the 2x2 window starting at m + r, with the taps (r, r + 2).

    Args:
      x: [batch, H, W, C] input.
      kernel: [4, 4, C, O].

    Returns:
      [batch, 2H, 2W, O].
    """
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    phases = [
        jax.lax.conv_general_dilated(
            xp[:, r : r + h + 1, s : s + w + 1],
            kernel[r::2, s::2],
            (1, 1),
            "VALID",
            dimension_numbers=_DIMS,
        )
        for r in (0, 1)
        for s in (0, 1)
    ]  # each [batch, H, W, O], in (r, s) order
    y = jnp.stack(phases, axis=3)  # [batch, H, W, (r, s), O]
    return depth_to_space(y.reshape(*y.shape[:3], -1))


class ConvTranspose4x4(nn.Module):
    """``nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")``, computed in
    sub-pixel form when ``features >= SUBPIXEL_MIN_FEATURES``.

    Parameters as in `nn.ConvTranspose`: ``kernel`` [4, 4, C, features] (LeCun normal) and
    ``bias`` [features] (zeros). Input and parameters are cast to `dtype` for the computation.
    Input [..., H, W, C] -> output [..., 2H, 2W, features] (leading axes flattened and
    restored).
    """

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (4, 4, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:]).astype(self.dtype)
        if self.features >= SUBPIXEL_MIN_FEATURES:
            y = conv_transpose4x4_subpixel(x, kernel.astype(self.dtype))
        else:
            y = conv_transpose4x4(x, kernel.astype(self.dtype))
        y = y + bias.astype(self.dtype).reshape(1, 1, 1, -1)
        return y.reshape(*lead, *y.shape[1:])
