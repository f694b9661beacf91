"""Importance-sampled evaluation speed as a fraction of the matmul ceiling, in one process.

Runs the library's IS evaluation (`vae_jax.evaluate.evaluate_dataset`, the pass behind
``python -m experiments.evaluate``: k samples per example, `sample_chunk` samples decoded per
scan step, `batch_size` examples per compiled call) for the seed MLP 784-400-20, and in the
same process, alternating with it, the float32 matmul ceiling through XLA:

- a 2048^3 matmul (the machine's ceiling, as in `benchmarks/speed.py`);
- the decoder's own two matmuls at the shape the IS pass runs them,
  ``[batch_size * sample_chunk, 20] x [20, 400]`` and ``[.., 400] x [400, 784]``, back to back.

Decoder throughput = decoder FLOPs (its matmuls, 643,200 per evaluation) x evaluations per
second of the IS pass after its first (compiling) batch. Speed does not depend on the
parameters' values or on the pixels, so the model is freshly initialised and the images are
random binary ones. Usage::

    python -m benchmarks.is_eval                       # k = 5000, 200 examples, 3 rounds
    python -m benchmarks.is_eval --json /tmp/is.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.machine import describe, machine_info  # noqa: E402
from benchmarks.speed import _median, _timeit  # noqa: E402
from vae_jax.evaluate import decoder_flops, evaluate_dataset  # noqa: E402
from vae_jax.models import VAE, init_params  # noqa: E402


def _matmul_seconds(a: jax.Array, b: jax.Array, reps: int) -> float:
    """Median seconds of ``a @ b`` (compiled, warmed up)."""
    fn = jax.jit(jnp.matmul)
    fn(a, b).block_until_ready()
    return _median(_timeit(lambda: fn(a, b).block_until_ready(), reps))


def ceilings(rows: int, reps: int) -> dict[str, float]:
    """GFLOP/s of a 2048^3 matmul and of the decoder's two matmuls at `rows` rows."""
    rng = np.random.default_rng(0)

    def arr(*shape: int) -> jax.Array:
        return jnp.asarray(rng.standard_normal(shape, np.float32))

    n = 2048
    square = 2 * n**3 / _matmul_seconds(arr(n, n), arr(n, n), reps) / 1e9
    t_small = _matmul_seconds(arr(rows, 20), arr(20, 400), reps)
    t_big = _matmul_seconds(arr(rows, 400), arr(400, 784), reps)
    flop = 2 * rows * (20 * 400 + 400 * 784)
    return {"square_2048": square, "decoder_shapes": flop / (t_small + t_big) / 1e9}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num_samples", type=int, default=5000, help="k (default: %(default)s)")
    parser.add_argument(
        "--examples",
        type=int,
        default=200,
        help="per round; more than --batch_size, since the first batch (which compiles) is not "
        "timed (default: %(default)s)",
    )
    parser.add_argument("--batch_size", type=int, default=100, help="default: %(default)s")
    parser.add_argument("--sample_chunk", type=int, default=20, help="default: %(default)s")
    parser.add_argument("--rounds", type=int, default=3, help="IS passes, each between ceilings")
    parser.add_argument("--reps", type=int, default=10, help="matmul repetitions per ceiling")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if args.examples <= args.batch_size:
        parser.error(
            f"--examples ({args.examples}) must exceed --batch_size ({args.batch_size}): the "
            "first batch compiles and is not timed, so nothing would be left to measure"
        )

    model = VAE()  # the seed MLP 784-400-20, Bernoulli
    params = init_params(model, jax.random.key(0))
    flop = decoder_flops(model, params)
    assert flop is not None
    rng = np.random.default_rng(0)
    images = (rng.random((args.examples, 28, 28, 1)) < 0.13).astype(np.uint8) * 255
    rows = args.batch_size * args.sample_chunk
    info = machine_info()
    print(describe(info), flush=True)
    print(
        f"IS k={args.num_samples}, "
        f"{args.examples} examples per round, batch {args.batch_size} x chunk "
        f"{args.sample_chunk} = {rows} decoder rows per scan step; {flop} FLOP per decoder eval",
        flush=True,
    )
    records = []
    before = ceilings(rows, args.reps)
    for r in range(args.rounds):
        result = evaluate_dataset(
            model,
            params,
            images,
            None,
            jax.random.key(r),
            num_samples=args.num_samples,
            sample_chunk=args.sample_chunk,
            batch_size=args.batch_size,
            progress=False,
        )
        steady = (args.examples - result.first_batch_examples) * args.num_samples
        evals_per_s = steady / (result.seconds - result.compile_seconds)
        gflops = evals_per_s * flop / 1e9
        after = ceilings(rows, args.reps)
        ceiling = {k: (before[k] + after[k]) / 2 for k in before}
        rec = {
            "round": r,
            "decoder_evals_per_second": evals_per_s,
            "decoder_gflops": gflops,
            "ceiling_gflops": ceiling,
            "fraction_of_square_ceiling": gflops / ceiling["square_2048"],
            "fraction_of_decoder_shapes": gflops / ceiling["decoder_shapes"],
            "cpu_seconds_per_second": result.cpu_seconds / result.seconds,
        }
        records.append(rec)
        print(
            f"round {r}: {evals_per_s:.3g} decoder evals/s = {gflops:.1f} GFLOP/s; ceiling "
            f"{ceiling['square_2048']:.0f} GFLOP/s (2048^3), {ceiling['decoder_shapes']:.0f} "
            f"GFLOP/s (the decoder's matmuls alone) -> {rec['fraction_of_square_ceiling']:.0%} "
            f"and {rec['fraction_of_decoder_shapes']:.0%}",
            flush=True,
        )
        before = after
    med = statistics.median(r["fraction_of_square_ceiling"] for r in records)
    med_d = statistics.median(r["fraction_of_decoder_shapes"] for r in records)
    print(f"median: {med:.0%} of the 2048^3 ceiling, {med_d:.0%} of the decoder-shaped matmuls")
    info["loadavg_end"] = os.getloadavg()
    print(f"load average at the end: {info['loadavg_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rounds": records}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
