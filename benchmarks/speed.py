"""Training speed of the seed recipe: vae_jax vs PyTorch eager vs the matmul ceiling.

One run measures, on the same machine and in the same process (so ratios are meaningful
even when absolute numbers drift with the machine's load):

1. the float32 matmul ceiling through XLA (a large square matmul, and every dot of one
   train step at its own shape), hence the floor of an epoch;
2. the input pipeline alone (host `epoch_order`, then the on-device gather, scale and cast
   of every batch) and the compiled train step alone (a whole epoch in one call);
3. one epoch through the library's train path (`vae_jax.Trainer`, in chunks of
   ``steps_per_call``, as `vae_jax.loop.fit` runs it), interleaved epoch by epoch with the
   PyTorch eager reference (`benchmarks/torch_vae.py`); medians;
4. the time to the first trained step in a fresh process (`benchmarks/first_step.py`);
5. the train call compiled with vae_jax's XLA:CPU options against XLA's defaults;
6. a batch-size sweep.

The seed recipe: MLP 784-400-20 (ReLU), Bernoulli loss on grey-level MNIST, Adam 1e-3,
batch 128 (`--recipe pytorch`). Usage, from the repository root::

    python -m benchmarks.speed --mnist_dir ../shared/data/mnist --json /tmp/speed.json

MNIST is prepared on first use in ``--data_dir`` (default under the system temp dir, never
in the repository). PyTorch is optional (``pip install torch==2.13.0``, CPU wheel).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np
import optax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from benchmarks.machine import describe, machine_info  # noqa: E402
from vae_jax.arrays import Split  # noqa: E402
from vae_jax.config import ExperimentConfig, ModelConfig, TrainConfig  # noqa: E402
from vae_jax.mnist import load_mnist  # noqa: E402
from vae_jax.train import CPU_COMPILER_OPTIONS, batch_x, epoch_order, steps_per_epoch  # noqa: E402
from vae_jax.trainer import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = Path(tempfile.gettempdir()) / "vae_jax_bench" / "tfds"


# ----------------------------------------------------------------------------- helpers


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _timeit(fn: Callable[[], Any], reps: int) -> list[float]:
    """Wall-clock seconds of `reps` calls of `fn` (which must block until done)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _say(text: str = "") -> None:
    print(text, flush=True)


def layer_sizes(model: ModelConfig, image_size: int = 784) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of each Dense layer of the MLP VAE, encoder then decoder."""
    encoder = [image_size, *model.hidden, 2 * model.z_dim]
    decoder = [model.z_dim, *reversed(model.hidden), image_size]
    pairs = [*zip(encoder[:-1], encoder[1:], strict=True)]
    return pairs + [*zip(decoder[:-1], decoder[1:], strict=True)]


def train_flop_per_example(model: ModelConfig) -> int:
    """Matmul FLOP of one train step per example (forward and backward; 2 per multiply-add).

    Forward: 2 * fan_in * fan_out per layer. Backward: the same again for each weight
    gradient and for each input gradient except the first layer's (the data needs none).
    Elementwise work (biases, activations, loss, Adam) is not counted.
    """
    layers = layer_sizes(model)
    forward = sum(2 * a * b for a, b in layers)
    first = 2 * layers[0][0] * layers[0][1]
    return 3 * forward - first


# ----------------------------------------------------------------------------- ceiling


def _dot_fn(kind: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A dot as autodiff emits it for a Dense layer x[B, a] @ w[a, b].

    "forward": x [B, a] . w [a, b] -> [B, b]; "input_grad": dy [B, b] . w [a, b]^T ->
    [B, a]; "weight_grad": x [B, a]^T . dy [B, b] -> [a, b].
    """
    dims = {"forward": ((1,), (0,)), "input_grad": ((1,), (1,)), "weight_grad": ((0,), (0,))}
    contracting = dims[kind]
    return lambda lhs, rhs: jax.lax.dot_general(lhs, rhs, (contracting, ((), ())))


