"""Evaluation: the importance-sampled log-likelihood and the other test-set metrics.

Everything is in nats per example unless a name says otherwise. The estimator follows
Burda, Grosse & Salakhutdinov (2016), Appendix (the protocol of their Table 1):

    log p(x) ~ log (1/k) sum_{i=1..k} p(x|z_i) p(z_i) / q(z_i|x),   z_i ~ q(z|x),  k = 5000

a stochastic lower bound (in expectation) that tends to log p(x) as k grows. With k = 5000 a
batch of examples needs k decoder evaluations each, so the samples are processed in chunks of
`sample_chunk` inside a `lax.scan` that keeps a running logsumexp: memory is bounded by
``batch * sample_chunk`` decoder outputs, whatever k is.

Randomness: the noise of sample s of example n is drawn from
``fold_in(fold_in(key, n), s)``, so the estimate of an example does not depend on the batch
size, on `sample_chunk`, or on which other examples are evaluated with it.

On grey-level data a Bernoulli "likelihood" is not a normalised density (see
`vae_jax.objectives.bernoulli_log_likelihood`), so the same numbers are not negative
log-likelihoods there: `evaluate_checkpoint` then reports them as losses and gives no
bits per dimension.
"""

from __future__ import annotations

import functools
import json
import math
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from tqdm.auto import tqdm

from vae_jax.arrays import is_image_shape, to_float, to_float_np
from vae_jax.models import VAE, DecoderOutput
from vae_jax.objectives import (
    Objective,
    diag_gaussian_log_prob,
    gaussian_kl,
    log_likelihood,
    standard_normal_log_prob,
)
from vae_jax.train import padded_batches
from vae_jax.workdir import write_json

Params = Any

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. (2016), Section 5.2
# IS >= ELBO holds exactly for the same samples, but both are float32 sums: a model whose
# weights do not depend on z (a collapsed posterior, q(z|x) = p(z)) has IS = ELBO, and
# rounding then puts IS below the ELBO by ~1e-5 nats (measured: 8.5e-6 at an ELBO of
# -206.23). The check allows this relative slack, far below any real failure.
IS_ELBO_RTOL = 1e-6


class ImportanceTerms(NamedTuple):
    """Per-example results of one importance-sampling pass, each [batch] in nats.

    Attributes:
      log_px: the importance-sampled estimate of log p(x) with k samples (IS_k).
      elbo: ``mean_i log p(x|z_i) - KL(q(z|x) || p(z))`` with the same k samples and the KL
        in closed form: the ELBO, estimated with k samples.
      log_px_z: ``mean_i log p(x|z_i)``, the expected reconstruction term.
      kl: KL(q(z|x) || p(z)) in closed form; for a model with ``sample_latent`` (no closed
        form) the Monte Carlo ``mean_i (log q(z_i|x) - log p(z_i))`` over the same samples.
    """

    log_px: jax.Array
    elbo: jax.Array
    log_px_z: jax.Array
    kl: jax.Array


class LayerTerms(NamedTuple):
    """Per-layer results of one importance-sampling pass of a model with several stochastic
    layers (``sample_layers``: `vae_jax.latents.HierarchicalVAE`), bottom layer first.

    Attributes:
      kl: [batch, layers] each layer's share of the Monte Carlo KL,
        ``mean_i [log q(z_l|z_{l-1}) - log p(z_l|z_{l+1})]`` over the k samples (z_0 = x;
        the top layer's p is N(0, I)); summed over layers it is `ImportanceTerms.kl`.
      mean: one [batch, d_l] array per layer, E_q[z_l] estimated as the mean over the same
        k samples of q(z_l|z_{l-1})'s mean at the sampled z_{l-1} (exact for the bottom
        layer; for the others the noise of averaging samples themselves, Var_q / k, would
        count as activity at small k): what the per-layer active units use.
    """

    kl: jax.Array
    mean: tuple[jax.Array, ...]


class ActiveUnits(NamedTuple):
    """Active latent units (Burda et al., 2016): ``A_u = Cov_x(E_q(z|x)[z_u]) > threshold``.

    Attributes:
      num_active: the number of active units (a Python int).
      variance: [z_dim] the variance over the data of each posterior-mean coordinate.
      threshold: the activity threshold (0.01 in the paper).
    """

    num_active: int
    variance: np.ndarray
    threshold: float


_PRODUCT_GROUP = 16  # softplus terms multiplied before one log: each factor is in [1, 2]


def bernoulli_log_prob_fused(x: jax.Array, logits: jax.Array) -> jax.Array:
    """``sum_d x_d * l_d - softplus(l_d)``: the Bernoulli log-likelihood from logits, fast.

    The same quantity as `vae_jax.objectives.bernoulli_log_likelihood` (equal to float32
    rounding, ~1e-4 nats on 784 pixels), written for the importance-sampling inner loop,
    where the 784 softplus evaluations per decoder call cost more than the decoder's
    matmuls. With ``softplus(l) = max(l, 0) + log(1 + exp(-|l|))`` and every factor
    ``1 + exp(-|l|)`` in [1, 2], groups of 16 factors are multiplied (at most 2^16, exact to
    a few float32 ulps) and one log is taken per group: one exp per pixel and one log per 16
    pixels instead of an exp and a log1p per pixel. Finite for any finite logit.

    Args:
      x: [batch, D] targets in [0, 1].
      logits: [samples, batch, D] Bernoulli logits.

    Returns:
      [samples, batch] log-likelihood in nats, summed over the D pixels.
    """
    linear = jnp.sum(x[None] * logits - jnp.maximum(logits, 0.0), axis=-1)
    factors = 1.0 + jnp.exp(-jnp.abs(logits))  # [samples, batch, D], each in [1, 2]
    d = factors.shape[-1]
    pad = -d % _PRODUCT_GROUP
    if pad:
        factors = jnp.concatenate(
            [factors, jnp.ones((*factors.shape[:-1], pad), factors.dtype)], axis=-1
        )
    grouped = factors.reshape(*factors.shape[:-1], -1, _PRODUCT_GROUP)
    return linear - jnp.sum(jnp.log(jnp.prod(grouped, axis=-1)), axis=-1)


