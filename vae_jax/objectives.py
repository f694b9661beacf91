"""Pure objective functions: KL, log-likelihoods, the ELBO and the IWAE bound.

Everything here is a pure function of arrays and an explicit `jax.random` key. Units are
nats. Reductions are stated on each function: log-densities are summed over event dimensions
(pixels, latents) and, for the objectives, averaged over the batch.

    ELBO(x) = E_q(z|x)[log p(x|z)] - KL(q(z|x) || p(z))          <= log p(x)
    IWAE_k(x) = E[log (1/k) sum_i p(x, z_i) / q(z_i|x)],  z_i ~ q   (Burda et al., 2016)

with q(z|x) = N(mean, diag(exp(logvar))) and p(z) = N(0, I).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from vae_jax.arrays import check_inputs, check_key, to_float
from vae_jax.fields import FLOAT32_MAX, is_number, require_int
from vae_jax.models import LIKELIHOODS, DecoderOutput, decode, encode

Params = Any
Batch = jax.Array | Mapping[str, jax.Array]

LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------- densities


def _left_pad(*arrays: jax.Array) -> list[jax.Array]:
    """Give every array the largest rank by adding leading axes of size 1 (explicit
    NumPy-style broadcasting, so the library also runs with rank promotion set to raise)."""
    ndim = max(a.ndim for a in arrays)
    return [a.reshape((1,) * (ndim - a.ndim) + a.shape) for a in arrays]


def _flatten_events(arrays: list[jax.Array], event_ndims: int) -> list[jax.Array]:
    """Merge the last `event_ndims` axes of equal-rank arrays into one axis.

    An array whose event axes are all 1 (a broadcast scalar) gets one axis of size 1; one
    with another partial shape is broadcast to the full event shape first. The values and
    their broadcasting are unchanged; the elementwise math then runs along one long minor
    axis, which XLA:CPU vectorizes (image-shaped [..., 28, 28, 1] arrays have a minor axis
    of size 1: the Bernoulli likelihood's kernels ran scalar, -7 to -8% per epoch of the
    seed recipe; docs/benchmarks.md).

    Raises ValueError (one line; at trace time) unless `event_ndims` is an integer from 0 to
    the arrays' rank (before: -1 acted as 0, and 5 on [batch, D] summed the batch away).
    """
    rank = min(a.ndim for a in arrays)
    if not 0 <= require_int("event_ndims", event_ndims) <= rank:
        raise ValueError(f"event_ndims must be in 0..{rank} (the arrays' rank), got {event_ndims}")
    if event_ndims == 0:
        return [a[..., None] for a in arrays]
    event = jnp.broadcast_shapes(*(a.shape[a.ndim - event_ndims :] for a in arrays))
    flat = []
    for a in arrays:
        lead, own = a.shape[: a.ndim - event_ndims], a.shape[a.ndim - event_ndims :]
        if all(d == 1 for d in own):
            flat.append(a.reshape(*lead, 1))
            continue
        if own != event:
            a = jnp.broadcast_to(a, (*lead, *event))
        flat.append(a.reshape(*lead, math.prod(event)))
    return flat


def _check_same_shape(mean: ArrayLike, logvar: ArrayLike) -> None:
    """Raise ValueError (one line; at trace time) unless the two have one shape."""
    if jnp.shape(mean) != jnp.shape(logvar):
        raise ValueError(
            f"mean and logvar must have the same shape, got {jnp.shape(mean)} and "
            f"{jnp.shape(logvar)}"
        )


def gaussian_kl(mean: ArrayLike, logvar: ArrayLike) -> jax.Array:
    """KL(N(mean, diag(exp(logvar))) || N(0, I)) in closed form, summed over the last axis.

    Args:
      mean: [..., z_dim] posterior means.
      logvar: [..., z_dim] posterior log-variances (natural log).

    Returns:
      [...] KL divergence in nats.

    Raises:
      ValueError: (one line; at trace time) `mean` and `logvar` of different shapes (they
        would broadcast: a [3, 1] mean against a [3, 5] logvar was summed over 5).
    """
    mean, logvar = jnp.asarray(mean), jnp.asarray(logvar)
    _check_same_shape(mean, logvar)
    return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar, axis=-1)


def gaussian_kl_per_dim(mean: ArrayLike, logvar: ArrayLike) -> jax.Array:
    """Per-dimension closed-form KL to N(0, 1): [..., z_dim] in nats (not reduced)."""
    mean, logvar = jnp.asarray(mean), jnp.asarray(logvar)
    return 0.5 * (jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar)


def bernoulli_log_likelihood(x: ArrayLike, logits: ArrayLike, *, event_ndims: int) -> jax.Array:
    """log Bernoulli(x | sigmoid(logits)), summed over the last `event_ndims` axes.

    Computed from logits as ``x * logits - softplus(logits)``, which is exact and finite for
    any finite logit (|logit| = 1e3 included); never ``log(sigmoid(logits))``. For grey-level
    x in [0, 1] this is minus the binary cross-entropy: a valid training loss but not a
    normalised log-likelihood (it has a non-zero floor).

    Args:
      x: [..., *event] targets in [0, 1]; not checked here (a jit-able formula: x = 255
        gives a finite, meaningless number). The objectives and evaluations check their
        data where it enters (`check_batch`).
      logits: [..., *event] Bernoulli logits.
      event_ndims: how many trailing axes form one example.

    Returns:
      [...] log-likelihood in nats.
    """
    logits = jnp.asarray(logits)
    x, logits = _left_pad(jnp.asarray(x, logits.dtype), logits)
    x, logits = _flatten_events([x, logits], event_ndims)  # [..., prod(event)]
    elementwise = x * logits - jax.nn.softplus(logits)
    return jnp.sum(elementwise, axis=-1)


def gaussian_log_likelihood(
    x: ArrayLike, mean: ArrayLike, logvar: ArrayLike, *, event_ndims: int
) -> jax.Array:
    """log N(x | mean, exp(logvar)) with diagonal covariance, summed over `event_ndims` axes.

    The full density, constant included: ``-0.5 * (log(2 pi) + logvar + (x - mean)^2 /
    exp(logvar))`` per element, so the number is a true log-density in nats (with a fixed
    variance this is the "MSE" loss up to scale, plus its constant). Arguments broadcast
    after left-padding their shapes (a scalar `logvar` for a global variance, an
    image-shaped one for per-pixel; `x` [batch, ...] against `mean` [samples, batch, ...]).

    Returns:
      [...] log-density in nats.
    """
    x, mean, logvar = _left_pad(jnp.asarray(x), jnp.asarray(mean), jnp.asarray(logvar))
    x, mean, logvar = _flatten_events([x, mean, logvar], event_ndims)  # [..., prod(event)]
    elementwise = -0.5 * (LOG_2PI + logvar + jnp.square(x - mean) * jnp.exp(-logvar))
    elementwise = jnp.broadcast_to(elementwise, jnp.broadcast_shapes(x.shape, mean.shape))
    return jnp.sum(elementwise, axis=-1)


def diag_gaussian_log_prob(z: ArrayLike, mean: ArrayLike, logvar: ArrayLike) -> jax.Array:
    """log N(z | mean, diag(exp(logvar))), summed over the last axis: [...] in nats."""
    return gaussian_log_likelihood(z, mean, logvar, event_ndims=1)


def standard_normal_log_prob(z: ArrayLike) -> jax.Array:
    """log N(z | 0, I), summed over the last axis: [...] in nats."""
    z = jnp.asarray(z)
    return -0.5 * jnp.sum(LOG_2PI + jnp.square(z), axis=-1)


def _check_weight(name: str, value: Any) -> None:
    """Raise ValueError (one line) unless `value` is a number in [0, float32's largest]
    (before: 1e39, infinite in float32, gave an ELBO of -inf). A tracer (a KL warm-up's
    schedule under jit) is not looked at."""
    if isinstance(value, jax.core.Tracer):
        return
    if isinstance(value, jax.Array | np.ndarray) and value.ndim == 0:
        value = value.item()
    if not (is_number(value) and 0 <= value <= FLOAT32_MAX):
        beyond = ", beyond float32" if is_number(value) and FLOAT32_MAX < value < math.inf else ""
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}{beyond}")


def _check_example_weights(weights: Any, shape: tuple[int, ...]) -> None:
    """Raise ValueError (one line) unless `weights` are [batch] (by shape, also under jit)
    and, where concrete, finite, >= 0 and not all 0 (before: one weight broadcast, so
    `terms` returned the batch's sum, not its mean; zeros gave NaN)."""
    if jnp.shape(weights) != shape:
        raise ValueError(
            f"weights must have shape {shape} (one per example), got {jnp.shape(weights)}"
        )
    if isinstance(weights, jax.core.Tracer):
        return
    w = np.asarray(weights, np.float64)
    if not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
        raise ValueError("weights must be finite and >= 0, and not all 0")


def _check_num_samples(num_samples: Any) -> None:
    """Raise ValueError (one line) unless `num_samples` is an integer >= 1."""
    require_int("num_samples", num_samples, low=1)


def reparameterize(
    key: jax.Array, mean: jax.Array, logvar: jax.Array, num_samples: int
) -> jax.Array:
    """Draw z = mean + exp(logvar / 2) * eps with eps ~ N(0, I) from `key` only.

    Args:
      key: a `jax.random` key; the only source of randomness.
      mean, logvar: [batch, z_dim].
      num_samples: samples per example.

    Returns:
      [num_samples, batch, z_dim] samples.

    Raises:
      ValueError: (one line; at trace time under jit) `num_samples` not an integer >= 1,
        or `mean` and `logvar` of different shapes (they would broadcast silently).
    """
    _check_num_samples(num_samples)
    _check_same_shape(mean, logvar)
    eps = jax.random.normal(key, (num_samples, *mean.shape), mean.dtype)
    return mean[None] + jnp.exp(0.5 * logvar)[None] * eps


def log_likelihood(
    model: nn.Module, x: jax.Array, output: DecoderOutput, *, event_ndims: int
) -> jax.Array:
    """log p(x|z) for the model's likelihood, summed over the event axes: [...] in nats."""
    if model.likelihood == "bernoulli":
        return bernoulli_log_likelihood(x, output.loc, event_ndims=event_ndims)
    if output.logvar is None:
        raise ValueError(
            f"a {model.likelihood} likelihood needs decode() to return DecoderOutput(loc, logvar) "
            "with a log-variance; it returned logvar=None"
        )
    return gaussian_log_likelihood(x, output.loc, output.logvar, event_ndims=event_ndims)


class LatentSample(NamedTuple):
    """Samples of the latent variables and their log-densities, for one batch.

    Attributes:
      z: [L, batch, ...] samples z ~ q(z|x) (any pytree whose leaves lead with [L, batch],
        for models with several latent layers); what ``decode`` takes.
      log_q: [L, batch] log q(z|x) in nats.
      log_p: [L, batch] log p(z) in nats (the prior).
      kl: [batch] KL(q(z|x) || p(z)) in closed form when the model knows it, else None:
        the objectives then use the Monte Carlo estimate ``mean_L (log_q - log_p)``.
    """

    z: Any
    log_q: jax.Array
    log_p: jax.Array
    kl: jax.Array | None


def sample_latent(
    model: Any, params: Params, x: jax.Array, label: jax.Array | None, key: jax.Array, n: int
) -> LatentSample:
    """`n` reparameterized samples of q(z|x) per example, with log q, log p and the KL.

    A module that defines ``sample_latent(x, label, key, num_samples) -> LatentSample`` (a
    posterior that is not one diagonal Gaussian, a learned prior, several latent layers)
    is called for them. Otherwise the default: ``encode(x, label) -> (mean, logvar)`` of a
    diagonal Gaussian q(z|x), a standard-normal prior, noise ``[n, batch, z_dim]`` drawn from
    `key` (so one example's noise depends on the key, its index in the batch and the batch
    size), and the KL in closed form.
    """
    _check_num_samples(n)
    if hasattr(model, "sample_latent"):
        return model.apply({"params": params}, x, label, key, n, method="sample_latent")
    mean, logvar = encode(model, params, x, label)
    mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
    z = reparameterize(key, mean, logvar, n)  # [n, batch, z_dim]
    log_q = diag_gaussian_log_prob(z, mean, logvar)
    return LatentSample(z, log_q, standard_normal_log_prob(z), gaussian_kl(mean, logvar))


# ----------------------------------------------------------------------------- batches


def unpack_batch(batch: Batch) -> tuple[jax.Array, jax.Array | None]:
    """Return (x, label) from an image array or a mapping with "image" (and "label").

    uint8 images are scaled to [0, 1] (``x * (1/255)``); floats are used as given
    (`vae_jax.arrays.to_float`).
    """
    x, label = _batch_parts(batch)
    return to_float(x), label


def _batch_parts(batch: Batch) -> tuple[Any, Any]:
    """(x, label) of a batch as given: an array, or a mapping with "image" (and "label")."""
    if not isinstance(batch, Mapping):
        return batch, None
    if "image" not in batch:  # (before: KeyError: 'image')
        raise ValueError(f"a batch mapping needs an 'image' entry, got keys {sorted(batch)}")
    return batch["image"], batch.get("label")


# ----------------------------------------------------------------------------- objectives


class ElboTerms(NamedTuple):
    """The pieces of a bound, in nats. Batch means, or per-example [batch] arrays.

    Attributes:
      elbo: the bound: ``log_likelihood - beta * kl`` for the ELBO family, the IWAE bound
        for `kind="iwae"`.
      log_likelihood: Monte Carlo estimate of E_q[log p(x|z)] (mean over samples).
      kl: KL(q(z|x) || p(z)) in closed form.
    """

    elbo: jax.Array
    log_likelihood: jax.Array
    kl: jax.Array


@dataclasses.dataclass(frozen=True)
class Objective:
    """A bound on log p(x) for one model, callable as ``objective(params, batch, key)``.

    Build it with :func:`make_elbo` or :func:`make_iwae`. Calling it returns the batch-mean
    bound in nats per example as a float32 scalar (so ``jax.grad`` applies directly; a
    training loss is its negative). It is a pure function of its arguments: the only
    randomness is the reparameterization noise drawn from `key`, so the same key gives the
    same value. It works under `jax.jit`, `jax.grad` and `jax.vmap`.

    `batch` is an image array ``[batch, *image_shape]`` (uint8 grey levels or floats in
    [0, 1]) or a mapping with "image" and, for a conditional model, "label" ``[batch]`` int.

    Attributes:
      model: the `VAE` module, or any Flax module with `encode(x, label) -> (mean, logvar)`,
        `decode(z, label) -> DecoderOutput` and a `likelihood` attribute.
      kind: "elbo" (ELBO, beta-VAE, multi-sample SGVB) or "iwae".
      beta: weight of the KL term (1.0 is the ELBO). Ignored by "iwae".
      num_samples: L, the posterior samples per example (the multi-sample SGVB estimator
        averages L single-sample terms), or k for "iwae".
      free_bits: if > 0, the KL term becomes sum_j max(free_bits, KL_j) with KL_j the
        batch-mean KL of latent j (Kingma et al., 2016): a training objective, not a bound.
    """

    model: nn.Module
    kind: str = "elbo"
    beta: float = 1.0
    num_samples: int = 1
    free_bits: float = 0.0

    def __post_init__(self) -> None:
        likelihood = getattr(self.model, "likelihood", None)
        if likelihood not in LIKELIHOODS:
            raise ValueError(
                f"the model's likelihood must be one of {LIKELIHOODS}, got {likelihood!r} "
                f"({type(self.model).__name__}.likelihood)"
            )
        if self.kind not in ("elbo", "iwae"):
            raise ValueError(f"kind must be 'elbo' or 'iwae', got {self.kind!r}")
        _check_num_samples(self.num_samples)
        for name in ("beta", "free_bits"):
            _check_weight(name, getattr(self, name))
        if self.free_bits > 0 and hasattr(self.model, "sample_latent"):
            raise ValueError("free_bits needs the per-latent KL of a diagonal-Gaussian encode()")

    @property
    def name(self) -> str:
        """What the bound is, for logs: e.g. "ELBO", "beta-ELBO (beta=4)", "IWAE (k=50)"."""
        if self.kind == "iwae":
            return f"IWAE (k={self.num_samples})"
        name = "ELBO" if self.beta == 1.0 else f"beta-ELBO (beta={self.beta:g})"
        if self.num_samples > 1:
            name += f" (L={self.num_samples})"
        if self.free_bits > 0:
            name += f" (free bits {self.free_bits:g})"
        return name

    def per_example(
        self, params: Params, batch: Batch, key: jax.Array, *, beta: ArrayLike | None = None
    ) -> ElboTerms:
        """The bound and its terms for each example: an `ElboTerms` of [batch] arrays.

        `beta` overrides the configured KL weight (KL warm-up passes a traced schedule).
        Free bits are not applied here (they act on batch means; see `terms`).
        """
        x, label = self._checked(batch)
        check_key(key)
        if beta is not None:  # (before: -5 gave an ELBO above E[log p(x|z)], NaN a NaN)
            _check_weight("beta", beta)
        event_ndims = x.ndim - 1
        latent = sample_latent(self.model, params, x, label, key, self.num_samples)
        output = decode(self.model, params, latent.z, label)
        output = DecoderOutput(
            output.loc.astype(jnp.float32),
            None if output.logvar is None else output.logvar.astype(jnp.float32),
        )
        log_px_z = log_likelihood(self.model, x, output, event_ndims=event_ndims)  # [L, batch]
        kl = latent.kl  # [batch]
        if kl is None:
            kl = jnp.mean(latent.log_q - latent.log_p, axis=0)
        if self.kind == "iwae":
            log_w = log_px_z + latent.log_p - latent.log_q
            bound = jax.nn.logsumexp(log_w, axis=0) - math.log(self.num_samples)
            return ElboTerms(bound, jnp.mean(log_px_z, axis=0), kl)
        beta = self.beta if beta is None else beta
        expected_log_px_z = jnp.mean(log_px_z, axis=0)
        return ElboTerms(expected_log_px_z - beta * kl, expected_log_px_z, kl)

    def terms(
        self,
        params: Params,
        batch: Batch,
        key: jax.Array,
        *,
        beta: ArrayLike | None = None,
        weights: ArrayLike | None = None,
    ) -> ElboTerms:
        """Batch means of the bound and its terms (nats per example).

        Args:
          weights: optional [batch] example weights (0 masks padding); the means are
            ``sum(w * value) / sum(w)``.
        """
        per = self.per_example(params, batch, key, beta=beta)
        if weights is not None:
            _check_example_weights(weights, per.kl.shape)
        w = jnp.ones_like(per.kl) if weights is None else jnp.asarray(weights, per.kl.dtype)
        mean = lambda v: jnp.sum(w * v) / jnp.sum(w)  # noqa: E731
        terms = ElboTerms(mean(per.elbo), mean(per.log_likelihood), mean(per.kl))
        if self.free_bits > 0 and self.kind == "elbo":
            x, label = unpack_batch(batch)
            enc_mean, enc_logvar = encode(self.model, params, x, label)
            kl_dims = gaussian_kl_per_dim(enc_mean, enc_logvar)  # [batch, z_dim]
            kl_dims = jnp.sum(w[:, None] * kl_dims, axis=0) / jnp.sum(w)
            kl_fb = jnp.sum(jnp.maximum(kl_dims, self.free_bits))
            weight = self.beta if beta is None else beta
            terms = terms._replace(elbo=terms.log_likelihood - weight * kl_fb)
        return terms

    def __call__(self, params: Params, batch: Batch, key: jax.Array) -> jax.Array:
        """The batch-mean bound in nats per example: a scalar (see the class docstring)."""
        return self.terms(params, batch, key).elbo

    def _checked(self, batch: Batch) -> tuple[jax.Array, jax.Array | None]:
        """(x, label) of `batch`, checked: see `check_batch`."""
        check_batch(self.model, batch)
        return unpack_batch(batch)


def require_objective(objective: Any) -> None:
    """Raise TypeError (one line) unless `objective` is an `Objective` (a module or a
    plain function given in its place fails here, not inside the first compiled call)."""
    if not isinstance(objective, Objective):
        raise TypeError(
            "objective must be an Objective (make_elbo(model) or make_iwae(model)), got "
            f"{type(objective).__name__}"
        )


def check_batch(model: Any, batch: Batch) -> None:
    """Raise ValueError (one line) unless `batch` fits `model`: `vae_jax.arrays.check_inputs`
    of its image and label, the same rules as `fit`'s.

    By shape and dtype always (also under `jit`, when tracing): a batch axis (N >= 1) before
    the model's event shape (``model.image_shape``, when the module has one), and integer
    labels ``[N]`` for a conditional model (``model.num_classes > 0``). By value when the
    values are concrete (outside `jit`): finite, in [0, 1] for a Bernoulli likelihood
    (float round-off up to `vae_jax.arrays.UNIT_INTERVAL_TOLERANCE` is accepted; uint8 is
    always in range), labels in ``0..num_classes - 1``. Under `jit` an out-of-range label
    gives NaN (`vae_jax.models`), never a plausible number.
    """
    x, label = _batch_parts(batch)
    if label is None and getattr(model, "num_classes", 0) > 0:
        raise ValueError("this model is conditional: pass {'image': x, 'label': labels}")
    check_inputs(model, x, label, name="the batch")


def make_elbo(
    model: nn.Module, *, beta: float = 1.0, num_samples: int = 1, free_bits: float = 0.0
) -> Objective:
    """The ELBO of `model` as a pure function ``elbo(params, batch, key) -> scalar``.

    ``ELBO = E_q(z|x)[log p(x|z)] - beta * KL(q(z|x) || p(z))``, with the expectation
    estimated from `num_samples` reparameterized samples per example (L) drawn from `key`
    and the KL in closed form. The value is the batch mean, in nats per example: log p(x|z)
    is summed over pixels and KL over latents. With ``beta=1`` it is a lower bound on
    log p(x); use ``elbo.terms(...)`` for (elbo, log_likelihood, kl).

    Example:
      >>> model = VAE(hidden=(400,), z_dim=20)
      >>> params = init_params(model, jax.random.key(0))
      >>> elbo = make_elbo(model)
      >>> value = elbo(params, images, jax.random.key(1))  # images: [batch, 28, 28, 1]

    References:
      Kingma & Welling, Auto-Encoding Variational Bayes, 2014 (SGVB, L samples);
      Higgins et al., beta-VAE, 2017.
    """
    return Objective(model, "elbo", beta=beta, num_samples=num_samples, free_bits=free_bits)


def make_iwae(model: nn.Module, *, num_samples: int) -> Objective:
    """The importance-weighted bound with k = `num_samples`: ``iwae(params, batch, key)``.

    ``IWAE_k = logsumexp_i [log p(x|z_i) + log p(z_i) - log q(z_i|x)] - log k`` with
    z_i ~ q(z|x); batch mean in nats per example. k=1 is the ELBO; the bound is
    non-decreasing in k (in expectation) and tends to log p(x).

    References:
      Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders, ICLR 2016.
    """
    return Objective(model, "iwae", num_samples=num_samples)