def time_dot(
    kind: str,
    batch: int,
    fan_in: int,
    fan_out: int,
    *,
    reps: int,
    options: dict[str, Any] | None = None,
    n: int = 32,
) -> float:
    """Median seconds of one dot of a Dense layer's `kind` at its shape (float32).

    `n` dots run in one `lax.scan`; the batch-side operands differ at every iteration (so
    nothing is loop-invariant) and the result is the scan's carry (so no output is
    copied). The per-dot time is the call time divided by `n`; it includes slicing the
    operands out of their stacks (a few percent), so the ceiling it gives is conservative.
    `options` are XLA compiler options (None: XLA's defaults).
    """
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n, batch, fan_in), np.float32))
    dy = jnp.asarray(rng.standard_normal((n, batch, fan_out), np.float32))
    w = jnp.asarray(rng.standard_normal((fan_in, fan_out), np.float32) * 0.05)
    dot = _dot_fn(kind)
    if kind == "forward":
        xs, out_shape, fn = x, (batch, fan_out), lambda w, a: dot(a, w)
    elif kind == "input_grad":
        xs, out_shape, fn = dy, (batch, fan_in), lambda w, a: dot(a, w)
    else:
        xs, out_shape, fn = (x, dy), (fan_in, fan_out), lambda w, ab: dot(*ab)

    def run(w: jax.Array, xs: Any) -> jax.Array:
        init = jnp.zeros(out_shape, jnp.float32)
        return jax.lax.scan(lambda _, a: (fn(w, a), None), init, xs)[0]

    compiled = jax.jit(run, compiler_options=options)
    compiled(w, xs).block_until_ready()
    return _median(_timeit(lambda: compiled(w, xs).block_until_ready(), reps)) / n


def matmul_ceiling(model: ModelConfig, batch: int, *, reps: int) -> dict[str, Any]:
    """GFLOP/s of a large square matmul and of every dot of one train step at its shape.

    Each is timed with XLA:CPU's default dot emitter (YNNPACK) and with the options
    vae_jax compiles with on CPU (XLA's Eigen dots); the ceiling takes the faster.
    """
    backends = {"xla_default": None, "vae_jax_cpu": CPU_COMPILER_OPTIONS}
    size = 2048
    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size), np.float32))
    square = {}
    for name, options in backends.items():
        fn = jax.jit(lambda a: a @ a, compiler_options=options)
        fn(a).block_until_ready()
        t = _median(_timeit(lambda fn=fn: fn(a).block_until_ready(), reps))
        square[name] = 2 * size**3 / t / 1e9
    dots = []
    step_seconds = 0.0
    for i, (fan_in, fan_out) in enumerate(layer_sizes(model)):
        kinds = ["forward", "weight_grad"] + ([] if i == 0 else ["input_grad"])
        for kind in kinds:
            flop = 2 * batch * fan_in * fan_out
            seconds = {
                name: time_dot(kind, batch, fan_in, fan_out, reps=reps, options=options)
                for name, options in backends.items()
            }
            best = min(seconds.values())
            dots.append(
                {
                    "layer": f"{fan_in}-{fan_out}",
                    "kind": kind,
                    "shape": f"{batch}x{fan_in}x{fan_out}",
                    "us": {name: t * 1e6 for name, t in seconds.items()},
                    "gflops": {name: flop / t / 1e9 for name, t in seconds.items()},
                    "best_gflops": flop / best / 1e9,
                }
            )
            step_seconds += best
    step_flop = batch * train_flop_per_example(model)
    return {
        "square_size": size,
        "square_gflops": square,
        "square_best_gflops": max(square.values()),
        "dots": dots,
        "step_dots_us": step_seconds * 1e6,
        "layer_shapes_gflops": step_flop / step_seconds / 1e9,
    }


# ----------------------------------------------------------------------------- vae_jax


class JaxRecipe:
    """The library's train path for one configuration: the `vae_jax.Trainer` that
    `vae_jax.loop.fit` builds (data on the device), timed epoch by epoch."""

    def __init__(self, config: ExperimentConfig, images: np.ndarray, labels: np.ndarray):
        tc = config.train
        self.config = config
        model = config.model.build(tuple(images.shape[1:]))
        self.trainer = Trainer(
            config.objective.build(model),
            optax.adam(tc.learning_rate),
            Split(images, labels),
            options=config.fit_options(placement="device"),
        )
        self.mesh, self.tx, self.keys = self.trainer.mesh, self.trainer.tx, self.trainer.keys
        self.call, self.data = self.trainer.call, self.trainer.train_data
        self.n, self.steps = self.trainer.num_examples, self.trainer.steps_per_epoch
        self.epoch = 0

    def train_epoch(self) -> tuple[float, float]:
        """One epoch exactly as `fit` runs it (`Trainer.train_epoch`: its chunks, metrics
        fetched after each call).

        Returns:
          (seconds, mean train loss in nats per example).
        """
        seconds, loss, _ = self.trainer.train_epoch(self.epoch)
        self.epoch += 1
        return seconds, loss

    def train_epoch_one_call(self, index: jax.Array, weight: jax.Array) -> float:
        """Seconds of one whole epoch as a single compiled call, inputs already on device."""
        start = time.perf_counter()
        self.trainer.run((self.data, index, weight))
        return time.perf_counter() - start