def importance_terms(
    model: VAE,
    params: Params,
    x: ArrayLike,
    label: ArrayLike | None,
    key: jax.Array,
    *,
    num_samples: int,
    sample_chunk: int,
    example_ids: ArrayLike | None = None,
) -> ImportanceTerms:
    """The importance-sampled log p(x) and the ELBO from the same k samples, per example.

    ``IS_k = logsumexp_i [log p(x|z_i) + log p(z_i) - log q(z_i|x)] - log k`` with
    z_i ~ q(z|x), i = 1..k. The k samples are drawn and decoded `sample_chunk` at a time
    inside a `lax.scan` carrying a running logsumexp (running max and rescaled sum), so the
    largest intermediate is ``[sample_chunk, batch, *image_shape]``. When `sample_chunk`
    does not divide k the last chunk is padded and its extra samples get weight 0.

    Args:
      model: a `VAE` (or any module with `encode`/`decode` methods and a `likelihood`), or
        a module with ``sample_latent`` (`vae_jax.latents`: its own q and p, evaluated
        example by example, see `_sampled_importance_terms`).
      params: its parameters.
      x: [batch, *image_shape] examples (uint8 grey levels are scaled by 1/255).
      label: [batch] int labels for a conditional model, else None.
      key: the only source of randomness (see the module docstring).
      num_samples: k, importance samples per example.
      sample_chunk: samples decoded per scan step (memory and speed, not the result).
      example_ids: [batch] int ids that seed each example's noise (default 0..batch-1);
        the dataset evaluation passes global indices.

    Returns:
      An `ImportanceTerms` of [batch] float32 arrays in nats (summed over pixels and
      latents, not reduced over the batch).
    """
    if num_samples < 1 or sample_chunk < 1:
        raise ValueError(f"need num_samples, sample_chunk >= 1, got {num_samples}, {sample_chunk}")
    sample_chunk = min(sample_chunk, num_samples)
    if hasattr(model, "sample_latent"):
        return _sampled_importance_terms(
            model,
            params,
            x,
            label,
            key,
            num_samples=num_samples,
            sample_chunk=sample_chunk,
            example_ids=example_ids,
        )[0]
    x = to_float(x)
    batch = x.shape[0]
    encoded: Any = model.apply({"params": params}, x, label, method="encode")
    mean, logvar = (a.astype(jnp.float32) for a in encoded)  # [batch, z_dim] each
    std = jnp.exp(0.5 * logvar)
    ids = jnp.arange(batch) if example_ids is None else jnp.asarray(example_ids)
    example_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, ids)  # [batch]
    z_dim = mean.shape[-1]

    def noise(sample: jax.Array) -> jax.Array:  # [batch, z_dim] for one sample index
        return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, sample), (z_dim,)))(
            example_keys
        )

    num_chunks = math.ceil(num_samples / sample_chunk)

    x_flat = x.reshape(batch, -1)  # [batch, D]
    label_tiled = None if label is None else jnp.tile(jnp.asarray(label), sample_chunk)

    def body(carry, chunk):
        running_max, running_sum, sum_log_px_z = carry  # [batch] each
        samples = chunk * sample_chunk + jnp.arange(sample_chunk)  # [chunk]
        valid = samples < num_samples
        eps = jax.vmap(noise)(samples)  # [chunk, batch, z_dim]
        z = mean[None] + std[None] * eps
        # Decode all chunk * batch samples as one matrix: [chunk * batch, z_dim] rows, so
        # the decoder's matmuls are large; row c * batch + b is sample c of example b.
        output = model.apply({"params": params}, z.reshape(-1, z_dim), label_tiled, method="decode")
        loc = output.loc.astype(jnp.float32).reshape(sample_chunk, batch, -1)  # [chunk, batch, D]
        if model.likelihood == "bernoulli":
            log_px_z = bernoulli_log_prob_fused(x_flat, loc)  # [chunk, batch]
        else:
            logvar_x = None if output.logvar is None else output.logvar.astype(jnp.float32)
            if logvar_x is not None and logvar_x.ndim:
                logvar_x = logvar_x.reshape(-1)  # per-pixel: [D]
            log_px_z = log_likelihood(model, x_flat, DecoderOutput(loc, logvar_x), event_ndims=1)
        log_w = log_px_z + standard_normal_log_prob(z) - diag_gaussian_log_prob(z, mean, logvar)
        log_w = jnp.where(valid[:, None], log_w, -jnp.inf)
        new_max = jnp.maximum(running_max, jnp.max(log_w, axis=0))
        running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(
            jnp.exp(log_w - new_max[None]), axis=0
        )
        sum_log_px_z = sum_log_px_z + jnp.sum(jnp.where(valid[:, None], log_px_z, 0.0), axis=0)
        return (new_max, running_sum, sum_log_px_z), None

    init = (
        jnp.full((batch,), -jnp.inf, jnp.float32),
        jnp.zeros((batch,), jnp.float32),
        jnp.zeros((batch,), jnp.float32),
    )
    (running_max, running_sum, sum_log_px_z), _ = jax.lax.scan(body, init, jnp.arange(num_chunks))
    log_px = running_max + jnp.log(running_sum) - math.log(num_samples)
    kl = gaussian_kl(mean, logvar)
    log_px_z = sum_log_px_z / num_samples
    return ImportanceTerms(log_px, log_px_z - kl, log_px_z, kl)


