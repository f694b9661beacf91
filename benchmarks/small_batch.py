"""The train step at the IWAE paper's batch of 20 against its floor, and where the rest goes.

Burda et al.'s protocol trains at batch 20 for 3,280 epochs (3,000 steps each), so its
wall time is the per-step cost of a small step. This benchmark measures, in one process:

1. **The floor**: every matmul of one train step at its own shape (forward, weight and
   input gradients, each with XLA:CPU's default emitter and with vae_jax's options; the
   faster counts; `benchmarks.speed.time_dot`), plus the Adam update's memory traffic
   (it reads parameters, gradients and both moments and writes three of them back: 7
   arrays of the parameter count, in float32) at the bandwidth of a streaming
   ``y = a + s * y`` over arrays of the same size, measured in the same way.
2. **The step** through the library's train call (`vae_jax.Trainer`, ``--steps`` steps per
   compiled call, as `vae_jax.loop.fit` runs them), and variants that remove one piece
   each, interleaved call by call so that the machine's load hits all alike (medians):
   ``library`` (the recipe: Adam with the `iwae_paper` schedule, dynamic binarization),
   ``constant_lr`` (Adam at a constant rate), ``sgd`` (no optimizer state to update),
   ``no_binarize`` (the grey levels used as given: no Bernoulli draw of 15,680 pixels),
   ``isolated_adam`` (the Adam update alone on the parameters' shapes, as a scan).
3. The same for the IWAE bound with k = ``--iwae_k`` (the decoder then runs on
   batch * k rows, so its floor is mostly matmuls).

Ratios are the step over its floor. Speed does not depend on the pixel values, so the
data are random uint8 images. The model: the `iwae_paper_vae` recipe (MLP 784-200-200-50,
tanh, Bernoulli, dynamically binarized), batch 20. Usage::

    python -m benchmarks.small_batch --json /tmp/small_batch.json
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
import jax.numpy as jnp  # noqa: E402
import numpy as np
import optax  # noqa: E402

from benchmarks.machine import describe, machine_info  # noqa: E402
from benchmarks.speed import time_dot  # noqa: E402
from vae_jax import recipes  # noqa: E402
from vae_jax.arrays import Split  # noqa: E402
from vae_jax.objectives import make_elbo, make_iwae  # noqa: E402
from vae_jax.optim import make_optimizer  # noqa: E402
from vae_jax.options import FitOptions  # noqa: E402
from vae_jax.train import CPU_COMPILER_OPTIONS, epoch_order  # noqa: E402
from vae_jax.trainer import Trainer  # noqa: E402

N = 60_000  # MNIST's training set: 3,000 steps per epoch at batch 20
PAPER_EPOCHS = 3280
ADAM_ARRAYS = 7  # reads params, grads, mu, nu; writes params, mu, nu


def _median_ms(seconds: list[float]) -> float:
    return 1e3 * statistics.median(seconds)


def dense_layers(hidden: tuple[int, ...], z_dim: int, d: int = 784) -> list[tuple[int, int, bool]]:
    """(fan_in, fan_out, is_decoder) of each Dense layer of the MLP VAE."""
    enc = [d, *hidden, 2 * z_dim]
    dec = [z_dim, *reversed(hidden), d]
    return [(a, b, False) for a, b in zip(enc[:-1], enc[1:], strict=True)] + [
        (a, b, True) for a, b in zip(dec[:-1], dec[1:], strict=True)
    ]


def dots_floor_ms(layers: list[tuple[int, int, bool]], batch: int, k: int, reps: int) -> float:
    """Sum over the step's dots of the faster of XLA's default and vae_jax's emitters (ms).

    The encoder's dots have `batch` rows, the decoder's `batch * k`; the first layer needs
    no input gradient.
    """
    total = 0.0
    for i, (a, b, decoder) in enumerate(layers):
        rows = batch * k if decoder else batch
        kinds = ["forward", "weight_grad"] + ([] if i == 0 else ["input_grad"])
        for kind in kinds:
            total += min(
                time_dot(kind, rows, a, b, reps=reps, options=opts, n=128)
                for opts in (None, CPU_COMPILER_OPTIONS)
            )
    return 1e3 * total


def stream_gbps(size: int, reps: int, n: int = 256) -> float:
    """GB/s of ``y = a + s * y`` over float32 arrays of `size` (3 arrays moved per update)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal(size, np.float32))

    def run(a: jax.Array, y: jax.Array) -> jax.Array:
        return jax.lax.fori_loop(0, n, lambda i, y: a + 0.999 * y, y)

    fn = jax.jit(run, compiler_options=CPU_COMPILER_OPTIONS)
    y = jnp.zeros(size, jnp.float32)
    fn(a, y).block_until_ready()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(a, y).block_until_ready()
        times.append(time.perf_counter() - start)
    return 3 * 4 * size * n / statistics.median(times) / 1e9


def isolated_adam(params: Any, tx: optax.GradientTransformation, steps: int) -> Any:
    """A jitted ``run(params, opt_state, grads) -> (params, opt_state)`` of `steps` updates."""

    def run(params: Any, opt_state: Any, grads: Any) -> Any:
        def body(carry: Any, _: Any) -> Any:
            params, opt_state = carry
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        return jax.lax.scan(body, (params, opt_state), None, length=steps)[0]

    return jax.jit(run, donate_argnums=(0, 1), compiler_options=CPU_COMPILER_OPTIONS)


