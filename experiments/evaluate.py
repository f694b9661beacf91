"""Evaluate a trained run: ``python -m experiments.evaluate --workdir runs/mnist``.

The same command as ``vae-jax evaluate`` (`vae_jax.cli.evaluate`). Writes
``WORKDIR/evaluation_k{K}.json`` (importance-sampled log-likelihood with K samples, ELBO, KL,
bits/dim, active units, time and memory) and the PNGs of
`vae_jax.evaluate.write_evaluation_pictures` into ``WORKDIR/images`` (or ``--out``). See
``--help`` and docs/evaluation.md.
"""

from __future__ import annotations

import sys

from vae_jax.cli import OneLineParser, evaluate, evaluate_parser


def build_parser() -> OneLineParser:  # (for the tests that list its flags)
    return evaluate_parser("python -m experiments.evaluate")


def main(argv: list[str] | None = None) -> int:
    return evaluate(argv, prog="python -m experiments.evaluate")


if __name__ == "__main__":
    sys.exit(main())