def _sampled_importance_terms(
    model: Any,
    params: Params,
    x: ArrayLike,
    label: ArrayLike | None,
    key: jax.Array,
    *,
    num_samples: int,
    sample_chunk: int,
    example_ids: ArrayLike | None,
) -> tuple[ImportanceTerms, LayerTerms | None]:
    """`importance_terms` for a model with ``sample_latent`` (several latent layers, a
    learned prior, a flow): its own log q and log p, and the KL as ``mean_i (log q - log p)``
    over the same k samples (no closed form). A model that also has ``sample_layers``
    (`vae_jax.latents.HierarchicalVAE`) gets each layer's KL and posterior mean too, as a
    `LayerTerms` (else None).

    Sample s of example n is one call of the model's ``sample_latent`` with batch 1 and
    L = 1 under the key ``fold_in(fold_in(key, n), s)`` (vmapped over the chunk's samples
    and the batch's examples), so, as for `encode` models, the estimate of an example does
    not depend on the batch size, on `sample_chunk` or on the other examples.
    """
    x = to_float(x)
    batch = x.shape[0]
    ids = jnp.arange(batch) if example_ids is None else jnp.asarray(example_ids)
    labels = None if label is None else jnp.asarray(label)
    num_chunks = math.ceil(num_samples / sample_chunk)
    apply = functools.partial(model.apply, {"params": params})
    layered = hasattr(model, "sample_layers")

    def one_example(x1: jax.Array, label1: jax.Array | None, example_id: jax.Array):
        example_key = jax.random.fold_in(key, example_id)
        x1 = x1[None]  # [1, *event_shape]
        label1 = None if label1 is None else label1[None]

        def one_sample(sample: jax.Array) -> tuple[Any, jax.Array, jax.Array, tuple[Any, ...]]:
            """(z, log_q, log_p, layer means) of sample `sample`; log densities [layers, 1]
            (or [1, 1]); the layer means () for a model without sample_layers."""
            sample_key = jax.random.fold_in(example_key, sample)
            if layered:
                layers = apply(x1, label1, sample_key, 1, method="sample_layers")
                z = tuple(a[0] for a in layers.z)  # drop L = 1: [1, d_i]
                mean = tuple(a[0] for a in layers.mean)
                return z, layers.log_q[:, 0], layers.log_p[:, 0], mean
            latent = apply(x1, label1, sample_key, 1, method="sample_latent")
            return jax.tree.map(lambda a: a[0], latent.z), latent.log_q, latent.log_p, ()

        def body(carry, chunk):
            running_max, running_sum, sum_log_px_z, sum_layer_kl, sum_mean = carry
            samples = chunk * sample_chunk + jnp.arange(sample_chunk)  # [chunk]
            valid = samples < num_samples
            z, log_q, log_p, mean = jax.vmap(one_sample)(samples)  # leaves [chunk, 1, ...]
            output = apply(z, label1, method="decode")
            loc = output.loc.astype(jnp.float32)  # [chunk, 1, *event_shape]
            if model.likelihood == "bernoulli":  # (the fast form, as for encode models)
                log_px_z = bernoulli_log_prob_fused(
                    x1.reshape(1, -1), loc.reshape(sample_chunk, 1, -1)
                )  # [chunk, 1]
            else:
                logvar_x = None if output.logvar is None else output.logvar.astype(jnp.float32)
                output = DecoderOutput(loc, logvar_x)
                log_px_z = log_likelihood(model, x1, output, event_ndims=x1.ndim - 1)
            log_w = log_px_z + jnp.sum(log_p - log_q, axis=1)
            log_w = jnp.where(valid[:, None], log_w, -jnp.inf)
            new_max = jnp.maximum(running_max, jnp.max(log_w, axis=0))
            running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(
                jnp.exp(log_w - new_max[None]), axis=0
            )

            def keep(v: jax.Array) -> jax.Array:  # sum over the chunk's valid samples
                mask = valid.reshape(-1, *(1,) * (v.ndim - 1))
                return jnp.sum(jnp.where(mask, v, 0.0), axis=0)

            sum_log_px_z = sum_log_px_z + keep(log_px_z)
            sum_layer_kl = sum_layer_kl + keep(log_q - log_p)  # [layers, 1]
            if layered:
                sum_mean = tuple(a + keep(b) for a, b in zip(sum_mean, mean, strict=True))
            return (new_max, running_sum, sum_log_px_z, sum_layer_kl, sum_mean), None

        shapes = jax.eval_shape(one_sample, jnp.zeros((), jnp.int32))
        init = (
            jnp.full((1,), -jnp.inf, jnp.float32),
            jnp.zeros((1,), jnp.float32),
            jnp.zeros((1,), jnp.float32),
            jnp.zeros(shapes[1].shape, jnp.float32),
            tuple(jnp.zeros(a.shape, jnp.float32) for a in shapes[0]) if layered else (),
        )
        carry, _ = jax.lax.scan(body, init, jnp.arange(num_chunks))
        running_max, running_sum, sum_log_px_z, sum_layer_kl, sum_mean = carry
        log_px = running_max + jnp.log(running_sum) - math.log(num_samples)
        layer_kl = sum_layer_kl[:, 0] / num_samples  # [layers]
        layer_mean = tuple(a[0] / num_samples for a in sum_mean)  # [d_i] each
        return log_px[0], sum_log_px_z[0] / num_samples, layer_kl, layer_mean

    in_axes = (0, None if labels is None else 0, 0)
    log_px, log_px_z, layer_kl, layer_mean = jax.vmap(one_example, in_axes)(x, labels, ids)
    kl = jnp.sum(layer_kl, axis=-1)
    terms = ImportanceTerms(log_px, log_px_z - kl, log_px_z, kl)
    return terms, LayerTerms(layer_kl, layer_mean) if layered else None


