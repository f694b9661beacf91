"""A user's own conv VAE in `fit` against the built-in conv VAE with the same layers.

Issue #20: a conv module written from the model protocol alone (README, "Your own model")
trained about 12x slower in `fit` than the built-in conv VAE, because the choice between a
`lax.scan` of steps and a host loop of compiled steps was keyed on the built-in's
``architecture = "conv"`` attribute (XLA:CPU convolutions are slow inside loops). `fit` now
decides from the lowered program (`vae_jax.train.step_loop_for`), so any module with
convolutions gets the host loop on CPU. This benchmark times, with `vae_jax.fit` itself
(epoch 1, which compiles, left out; the models alternate round by round, so machine load
hits them alike; medians):

- ``builtin``: ``VAE(architecture="conv", conv_channels=(32, 64), z_dim=20)`` on 28x28x1;
- ``user``: `UserConvVAE`, a plain Flax module with the same layers (stride-2 4x4 convs,
  GroupNorm, LeakyReLU(0.2), the same Dense layers) and no ``architecture`` attribute, its
  decoder written with `nn.ConvTranspose` as a user would write it;
- ``user_subpixel`` (``--subpixel``): the same module with `vae_jax.conv.ConvTranspose4x4`
  (the built-in's sub-pixel transposed convolution), which separates the loop's share of
  the difference from the transposed convolution's;
- ``user_scan`` (``--with_scan``; slow): the user module forced into the `lax.scan`
  (``FitOptions(step_loop="scan")``), what it got before.

It prints the machine (`benchmarks.machine`), seconds per epoch and each model's ratio to
``builtin`` (issue #20's target for ``user``: at most 1.3). Speed does not depend on the
pixel values, so the data are random binary images. Usage::

    python -m benchmarks.user_conv                     # 60,000 images, 2 rounds x 3 epochs
    python -m benchmarks.user_conv --subpixel --with_scan --json /tmp/user_conv.json
    python -m benchmarks.user_conv --quick             # a small smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np
import optax  # noqa: E402

import vae_jax  # noqa: E402
from benchmarks.machine import describe, machine_info  # noqa: E402
from vae_jax.conv import ConvTranspose4x4  # noqa: E402
from vae_jax.train import step_loop_for  # noqa: E402

CHANNELS = (32, 64)
Z_DIM = 20


class UserEncoder(nn.Module):
    """x [batch, H, W, C] -> (mean, logvar): stride-2 4x4 convs, GroupNorm, LeakyReLU."""

    channels: tuple[int, ...]
    z_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x
        for width in self.channels:
            h = nn.Conv(width, (4, 4), strides=(2, 2), padding="SAME")(h)
            h = nn.leaky_relu(nn.GroupNorm(num_groups=min(8, width))(h), 0.2)
        h = h.reshape(h.shape[0], -1)
        mean, logvar = jnp.split(nn.Dense(2 * self.z_dim)(h), 2, axis=-1)
        return mean, logvar


class UserDecoder(nn.Module):
    """z [n, z_dim] -> logits [n, H, W, C]: Dense to a small map, stride-2 4x4 transposed
    convs with GroupNorm and LeakyReLU, the last to C channels."""

    channels: tuple[int, ...]
    image_shape: tuple[int, ...]
    subpixel: bool = False

    def transpose(self, features: int, x: jax.Array) -> jax.Array:
        if self.subpixel:
            return ConvTranspose4x4(features)(x)
        return nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")(x)

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        height, width, out_channels = self.image_shape
        factor = 2 ** len(self.channels)
        start = (height // factor, width // factor, self.channels[-1])
        h = nn.leaky_relu(nn.Dense(math.prod(start))(z), 0.2).reshape(-1, *start)
        for features in reversed(self.channels[:-1]):
            h = self.transpose(features, h)
            h = nn.leaky_relu(nn.GroupNorm(num_groups=min(8, features))(h), 0.2)
        return self.transpose(out_channels, h)


class UserConvVAE(nn.Module):
    """A conv VAE written from the model protocol alone: no ``architecture`` attribute."""

    image_shape: tuple[int, ...] = (28, 28, 1)
    z_dim: int = Z_DIM
    channels: tuple[int, ...] = CHANNELS
    subpixel: bool = False
    likelihood: str = "bernoulli"

    def setup(self) -> None:
        self.encoder = UserEncoder(self.channels, self.z_dim)
        self.decoder = UserDecoder(self.channels, self.image_shape, self.subpixel)

    def encode(self, x: jax.Array, label: jax.Array | None = None):
        return self.encoder(x)  # x [batch, H, W, C] -> (mean, logvar) [batch, z_dim]

    def decode(self, z: jax.Array, label: jax.Array | None = None) -> vae_jax.DecoderOutput:
        lead = z.shape[:-1]  # z [..., batch, z_dim] -> logits [..., batch, H, W, C]
        logits = self.decoder(z.reshape(-1, z.shape[-1]))
        return vae_jax.DecoderOutput(logits.reshape(*lead, *self.image_shape), None)


def epoch_seconds(
    model: nn.Module, images: np.ndarray, *, epochs: int, batch: int, step_loop: str
) -> tuple[list[float], str]:
    """Training seconds of epochs 2..`epochs` of one `fit` run, and the loop it ran."""
    options = vae_jax.FitOptions(
        epochs=epochs, batch_size=batch, step_loop=step_loop, log=lambda _: None
    )
    objective = vae_jax.make_elbo(model)
    result = vae_jax.fit(objective, optax.adam(1e-3), images, options=options, progress=False)
    if step_loop == "auto":  # (what fit's Trainer chose: the same cached decision)
        step_loop = step_loop_for(objective, vae_jax.make_mesh(), images.shape[1:])
    return [r["seconds"] for r in result.records[1:]], step_loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=60_000, help="default: %(default)s")
    parser.add_argument("--batch", type=int, default=128, help="default: %(default)s")
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs per fit (the first is not timed)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternations (default 2)")
    parser.add_argument("--subpixel", action="store_true", help="also user_subpixel")
    parser.add_argument("--with_scan", action="store_true", help="also user_scan (slow)")
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.examples, args.batch, args.epochs, args.rounds = 256, 32, 2, 1
    if args.epochs < 2 or min(args.rounds, args.batch) < 1 or args.examples < args.batch:
        parser.error("need --epochs >= 2, --rounds >= 1 and 1 <= --batch <= --examples")
    info = machine_info()
    print(describe(info), flush=True)
    shape = (28, 28, 1)
    rng = np.random.default_rng(0)
    images = (rng.random((args.examples, *shape)) < 0.13).astype(np.uint8) * 255
    builtin = vae_jax.VAE(
        image_shape=shape, architecture="conv", conv_channels=CHANNELS, z_dim=Z_DIM
    )
    models: dict[str, tuple[nn.Module, str]] = {
        "builtin": (builtin, "auto"),
        "user": (UserConvVAE(shape), "auto"),
    }
    if args.subpixel:
        models["user_subpixel"] = (UserConvVAE(shape, subpixel=True), "auto")
    if args.with_scan:
        models["user_scan"] = (UserConvVAE(shape), "scan")
    times: dict[str, list[float]] = {name: [] for name in models}
    loops: dict[str, str] = {}
    for r in range(args.rounds):
        for name, (model, step_loop) in models.items():
            seconds, loops[name] = epoch_seconds(
                model, images, epochs=args.epochs, batch=args.batch, step_loop=step_loop
            )
            times[name] += seconds
            print(
                f"round {r + 1} {name:14s} ({loops[name]} loop): "
                + " ".join(f"{t:.2f}" for t in seconds),
                flush=True,
            )
    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = {name: m / median["builtin"] for name, m in median.items()}
    print(f"\n{args.examples} examples, batch {args.batch}; median s/epoch and ratio to builtin:")
    for name in models:
        print(f"  {name:14s} {median[name]:8.2f} s  {ratio[name]:5.2f}x  ({loops[name]} loop)")
    info["loadavg_end"] = os.getloadavg()
    print(f"load average at the end: {info['loadavg_end']}")
    if args.json:
        report: dict[str, Any] = {
            "machine": info,
            "args": {k: str(v) for k, v in vars(args).items()},
            "seconds": times,
            "median": median,
            "ratio_to_builtin": ratio,
            "loops": loops,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