def measure(k: int, *, steps: int, rounds: int, reps: int) -> dict[str, Any]:
    """Floor and step times (ms per step) for the paper's 1-layer model with bound k."""
    config = recipes.iwae_paper_vae()
    tc = config.train
    model = config.model.build((28, 28, 1))
    objective = make_elbo(model) if k == 1 else make_iwae(model, num_samples=k)
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (N, 28, 28, 1), dtype=np.uint8), np.zeros(N, np.int32))
    index, weight = epoch_order(N, tc.batch_size, seed=0, epoch=0)
    index, weight = jax.device_put((index[:steps], weight[:steps]))
    schedule_tx = make_optimizer(tc, N // tc.batch_size)
    variants: dict[str, tuple[optax.GradientTransformation, bool]] = {
        "library": (schedule_tx, True),
        "constant_lr": (optax.adam(tc.learning_rate, b1=tc.adam_b1, eps=tc.adam_eps), True),
        "sgd": (optax.sgd(tc.learning_rate), True),
        "no_binarize": (schedule_tx, False),
    }
    if k > 1:
        variants = {"library": variants["library"]}
    runs: dict[str, tuple[Trainer, list[float]]] = {}
    for name, (tx, binarize) in variants.items():
        # `fit`'s Trainer (seed 0, one device, the data on it); every call runs `steps` steps
        options = FitOptions(batch_size=tc.batch_size, num_devices=1, binarize=binarize)
        trainer = Trainer(objective, tx, split, options=options)
        for _ in range(2):  # compile (the second call sees the first's output placement)
            trainer.run((trainer.train_data, index, weight))
        runs[name] = (trainer, [])
    params = runs["library"][0].state.params
    num_params = sum(int(np.size(p)) for p in jax.tree.leaves(params))
    adam = isolated_adam(params, schedule_tx, steps)
    adam_carry = (jax.tree.map(jnp.copy, params), schedule_tx.init(params))
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
    for _ in range(2):  # compile, as above
        adam_carry = adam(*adam_carry, grads)
        jax.block_until_ready(adam_carry)
    adam_times: list[float] = []
    for _ in range(rounds):
        for trainer, times in runs.values():
            start = time.perf_counter()
            trainer.run((trainer.train_data, index, weight))  # (metrics fetched: done)
            times.append((time.perf_counter() - start) / steps)
        if k == 1:
            start = time.perf_counter()
            adam_carry = adam(*adam_carry, grads)
            jax.block_until_ready(adam_carry)
            adam_times.append((time.perf_counter() - start) / steps)
    step_ms = {name: _median_ms(times) for name, (_, times) in runs.items()}
    if adam_times:
        step_ms["isolated_adam"] = _median_ms(adam_times)
    layers = dense_layers(tuple(config.model.hidden), config.model.z_dim)
    dots_ms = dots_floor_ms(layers, tc.batch_size, k, reps)
    gbps = stream_gbps(num_params, reps)
    adam_floor_ms = 1e3 * ADAM_ARRAYS * 4 * num_params / (gbps * 1e9)
    floor_ms = dots_ms + adam_floor_ms
    epoch_s = step_ms["library"] * (N // tc.batch_size) / 1e3
    return {
        "k": k,
        "batch": tc.batch_size,
        "parameters": num_params,
        "steps_per_call": steps,
        "rounds": rounds,
        "step_ms": step_ms,
        "step_ms_all": {name: [1e3 * t for t in times] for name, (_, times) in runs.items()},
        "dots_floor_ms": dots_ms,
        "stream_gbps": gbps,
        "adam_traffic_floor_ms": adam_floor_ms,
        "floor_ms": floor_ms,
        "library_over_floor": step_ms["library"] / floor_ms,
        "epoch_s": epoch_s,
        "paper_protocol_h": epoch_s * PAPER_EPOCHS / 3600,
    }


def report(r: dict[str, Any]) -> None:
    bound = "ELBO (VAE, k=1)" if r["k"] == 1 else f"IWAE k={r['k']}"
    print(f"\n## {bound}: batch {r['batch']}, {r['parameters']:,} parameters")
    print(
        f"  floor {r['floor_ms']:.3f} ms = matmuls {r['dots_floor_ms']:.3f} ms + Adam traffic "
        f"{r['adam_traffic_floor_ms']:.3f} ms ({ADAM_ARRAYS} x {r['parameters']:,} float32 "
        f"at {r['stream_gbps']:.0f} GB/s)"
    )
    for name, ms in r["step_ms"].items():
        print(f"  {name:14s} {ms:7.3f} ms/step  ({ms / r['floor_ms']:.2f}x the floor)")
    print(
        f"  -> {r['epoch_s']:.2f} s per epoch; the paper's {PAPER_EPOCHS} epochs: "
        f"{r['paper_protocol_h']:.2f} h on this machine",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=500, help="train steps per timed call")
    parser.add_argument("--rounds", type=int, default=7, help="timed calls per variant")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each floor timing")
    parser.add_argument("--iwae_k", type=int, default=50, help="k of the IWAE row (0: skip)")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if min(args.steps, args.rounds, args.reps) < 1 or args.iwae_k < 0:
        parser.error("--steps, --rounds and --reps must be >= 1, --iwae_k >= 0")
    info = machine_info()
    print(describe(info), flush=True)
    results = []
    for k in [1] + ([args.iwae_k] if args.iwae_k > 1 else []):
        steps = args.steps if k == 1 else max(1, args.steps // 10)
        results.append(measure(k, steps=steps, rounds=args.rounds, reps=args.reps))
        report(results[-1])
    info["loadavg_end"] = os.getloadavg()
    print(f"\nload average at the end: {info['loadavg_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
