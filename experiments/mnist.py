"""Train a VAE on MNIST: ``python -m experiments.mnist --z_dim 20``. See ``--help``.

The same command as ``python -m experiments.train`` and ``vae-jax mnist`` (whose default
data set is MNIST); kept under this name because the tutorials and the README use it.
"""

from __future__ import annotations

import sys

from vae_jax.cli import train


def main(argv: list[str] | None = None) -> int:
    return train(argv, prog="python -m experiments.mnist")


if __name__ == "__main__":
    sys.exit(main())
