"""Evaluate a trained run: ``python -m experiments.evaluate --workdir runs/mnist``.

Writes ``WORKDIR/evaluation_k{K}.json`` (importance-sampled log-likelihood with K samples,
ELBO, KL, bits/dim, active units, time and memory) and the PNGs of
`vae_jax.evaluate.write_evaluation_pictures` into ``WORKDIR/images`` (or ``--out``). See
``--help`` and docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from vae_jax.cli import OneLineParser, _nonnegative_int, _positive_int

    parser = OneLineParser(
        prog="python -m experiments.evaluate",
        description="Evaluate a checkpoint on the MNIST test set (with the padding and "
        "binarization it was trained with): importance-sampled log p(x) with K samples "
        "(Burda et al. 2016), ELBO, KL, bits/dim (binarized data only), active units; "
        "then the latent scatter, the 2-D manifold (z_dim 2), interpolations and training "
        "curves as PNGs. Numbers are nats per example.",
    )
    parser.add_argument(
        "--workdir",
        default="runs/mnist",
        help="the training run's work directory (default: runs/mnist)",
    )
    parser.add_argument(
        "--num_samples",
        type=_positive_int,
        default=5000,
        help="K, importance samples per test example (default: 5000, the IWAE paper's)",
    )
    parser.add_argument(
        "--num_examples",
        type=_positive_int,
        default=None,
        help="evaluate only the first N test examples (default: all 10000)",
    )
    parser.add_argument(
        "--sample_chunk",
        type=_positive_int,
        default=20,
        help="samples decoded per step; memory ~ batch_size * sample_chunk decoder outputs, "
        "results do not change (default: 20)",
    )
    parser.add_argument(
        "--batch_size",
        type=_positive_int,
        default=100,
        help="test examples per compiled call; results do not change (default: 100)",
    )
    parser.add_argument(
        "--seed",
        type=_nonnegative_int,
        default=0,
        help="seed of the importance samples (default: 0)",
    )
    parser.add_argument(
        "--step",
        type=_nonnegative_int,
        default=None,
        help="checkpoint step to evaluate (default: the newest)",
    )
    parser.add_argument(
        "--data_dir",
        default=None,
        help="TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)",
    )
    parser.add_argument(
        "--mnist_dir",
        default=None,
        help="directory with the four MNIST IDX files (default: $VAE_JAX_MNIST_DIR)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="directory for the PNGs (default: WORKDIR/images)",
    )
    parser.add_argument(
        "--report",
        default=None,
        help="path of the JSON report (default: WORKDIR/evaluation_kK.json)",
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    from vae_jax.cli import fail

    parser = build_parser()
    args = parser.parse_args(argv)

    from pathlib import Path

    from vae_jax.checkpoint import CheckpointError
    from vae_jax.evaluate import EvaluationError, evaluate_checkpoint
    from vae_jax.mnist import DataUnavailableError

    if not Path(args.workdir).is_dir():
        fail(parser.prog, f"--workdir {args.workdir} is not a directory", 2)
    try:
        evaluate_checkpoint(
            args.workdir,
            num_samples=args.num_samples,
            sample_chunk=args.sample_chunk,
            batch_size=args.batch_size,
            num_examples=args.num_examples,
            seed=args.seed,
            step=args.step,
            data_dir=args.data_dir,
            mnist_dir=args.mnist_dir,
            report_path=args.report,
            progress=not args.no_progress,
            pictures_dir=args.out or Path(args.workdir) / "images",
        )
    except (CheckpointError, ValueError) as error:
        fail(parser.prog, str(error), 2)
    except (DataUnavailableError, EvaluationError) as error:
        fail(parser.prog, str(error), 1)
    except KeyboardInterrupt:
        fail(parser.prog, "interrupted", 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
