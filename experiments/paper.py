"""One row of the IWAE paper in one command: train, evaluate, print it beside the published one.

    python -m experiments.paper --recipe iwae_paper_2layer_iwae --epochs 50

Trains the row's recipe (`vae_jax.recipes.PAPER_ROWS`: Burda et al. 2016, Table 1; 1 or 2
stochastic layers, VAE or IWAE, k = 1, 5, 50; batch 20, the `iwae_paper` schedule, truncated
by ``--epochs``) into ``--workdir`` (default ``runs/RECIPE``), then evaluates the newest
checkpoint with the paper's protocol (importance sampling with k = 5000 on the 10,000
dynamically binarized test images, or the shorter protocol that ``--eval_num_samples`` and
``--eval_num_examples`` state), and prints the test NLL beside the published number. Every
other flag is a flag of ``python -m experiments.mnist`` (see its ``--help``); flags that
change the model or the objective make a configuration the paper did not report, and the
output says so instead of printing a published number. Re-running the command resumes the
training and evaluates again. Exit statuses as ``experiments.mnist``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from vae_jax.cli import OneLineParser, _positive_int, fail


def build_parser() -> OneLineParser:
    from vae_jax.recipes import PAPER_ROWS

    parser = OneLineParser(
        prog="python -m experiments.paper",
        description=" ".join(__doc__.split("\n\n")[2].split()) if __doc__ else None,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--recipe",
        required=True,
        choices=sorted(PAPER_ROWS),
        help="the paper's row (Burda et al. 2016, Table 1); see vae_jax/recipes.py PAPER_ROWS",
    )
    parser.add_argument(
        "--eval_num_samples",
        type=_positive_int,
        default=5000,
        help="k of the importance-sampled test NLL (default: 5000, the paper's)",
    )
    parser.add_argument(
        "--eval_num_examples",
        type=_positive_int,
        default=None,
        help="evaluate the first N test images only (default: all 10000, the paper's)",
    )
    return parser


def differences(config: object, reference: object, prefix: str = "") -> list[str]:
    """The dotted names of the fields in which two configuration dataclasses differ."""
    names = []
    for field in dataclasses.fields(reference):  # type: ignore[arg-type]
        a, b = getattr(config, field.name), getattr(reference, field.name)
        if dataclasses.is_dataclass(b):
            names += differences(a, b, f"{prefix}{field.name}.")
        elif a != b:
            names.append(prefix + field.name)
    return names


def comparison(recipe: str, config: Any, report: dict[str, Any]) -> str:
    """Lines that put the evaluation `report` of a run of `config` beside the published
    number of the paper's row `recipe`, or say why there is none to compare with."""
    from vae_jax.recipes import PAPER_ROWS, paper_row

    row = PAPER_ROWS[recipe]
    # The paper's row with this run's length: anything else changed is another model.
    changed = [
        name
        for name in differences(config, paper_row(recipe))
        if not name.startswith(
            ("train.epochs", "train.eval_batch_size", "train.checkpoint", "train.tensorboard")
        )
    ]
    is_key = report["is_key"]
    k, n = report["num_samples"], report["num_examples"]
    bound = "VAE (ELBO)" if row.bound == "vae" else "IWAE"
    lines = [
        f"Burda et al. (2016) Table 1, {row.layers} stochastic layer"
        f"{'s' if row.layers > 1 else ''}, {bound}, k={row.k}:",
        f"  this run:  test NLL {report[is_key]:.2f} +- {report[is_key + '_stderr']:.2f} nats "
        f"(IS k={k}, {n} test images; {config.train.epochs} of the schedule's 3280 epochs)",
    ]
    if changed:
        lines.append(
            f"  published: none for this configuration (it differs from the row in "
            f"{', '.join(changed)}); the unmodified row's is {row.published_nll:.2f}"
        )
    else:
        protocol = "same protocol" if (k, n) == (5000, 10_000) else "IS k=5000, 10000 test images"
        lines.append(
            f"  published: test NLL {row.published_nll:.2f} nats (3280 epochs, {protocol})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from experiments.train import main as train_main
    from vae_jax.cli import build_parser as build_train_parser
    from vae_jax.cli import config_from_args

    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    train_argv = ["--recipe", args.recipe, *rest]
    if not any(a == "--workdir" or a.startswith("--workdir=") for a in rest):
        train_argv += ["--workdir", str(Path("runs") / args.recipe)]
    train_parser = build_train_parser("python -m experiments.paper")
    train_args = train_parser.parse_args(train_argv)  # (a bad flag: one line, status 2)
    try:
        config = config_from_args(train_args)
    except ValueError as error:
        fail(parser.prog, str(error), 2)
    status = train_main(train_argv, prog="python -m experiments.paper")
    if status:
        return status

    from vae_jax.checkpoint import CheckpointError
    from vae_jax.evaluate import EvaluationError, evaluate_checkpoint
    from vae_jax.mnist import DataUnavailableError

    workdir = train_args.workdir
    try:
        report, _ = evaluate_checkpoint(
            workdir,
            num_samples=args.eval_num_samples,
            num_examples=args.eval_num_examples,
            data_dir=getattr(train_args, "data_dir", None),
            mnist_dir=getattr(train_args, "mnist_dir", None),
            progress=not train_args.no_progress,
            pictures_dir=Path(workdir) / "images",
        )
    except (CheckpointError, ValueError) as error:  # as python -m experiments.evaluate
        fail(parser.prog, str(error), 2)
    except (DataUnavailableError, EvaluationError) as error:
        fail(parser.prog, str(error), 1)
    except KeyboardInterrupt:
        fail(parser.prog, "interrupted", 130)
    print("\n" + comparison(args.recipe, config, report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
