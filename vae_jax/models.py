"""Flax Linen modules: encoders, decoders and the `VAE` that pairs them. No loss code here.

Parameters live outside the modules, in an explicit ``params`` pytree:
``params = init_params(model, key)``, then
``model.apply({"params": params}, x, method="encode")``. Normalization layers are
GroupNorm (no running statistics), so there is no mutable model state to carry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.arrays import check_input_labels, check_inputs
from vae_jax.conv import ConvTranspose4x4
from vae_jax.fields import require_int, require_ints, require_number

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "softplus": nn.softplus,
    "tanh": nn.tanh,
    "elu": nn.elu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "leaky_relu": lambda x: nn.leaky_relu(x, negative_slope=0.2),
}
LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_global", "gaussian_pixel")
ARCHITECTURES = ("mlp", "conv")

# The encoder's log-variance is clipped to this range before use so exp(logvar) cannot
# overflow float32 (exp(88) does) or underflow to an exactly-zero variance. Typical values
# lie in [-12, 2], where the clip is the identity; training stops on a non-finite loss anyway.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 30.0


class DecoderOutput(NamedTuple):
    """Parameters of p(x|z).

    Attributes:
      loc: [..., *image_shape] Bernoulli logits, or the Gaussian mean.
      logvar: Gaussian log-variance broadcastable to `loc` (scalar, per pixel, or None for
        the Bernoulli likelihood).
    """

    loc: jax.Array
    logvar: jax.Array | None


def _one_hot(label: jax.Array | None, num_classes: int, like: jax.Array) -> jax.Array | None:
    """One-hot labels broadcast to `like`'s leading axes, or None when unconditional.

    A label outside ``0..num_classes - 1`` (or not a whole number) has an all-NaN row, so
    everything computed from that example is NaN: `jax.nn.one_hot` alone gives it all zeros,
    a plausible input and a plausible wrong number. (Concrete labels are refused before, in
    one line: `vae_jax.arrays.check_inputs`; this is the guard under `jit`.) Rows of valid
    labels are unchanged, bit for bit.
    """
    if num_classes == 0:
        return None
    if label is None:
        raise ValueError("this VAE is conditional (num_classes > 0): pass the batch's labels")
    onehot = jax.nn.one_hot(label, num_classes, dtype=like.dtype)  # [batch, classes]
    known = jnp.any(onehot != 0, axis=-1, keepdims=True)  # [batch, 1]: one class matched
    onehot = jnp.where(known, onehot, jnp.nan)
    return jnp.broadcast_to(onehot, (*like.shape[:-1], num_classes))


class MLPEncoder(nn.Module):
    """x [..., *image_shape] -> (mean, logvar), each [..., z_dim], through Dense layers."""

    hidden: Sequence[int]
    z_dim: int
    activation: str = "relu"
    num_classes: int = 0
    event_ndims: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, label: jax.Array | None = None):
        h = x.reshape(*x.shape[: x.ndim - self.event_ndims], -1).astype(self.dtype)
        onehot = _one_hot(label, self.num_classes, h)
        if onehot is not None:
            h = jnp.concatenate([h, onehot], axis=-1)
        for width in self.hidden:
            h = ACTIVATIONS[self.activation](nn.Dense(width, dtype=self.dtype)(h))
        # One Dense for both heads: one matmul instead of two (same function as two layers).
        mean, logvar = jnp.split(nn.Dense(2 * self.z_dim, dtype=self.dtype)(h), 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)


class MLPDecoder(nn.Module):
    """z [..., z_dim] -> [..., *image_shape] outputs (logits or means), through Dense layers."""

    hidden: Sequence[int]
    image_shape: Sequence[int]
    activation: str = "relu"
    num_classes: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, label: jax.Array | None = None) -> jax.Array:
        h = z.astype(self.dtype)
        onehot = _one_hot(label, self.num_classes, h)
        if onehot is not None:
            h = jnp.concatenate([h, onehot], axis=-1)
        for width in self.hidden:
            h = ACTIVATIONS[self.activation](nn.Dense(width, dtype=self.dtype)(h))
        # The output layer runs in float32 even under mixed precision: its bias gradient sums
        # over batch x pixels, which saturates in bfloat16 (tests/test_precision.py).
        out = nn.Dense(math.prod(self.image_shape), dtype=jnp.float32)(h)
        return out.reshape(*out.shape[:-1], *self.image_shape)


def _group_norm(channels: int, dtype: Any) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(8, channels), dtype=dtype)


class ConvEncoder(nn.Module):
    """x [batch, H, W, C] -> (mean, logvar): stride-2 4x4 convs, GroupNorm, LeakyReLU(0.2)."""

    channels: Sequence[int]
    z_dim: int
    num_classes: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, label: jax.Array | None = None):
        h = x.astype(self.dtype)
        for width in self.channels:
            h = nn.Conv(width, (4, 4), strides=(2, 2), padding="SAME", dtype=self.dtype)(h)
            h = ACTIVATIONS["leaky_relu"](_group_norm(width, self.dtype)(h))
        h = h.reshape(h.shape[0], -1)
        onehot = _one_hot(label, self.num_classes, h)
        if onehot is not None:
            h = jnp.concatenate([h, onehot], axis=-1)
        mean, logvar = jnp.split(nn.Dense(2 * self.z_dim, dtype=self.dtype)(h), 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)


class ConvDecoder(nn.Module):
    """z [..., z_dim] -> [..., H, W, C]: Dense to a small feature map, then stride-2 4x4
    transposed convs with GroupNorm and LeakyReLU(0.2), the last one to C output channels."""

    channels: Sequence[int]
    image_shape: Sequence[int]
    num_classes: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, label: jax.Array | None = None) -> jax.Array:
        height, width, out_channels = self.image_shape
        factor = 2 ** len(self.channels)
        h = z.astype(self.dtype)
        onehot = _one_hot(label, self.num_classes, h)
        if onehot is not None:
            h = jnp.concatenate([h, onehot], axis=-1)
        lead = h.shape[:-1]
        h = h.reshape(-1, h.shape[-1])
        start = (height // factor, width // factor, self.channels[-1])
        h = nn.Dense(math.prod(start), dtype=self.dtype)(h)
        h = ACTIVATIONS["leaky_relu"](h).reshape(-1, *start)
        # Each layer is nn.ConvTranspose(width, (4, 4), strides=(2, 2), padding="SAME"),
        # computed in sub-pixel form where that is faster (vae_jax/conv.py); same parameters.
        for i, width_ in enumerate(reversed(self.channels[:-1])):
            h = ConvTranspose4x4(width_, self.dtype, name=f"ConvTranspose_{i}")(h)
            h = ACTIVATIONS["leaky_relu"](_group_norm(width_, self.dtype)(h))
        # float32 output layer under mixed precision, as in MLPDecoder (bias-gradient sums).
        last = f"ConvTranspose_{len(self.channels) - 1}"
        h = ConvTranspose4x4(out_channels, jnp.float32, name=last)(h)
        return h.reshape(*lead, height, width, out_channels)


class VAE(nn.Module):
    """A VAE with a diagonal-Gaussian posterior q(z|x) and prior p(z) = N(0, I).

    Attributes:
      image_shape: (H, W, C) of one example; vectors can use (D, 1, 1).
      z_dim: latent dimension.
      architecture: "mlp" or "conv".
      hidden: MLP hidden widths, shared by encoder and decoder (the decoder mirrors them).
      activation: MLP activation, a key of `ACTIVATIONS`.
      conv_channels: conv widths, one stride-2 layer each; H and W must be divisible by
        2 ** len(conv_channels).
      likelihood: "bernoulli" (logits; the default for MNIST, grey or binarized),
        "gaussian" (fixed std `obs_std`), "gaussian_global" (one learned log-variance) or
        "gaussian_pixel" (a learned log-variance per pixel).
      obs_std: the standard deviation of the fixed-variance Gaussian likelihood.
      num_classes: > 0 makes a conditional VAE: encoder and decoder also see the one-hot
        label (a label outside 0..num_classes - 1 makes that example's outputs NaN).
      dtype: compute dtype (jnp.bfloat16 for mixed precision); parameters stay float32.
    """

    image_shape: tuple[int, ...] = (28, 28, 1)
    z_dim: int = 20
    architecture: str = "mlp"
    hidden: tuple[int, ...] = (400,)
    activation: str = "relu"
    conv_channels: tuple[int, ...] = (32, 64)
    likelihood: str = "bernoulli"
    obs_std: float = 1.0
    num_classes: int = 0
    dtype: Any = jnp.float32

    def setup(self) -> None:
        encoder: nn.Module
        decoder: nn.Module
        if self.architecture == "mlp":
            encoder = MLPEncoder(
                self.hidden,
                self.z_dim,
                self.activation,
                self.num_classes,
                len(self.image_shape),
                self.dtype,
            )
            decoder = MLPDecoder(
                tuple(reversed(self.hidden)),
                self.image_shape,
                self.activation,
                self.num_classes,
                self.dtype,
            )
        else:
            encoder = ConvEncoder(self.conv_channels, self.z_dim, self.num_classes, self.dtype)
            decoder = ConvDecoder(
                self.conv_channels, self.image_shape, self.num_classes, self.dtype
            )
        self.encoder, self.decoder = encoder, decoder
        if self.likelihood == "gaussian_global":
            self.obs_logvar = self.param("obs_logvar", nn.initializers.zeros, ())
        elif self.likelihood == "gaussian_pixel":
            self.obs_logvar = self.param("obs_logvar", nn.initializers.zeros, self.image_shape)

    def encode(self, x: jax.Array, label: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """x [batch, *image_shape] in [0, 1] -> (mean, logvar) of q(z|x), each [batch, z_dim]."""
        return self.encoder(x, label)

    def decode(self, z: jax.Array, label: jax.Array | None = None) -> DecoderOutput:
        """z [..., batch, z_dim] -> the parameters of p(x|z), [..., batch, *image_shape]."""
        loc = self.decoder(z, label)
        if self.likelihood == "bernoulli":
            return DecoderOutput(loc, None)
        if self.likelihood == "gaussian":
            return DecoderOutput(loc, jnp.asarray(2.0 * math.log(self.obs_std), loc.dtype))
        logvar = jnp.clip(self.obs_logvar, LOGVAR_MIN, LOGVAR_MAX)
        return DecoderOutput(loc, logvar.astype(loc.dtype))

    def __call__(self, x: jax.Array, label: jax.Array | None = None) -> DecoderOutput:
        """Decode the posterior mean (deterministic); used to initialise parameters."""
        mean, _ = self.encode(x, label)
        return self.decode(mean, label)


def check_model(model: VAE) -> None:
    """Raise ValueError with a one-line reason if `model`'s options are inconsistent."""
    if model.architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {model.architecture!r}")
    if model.likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {model.likelihood!r}")
    if model.activation not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)}, got {model.activation!r}"
        )
    for name in ("image_shape", "hidden", "conv_channels"):  # (before the comparisons below)
        require_ints(name, getattr(model, name))
    for name in ("z_dim", "num_classes"):
        require_int(name, getattr(model, name))
    require_number("obs_std", model.obs_std)
    if not model.image_shape or any(d < 1 for d in model.image_shape):  # (() was accepted)
        raise ValueError(
            f"image_shape must be one or more positive sizes, got {tuple(model.image_shape)}"
        )
    try:  # (before: dtype="foo" was accepted, and failed inside the first layer)
        floating = jnp.issubdtype(jnp.dtype(model.dtype), jnp.floating)
    except TypeError:
        floating = False
    if not floating:
        raise ValueError(
            f"dtype must be a floating-point dtype (float32, bfloat16), got {model.dtype!r}"
        )
    if model.z_dim < 1:
        raise ValueError(f"z_dim must be >= 1, got {model.z_dim}")
    if any(w < 1 for w in model.hidden) or any(c < 1 for c in model.conv_channels):
        raise ValueError("hidden sizes and conv channels must be >= 1")
    if not model.obs_std > 0:
        raise ValueError(f"obs_std must be > 0, got {model.obs_std}")
    if model.num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {model.num_classes}")
    if model.architecture == "conv":
        if len(model.image_shape) != 3:
            raise ValueError(f"the conv VAE needs (H, W, C) images, got {model.image_shape}")
        if not model.conv_channels:
            raise ValueError("the conv VAE needs at least one conv layer")
        factor = 2 ** len(model.conv_channels)
        if model.image_shape[0] % factor or model.image_shape[1] % factor:
            raise ValueError(
                f"conv VAE with {len(model.conv_channels)} stride-2 layers needs H and W "
                f"divisible by {factor}, got {model.image_shape[:2]}"
            )


