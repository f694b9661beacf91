"""Train-step speed of the convolutional VAEs: XLA's transposed convolution vs sub-pixel form.

Times the library's train call (`vae_jax.Trainer`, as `vae_jax.loop.fit` runs it: ``--steps``
steps per call, state donated, XLA:CPU options included; on CPU a conv VAE's steps are
dispatched one compiled step at a time) for a conv VAE whose decoder computes every
transposed convolution

- ``xla``: with `lax.conv_transpose` (what `nn.ConvTranspose` runs),
- ``vae_jax``: as the library does (`vae_jax.conv`: sub-pixel form for layers with at least
  `SUBPIXEL_MIN_FEATURES` outputs, XLA's for the image layer),
- ``subpixel``: in sub-pixel form everywhere (the image layer too);
- ``vae_jax_scan``: as ``vae_jax``, but the steps inside one `lax.scan`, as the library runs
  every other model (XLA:CPU convolutions are slow inside loops: jax-ml/jax#12868);
- ``xla_scan``: `lax.conv_transpose` inside one `lax.scan`: the library before
  `vae_jax.conv` and the host loop (`vae_jax.train.step_loop_for`).

The variants compute the same function with the same parameters; they are timed in turn,
chunk by chunk (interleaved), so machine load hits all of them alike; medians are reported.
With PyTorch installed (``pip install torch==2.13.0``, the CPU wheel; ``--no_torch`` skips
it), the same chunks also time the same architecture in PyTorch eager
(`benchmarks/torch_vae.py` `ConvTrainer`: Adam, the same loss), in NCHW (``torch``) and
channels_last (``torch_cl``) memory formats with ``--torch_threads`` threads, and the run
ends with vae_jax's speed relative to the faster of the two (issue #14's target: >= 1.0).
Speed does not depend on pixel values, so the data are random binary images. Usage::

    python -m benchmarks.conv                      # conv32 (the recipe) and conv28
    python -m benchmarks.conv --models conv32 --variants vae_jax --chunks 10
    python -m benchmarks.conv --json /tmp/conv.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np
import optax  # noqa: E402

import vae_jax.conv  # noqa: E402
from benchmarks.machine import describe, machine_info  # noqa: E402
from vae_jax.arrays import Split  # noqa: E402
from vae_jax.config import ModelConfig  # noqa: E402
from vae_jax.objectives import make_elbo  # noqa: E402
from vae_jax.options import FitOptions  # noqa: E402
from vae_jax.train import epoch_order, steps_per_epoch  # noqa: E402
from vae_jax.trainer import Trainer  # noqa: E402

MNIST_TRAIN = 60_000  # examples per epoch, for the per-epoch estimate

# Per variant: the sub-pixel threshold it traces with (`ConvTranspose4x4` reads it when
# traced) and its `FitOptions.step_loop`: "host" (a host loop of compiled steps: what
# `step_loop_for` picks on CPU for a program with convolutions) or "scan" (one `lax.scan`:
# the choice elsewhere, and for the MLPs).
VARIANTS = {
    "xla": (10**9, "host"),
    "vae_jax": (vae_jax.conv.SUBPIXEL_MIN_FEATURES, "host"),
    "subpixel": (1, "host"),
    "vae_jax_scan": (vae_jax.conv.SUBPIXEL_MIN_FEATURES, "scan"),
    "xla_scan": (10**9, "scan"),
}
MODELS = {
    "conv32": (32, (32, 64, 128)),  # the conv32 recipe: 32x32, 32-64-128
    "conv28": (28, (32, 64)),  # 28x28, 32-64
}


def torch_trainers(
    images: np.ndarray, channels: tuple[int, ...], *, batch: int, threads: int
) -> dict[str, object]:
    """PyTorch eager trainers of the same model (NCHW and channels_last), or {} without torch."""
    try:
        from benchmarks.torch_vae import ConvTrainer
    except ImportError:
        print("PyTorch is not installed: no PyTorch reference (pip install torch==2.13.0)")
        return {}
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # [N, 1, H, W]
    return {
        name: ConvTrainer(x, channels, batch_size=batch, channels_last=cl, num_threads=threads)
        for name, cl in (("torch", False), ("torch_cl", True))
    }


def time_model(
    name: str,
    *,
    batch: int,
    steps: int,
    chunks: int,
    variants: list[str],
    torch_threads: int | None,
) -> dict[str, object]:
    """Interleaved ms per train step of `variants` (and PyTorch unless `torch_threads` is
    None) for one model of `MODELS`."""
    size, channels = MODELS[name]
    model = ModelConfig(architecture="conv", conv_channels=channels, z_dim=20).build(
        (size, size, 1)
    )
    rng = np.random.default_rng(0)
    n = batch * steps
    images = (rng.random((n, size, size, 1)) < 0.13).astype(np.uint8) * 255
    split = Split(images, np.zeros(n, np.int32))
    tx = optax.adam(1e-3)
    index, weight = epoch_order(n, batch, seed=0, epoch=0)
    trainers, times = {}, {}
    threshold0 = vae_jax.conv.SUBPIXEL_MIN_FEATURES
    try:
        for variant in variants:
            threshold, step_loop = VARIANTS[variant]
            vae_jax.conv.SUBPIXEL_MIN_FEATURES = threshold
            # `fit`'s Trainer: seed 0, one device, the data on it; each call runs every step
            options = FitOptions(batch_size=batch, num_devices=1, step_loop=step_loop)
            trainer = Trainer(make_elbo(model), tx, split, options=options)
            # Compile (tracing reads the threshold now) and warm up.
            trainer.run((trainer.train_data, index, weight))
            trainers[variant], times[variant] = trainer, []
    finally:
        vae_jax.conv.SUBPIXEL_MIN_FEATURES = threshold0
    losses = {}
    torch_runs: dict = {}
    if torch_threads is not None:
        torch_runs = torch_trainers(images, channels, batch=batch, threads=torch_threads)
    for trainer in torch_runs.values():
        trainer.train_steps(2)  # warm up (oneDNN primitives are created on first use)
    first = next(iter(trainers.values()))  # (all variants have the same parameter shapes)
    params = {"vae_jax": sum(int(np.size(p)) for p in jax.tree.leaves(first.state.params))}
    params.update({n: t.num_params() for n, t in torch_runs.items()})
    for _ in range(chunks):
        for variant, trainer in trainers.items():
            start = time.perf_counter()
            metrics = trainer.run((trainer.train_data, index, weight))
            times[variant].append((time.perf_counter() - start) / steps)
            losses[variant] = float(metrics["loss"][-1])
        for variant, trainer in torch_runs.items():
            start = time.perf_counter()
            losses[variant] = trainer.train_steps(steps)
            times.setdefault(variant, []).append((time.perf_counter() - start) / steps)
    ms = {v: 1e3 * statistics.median(t) for v, t in times.items()}
    reference = min((ms[v] for v in torch_runs), default=None)
    return {
        "model": name,
        "image_size": size,
        "channels": channels,
        "batch": batch,
        "steps_per_chunk": steps,
        "chunks": chunks,
        "step_ms_median": ms,
        "step_ms_min": {v: 1e3 * min(t) for v, t in times.items()},
        "epoch_s_median": {v: m * steps_per_epoch(MNIST_TRAIN, batch) / 1e3 for v, m in ms.items()},
        "speedup_vs_torch": {} if reference is None else {v: reference / m for v, m in ms.items()},
        "parameters": params,
        "torch_threads": torch_threads if torch_runs else None,
        "last_loss": losses,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="conv32,conv28", help="default: %(default)s")
    parser.add_argument("--batch", type=int, default=128, help="default: %(default)s")
    parser.add_argument("--steps", type=int, default=4, help="steps per timed call")
    parser.add_argument("--chunks", type=int, default=8, help="timed calls per variant")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="vae_jax variants to time, comma-separated, from the list above (default: all; "
        "the *_scan ones take seconds per step)",
    )
    parser.add_argument(
        "--torch_threads", type=int, default=2, help="PyTorch intra-op threads (default 2)"
    )
    parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS)) + sorted(
        set(args.models.split(",")) - set(MODELS)
    )
    if unknown:
        parser.error(
            f"unknown variant or model {unknown}; variants {list(VARIANTS)}, models {list(MODELS)}"
        )
    info = machine_info()
    print(describe(info), flush=True)
    results = []
    for name in args.models.split(","):
        r = time_model(
            name,
            batch=args.batch,
            steps=args.steps,
            chunks=args.chunks,
            variants=variants,
            torch_threads=None if args.no_torch else args.torch_threads,
        )
        results.append(r)
        print(
            f"\n{name}: batch {args.batch}, ms per train step (median of {args.chunks} calls); "
            f"parameters {r['parameters']}"
        )
        for v, m in r["step_ms_median"].items():
            vs = r["speedup_vs_torch"]
            print(
                f"  {v:12s} {m:7.1f} ms (min {r['step_ms_min'][v]:6.1f}), "
                f"{r['epoch_s_median'][v]:6.1f} s per MNIST epoch"
                + (f", {vs[v]:.2f}x PyTorch's best" if vs else "")
                + f"; last loss {r['last_loss'][v]:.3f}",
                flush=True,
            )
    info["loadavg_end"] = os.getloadavg()
    print(f"\nload average at the end: {info['loadavg_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