def layered_importance_terms(
    model: Any,
    params: Params,
    x: ArrayLike,
    label: ArrayLike | None,
    key: jax.Array,
    *,
    num_samples: int,
    sample_chunk: int,
    example_ids: ArrayLike | None = None,
) -> tuple[ImportanceTerms, LayerTerms]:
    """`importance_terms` and, from the same samples, each stochastic layer's KL and
    posterior mean (`LayerTerms`), for a model with ``sample_layers``
    (`vae_jax.latents.HierarchicalVAE`); the arguments are `importance_terms`'s."""
    if not hasattr(model, "sample_layers"):
        raise ValueError(f"{type(model).__name__} has no sample_layers: one stochastic layer")
    if num_samples < 1 or sample_chunk < 1:
        raise ValueError(f"need num_samples, sample_chunk >= 1, got {num_samples}, {sample_chunk}")
    terms, layers = _sampled_importance_terms(
        model,
        params,
        x,
        label,
        key,
        num_samples=num_samples,
        sample_chunk=min(sample_chunk, num_samples),
        example_ids=example_ids,
    )
    assert layers is not None
    return terms, layers


def importance_log_likelihood(
    model: VAE,
    params: Params,
    x: ArrayLike,
    label: ArrayLike | None,
    key: jax.Array,
    *,
    num_samples: int,
    sample_chunk: int,
) -> jax.Array:
    """The importance-sampled estimate of log p(x) with k = `num_samples`, per example.

    ``log p(x) ~ logsumexp_i [log p(x|z_i) + log p(z_i) - log q(z_i|x)] - log k``,
    z_i ~ q(z|x) (Burda et al., 2016, with k = 5000 for their Table 1). A lower bound in
    expectation, non-decreasing in k, tending to log p(x). Memory is bounded by
    `sample_chunk` (see `importance_terms`); the result does not depend on it.

    Example:
      >>> fn = jax.jit(functools.partial(  # static configuration through partial
      ...     importance_log_likelihood, model, num_samples=5000, sample_chunk=100))
      >>> log_px = fn(params, images, None, jax.random.key(0))  # [batch] nats

    Returns:
      [batch] estimates in nats (summed over pixels; not reduced over the batch).

    References:
      Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders, ICLR 2016.
    """
    return importance_terms(
        model, params, x, label, key, num_samples=num_samples, sample_chunk=sample_chunk
    ).log_px


def elbo(
    model: VAE,
    params: Params,
    x: ArrayLike,
    label: ArrayLike | None,
    key: jax.Array,
    *,
    num_samples: int = 1,
) -> jax.Array:
    """``ELBO = E_q(z|x)[log p(x|z)] - KL(q(z|x) || p(z))`` per example: [batch] nats.

    The expectation is a Monte Carlo mean over `num_samples` reparameterized samples drawn
    from `key`; the KL is in closed form. Summed over pixels and latents, not reduced over
    the batch.
    """
    objective = Objective(model, "elbo", num_samples=num_samples)
    batch: dict[str, Any] = {"image": to_float(x)}
    if label is not None:
        batch["label"] = jnp.asarray(label)
    return objective.per_example(params, batch, key).elbo


def bits_per_dim(log_px: ArrayLike, num_dims: int) -> jax.Array:
    """``-log p(x) / (D ln 2)``: nats per example -> bits per dimension (same shape).

    Only meaningful when log p(x) is a normalised log-probability of the data, e.g. a
    Bernoulli likelihood on binarized images; not for a Bernoulli "likelihood" on grey
    levels (a loss with a non-zero floor).
    """
    return -jnp.asarray(log_px) / (num_dims * math.log(2.0))


def active_units(
    posterior_mean: ArrayLike, *, threshold: float = ACTIVE_UNIT_THRESHOLD
) -> ActiveUnits:
    """Count active latent units: ``A_u = Cov_x(E_q(z|x)[z_u]) > threshold``.

    Args:
      posterior_mean: [N, z_dim] posterior means E_q(z|x)[z] of N examples.
      threshold: activity threshold (Burda et al., 2016, use 0.01).

    Returns:
      An `ActiveUnits` with the count and each unit's variance over the data (float64,
      population variance over the N examples).
    """
    mean = np.asarray(posterior_mean, np.float64)
    if mean.ndim != 2 or mean.shape[0] < 2:
        raise ValueError(f"posterior_mean must be [N >= 2, z_dim], got {mean.shape}")
    variance = mean.var(axis=0)
    return ActiveUnits(int(np.sum(variance > threshold)), variance, threshold)