def init_params(model: nn.Module, key: jax.Array, x: Any = None, label: Any = None) -> Any:
    """Initialise `model`'s parameters from `key`; returns the ``params`` pytree.

    Works for any module that follows the model protocol (README, "Your own model"): it
    runs ``encode`` then ``decode`` (or ``sample_latent`` then ``decode``) once, so every
    parameter is created.

    Args:
      model: a `VAE`, or your own module.
      key: the `jax.random` key of the initial values.
      x: an example batch ``[batch, *event_shape]``; default one zero example of
        ``model.image_shape`` (a module without that attribute needs `x`).
      label: example labels ``[batch]`` for a conditional model (default zeros).

    Compiled with `jax.jit`: the same values as an eager ``model.init``, in a fraction of
    the time (Flax's init otherwise dispatches op by op; docs/benchmarks.md).
    """
    if isinstance(model, VAE):
        check_model(model)
    if x is None:
        shape = getattr(model, "image_shape", None)
        if shape is None:
            raise ValueError(
                f"{type(model).__name__} has no image_shape attribute: pass an example batch x "
                "to init_params(model, key, x)"
            )
        x = jnp.zeros((1, *shape), jnp.float32)
    if label is None and getattr(model, "num_classes", None):
        label = jnp.zeros(np.shape(x)[:1], jnp.int32)
    # (an example of another shape would make parameters that do not fit the model's data)
    check_inputs(model, x, label, name="init_params")
    x = jnp.asarray(x, jnp.float32)

    def touch_all(module: Any, x: jax.Array, label: Any) -> Any:
        if hasattr(module, "sample_latent"):
            z = module.sample_latent(x, label, jax.random.key(0), 1).z
        else:
            z, _ = module.encode(x, label)
        return module.decode(z, label)

    return jax.jit(lambda key: model.init(key, x, label, method=touch_all)["params"])(key)


