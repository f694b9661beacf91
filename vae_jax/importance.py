"""Importance-sampled bounds: log p(x) by importance sampling, the ELBO, bits/dim, active units.

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

Inputs are checked (`check_inputs`, the rule of `vae_jax.arrays.check_split`) when their
values are concrete, i.e. outside `jax.jit`; under `jit` they are taken as given. The data
set driver and the report are in `vae_jax.evaluate`.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from vae_jax.arrays import check_key, check_split, to_float
from vae_jax.fields import is_number
from vae_jax.models import VAE, DecoderOutput
from vae_jax.objectives import (
    Objective,
    diag_gaussian_log_prob,
    gaussian_kl,
    log_likelihood,
    standard_normal_log_prob,
)

Params = Any

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. (2016), Section 5.2


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


def check_inputs(
    model: Any, x: Any, label: Any = None, *, name: str = "data", example_ids: Any = None
) -> None:
    """Raise ValueError (one line) unless concrete `x` (and `label`) fit `model`.

    The rule is `vae_jax.arrays.check_split`'s, the one `fit` applies: ``x`` is
    ``[N >= 1, *model.image_shape]`` (when the module has one), finite, in [0, 1] for a
    Bernoulli likelihood (uint8 levels are scaled by 1/255, so any uint8 is in range); a
    conditional model (``model.num_classes > 0``) needs integer labels ``[N]`` in
    ``0..num_classes - 1``. Under `jit` (tracers) nothing is checked: the values are not
    known. Nothing is converted: the bounds use `x` exactly as given. `name` starts the
    message ("data: x contains NaN (1 values)"); `example_ids`, if given, must be ``[N]``
    integers.
    """
    if any(isinstance(a, jax.core.Tracer) for a in (x, label, example_ids)):
        return
    image = np.asarray(x)
    event_shape = tuple(getattr(model, "image_shape", None) or ()) or None
    if event_shape is not None and image.shape == event_shape:
        raise ValueError(
            f"{name}: x has the shape of one example {event_shape}; the bounds take a batch "
            "[N, *event_shape] (x[None] for one example)"
        )
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    conditional = num_classes > 0
    check_split(
        image,
        None if label is None or not conditional else np.asarray(label),
        name=name,
        event_shape=event_shape,
        num_classes=num_classes if conditional else None,
        unit_interval=getattr(model, "likelihood", None) == "bernoulli",
    )
    if example_ids is not None:
        ids = np.asarray(example_ids)
        if ids.shape != image.shape[:1] or ids.dtype.kind not in "iu":
            raise ValueError(
                f"{name}: example_ids must be {image.shape[0]} integers, got shape {ids.shape} "
                f"of {ids.dtype}"
            )


_MAX_SAMPLES = 2**30  # sample ids are int32 (chunk * sample_chunk + i stays below 2**31)


def _check_counts(num_samples: Any, sample_chunk: Any) -> None:
    """num_samples and sample_chunk: integers in 1..2**30 (Python or numpy, not traced)."""
    try:
        counts = operator.index(num_samples), operator.index(sample_chunk)
    except TypeError:
        counts = (0, 0)
    if min(counts) < 1 or isinstance(num_samples, bool) or isinstance(sample_chunk, bool):
        raise ValueError(
            f"need integers num_samples, sample_chunk >= 1, got {num_samples!r}, {sample_chunk!r}"
        )
    if max(counts) > _MAX_SAMPLES:
        raise ValueError(
            f"num_samples and sample_chunk must be <= 2**30 (samples are numbered in int32), "
            f"got {num_samples!r}, {sample_chunk!r}"
        )


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

    Raises:
      ValueError: (one line) counts below 1, or, outside `jit`, inputs that do not fit the
        model (`check_inputs`: shape, NaN/inf, values outside [0, 1] for a Bernoulli
        likelihood, missing or out-of-range labels of a conditional model).
    """
    _check_counts(num_samples, sample_chunk)
    check_inputs(model, x, label, example_ids=example_ids)
    check_key(key)
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
    _check_counts(num_samples, sample_chunk)
    check_inputs(model, x, label, example_ids=example_ids)
    check_key(key)
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
    example_ids: ArrayLike | None = None,
) -> jax.Array:
    """The importance-sampled estimate of log p(x) with k = `num_samples`, per example.

    ``log p(x) ~ logsumexp_i [log p(x|z_i) + log p(z_i) - log q(z_i|x)] - log k``,
    z_i ~ q(z|x) (Burda et al., 2016, with k = 5000 for their Table 1). A lower bound in
    expectation, non-decreasing in k, tending to log p(x). Memory is bounded by
    `sample_chunk` (see `importance_terms`); the result does not depend on it. Example
    i's noise is drawn from `key` folded with ``example_ids[i]`` (default: i, its index in
    `x`): give each example's index in the data set to get numbers that do not depend on
    how the data set was cut into batches (`vae_jax.evaluate.evaluate_dataset` does).

    Example:
      >>> fn = jax.jit(functools.partial(  # static configuration through partial
      ...     importance_log_likelihood, model, num_samples=5000, sample_chunk=100))
      >>> log_px = fn(params, images, None, jax.random.key(0))  # [batch] nats

    Returns:
      [batch] estimates in nats (summed over pixels; not reduced over the batch).

    Raises:
      ValueError: (one line) outside `jit`, inputs that do not fit the model: see
        `check_inputs` (e.g. floats 0..255 for a Bernoulli likelihood, NaN, a missing batch
        axis, an empty batch, labels outside ``0..num_classes - 1``).

    References:
      Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders, ICLR 2016.
    """
    return importance_terms(
        model,
        params,
        x,
        label,
        key,
        num_samples=num_samples,
        sample_chunk=sample_chunk,
        example_ids=example_ids,
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
    the batch. Inputs are checked outside `jit` as by `importance_terms`.
    """
    check_inputs(model, x, label)
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
    if isinstance(num_dims, bool) or not isinstance(num_dims, int | np.integer) or num_dims < 1:
        raise ValueError(f"num_dims must be an integer >= 1, got {num_dims!r}")
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
    # (before: NaN means or a NaN threshold counted 0 active units, a confident wrong count)
    if not np.isfinite(mean).all():
        raise ValueError("posterior_mean contains NaN or infinite values")
    if not (is_number(threshold) and math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    variance = mean.var(axis=0)
    return ActiveUnits(int(np.sum(variance > threshold)), variance, threshold)


__all__ = [
    "ACTIVE_UNIT_THRESHOLD",
    "ActiveUnits",
    "ImportanceTerms",
    "LayerTerms",
    "active_units",
    "bernoulli_log_prob_fused",
    "bits_per_dim",
    "check_inputs",
    "elbo",
    "importance_log_likelihood",
    "importance_terms",
    "layered_importance_terms",
]