# ----------------------------------------------------------------------------- datasets


class DatasetResult(NamedTuple):
    """Per-example results over a data set (numpy, host memory).

    Attributes:
      terms: an `ImportanceTerms` of [N] float64 arrays in nats.
      posterior_mean: [N, z_dim] posterior means (for active units and pictures).
      seconds: wall time of the pass, compilation included.
      compile_seconds: wall time of the first batch (compilation plus one batch).
      first_batch_examples: examples in that first batch.
      cpu_seconds: CPU time of this process during the pass (all threads), which on a shared
        machine says how much of the wall time the pass actually had the CPU.
      layers: for a model with several stochastic layers, a `LayerTerms` of numpy arrays
        ([N, layers] and [N, d_l]); else None.
    """

    terms: ImportanceTerms
    posterior_mean: np.ndarray
    seconds: float
    compile_seconds: float
    first_batch_examples: int
    cpu_seconds: float = float("nan")
    layers: LayerTerms | None = None


@functools.lru_cache(maxsize=16)
def make_batch_evaluator(
    model: VAE, *, num_samples: int, sample_chunk: int, per_layer: bool = False
) -> Callable[..., Any]:
    """A jitted ``fn(params, x, label, example_ids, key) -> (ImportanceTerms, mean)``, or
    ``-> (ImportanceTerms, mean, LayerTerms)`` with `per_layer` (`layered_importance_terms`).

    Cached per (model, num_samples, sample_chunk, per_layer), so repeated evaluations
    compile once.
    """

    def fn(params, x, label, example_ids, key):
        kwargs = dict(num_samples=num_samples, sample_chunk=sample_chunk, example_ids=example_ids)
        mean, _ = model.apply({"params": params}, to_float(x), label, method="encode")
        if per_layer:
            terms, layers = layered_importance_terms(model, params, x, label, key, **kwargs)
            return terms, mean.astype(jnp.float32), layers
        terms = importance_terms(model, params, x, label, key, **kwargs)
        return terms, mean.astype(jnp.float32)

    return jax.jit(fn)


def evaluate_dataset(
    model: nn.Module,
    params: Params,
    images: np.ndarray,
    labels: np.ndarray | None,
    key: jax.Array,
    *,
    num_samples: int = 5000,
    sample_chunk: int = 20,
    batch_size: int = 100,
    progress: bool = True,
) -> DatasetResult:
    """Run `importance_terms` over every example of `images`, `batch_size` at a time.

    One compiled call per batch (the last batch is padded to full size and the padding
    dropped); example n uses the noise of id n, so the results do not depend on
    `batch_size` or `sample_chunk`. Peak memory is about
    ``batch_size * sample_chunk * (image size + hidden widths) * 4 bytes`` a few times over.

    Args:
      images: [N, *image_shape] uint8 grey levels (or 0/255 binarized) or floats in [0, 1].
      labels: [N] int labels (needed only by a conditional model).
      progress: show a tqdm bar (unit: examples).
    """
    n = len(images)
    if n == 0:
        raise ValueError("no examples to evaluate")
    batch_size = min(batch_size, n)
    per_layer = hasattr(model, "sample_layers")
    fn = make_batch_evaluator(
        model, num_samples=num_samples, sample_chunk=sample_chunk, per_layer=per_layer
    )
    use_labels = getattr(model, "num_classes", 0) > 0
    outputs: list[Any] = []  # (terms, mean) or (terms, mean, layers) per batch
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    compile_seconds = 0.0
    with tqdm(
        total=n, desc=f"IS k={num_samples}", unit="ex", disable=not progress, dynamic_ncols=True
    ) as bar:
        index, weight = padded_batches(np.arange(n), batch_size)
        for i, ids in enumerate(index):
            label = (
                jnp.asarray(labels[ids], jnp.int32) if use_labels and labels is not None else None
            )
            out = fn(params, jnp.asarray(images[ids]), label, jnp.asarray(ids, jnp.int32), key)
            out = jax.device_get(out)
            keep = int(weight[i].sum())  # (the padding, which has weight 0, is dropped)
            outputs.append(jax.tree.map(lambda a, k=keep: a[:k], out))
            if i == 0:
                compile_seconds = time.perf_counter() - t0
            bar.update(keep)
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - cpu0
    columns: list[Any] = [
        np.concatenate([np.asarray(o[0][i], np.float64) for o in outputs]) for i in range(4)
    ]
    terms = ImportanceTerms(*columns)  # numpy [N] float64 arrays
    posterior_mean = np.concatenate([o[1] for o in outputs])
    layers = None
    if per_layer:  # (several stochastic layers)
        layer_kl: Any = np.concatenate([np.asarray(o[2].kl, np.float64) for o in outputs])
        layer_mean: Any = tuple(
            np.concatenate([np.asarray(o[2].mean[i], np.float64) for o in outputs])
            for i in range(len(outputs[0][2].mean))
        )
        layers = LayerTerms(layer_kl, layer_mean)
    return DatasetResult(
        terms, posterior_mean, seconds, compile_seconds, batch_size, cpu_seconds, layers
    )