def encode(
    model: nn.Module, params: Any, x: jax.Array, label: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """(mean, logvar) of q(z|x), each [batch, z_dim], for any module with an `encode` method."""
    return cast(
        tuple[jax.Array, jax.Array], model.apply({"params": params}, x, label, method="encode")
    )


def decode(
    model: nn.Module, params: Any, z: jax.Array, label: jax.Array | None = None
) -> DecoderOutput:
    """The parameters of p(x|z), [..., batch, *image_shape], for any module with `decode`."""
    return cast(DecoderOutput, model.apply({"params": params}, z, label, method="decode"))


def decoder_mean(
    model: nn.Module, params: Any, z: jax.Array, label: jax.Array | None = None
) -> jax.Array:
    """The mean of p(x|z), float32 [..., batch, *event_shape]: sigmoid(logits) in [0, 1]
    for a Bernoulli likelihood, the Gaussian mean (any real value) otherwise. Labels are
    checked (`vae_jax.arrays.check_input_labels`: a conditional model's label 7 of 3
    classes gave NaN)."""
    classes = getattr(model, "num_classes", None) or None
    first = jax.tree.leaves(z)[0]  # (a model with several latent layers takes a tuple)
    if (label is not None or classes) and jnp.ndim(first) >= 2:
        n = jnp.shape(first)[-2]
        check_input_labels(label, n, name="decoder_mean", num_classes=classes)
    output = decode(model, params, z, label)
    if model.likelihood == "bernoulli":
        return jax.nn.sigmoid(output.loc.astype(jnp.float32))
    return output.loc.astype(jnp.float32)


def reconstruct(
    model: nn.Module, params: Any, x: jax.Array, label: jax.Array | None = None
) -> jax.Array:
    """Decode the posterior mean of each example: `decoder_mean` at z = E_q[z], shaped like x
    (checked first: `vae_jax.arrays.check_inputs`)."""
    check_inputs(model, x, label, name="reconstruct")
    mean, _ = encode(model, params, x, label)
    return decoder_mean(model, params, mean, label)


class LinearPathVAE(VAE):
    """An MLP `VAE` on internally standardized values whose encoder and decoder means each
    add a linear map of their input. With u = (x - shift) / scale (``x_shift`` and
    ``x_log_scale``, [D] each, D the number of values of one example; fixed: no gradient
    reaches them, so Adam leaves them as set, by `vae_jax.estimator` to X's mean and std):

    - mean of q(z|x) = MLP(u) + u A (A: ``linear_encoder`` kernel [D, z_dim]);
    - mean of p(x|z) = shift + scale * (s * MLP(z) + z W + c) (W, c: ``linear_decoder``
      kernel [z_dim, D] and bias [D]; s the likelihood's std in units of scale, per feature
      for "gaussian_pixel", 1 for "bernoulli"), reshaped to `image_shape`.

    Every trained parameter is so in units of the data's spread or of the noise, and Adam's
    steps (of about the learning rate) mean the same whatever X's units. With both MLPs'
    output layers at zero and "gaussian_pixel" this is factor analysis exactly (its
    posterior is Gaussian, and diagonal once W's rows are rotated so that W diag(1/noise)
    W^T is diagonal), so it can start at a factor-analysis fit (`vae_jax.estimator`). MLP
    architecture only; the `VAE`'s parameters plus the four above. At their initial values
    (shift 0, scale 1) u = x."""

    def setup(self) -> None:
        super().setup()
        size = math.prod(self.image_shape)
        self.x_shift = self.param("x_shift", nn.initializers.zeros, (size,))
        self.x_log_scale = self.param("x_log_scale", nn.initializers.zeros, (size,))
        self.linear_encoder = nn.Dense(self.z_dim, use_bias=False, dtype=self.dtype)
        self.linear_decoder = nn.Dense(size, dtype=jnp.float32)

    def _shift_scale(self) -> tuple[jax.Array, jax.Array]:
        shift = jax.lax.stop_gradient(self.x_shift)
        return shift, jnp.exp(jax.lax.stop_gradient(self.x_log_scale))

    def encode(self, x: jax.Array, label: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """x [batch, *image_shape] -> (mean, logvar) of q(z|x), each [batch, z_dim]."""
        shift, scale = self._shift_scale()
        flat = x.reshape(*x.shape[: x.ndim - len(self.image_shape)], -1).astype(jnp.float32)
        lead = (1,) * (flat.ndim - 1)
        u = (flat - shift.reshape(*lead, -1)) / scale.reshape(*lead, -1)
        mean, logvar = self.encoder(u.reshape(x.shape), label)
        return mean + self.linear_encoder(u.astype(self.dtype)).astype(mean.dtype), logvar

    def decode(self, z: jax.Array, label: jax.Array | None = None) -> DecoderOutput:
        """z [..., batch, z_dim] -> the parameters of p(x|z), [..., batch, *image_shape]."""
        out = super().decode(z, label)
        lead = out.loc.shape[: out.loc.ndim - len(self.image_shape)]
        mlp = out.loc.astype(jnp.float32).reshape(*lead, -1)
        shift, scale = self._shift_scale()
        if out.logvar is not None:  # (Gaussian: the MLP's output in units of the noise std)
            std = jnp.broadcast_to(jnp.exp(0.5 * out.logvar.astype(jnp.float32)), self.image_shape)
            mlp = mlp * (std.reshape(-1) / scale).reshape((1,) * len(lead) + (-1,))
        v = mlp + self.linear_decoder(z.astype(jnp.float32))
        one = (1,) * len(lead)
        loc = shift.reshape(*one, -1) + scale.reshape(*one, -1) * v
        return DecoderOutput(
            loc.reshape(*lead, *self.image_shape).astype(out.loc.dtype), out.logvar
        )
