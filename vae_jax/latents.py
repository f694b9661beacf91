"""Latent-variable models beyond one diagonal Gaussian and N(0, I): Flax modules only.

Each module follows the model protocol (README, "Your own model") through its
``sample_latent(x, label, key, num_samples) -> LatentSample`` hook, so `make_elbo`,
`make_iwae`, `fit` and `importance_terms` use them with the same calls as a `VAE`:

- `HierarchicalVAE`: several stochastic layers (Burda et al., 2016),
  ``q(z_1..z_n|x) = q(z_1|x) prod_i q(z_i|z_{i-1})`` and
  ``p(x, z_1..z_n) = p(x|z_1) prod_i p(z_{i-1}|z_i) p(z_n)``, each conditional a diagonal
  Gaussian computed by a small tanh MLP, p(z_n) = N(0, I).
- `VampPriorVAE`: a `VAE` whose prior is the VampPrior (Tomczak & Welling, 2018),
  ``p(z) = 1/K sum_k q(z|u_k)`` with K learned pseudo-inputs u_k.
- `IAFVAE`: a `VAE` whose posterior is the diagonal Gaussian followed by an inverse
  autoregressive flow (Kingma et al., 2016).

None of them has a closed-form KL, so `LatentSample.kl` is None and the objectives use the
Monte Carlo estimate ``mean_L (log q - log p)``. Their ``encode(x, label)`` returns the
(mean, logvar) of the first diagonal Gaussian of q (the bottom layer's q(z_1|x), or the
flow's base distribution): what pictures and active units use.

Every module checks its options when it is constructed (`check_latent_model`): a bad one is
a one-line ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.fields import require_int, require_ints
from vae_jax.models import ACTIVATIONS, VAE, DecoderOutput, MLPEncoder, check_model
from vae_jax.objectives import (
    LatentSample,
    diag_gaussian_log_prob,
    reparameterize,
    standard_normal_log_prob,
)

# ----------------------------------------------------------------------------- hierarchy


class LayerSamples(NamedTuple):
    """Samples of every stochastic layer of a `HierarchicalVAE`, with per-layer densities.

    Attributes:
      z: (z_1, ..., z_n), z_i [L, batch, latent_dims[i]].
      log_q: [n, L, batch] log q(z_1|x), log q(z_i|z_{i-1}) in nats.
      log_p: [n, L, batch] log p(z_i|z_{i+1}) for i < n, and log p(z_n) = log N(z_n|0, I).
      mean: (m_1, ..., m_n), m_i [L, batch, latent_dims[i]]: the mean of q(z_i|z_{i-1}) at
        the sampled z_{i-1} (m_1 is q(z_1|x)'s mean, the same for every sample). Averaged over
        samples it estimates E_q[z_i] with less noise than the samples themselves (what
        active units need: the noise of a sample mean would count as activity).
    """

    z: tuple[jax.Array, ...]
    log_q: jax.Array
    log_p: jax.Array
    mean: tuple[jax.Array, ...]


class HierarchicalVAE(nn.Module):
    """A VAE with n stochastic layers (Burda et al., 2016, Section 5: two layers).

    Inference: x -> hidden[0] -> z_1 -> hidden[1] -> z_2 -> ... -> z_n; generation mirrors
    it: z_n ~ N(0, I) -> reversed(hidden[n-1]) -> z_{n-1} -> ... -> z_1 ->
    reversed(hidden[0]) -> x. Each arrow is an MLP (`activation`, tanh in the paper) with a
    diagonal-Gaussian head (a Bernoulli or Gaussian one for x, as in `VAE`). The defaults
    are the paper's 2-layer MNIST model: 784 -200-200- z_1 (100) -100-100- z_2 (50).

    Attributes:
      image_shape: one example's shape.
      latent_dims: (d_1, ..., d_n), the size of each stochastic layer, bottom first.
      hidden: n tuples of hidden widths; hidden[i] is the MLP into z_{i+1} in q (and,
        reversed, the MLP out of it in p).
      activation: a key of `vae_jax.models.ACTIVATIONS`.
      likelihood, obs_std, num_classes, dtype: as in `VAE`. A conditional model gives the
        label to q(z_1|x) and p(x|z_1).
    """

    image_shape: tuple[int, ...] = (28, 28, 1)
    latent_dims: tuple[int, ...] = (100, 50)
    hidden: tuple[tuple[int, ...], ...] = ((200, 200), (100, 100))
    activation: str = "tanh"
    likelihood: str = "bernoulli"
    obs_std: float = 1.0
    num_classes: int = 0
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        check_latent_model(self)
        super().__post_init__()

    @property
    def z_dim(self) -> int:
        """The bottom layer's size (what `encode` returns)."""
        return self.latent_dims[0]

    def setup(self) -> None:
        self.bottom = _bottom_vae(self)
        dims, hidden = self.latent_dims, self.hidden
        # up[i]: q(z_{i+2} | z_{i+1}); down[i]: p(z_{i+1} | z_{i+2}).
        self.up = [
            MLPEncoder(tuple(hidden[i + 1]), dims[i + 1], self.activation, 0, 1, self.dtype)
            for i in range(len(dims) - 1)
        ]
        self.down = [
            MLPEncoder(tuple(reversed(hidden[i + 1])), dims[i], self.activation, 0, 1, self.dtype)
            for i in range(len(dims) - 1)
        ]

    def encode(self, x: jax.Array, label: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """(mean, logvar) of q(z_1|x), each [batch, latent_dims[0]]."""
        return self.bottom.encode(x, label)

    def decode(self, z: Any, label: jax.Array | None = None) -> DecoderOutput:
        """p(x|z_1) from z = (z_1, ..., z_n) or z_1 alone, [..., batch, latent_dims[0]]."""
        z1 = z[0] if isinstance(z, tuple | list) else z
        return self.bottom.decode(z1, label)

    def sample_layers(
        self, x: jax.Array, label: jax.Array | None, key: jax.Array, num_samples: int
    ) -> LayerSamples:
        """Ancestral samples of q, layer by layer, with each layer's log q and log p."""
        keys = jax.random.split(key, len(self.latent_dims))
        mean, logvar = (a.astype(jnp.float32) for a in self.bottom.encode(x, label))
        z = reparameterize(keys[0], mean, logvar, num_samples)  # [L, batch, d_1]
        zs, log_q = [z], [diag_gaussian_log_prob(z, mean, logvar)]
        means = [jnp.broadcast_to(mean[None], z.shape)]
        for up, k in zip(self.up, keys[1:], strict=True):
            mean, logvar = (a.astype(jnp.float32) for a in up(zs[-1]))  # [L, batch, d_i]
            eps = jax.random.normal(k, mean.shape, mean.dtype)
            zs.append(mean + jnp.exp(0.5 * logvar) * eps)
            means.append(mean)
            log_q.append(diag_gaussian_log_prob(zs[-1], mean, logvar))
        log_p = []
        for down, below, above in zip(self.down, zs[:-1], zs[1:], strict=True):
            mean, logvar = (a.astype(jnp.float32) for a in down(above))
            log_p.append(diag_gaussian_log_prob(below, mean, logvar))  # log p(z_i | z_{i+1})
        log_p.append(standard_normal_log_prob(zs[-1]))
        return LayerSamples(tuple(zs), jnp.stack(log_q), jnp.stack(log_p), tuple(means))

    def sample_latent(
        self, x: jax.Array, label: jax.Array | None, key: jax.Array, num_samples: int
    ) -> LatentSample:
        """z = (z_1, ..., z_n) ~ q; log q and log p summed over the layers; kl None."""
        layers = self.sample_layers(x, label, key, num_samples)
        return LatentSample(layers.z, layers.log_q.sum(0), layers.log_p.sum(0), None)

    def sample_prior(self, key: jax.Array, num_samples: int) -> tuple[jax.Array, ...]:
        """Ancestral samples (z_1, ..., z_n) of p: z_n ~ N(0, I), z_{i-1} ~ p(z_{i-1}|z_i);
        each [num_samples, latent_dims[i]]."""
        require_int("num_samples", num_samples, low=1)  # (0: ZeroDivisionError or empty)
        keys = jax.random.split(key, len(self.latent_dims))
        zs = [jax.random.normal(keys[-1], (num_samples, self.latent_dims[-1]))]
        for down, k in zip(reversed(self.down), reversed(keys[:-1]), strict=True):
            mean, logvar = (a.astype(jnp.float32) for a in down(zs[0]))
            zs.insert(0, mean + jnp.exp(0.5 * logvar) * jax.random.normal(k, mean.shape))
        return tuple(zs)

    def __call__(self, x: jax.Array, label: jax.Array | None = None) -> DecoderOutput:
        return self.bottom(x, label)


def _bottom_vae(model: HierarchicalVAE) -> VAE:
    """`model`'s bottom layer as a `VAE`: q(z_1|x) and p(x|z_1) with its likelihood (a plain
    function, not a method: a module built inside a method call would be bound to `model`)."""
    return VAE(
        image_shape=model.image_shape,
        z_dim=model.latent_dims[0],
        hidden=tuple(model.hidden[0]),
        activation=model.activation,
        likelihood=model.likelihood,
        obs_std=model.obs_std,
        num_classes=model.num_classes,
        dtype=model.dtype,
    )


# ----------------------------------------------------------------------------- VampPrior


class _AroundVAE(nn.Module):
    """A module built around `base` (a `VAE`): its event shape, likelihood, labels, latent
    size, `encode` and `decode` are `base`'s (the subclasses change the prior or q)."""

    base: VAE = VAE()

    def __post_init__(self) -> None:
        check_latent_model(self)
        super().__post_init__()

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.base.image_shape)

    @property
    def likelihood(self) -> str:
        return self.base.likelihood

    @property
    def num_classes(self) -> int:
        return self.base.num_classes

    @property
    def z_dim(self) -> int:
        return self.base.z_dim

    def encode(self, x: jax.Array, label: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """(mean, logvar) of `base`'s diagonal Gaussian, each [batch, z_dim]."""
        return self.base.encode(x, label)

    def decode(self, z: jax.Array, label: jax.Array | None = None) -> DecoderOutput:
        """The parameters of p(x|z), [..., batch, *image_shape]."""
        return self.base.decode(z, label)


class VampPriorVAE(_AroundVAE):
    """`base` (an unconditional `VAE`) with the VampPrior (Tomczak & Welling, 2018).

    ``p(z) = 1/K sum_k N(z | mean(u_k), diag(exp(logvar(u_k))))``: the mixture of the
    encoder's posteriors at K learned pseudo-inputs u_k, its log-density computed with a
    logsumexp over k. The pseudo-inputs have the data's shape. For a Bernoulli likelihood
    (data in [0, 1]) they are clipped to [0, 1] (the paper's hard tanh) and start at
    N(0.05, 0.01^2) per pixel, the paper's MNIST initialisation; for a Gaussian likelihood
    they are unconstrained and start at N(0, 0.01^2) (data of any range).

    Attributes:
      base: the VAE whose encoder and decoder are used (any architecture, unconditional).
      num_pseudo_inputs: K (500 in the paper).

    Cost: each call encodes the K pseudo-inputs once and evaluates K Gaussians per sample,
    ``O(L * batch * K * z_dim)``.
    """

    num_pseudo_inputs: int = 500

    def setup(self) -> None:
        shape = (self.num_pseudo_inputs, *self.base.image_shape)
        start = 0.05 if self.likelihood == "bernoulli" else 0.0
        self.raw_pseudo_inputs = self.param("pseudo_inputs", _normal_init(start, 0.01), shape)

    def pseudo_inputs(self) -> jax.Array:
        """The K pseudo-inputs u_k, [K, *image_shape] (clipped to [0, 1] if Bernoulli)."""
        if self.likelihood == "bernoulli":
            return jnp.clip(self.raw_pseudo_inputs, 0.0, 1.0)
        return self.raw_pseudo_inputs

    def prior_log_prob(self, z: jax.Array) -> jax.Array:
        """log p(z) of the VampPrior for z [..., z_dim]: [...] in nats."""
        mean, logvar = (a.astype(jnp.float32) for a in self.base.encode(self.pseudo_inputs()))
        z = z[..., None, :]  # [..., 1, z_dim] against the K components [K, z_dim]
        lead = (1,) * (z.ndim - 2)
        log_k = diag_gaussian_log_prob(
            z, mean.reshape(*lead, *mean.shape), logvar.reshape(*lead, *logvar.shape)
        )  # [..., K]
        return jax.nn.logsumexp(log_k, axis=-1) - math.log(self.num_pseudo_inputs)

    def sample_latent(
        self, x: jax.Array, label: jax.Array | None, key: jax.Array, num_samples: int
    ) -> LatentSample:
        """z ~ q(z|x), [L, batch, z_dim]; log q; the VampPrior's log p; kl None."""
        mean, logvar = (a.astype(jnp.float32) for a in self.base.encode(x, label))
        z = reparameterize(key, mean, logvar, num_samples)
        return LatentSample(
            z, diag_gaussian_log_prob(z, mean, logvar), self.prior_log_prob(z), None
        )

    def sample_prior(self, key: jax.Array, num_samples: int) -> jax.Array:
        """z ~ p(z), [num_samples, z_dim]: a uniformly chosen component q(z|u_k), then z."""
        require_int("num_samples", num_samples, low=1)  # (0: ZeroDivisionError or empty)
        mean, logvar = (a.astype(jnp.float32) for a in self.base.encode(self.pseudo_inputs()))
        pick, noise = jax.random.split(key)
        k = jax.random.randint(pick, (num_samples,), 0, self.num_pseudo_inputs)
        eps = jax.random.normal(noise, (num_samples, self.z_dim))
        return mean[k] + jnp.exp(0.5 * logvar[k]) * eps

    def __call__(self, x: jax.Array, label: jax.Array | None = None) -> DecoderOutput:
        return self.base(x, label)


def _normal_init(mean: float, std: float) -> Any:
    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return mean + std * jax.random.normal(key, shape, dtype)

    return init


# ----------------------------------------------------------------------------- IAF


def made_masks(
    num_inputs: int, hidden: Sequence[int], num_outputs_per_input: int = 1
) -> list[np.ndarray]:
    """MADE masks (Germain et al., 2015) of an autoregressive MLP on `num_inputs` values.

    Input i (1-based degree i) reaches hidden unit j only if deg(j) >= i, and output i only
    sees hidden units with deg(j) < i, so output i depends on inputs 1..i-1 only. Hidden
    degrees cycle through 1..num_inputs-1 (all 1 when num_inputs is 1: the outputs then
    depend on nothing but the biases and the context).

    Returns:
      One 0/1 float32 mask per layer, [fan_in, fan_out]; the last one is
      [hidden[-1], num_outputs_per_input * num_inputs], output block b, unit i at column
      b * num_inputs + i.
    """
    degrees = [np.arange(1, num_inputs + 1)]
    for width in hidden:
        degrees.append(np.arange(width) % max(num_inputs - 1, 1) + 1)
    masks = [
        (d_out[None, :] >= d_in[:, None]).astype(np.float32)
        for d_in, d_out in zip(degrees[:-1], degrees[1:], strict=True)
    ]
    out = np.tile(np.arange(1, num_inputs + 1), num_outputs_per_input)
    masks.append((out[None, :] > degrees[-1][:, None]).astype(np.float32))
    return masks


def _masked_dense(
    module: nn.Module, name: str, h: jax.Array, mask: np.ndarray, dtype: Any
) -> jax.Array:
    """``h @ (kernel * mask) + bias`` with parameters `name`_kernel, `name`_bias of `module`
    (called inside its compact method); `mask` is a fixed 0/1 [fan_in, fan_out] array."""
    kernel = module.param(f"{name}_kernel", nn.initializers.lecun_normal(), mask.shape)
    bias = module.param(f"{name}_bias", nn.initializers.zeros, mask.shape[-1:])
    out = h.astype(dtype) @ (kernel * jnp.asarray(mask)).astype(dtype)
    return out + bias.astype(dtype).reshape((1,) * (out.ndim - 1) + bias.shape)


class IAFStep(nn.Module):
    """One inverse autoregressive flow step: ``[m, s] = MADE(z, context)``,
    ``sigma = sigmoid(s + 1)``, ``z' = sigma * z + (1 - sigma) * m`` (Kingma et al., 2016,
    Algorithm 1: the gated, numerically stable form; the +1 starts sigma near 0.73, close
    to the identity). Returns (z', log|det dz'/dz|) = (z', sum log sigma)."""

    hidden: tuple[int, ...]
    activation: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, context: jax.Array) -> tuple[jax.Array, jax.Array]:
        d = z.shape[-1]
        masks = made_masks(d, self.hidden, 2)
        act = ACTIVATIONS[self.activation]
        h = z
        for i, width in enumerate(self.hidden):
            h = _masked_dense(self, f"masked_{i}", h, masks[i], self.dtype)
            if i == 0:  # the context enters the first hidden layer, unmasked
                h = h + nn.Dense(width, use_bias=False, dtype=self.dtype)(context)
            h = act(h)
        out = _masked_dense(self, "masked_out", h, masks[-1], self.dtype).astype(jnp.float32)
        m, s = out[..., :d], out[..., d:] + 1.0
        sigma = jax.nn.sigmoid(s)
        return sigma * z + (1.0 - sigma) * m, jnp.sum(jax.nn.log_sigmoid(s), axis=-1)


class IAFVAE(_AroundVAE):
    """`base` (a `VAE`) with an inverse autoregressive flow posterior (Kingma et al., 2016).

    ``z_0 ~ N(mean(x), diag(exp(logvar(x))))`` from the base encoder, then `flow_depth`
    IAF steps (`IAFStep`), the order of the latents reversed between steps. With
    ``log det_t = sum log sigma_t``:
    ``log q(z_T|x) = log N(z_0 | mean, logvar) - sum_t log det_t``; p(z) = N(0, I).
    The steps' context (the paper's h) is the base encoder's (mean, logvar), concatenated:
    a function of x (and of the label, for a conditional base) at no extra cost.

    Attributes:
      base: the VAE whose encoder and decoder are used (any architecture).
      flow_depth: the number of IAF steps (>= 1).
      flow_hidden: the hidden widths of each step's MADE network (at least one layer).
    """

    flow_depth: int = 2
    flow_hidden: tuple[int, ...] = (128,)

    def setup(self) -> None:
        self.steps = [
            IAFStep(tuple(self.flow_hidden), self.base.activation, self.base.dtype)
            for _ in range(self.flow_depth)
        ]

    def flow(self, z0: jax.Array, context: jax.Array) -> tuple[jax.Array, jax.Array]:
        """z_0 [..., z_dim] and the context [..., c] -> (z_T, sum_t log det_t [...])."""
        z, log_det = z0, jnp.zeros(z0.shape[:-1], jnp.float32)
        for t, step in enumerate(self.steps):
            if t > 0:
                z = z[..., ::-1]  # reverse the order between steps (volume-preserving)
            z, step_log_det = step(z, context)
            log_det = log_det + step_log_det
        return z, log_det

    def sample_latent(
        self, x: jax.Array, label: jax.Array | None, key: jax.Array, num_samples: int
    ) -> LatentSample:
        """z_T [L, batch, z_dim]; log q(z_T|x) = base log q - sum log det; N(0, I); kl None."""
        mean, logvar = (a.astype(jnp.float32) for a in self.base.encode(x, label))
        z0 = reparameterize(key, mean, logvar, num_samples)  # [L, batch, z_dim]
        context = jnp.concatenate([mean, logvar], axis=-1)
        context = jnp.broadcast_to(context[None], (num_samples, *context.shape))
        z, log_det = self.flow(z0, context)
        log_q = diag_gaussian_log_prob(z0, mean, logvar) - log_det
        return LatentSample(z, log_q, standard_normal_log_prob(z), None)

    def __call__(self, x: jax.Array, label: jax.Array | None = None) -> DecoderOutput:
        return self.decode(self.sample_latent(x, label, jax.random.key(0), 1).z[0], label)


# ----------------------------------------------------------------------------- checks


def check_latent_model(model: nn.Module) -> None:
    """Raise ValueError with a one-line reason if `model`'s options are inconsistent."""
    if isinstance(model, HierarchicalVAE):
        require_ints("latent_dims", model.latent_dims)
        if not isinstance(model.hidden, tuple | list):
            raise ValueError(f"hidden must be a tuple of width tuples, got {model.hidden!r}")
        for widths in model.hidden:
            require_ints("each of hidden's tuples", widths)
        if not model.latent_dims:
            raise ValueError("latent_dims must name at least one stochastic layer, got ()")
        if any(d < 1 for d in model.latent_dims):
            raise ValueError(f"latent_dims must be >= 1, got {tuple(model.latent_dims)}")
        if len(model.hidden) != len(model.latent_dims):
            raise ValueError(
                f"the hierarchy does not chain: {len(model.latent_dims)} latent layers "
                f"{tuple(model.latent_dims)} need {len(model.latent_dims)} hidden-width tuples, "
                f"got {len(model.hidden)} ({tuple(model.hidden)})"
            )
        if any(not h or any(w < 1 for w in h) for h in model.hidden[1:]):
            raise ValueError(
                f"each upper layer needs hidden widths >= 1, got {tuple(model.hidden[1:])}"
            )
        check_model(_bottom_vae(model))
        return
    base = getattr(model, "base", None)
    if not isinstance(base, VAE):
        raise ValueError(f"base must be a VAE, got {type(base).__name__}")
    check_model(base)
    if isinstance(model, VampPriorVAE):
        require_int("num_pseudo_inputs", model.num_pseudo_inputs)
        if model.num_pseudo_inputs < 1:
            raise ValueError(f"num_pseudo_inputs must be >= 1, got {model.num_pseudo_inputs}")
        if base.num_classes > 0:
            raise ValueError("the VampPrior is not supported on a conditional model (num_classes)")
    if isinstance(model, IAFVAE):
        require_int("flow_depth", model.flow_depth)
        require_ints("flow_hidden", model.flow_hidden)
        if model.flow_depth < 1:
            raise ValueError(f"flow_depth must be >= 1, got {model.flow_depth}")
        if not model.flow_hidden or any(w < 1 for w in model.flow_hidden):
            raise ValueError(
                f"flow_hidden needs at least one width, all >= 1, got {tuple(model.flow_hidden)}"
            )


__all__ = [
    "HierarchicalVAE",
    "IAFStep",
    "IAFVAE",
    "LayerSamples",
    "VampPriorVAE",
    "check_latent_model",
    "made_masks",
]