def decoder_flops(model: VAE, params: Params) -> int | None:
    """Multiply-add FLOPs (2 per MAC) of one decoder evaluation of an MLP `model`, counting
    the Dense layers only (the likelihood's elementwise work is not counted). None for
    other architectures."""
    if getattr(model, "architecture", None) != "mlp":
        return None
    kernels = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(params["decoder"])
        if getattr(path[-1], "key", None) == "kernel"
    ]
    return int(sum(2 * math.prod(k.shape) for k in kernels))


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux `ru_maxrss`)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- checkpoints


class EvaluationError(RuntimeError):
    """A sanity check of the evaluation failed (e.g. the IS estimate fell below the ELBO)."""


def evaluate_checkpoint(
    workdir: str | os.PathLike,
    *,
    num_samples: int = 5000,
    sample_chunk: int = 20,
    batch_size: int = 100,
    num_examples: int | None = None,
    seed: int = 0,
    step: int | None = None,
    data_dir: str | None = None,
    mnist_dir: str | None = None,
    report_path: str | os.PathLike | None = None,
    pictures_dir: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Any], DatasetResult]:
    """Evaluate a trained checkpoint on the test set: IS log-likelihood, ELBO, KL, bits/dim,
    active units; write a JSON report.

    The data come from `vae_jax.sources.prepare_data` with the checkpoint's own
    configuration, so padding and binarization match training: a dynamically binarized
    model is scored on the test set binarized once with the configured fixed seed.

    Report keys (nats per example, means over the evaluated test examples):
      ``nll_is_k{k}``: minus the importance-sampled log p(x) with k samples (binarized data
      with a Bernoulli likelihood only; on grey levels the same number is called
      ``neg_is_estimate_k{k}`` and is a loss, not an NLL), ``neg_elbo`` (minus the ELBO,
      E_q[log p(x|z)] from the same k samples, KL in closed form), ``kl``,
      ``neg_log_px_z``, ``bits_per_dim_is_k{k}`` (binarized data only), ``active_units``,
      standard errors over examples, the check ``is_ge_elbo`` and its per-example fraction,
      wall time, peak memory and decoder evaluations per second.

    Args:
      workdir: an experiment work directory (config.json and checkpoints/).
      num_samples: k importance samples per example.
      sample_chunk, batch_size: memory/speed knobs (see `evaluate_dataset`); the numbers do
        not depend on them.
      num_examples: evaluate the first N test examples (default all).
      seed: seed of the importance-sampling key.
      step: checkpoint step (default the newest).
      report_path: where the JSON goes (default ``workdir/evaluation_k{k}.json``).
      pictures_dir: if given, also write `write_evaluation_pictures`'s PNGs there.

    Returns:
      (report dict, `DatasetResult`).

    Raises:
      EvaluationError: the mean IS estimate is below the mean ELBO (written to the report
        first); this cannot happen for a correct estimator, up to Monte Carlo noise.
    """
    from vae_jax.checkpoint import load_checkpoint
    from vae_jax.sources import prepare_data

    loaded = load_checkpoint(workdir, step)
    config = loaded.config
    assert config is not None  # (loaded without a model: from its recorded configuration)
    _, train, test = prepare_data(config, data_dir=data_dir, mnist_dir=mnist_dir, log=log)
    if test is None:
        log(f"note: {config.data.dataset} has no test split: evaluating the training set")
        test = train
    images, labels = test.image, test.label
    if num_examples is not None:
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        images, labels = images[:num_examples], labels[:num_examples]
    k = num_samples
    # A true log-density of the data: a Bernoulli likelihood of binary data, or a Gaussian
    # density (continuous, of the values as the model sees them: uint8 scaled by 1/255).
    normalised = config.model.likelihood != "bernoulli" or config.data.binarize != "none"
    if not normalised:
        log(
            f"note: {config.data.variant} with a {config.model.likelihood} likelihood: the "
            "IS estimate and the ELBO are reported as losses (neg_is_estimate_k*, neg_elbo); "
            "they are not negative log-likelihoods and no bits/dim is given"
        )
    result = evaluate_dataset(
        loaded.model,
        loaded.params,
        images,
        labels,
        jax.random.key(seed),
        num_samples=k,
        sample_chunk=sample_chunk,
        batch_size=batch_size,
        progress=progress,
    )
    report = make_report(
        result,
        config=config,
        model=cast(VAE, loaded.model),
        params=loaded.params,
        num_samples=k,
        normalised=normalised,
    )
    report.update(
        workdir=str(Path(workdir).absolute()),
        step=loaded.step,
        epoch=loaded.meta.get("epoch"),
        seed=seed,
        sample_chunk=sample_chunk,
        batch_size=batch_size,
    )
    if pictures_dir is not None:
        pictures = write_evaluation_pictures(
            workdir,
            pictures_dir,
            posterior_mean=result.posterior_mean,
            images=images,
            labels=labels,
            step=loaded.step,
        )
        report["pictures"] = [str(p) for p in pictures]
    path = Path(report_path) if report_path else Path(workdir) / f"evaluation_k{k}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report)
    log(format_report(report))
    log(
        f"wrote {path}"
        + (f" and {len(report['pictures'])} PNGs in {pictures_dir}" if pictures_dir else "")
    )
    if not report["is_ge_elbo"]:
        raise EvaluationError(
            f"mean IS estimate ({-report[report['is_key']]:.4f}) is below the mean ELBO "
            f"({-report['neg_elbo']:.4f}): the estimator or the checkpoint is broken"
        )
    return report, result