def input_pipeline(recipe: JaxRecipe, *, reps: int) -> dict[str, Any]:
    """The input pipeline alone: host batch order, then the on-device batch gather.

    The device part runs, for every step of an epoch, what the train step does to get its
    batch (`vae_jax.train.batch_x`: gather the uint8 rows, scale to [0, 1], cast), in one
    `lax.scan`; with dynamic binarization it also derives the step's key and draws the
    Bernoulli sample.
    """
    tc = recipe.config.train
    n, steps = recipe.n, recipe.steps
    t_order = _median(_timeit(lambda: epoch_order(n, tc.batch_size, seed=tc.seed, epoch=0), reps))
    index, weight = epoch_order(n, tc.batch_size, seed=tc.seed, epoch=0)
    t_transfer = _median(
        _timeit(lambda: jax.block_until_ready(jax.device_put((index, weight))), reps)
    )
    images_host = np.asarray(jax.device_get(recipe.data.image))
    t_host_gather = _median(
        _timeit(lambda: [images_host[i].astype(np.float32) / 255.0 for i in index], reps)
    )
    sharding = NamedSharding(recipe.mesh, PartitionSpec("data"))
    data, key = recipe.data, recipe.keys.train

    def gather_epoch(index: jax.Array, *, binarize: bool) -> jax.Array:
        # The carry is the last batch: every step writes its batch, nothing more.
        def body(_: jax.Array, xs: tuple[jax.Array, jax.Array]):
            step, idx = xs
            data_key, _ = jax.random.split(jax.random.fold_in(key, step))
            return batch_x(data, idx, sharding, data_key, binarize=binarize), None

        steps_ = jnp.arange(index.shape[0], dtype=jnp.int32)
        init = jnp.zeros((index.shape[1], *data.image.shape[1:]), jnp.float32)
        return jax.lax.scan(body, init, (steps_, index))[0]

    index_d = jax.device_put(index)
    out: dict[str, Any] = {
        "epoch_order_ms": t_order * 1e3,
        "index_transfer_ms": t_transfer * 1e3,
        "host_numpy_gather_examples_per_s": n / t_host_gather,
    }
    for binarize in (False, True):
        fn = jax.jit(lambda i, b=binarize: gather_epoch(i, binarize=b))
        fn(index_d).block_until_ready()
        t = _median(_timeit(lambda fn=fn: fn(index_d).block_until_ready(), reps))
        name = "device_gather_binarize" if binarize else "device_gather"
        out[f"{name}_ms_per_epoch"] = t * 1e3
        out[f"{name}_us_per_step"] = t / steps * 1e6
        out[f"{name}_examples_per_s"] = n / t
    out["pipeline_examples_per_s"] = n / (
        t_order + t_transfer + out["device_gather_ms_per_epoch"] / 1e3
    )
    return out


def xla_options_ab(recipe: JaxRecipe, *, chunks_n: int) -> dict[str, Any]:
    """The library's train call compiled with vae_jax's CPU options vs XLA's defaults.

    Both variants train their own copy of the state on the same 64-step chunks, in turn,
    `chunks_n` times each; chunk times are scaled to seconds per epoch. On a shared machine
    the minimum is the least disturbed sample.
    """
    tc = recipe.config.train
    steps = tc.steps_per_call
    variants = {  # (the Trainer's own call, and the same function compiled with XLA's defaults)
        "vae_jax_cpu_options": recipe.call,
        "xla_defaults": jax.jit(recipe.call.__wrapped__, donate_argnums=0),
    }
    states = {name: recipe.trainer.initial_state() for name in variants}
    index, weight = epoch_order(recipe.n, tc.batch_size, seed=tc.seed, epoch=0)
    n_chunks = recipe.steps // steps
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(chunks_n + 1):  # the first round compiles
        lo = (i % n_chunks) * steps
        for name, call in variants.items():
            start = time.perf_counter()
            states[name], metrics = call(
                states[name],
                recipe.data,
                index[lo : lo + steps],
                weight[lo : lo + steps],
                recipe.keys.train,
            )
            jax.device_get(metrics)
            if i:
                times[name].append((time.perf_counter() - start) * recipe.steps / steps)
    return {
        name: {"median_s": _median(t), "min_s": min(t), "chunks": len(t)}
        for name, t in times.items()
    }


