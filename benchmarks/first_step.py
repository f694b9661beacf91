"""Time to the first trained step in a fresh process, phase by phase.

Run by ``benchmarks/speed.py`` in a subprocess (so nothing is imported or compiled yet):
import the library, read the prepared MNIST, build the default recipe's `Trainer` (state,
data on the device), compile its train call and run the first compiled call
(``steps_per_call`` steps, as `fit` does).
Prints one JSON line of cumulative seconds since this module started executing.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data_dir", required=True, help="TFDS data dir (already prepared)")
    parser.add_argument("--mnist_dir", default=None, help="MNIST IDX files (if not prepared)")
    args = parser.parse_args(argv)

    t: dict[str, float] = {}
    import jax
    import optax

    from vae_jax.config import ExperimentConfig
    from vae_jax.mnist import load_mnist
    from vae_jax.trainer import Trainer

    t["import"] = time.perf_counter() - START
    splits = load_mnist(args.data_dir, mnist_dir=args.mnist_dir)
    train = splits["train"]
    t["data"] = time.perf_counter() - START

    config = ExperimentConfig()  # the seed recipe (`--recipe pytorch`)
    model = config.model.build(tuple(train.image.shape[1:]))
    objective = config.objective.build(model)
    tx = optax.adam(config.train.learning_rate)
    trainer = Trainer(objective, tx, train, options=config.fit_options(placement="device"))
    _, stop, inputs = next(trainer.batches(0))  # the first call, as `fit` makes it
    t["setup"] = time.perf_counter() - START

    compiled = trainer.call.lower(trainer.state, *inputs, trainer.keys.train).compile()
    t["compile"] = time.perf_counter() - START
    _, metrics = compiled(trainer.state, *inputs, trainer.keys.train)
    loss = jax.device_get(metrics["loss"])
    t["first_call"] = time.perf_counter() - START
    result = {
        "cumulative_s": t,
        "steps_in_first_call": int(stop),
        "first_call_loss": float(loss[0]),
        "devices": len(trainer.mesh.devices.flat),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
