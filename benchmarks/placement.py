"""Epoch time of the host-streamed data path against the device-resident one.

Trains the seed recipe (MLP 784-400-20, batch 128, Adam) with `vae_jax.fit` on 60,000
random uint8 28x28 images (speed does not depend on the pixel values), once with
``placement="device"`` (the data on the device, each step gathering its batch there) and
once with ``placement="host"`` (each compiled call's batches gathered in host memory and
prefetched to the device by a Grain thread), alternating the two for ``--rounds`` rounds of
``--epochs`` epochs. Reports the median training seconds per epoch (epoch 1 of each run,
which includes compilation, left out) and their ratio, with the machine. Usage::

    python -m benchmarks.placement                   # 2 rounds x 4 epochs each way
    python -m benchmarks.placement --json /tmp/placement.json
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

import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks.machine import describe, machine_info  # noqa: E402
from vae_jax.loop import fit  # noqa: E402
from vae_jax.models import VAE  # noqa: E402
from vae_jax.objectives import make_elbo  # noqa: E402
from vae_jax.options import FitOptions  # noqa: E402


def _quiet(line: str) -> None:
    del line


def epoch_seconds(images: np.ndarray, placement: str, epochs: int) -> list[float]:
    """Training seconds of epochs 2..`epochs` of one `fit` run (no test set)."""
    # (the seed recipe's batch, 128, and MLP)
    options = FitOptions(epochs=epochs, placement=placement, log=_quiet)
    objective = make_elbo(VAE(image_shape=images.shape[1:]))
    result = fit(objective, optax.adam(1e-3), images, options=options, progress=False)
    return [r["seconds"] for r in result.records[1:]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternations (default 2)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (default 4)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.epochs < 2 or args.rounds < 1:
        parser.error("need --epochs >= 2 (epoch 1 includes compilation) and --rounds >= 1")
    info = machine_info()
    print(describe(info), flush=True)
    images = np.random.default_rng(0).integers(0, 256, (60000, 28, 28, 1), dtype=np.uint8)
    times: dict[str, list[float]] = {"device": [], "host": []}
    for r in range(args.rounds):
        for placement in times:
            seconds = epoch_seconds(images, placement, args.epochs)
            times[placement] += seconds
            print(f"round {r + 1} {placement:6s}: " + " ".join(f"{t:.2f}" for t in seconds))
    median = {p: statistics.median(t) for p, t in times.items()}
    ratio = median["host"] / median["device"]
    print(
        f"median s/epoch: device {median['device']:.2f}, host {median['host']:.2f}; "
        f"host / device = {ratio:.2f}"
    )
    info["loadavg_end"] = os.getloadavg()
    print(f"load average at the end: {info['loadavg_end']}")
    if args.json:
        report = {"machine": info, "seconds": times, "median": median, "ratio": ratio}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
