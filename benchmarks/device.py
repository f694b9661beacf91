"""Issue #14's device numbers in one prepared run: the script to run on a GPU (or TPU) host.

On whatever device JAX uses (it prints its name first), in one process:

1. **Seed recipe** (MLP 784-400-20, Bernoulli, Adam, as `--recipe pytorch`): examples per
   second at batch 128 and over a batch-size sweep (the maximum is reported);
2. **conv32** (the `conv32` recipe's model, batch 128): ms per train step;
3. **The IWAE paper's 1-layer model** (`iwae_paper_vae`: 784-200-200-50 tanh, batch 20,
   dynamically binarized, the paper's Adam schedule): seconds per epoch, with the library's
   default steps per compiled call and with one call per epoch, hence the wall time of the
   paper's 3,280 epochs;
4. **The importance-sampled evaluation** (`vae_jax.evaluate.evaluate_dataset`, the pass of
   ``python -m experiments.evaluate``) at k = 5000 on 10,000 test images for the same model:
   seconds, compilation included and not.

Each training measurement runs `vae_jax.loop.fit`'s `Trainer` as `fit` does: chunks of
``steps_per_call`` steps, metrics fetched after each call.
Speed does not depend on the pixel values or the parameters, so the data are random uint8
images (60,000 train, 10,000 test) and the models freshly initialised. The targets of issue
#14 on one H100/H200-class GPU: seed recipe >= 1M examples/s, the paper's 3,280 epochs in
<= 15 minutes, IS evaluation <= 60 s. Usage::

    pip install -r requirements-gpu.txt
    python -m benchmarks.device --json device.json     # about 5 minutes on a GPU
    python -m benchmarks.device --quick                # a small smoke run, on any machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np

from benchmarks.machine import describe, machine_info  # noqa: E402
from vae_jax import recipes  # noqa: E402
from vae_jax.arrays import Split  # noqa: E402
from vae_jax.config import ExperimentConfig  # noqa: E402
from vae_jax.evaluate import evaluate_dataset  # noqa: E402
from vae_jax.models import init_params  # noqa: E402
from vae_jax.optim import make_optimizer  # noqa: E402
from vae_jax.train import steps_per_epoch  # noqa: E402
from vae_jax.trainer import Trainer  # noqa: E402

PAPER_EPOCHS = 3280


def _say(text: str = "") -> None:
    print(text, flush=True)


class Timed:
    """`fit`'s `Trainer` for one recipe on random images (seed 0, one device, the data on
    it), timed by epoch or by its first steps."""

    def __init__(
        self, config: ExperimentConfig, images: np.ndarray, batch: int, steps_per_call: int
    ):
        self.steps = steps_per_epoch(len(images), batch)
        options = config.fit_options(
            batch_size=batch,
            steps_per_call=steps_per_call,
            seed=0,
            num_devices=1,
            placement="device",
        )
        self.trainer = Trainer(
            config.objective.build(config.model.build(tuple(images.shape[1:]))),
            make_optimizer(config.train, self.steps),
            Split(images, np.zeros(len(images), np.int32)),
            options=options,
        )
        self.epoch = 0

    def run(self, max_steps: int | None = None) -> tuple[float, int]:
        """One epoch (or its first whole calls up to `max_steps` steps): (seconds, steps run)."""
        seconds, _, steps = self.trainer.train_epoch(self.epoch, max_steps)
        self.epoch += 1
        return seconds, steps


def timed(trainer: Timed, rounds: int, max_steps: int | None = None) -> float:
    """Median seconds per step over `rounds` timed runs, after a compiling one."""
    trainer.run(max_steps)
    per_step = []
    for _ in range(rounds):
        seconds, steps = trainer.run(max_steps)
        per_step.append(seconds / steps)
    return statistics.median(per_step)


def seed_recipe(images: np.ndarray, batches: list[int], rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for batch in batches:
        config = recipes.pytorch()
        trainer = Timed(config, images, batch, config.train.steps_per_call)
        step_s = timed(trainer, rounds)
        out[batch] = len(images) / (step_s * trainer.steps)
        _say(f"  seed recipe, batch {batch:6d}: {out[batch]:13,.0f} examples/s")
    best = max(out, key=out.get)
    return {"examples_per_s": out, "best_batch": best, "best_examples_per_s": out[best]}


def conv32(images32: np.ndarray, rounds: int, steps: int) -> float:
    config = recipes.conv32()
    trainer = Timed(config, images32, 128, config.train.steps_per_call)
    ms = 1e3 * timed(trainer, rounds, max_steps=steps)
    _say(f"  conv32, batch 128: {ms:.2f} ms per step")
    return ms


def iwae_paper(images: np.ndarray, rounds: int) -> dict[str, Any]:
    config = recipes.iwae_paper_vae()
    out: dict[str, Any] = {}
    steps = steps_per_epoch(len(images), 20)
    mnist_steps = steps_per_epoch(60_000, 20)  # the paper's epoch, whatever `images` holds
    for name, per_call in (("default", config.train.steps_per_call), ("one_call", steps)):
        trainer = Timed(config, images, 20, per_call)
        epoch_s = timed(trainer, rounds) * mnist_steps
        out[name] = {"steps_per_call": per_call, "epoch_s": epoch_s}
        _say(
            f"  IWAE paper 1-layer, batch 20, {per_call} steps per call: {epoch_s:.3f} s per "
            f"60,000-example epoch -> {PAPER_EPOCHS} epochs in "
            f"{epoch_s * PAPER_EPOCHS / 60:.1f} min"
        )
    best = min(v["epoch_s"] for v in out.values())
    out["paper_protocol_min"] = best * PAPER_EPOCHS / 60
    return out


def is_eval(test: np.ndarray, k: int, batch_size: int, sample_chunk: int) -> dict[str, Any]:
    model = recipes.iwae_paper_vae().model.build((28, 28, 1))
    params = init_params(model, jax.random.key(0))
    result = evaluate_dataset(
        model,
        params,
        test,
        None,
        jax.random.key(1),
        num_samples=k,
        sample_chunk=sample_chunk,
        batch_size=batch_size,
        progress=False,
    )
    _say(
        f"  IS evaluation, k={k}, {len(test)} images (batch {batch_size}, chunk "
        f"{sample_chunk}): {result.seconds:.1f} s, of which the first (compiling) batch "
        f"{result.compile_seconds:.1f} s"
    )
    return {
        "k": k,
        "examples": len(test),
        "seconds": result.seconds,
        "first_batch_seconds": result.compile_seconds,
        "mean_log_px": float(np.mean(result.terms.log_px)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs per measurement")
    parser.add_argument(
        "--batches",
        default="128,512,2048,8192,32768",
        help="seed-recipe batch sizes (default: %(default)s)",
    )
    parser.add_argument("--is_batch", type=int, default=500, help="IS examples per call")
    parser.add_argument("--is_chunk", type=int, default=100, help="IS samples per scan step")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        parser.error(f"--batches takes comma-separated integers, got {args.batches!r}")
    if min(batches) < 1 or args.rounds < 1 or args.is_batch < 1 or args.is_chunk < 1:
        parser.error("--batches, --rounds, --is_batch and --is_chunk must be >= 1")
    n, n_test, k, rounds = 60_000, 10_000, 5000, args.rounds
    if args.quick:
        n, n_test, k, rounds, batches = 2_000, 200, 50, 1, batches[:2]
        args.is_batch, args.is_chunk = min(args.is_batch, 100), min(args.is_chunk, 25)
    info = machine_info()
    _say(f"# issue #14 device numbers ({'quick smoke run' if args.quick else 'full'})")
    _say(describe(info))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
    images32 = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    test = rng.integers(0, 256, (n_test, 28, 28, 1), dtype=np.uint8)
    report: dict[str, Any] = {"machine": info, "quick": args.quick}
    start = time.perf_counter()
    report["seed_recipe"] = seed_recipe(images, batches, rounds)
    report["conv32_ms_per_step"] = conv32(images32, rounds, steps=128 if args.quick else 512)
    report["iwae_paper"] = iwae_paper(images, rounds)
    report["is_eval"] = is_eval(test, k, args.is_batch, args.is_chunk)
    report["total_s"] = time.perf_counter() - start
    info["loadavg_end"] = os.getloadavg()
    _say(f"\ntotal {report['total_s']:.0f} s; load average at the end {info['loadavg_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