# ----------------------------------------------------------------------------- runs


def first_step(data_dir: Path, mnist_dir: str | None, runs: int) -> dict[str, Any]:
    """Time to the first trained step in fresh subprocesses (see `benchmarks/first_step.py`)."""
    cmd = [sys.executable, "-m", "benchmarks.first_step", "--data_dir", str(data_dir)]
    if mnist_dir:
        cmd += ["--mnist_dir", mnist_dir]
    results = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["process_wall_s"] = wall
        results.append(result)
    return {
        "runs": results,
        "median_process_wall_s": _median([r["process_wall_s"] for r in results]),
    }


def headline(
    recipe: JaxRecipe, torch_trainers: dict[str, Any], epochs: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Interleave whole epochs of vae_jax and each PyTorch trainer; times and last losses."""
    times: dict[str, list[float]] = {"vae_jax": [], **{name: [] for name in torch_trainers}}
    losses: dict[str, float] = {}
    recipe.train_epoch()  # compile and warm up
    for trainer in torch_trainers.values():
        trainer.train_epoch(max_steps=50)
    for epoch in range(epochs):
        runs: list[tuple[str, Callable[[], tuple[float, float]]]] = [
            ("vae_jax", recipe.train_epoch)
        ]
        runs += [(name, trainer.train_epoch) for name, trainer in torch_trainers.items()]
        for name, run in runs:
            seconds, losses[name] = run()
            times[name].append(seconds)
            _say(f"  epoch {epoch + 1}: {name:16s} {seconds:7.3f} s (loss {losses[name]:.2f})")
    return times, losses


def batch_sweep(
    images: np.ndarray,
    labels: np.ndarray,
    batch_sizes: list[int],
    *,
    epochs: int,
    torch_images: np.ndarray | None,
) -> list[dict[str, Any]]:
    """Seconds per epoch of the seed recipe at other batch sizes (vae_jax, optionally torch)."""
    rows = []
    flop_example = train_flop_per_example(ModelConfig())
    for batch in batch_sizes:
        config = ExperimentConfig(train=TrainConfig(batch_size=batch))
        recipe = JaxRecipe(config, images, labels)
        recipe.train_epoch()
        t = _median([recipe.train_epoch()[0] for _ in range(epochs)])
        row = {
            "batch_size": batch,
            "steps": recipe.steps,
            "vae_jax_s": t,
            "vae_jax_examples_per_s": recipe.n / t,
            "vae_jax_us_per_step": t / recipe.steps * 1e6,
            "vae_jax_gflops": recipe.steps * batch * flop_example / t / 1e9,
        }
        if torch_images is not None:
            from benchmarks.torch_vae import TorchTrainer

            trainer = TorchTrainer(torch_images, batch_size=batch)
            trainer.train_epoch(max_steps=20)
            row["torch_s"] = _median([trainer.train_epoch()[0] for _ in range(epochs)])
            row["torch_over_vae_jax"] = row["torch_s"] / t
        rows.append(row)
        _say(
            f"  batch {batch:5d}: vae_jax {t:.3f} s/epoch, {row['vae_jax_us_per_step']:.0f} "
            f"us/step, {row['vae_jax_gflops']:.0f} GFLOP/s"
            + (f"; torch {row['torch_s']:.3f} s/epoch" if "torch_s" in row else "")
        )
    return rows


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data_dir", default=str(DEFAULT_DATA_DIR), help="TFDS data dir (default: %(default)s)"
    )
    parser.add_argument(
        "--mnist_dir", default=None, help="MNIST IDX files to prepare from (default: env)"
    )
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per implementation")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the micro-benchmarks")
    parser.add_argument("--first_step_runs", type=int, default=2, help="fresh processes")
    parser.add_argument(
        "--batch_sizes",
        default="32,64,128,256,512",
        help="sweep ('' to skip; default: %(default)s)",
    )
    parser.add_argument("--sweep_epochs", type=int, default=2, help="timed epochs per batch size")
    parser.add_argument(
        "--ab_chunks",
        type=int,
        default=40,
        help="chunks per variant in the A/B of vae_jax's XLA:CPU options (0 to skip)",
    )
    parser.add_argument("--sweep_torch", action="store_true", help="also sweep PyTorch")
    parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch reference")
    parser.add_argument(
        "--torch_threads",
        default="2,1",
        help="PyTorch intra-op threads, one reference per value (default: %(default)s; 2 is "
        "the protocol, 1 shows how much oversubscription costs PyTorch's OpenMP)",
    )
    parser.add_argument("--json", default=None, help="also write all numbers to this JSON file")
    args = parser.parse_args(argv)

    report: dict[str, Any] = {"machine": machine_info(), "command": sys.argv}
    m = report["machine"]
    _say(f"# vae_jax speed benchmark, {m['date']}")
    _say(describe(m))

    config = ExperimentConfig()
    tc = config.train
    flop_example = train_flop_per_example(config.model)

    # Fresh processes first, while this one is still idle.
    if args.first_step_runs:
        load_mnist(args.data_dir, mnist_dir=args.mnist_dir)  # prepare once, outside the timing
        _say("\n## time to the first trained step (fresh process; prepared data)")
        report["first_step"] = fs = first_step(
            Path(args.data_dir), args.mnist_dir, args.first_step_runs
        )
        for r in fs["runs"]:
            c = r["cumulative_s"]
            _say(
                f"  process {r['process_wall_s']:.2f} s: import {c['import']:.2f}, data "
                f"{c['data']:.2f}, setup {c['setup']:.2f}, compiled {c['compile']:.2f}, first "
                f"call ({r['steps_in_first_call']} steps) done {c['first_call']:.2f} s"
            )

    splits = load_mnist(args.data_dir, mnist_dir=args.mnist_dir)
    images, labels = splits["train"].image, splits["train"].label
    n = len(images)
    steps = steps_per_epoch(n, tc.batch_size)
    epoch_flop = steps * tc.batch_size * flop_example
    report["recipe"] = {
        "examples": n,
        "batch_size": tc.batch_size,
        "steps_per_epoch": steps,
        "steps_per_call": tc.steps_per_call,
        "train_gflop_per_epoch": epoch_flop / 1e9,
    }
    _say(
        f"\nrecipe: MLP 784-400-20, batch {tc.batch_size}, Adam; {n} examples = {steps} steps; "
        f"{epoch_flop / 1e9:.1f} GFLOP (matmuls) per epoch; steps_per_call {tc.steps_per_call}"
    )

    _say("\n## float32 matmul ceiling through XLA")
    report["ceiling"] = ceiling = matmul_ceiling(config.model, tc.batch_size, reps=args.reps)
    sq = ceiling["square_gflops"]
    _say(
        f"  {ceiling['square_size']}^3 matmul: {sq['xla_default']:.0f} GFLOP/s (XLA default), "
        f"{sq['vae_jax_cpu']:.0f} GFLOP/s (vae_jax's CPU options)"
    )
    _say("  dot of one step         shape    XLA default   vae_jax CPU options")
    for d in ceiling["dots"]:
        cols = [
            f"{d['us'][b]:7.1f} us {d['gflops'][b]:5.0f}" for b in ("xla_default", "vae_jax_cpu")
        ]
        _say(f"  {d['kind']:12s} {d['shape']:>12s}: {cols[0]}   {cols[1]} GFLOP/s")
    floor = steps * ceiling["step_dots_us"] / 1e6
    report["floor_s"] = floor
    _say(
        f"  all dots of one step: {ceiling['step_dots_us']:.0f} us = "
        f"{ceiling['layer_shapes_gflops']:.0f} GFLOP/s at the layer shapes -> floor "
        f"{floor:.3f} s/epoch"
    )

    recipe = JaxRecipe(config, images, labels)
    _say("\n## input pipeline alone")
    report["input_pipeline"] = ip = input_pipeline(recipe, reps=args.reps)
    _say(
        f"  host epoch_order {ip['epoch_order_ms']:.1f} ms/epoch; index+weight to device "
        f"{ip['index_transfer_ms']:.2f} ms/epoch"
    )
    _say(
        f"  on-device gather+scale+cast: {ip['device_gather_ms_per_epoch']:.1f} ms/epoch "
        f"({ip['device_gather_us_per_step']:.1f} us/step, "
        f"{ip['device_gather_examples_per_s'] / 1e6:.1f} M examples/s); with dynamic "
        f"binarization {ip['device_gather_binarize_ms_per_epoch']:.1f} ms/epoch"
    )
    _say(
        f"  (host numpy gather+scale, for comparison: "
        f"{ip['host_numpy_gather_examples_per_s'] / 1e6:.2f} M examples/s)"
    )

    _say("\n## train step alone (a whole epoch in one compiled call, inputs on device)")
    index, weight = epoch_order(n, tc.batch_size, seed=tc.seed, epoch=0)
    index_d, weight_d = jax.device_put((index, weight))
    recipe.train_epoch_one_call(index_d, weight_d)  # compile
    one_call = [recipe.train_epoch_one_call(index_d, weight_d) for _ in range(args.reps)]
    step_s = _median(one_call)
    report["train_step_alone"] = {"epoch_s": one_call, "median_epoch_s": step_s}
    _say(
        f"  {step_s:.3f} s/epoch = {step_s / steps * 1e6:.0f} us/step, {n / step_s:,.0f} "
        f"examples/s; input pipeline share of the step: "
        f"{ip['device_gather_ms_per_epoch'] / 1e3 / step_s:.1%}; pipeline throughput / "
        f"train throughput = {ip['pipeline_examples_per_s'] / (n / step_s):.0f}x"
    )

    torch_trainers: dict[str, Any] = {}
    if not args.no_torch:
        from benchmarks.torch_vae import TorchTrainer

        for threads in (int(t) for t in args.torch_threads.split(",")):
            torch_trainers[f"torch_{threads}_threads"] = TorchTrainer(
                images, batch_size=tc.batch_size, seed=tc.seed, num_threads=threads
            )
    _say(f"\n## one epoch, interleaved ({args.epochs} each; library loop vs PyTorch eager)")
    recipe = JaxRecipe(config, images, labels)  # fresh state: epochs 1..N of the recipe
    times, losses = headline(recipe, torch_trainers, args.epochs)
    jax_s = _median(times["vae_jax"])
    summary: dict[str, Any] = {
        "epoch_s": times,
        "vae_jax_median_s": jax_s,
        "vae_jax_epochs_per_s": 1 / jax_s,
        "vae_jax_examples_per_s": n / jax_s,
        "vae_jax_gflops": epoch_flop / jax_s / 1e9,
        "floor_over_vae_jax": floor / jax_s,
        "vae_jax_over_square_ceiling": epoch_flop / jax_s / 1e9 / ceiling["square_best_gflops"],
        "last_train_loss": losses,
    }
    _say(
        f"  vae_jax: {jax_s:.3f} s/epoch median (min {min(times['vae_jax']):.3f}), "
        f"{1 / jax_s:.2f} epochs/s, "
        f"{n / jax_s:,.0f} examples/s, {epoch_flop / jax_s / 1e9:.0f} GFLOP/s = "
        f"{summary['vae_jax_over_square_ceiling']:.0%} of the {ceiling['square_size']}^3 "
        f"ceiling; floor/time = {floor / jax_s:.0%}"
    )
    for name in torch_trainers:
        torch_s = _median(times[name])
        summary[f"{name}_median_s"] = torch_s
        summary[f"speedup_vs_{name}"] = torch_s / jax_s
        _say(
            f"  {name}: {torch_s:.3f} s/epoch median (min {min(times[name]):.3f}), "
            f"{n / torch_s:,.0f} examples/s; "
            f"vae_jax is {torch_s / jax_s:.2f}x faster per epoch"
        )
    if torch_trainers:
        best = min(_median(times[name]) for name in torch_trainers)
        summary["speedup_vs_fastest_torch"] = best / jax_s
        _say(f"  vae_jax vs the fastest PyTorch configuration: {best / jax_s:.2f}x")
    summary["library_loop_overhead"] = jax_s / step_s - 1
    _say(f"  library loop vs one whole-epoch call: {summary['library_loop_overhead']:+.1%}")
    report["headline"] = summary

    if args.ab_chunks:
        _say(f"\n## XLA:CPU dot emitters, interleaved 64-step chunks ({args.ab_chunks} each)")
        report["xla_options_ab"] = ab = xla_options_ab(recipe, chunks_n=args.ab_chunks)
        for name, r in ab.items():
            _say(f"  {name:20s} {r['median_s']:.3f} s/epoch median, {r['min_s']:.3f} min")

    sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if sizes:
        _say(f"\n## batch-size sweep (median of {args.sweep_epochs} epochs)")
        report["batch_sweep"] = batch_sweep(
            images,
            labels,
            sizes,
            epochs=args.sweep_epochs,
            torch_images=images if args.sweep_torch and not args.no_torch else None,
        )

    report["machine"]["loadavg_end"] = os.getloadavg()
    _say(f"\nload average at the end: {report['machine']['loadavg_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        _say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