def make_report(
    result: DatasetResult,
    *,
    config: Any,
    model: VAE,
    params: Params,
    num_samples: int,
    normalised: bool,
) -> dict[str, Any]:
    """The JSON-ready report of `evaluate_checkpoint` (see there for the keys)."""
    t = result.terms
    n = len(t.log_px)
    k = num_samples
    num_dims = math.prod(model.image_shape)
    is_key = f"nll_is_k{k}" if normalised else f"neg_is_estimate_k{k}"

    def stderr(v: ArrayLike) -> float:
        return float(np.std(np.asarray(v), ddof=1) / math.sqrt(n)) if n > 1 else float("nan")

    units = active_units(result.posterior_mean) if n > 1 else None
    evals = n * k
    flops = decoder_flops(model, params)
    # Throughput after the first batch (which includes compilation), when there is more.
    steady_n = n - result.first_batch_examples
    steady_seconds = result.seconds - result.compile_seconds
    if steady_n > 0 and steady_seconds > 0:
        evals_per_second = steady_n * k / steady_seconds
    else:
        evals_per_second = evals / result.seconds
    report: dict[str, Any] = {
        "is_key": is_key,
        is_key: float(-np.mean(t.log_px)),
        f"{is_key}_stderr": stderr(t.log_px),
        "neg_elbo": float(-np.mean(t.elbo)),
        "neg_elbo_stderr": stderr(t.elbo),
        "neg_log_px_z": float(-np.mean(t.log_px_z)),
        "kl": float(np.mean(t.kl)),
        "is_minus_elbo": float(np.mean(t.log_px - t.elbo)),
        "is_ge_elbo": bool(
            np.mean(t.log_px) >= np.mean(t.elbo) - IS_ELBO_RTOL * abs(float(np.mean(t.elbo)))
        ),
        "is_ge_elbo_rtol": IS_ELBO_RTOL,
        "is_ge_elbo_fraction_of_examples": float(np.mean(t.log_px >= t.elbo)),
        "active_units": None if units is None else units.num_active,
        "active_unit_threshold": ACTIVE_UNIT_THRESHOLD,
        "z_dim": int(model.z_dim),
        "num_examples": n,
        "num_samples": k,
        "split": "test",
        "data": config.data.variant,
        "binarization": (
            f"test set binarized once, seed {config.data.test_binarize_seed}"
            if config.data.binarize != "none"
            else "none (values as given; uint8 scaled by 1/255)"
        ),
        "likelihood": model.likelihood,
        "units": "nats per example (mean over the evaluated test examples)",
        "protocol": (
            f"importance sampling with k={k} samples from q(z|x) per example "
            "(Burda et al. 2016); ELBO = mean over the same k samples of log p(x|z) minus the "
            + (
                "Monte Carlo KL, the mean of log q(z|x) - log p(z) over the same samples"
                if hasattr(model, "sample_latent")
                else "closed-form KL"
            )
        ),
        "seconds": result.seconds,
        "compile_and_first_batch_seconds": result.compile_seconds,
        "cpu_seconds": result.cpu_seconds,
        "cpu_seconds_per_second": result.cpu_seconds / result.seconds,
        "peak_rss_mib": peak_rss_mib(),
        "decoder_evals": evals,
        "decoder_evals_per_second": evals_per_second,
        "decoder_flops_per_eval": flops,
        "decoder_gflops_per_second": None if flops is None else flops * evals_per_second / 1e9,
    }
    if result.layers is not None:
        layer_means = result.layers.mean
        report["kl_per_layer"] = [float(v) for v in np.mean(result.layers.kl, axis=0)]
        report["latent_dims"] = [int(m.shape[-1]) for m in layer_means]
        report["active_units_per_layer"] = (
            None if n < 2 else [active_units(m).num_active for m in layer_means]
        )
        report["per_layer"] = (
            "layer l's KL: mean over the k samples of log q(z_l|z_{l-1}) - log p(z_l|z_{l+1}) "
            "(bottom first, they sum to kl); its active units from E_q[z_l], the mean over the "
            "same k samples of q(z_l|z_{l-1})'s mean (exact for the bottom layer)"
        )
    if normalised and model.likelihood == "bernoulli":
        report[f"bits_per_dim_is_k{k}"] = float(np.mean(bits_per_dim(t.log_px, num_dims)))
    elif normalised:
        report["caveat"] = (
            f"{model.likelihood} likelihood: a density of continuous values (uint8 data "
            "scaled by 1/255), in nats; not comparable with discrete likelihoods, and no "
            "bits/dim is reported"
        )
    else:
        report["caveat"] = (
            f"{model.likelihood} likelihood on {config.data.variant}: not a normalised "
            "density of the data, so these are losses, not NLLs; bits/dim is not reported"
        )
    return report


