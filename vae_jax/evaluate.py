"""Evaluation over a data set: the batched importance-sampling pass and its report.

`evaluate_dataset` runs `vae_jax.importance.importance_terms` over every example of an
array, `batch_size` examples per compiled call (`make_batch_evaluator`); `make_report` turns
the per-example results into the JSON-ready report (nats per example) and `format_report`
into a few lines; `write_evaluation_pictures` draws the evaluation PNGs. The bounds
themselves are in `vae_jax.importance` (re-exported here); loading a run's checkpoint and
data, and writing the report, is `vae_jax.evaluation_run.evaluate_checkpoint`.

On grey-level data a Bernoulli "likelihood" is not a normalised density (see
`vae_jax.objectives.bernoulli_log_likelihood`), so the same numbers are not negative
log-likelihoods there: the report then names them as losses and gives no bits per
dimension.
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
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from tqdm.auto import tqdm

from vae_jax.arrays import is_image_shape, to_float, to_float_np
from vae_jax.fields import require_int
from vae_jax.importance import (
    ACTIVE_UNIT_THRESHOLD,
    ActiveUnits,
    ImportanceTerms,
    LayerTerms,
    active_units,
    bernoulli_log_prob_fused,
    bits_per_dim,
    check_inputs,
    elbo,
    importance_log_likelihood,
    importance_terms,
    layered_importance_terms,
)
from vae_jax.models import VAE
from vae_jax.train import padded_batches

if TYPE_CHECKING:
    from vae_jax.checkpoint import LoadedModel

Params = Any

# IS >= ELBO holds exactly for the same samples, but both are float32 sums: a model whose
# weights do not depend on z (a collapsed posterior, q(z|x) = p(z)) has IS = ELBO, and
# rounding then puts IS below the ELBO by ~1e-5 nats (measured: 8.5e-6 at an ELBO of
# -206.23). The check allows this relative slack, far below any real failure.
IS_ELBO_RTOL = 1e-6


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

    Raises:
      ValueError: (one line, before any computation) data that do not fit the model
        (`vae_jax.importance.check_inputs`: no examples, NaN, values outside [0, 1] for
        a Bernoulli likelihood, labels, ...) or a `batch_size` or `num_samples` that is not
        an integer >= 1.
    """
    use_labels = getattr(model, "num_classes", 0) > 0
    check_inputs(model, images, labels if use_labels else None, name="images")
    # (as arrays: a list was checked, then failed to index: "only integer scalar arrays")
    images = images if isinstance(images, np.ndarray) else np.asarray(images)
    labels = None if labels is None or not use_labels else np.asarray(labels)
    for name, value in (("batch_size", batch_size), ("num_samples", num_samples)):
        if require_int(name, value) < 1:  # (num_samples=[4]: "unhashable type: 'list'")
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    n = len(images)
    batch_size = min(batch_size, n)
    per_layer = hasattr(model, "sample_layers")
    fn = make_batch_evaluator(
        model, num_samples=num_samples, sample_chunk=sample_chunk, per_layer=per_layer
    )
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


# ----------------------------------------------------------------------------- report


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
    loaded: LoadedModel | None = None,
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
      step: checkpoint step (default the newest); ignored when `loaded` is given.
      loaded: the checkpoint as `vae_jax.checkpoint.load_checkpoint` returned it (the one
        that was evaluated); by default it is loaded from `workdir` and `step`.
    """
    from vae_jax import visualize
    from vae_jax.models import decoder_mean

    if loaded is None:
        from vae_jax.checkpoint import load_checkpoint

        loaded = load_checkpoint(workdir, step)
    model, params, config = cast(VAE, loaded.model), loaded.params, loaded.config
    if config is None:  # (before: an AssertionError without a message)
        raise ValueError(
            "the pictures need the run's recorded configuration (its data set and "
            "binarization); a run that fit made from your own pieces has none"
        )
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


# The experiment-level names moved to `vae_jax.evaluation_run` (which imports this module);
# ``from vae_jax.evaluate import evaluate_checkpoint, EvaluationError`` still works.
_MOVED = ("EvaluationError", "evaluate_checkpoint")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        from vae_jax import evaluation_run

        return getattr(evaluation_run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACTIVE_UNIT_THRESHOLD",
    "IS_ELBO_RTOL",
    "ActiveUnits",
    "DatasetResult",
    "ImportanceTerms",
    "LayerTerms",
    "active_units",
    "bernoulli_log_prob_fused",
    "bits_per_dim",
    "check_inputs",
    "decoder_flops",
    "elbo",
    "evaluate_dataset",
    "format_report",
    "importance_log_likelihood",
    "importance_terms",
    "layered_importance_terms",
    "make_batch_evaluator",
    "make_report",
    "peak_rss_mib",
    "write_evaluation_pictures",
]