def format_report(report: dict[str, Any]) -> str:
    """A few readable lines summarising `report`."""
    is_key = report["is_key"]
    lines = [
        f"{report['data']}, {report['num_examples']} test examples, k={report['num_samples']}:",
        f"  {is_key} = {report[is_key]:.3f} +- {report[is_key + '_stderr']:.3f}"
        f"  neg_elbo = {report['neg_elbo']:.3f}  (gap {report['is_minus_elbo']:.3f})"
        f"  KL = {report['kl']:.3f}  nats/example",
    ]
    bpd = [key for key in report if key.startswith("bits_per_dim")]
    if bpd:
        lines.append(f"  {bpd[0]} = {report[bpd[0]]:.4f}")
    lines.append(
        f"  active units {report['active_units']}/{report['z_dim']}  IS >= ELBO: "
        f"{report['is_ge_elbo']} ({report['is_ge_elbo_fraction_of_examples']:.4f} of examples)"
    )
    if "kl_per_layer" in report:
        layers = ", ".join(f"{v:.3f}" for v in report["kl_per_layer"])
        lines.append(
            f"  per layer (bottom first): KL {layers}  active units "
            f"{report['active_units_per_layer']} of {report['latent_dims']}"
        )
    gflops = report.get("decoder_gflops_per_second")
    lines.append(
        f"  {report['seconds']:.1f} s, peak RSS {report['peak_rss_mib']:.0f} MiB, "
        f"{report['decoder_evals_per_second']:.3g} decoder evals/s"
        + ("" if gflops is None else f" ({gflops:.1f} GFLOP/s in the decoder's matmuls)")
    )
    if "caveat" in report:
        lines.append(f"  caveat: {report['caveat']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- pictures


def write_evaluation_pictures(
    workdir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    posterior_mean: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
    step: int | None = None,
    num_interpolations: int = 8,
    interpolation_steps: int = 10,
) -> list[Path]:
    """Write the evaluation PNGs of a checkpoint into `out_dir`; return their paths.

    - ``latent_scatter.png``: test-set posterior means coloured by label (z_dim 2 directly,
      larger z_dim projected on the first two principal components; the plot says which).
    - ``latent_manifold.png`` (z_dim 2, unconditional models of images): the 20x20 grid of decoded
      means at ``z = Phi^-1(u)`` for u evenly spaced on the unit square (Kingma & Welling).
    - ``interpolations.png`` (images): rows of decoded means along the straight line between the
      posterior means of two test images, the two images themselves at the ends.
    - ``training_curves.png``: the per-epoch losses of ``workdir/metrics.jsonl`` (if any).

    Args:
      workdir: the experiment's work directory (checkpoint and metrics.jsonl).
      posterior_mean: [N, z_dim] posterior means of `images` (e.g. `DatasetResult`'s).
      images: [N, *image_shape] uint8 test images (as evaluated), labels: [N] int.
      step: checkpoint step (default the newest).
    """
    from vae_jax import visualize
    from vae_jax.checkpoint import load_checkpoint
    from vae_jax.models import decoder_mean

    loaded = load_checkpoint(workdir, step)
    model, params, config = cast(VAE, loaded.model), loaded.params, loaded.config
    assert config is not None  # (loaded without a model: from its recorded configuration)
    out = Path(out_dir)
    conditional = model.num_classes > 0
    written = []
    where = f"{config.data.variant}, step {loaded.step}"

    @jax.jit
    def decode(z, label):
        return decoder_mean(model, params, z, label if conditional else None)

    written.append(
        visualize.save_latent_scatter(
            out / "latent_scatter.png",
            posterior_mean,
            labels,
            title=f"test-set posterior means by label ({where})",
        )
    )
    drawable = is_image_shape(tuple(model.image_shape))  # (vectors get no image pictures)
    if model.z_dim == 2 and not conditional and drawable:
        written.append(
            visualize.save_latent_manifold(
                out / "latent_manifold.png",
                lambda z: decode(jnp.asarray(z), None),
                n=20,
                title="learned 2-D manifold: decoded means at z = inverse Gaussian CDF of an "
                f"evenly spaced 20x20 grid on the unit square\n{where}",
            )
        )
    pairs = min(num_interpolations, len(images) // 2)
    if pairs >= 1 and drawable:
        rows = []
        x = to_float_np(images)
        for r in range(pairs):
            a, b = 2 * r, 2 * r + 1
            z = visualize.interpolate_latents(
                posterior_mean[a], posterior_mean[b], steps=interpolation_steps
            )
            label = jnp.full((len(z),), int(labels[a]), jnp.int32)
            decoded = np.asarray(decode(jnp.asarray(z, jnp.float32), label))
            rows.append(np.concatenate([x[a][None], decoded, x[b][None]]))
        written.append(
            visualize.save_interpolations(
                out / "interpolations.png",
                np.stack(rows),
                title=f"latent interpolations ({where}): first and last column are test "
                f"images; between them {interpolation_steps} decoded means on the straight "
                "line between their posterior means",
            )
        )
    metrics = Path(workdir) / "metrics.jsonl"
    if metrics.exists():
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line]
        keys = [
            key
            for key in ("train_loss", "test_loss", "test_iwae_loss")
            if any(key in r for r in records)
        ]
        if records:
            written.append(
                visualize.save_training_curves(
                    out / "training_curves.png",
                    records,
                    keys=keys,
                    ylabel="minus the bound (nats per example)",
                    title=f"{records[-1].get('train_bound', '')} training, {config.data.variant}"
                    "\ntest_loss: minus the 1-sample test ELBO",
                )
            )
    return written


__all__ = [
    "ActiveUnits",
    "DatasetResult",
    "EvaluationError",
    "ImportanceTerms",
    "LayerTerms",
    "active_units",
    "bits_per_dim",
    "decoder_flops",
    "elbo",
    "evaluate_checkpoint",
    "evaluate_dataset",
    "format_report",
    "importance_log_likelihood",
    "importance_terms",
    "layered_importance_terms",
    "make_batch_evaluator",
    "make_report",
    "write_evaluation_pictures",
]
