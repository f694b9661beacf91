"""Command-line flags mapped onto `ExperimentConfig`, with one-line errors (exit status 2).

Every flag overrides one field of the chosen recipe (`--recipe`, default "pytorch"); a flag
not given keeps the recipe's value. `--help` lists each flag with the default recipe's value.
Each value is checked when parsed (type, range, choices, non-empty paths) and again by the
configuration dataclass it lands in; flags must be spelled in full (no abbreviations).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from vae_jax.config import (
    FLOAT32_MAX,
    OPTIMIZERS,
    POSTERIORS,
    PRIORS,
    SCHEDULES,
    ExperimentConfig,
    check_config,
)
from vae_jax.models import ACTIVATIONS, ARCHITECTURES, LIKELIHOODS
from vae_jax.options import MAX_SEED
from vae_jax.recipes import RECIPES
from vae_jax.sources import is_file_spec


class OneLineParser(argparse.ArgumentParser):
    """argparse, but errors are one line on stderr and exit status 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _nonnegative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _seed(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in 0..{MAX_SEED}, got {text!r}")
    return value


def _path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must be a non-empty path")
    return text


def _dataset(text: str) -> str:
    """A dataset name as given; a .npz/.npy path made absolute (so a resume from another
    directory finds the same file and the work directory records where it is)."""
    text = _path(text)
    return str(Path(text).expanduser().absolute()) if is_file_spec(text) else text


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")
    return text.lower() == "true"


def _positive_float(text: str) -> float:
    return _float(text, positive=True)


def _nonnegative_float(text: str) -> float:
    return _float(text, positive=False)


def _float(text: str, *, positive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    # (comparisons with nan are False: nan is refused along with inf and negatives)
    if not (value > 0 if positive else value >= 0) or not value <= FLOAT32_MAX:
        bound = "> 0" if positive else ">= 0"
        raise argparse.ArgumentTypeError(
            f"must be a finite number {bound} (at most {FLOAT32_MAX:.4g}), got {text!r}"
        )
    return value


def _int_list(text: str) -> tuple[int, ...]:
    """'500,500' -> (500, 500); '' -> () (no hidden layer)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return values


# flag -> (config section, field, argparse type, choices, help)
_Flag = tuple[str, str, Callable[[str], Any], Sequence[Any] | None, str]
FLAGS: dict[str, _Flag] = {
    "epochs": ("train", "epochs", _nonnegative_int, None, "passes over the training set"),
    "batch_size": ("train", "batch_size", _positive_int, None, "examples per update"),
    "learning_rate": (
        "train",
        "learning_rate",
        _positive_float,
        None,
        "peak learning rate (the schedule's starting value)",
    ),
    "optimizer": (
        "train",
        "optimizer",
        str,
        OPTIMIZERS,
        "adam, or adamw (Adam with decoupled --weight_decay)",
    ),
    "weight_decay": (
        "train",
        "weight_decay",
        _nonnegative_float,
        None,
        "AdamW's decoupled weight decay (with --optimizer adamw)",
    ),
    "adam_eps": ("train", "adam_eps", _positive_float, None, "Adam's epsilon (IWAE paper: 1e-4)"),
    "schedule": (
        "train",
        "schedule",
        str,
        SCHEDULES,
        "learning-rate schedule: constant; cosine (to 0 at the last step of --epochs); "
        "exponential (times --decay_rate per epoch, continuously); iwae_paper (Burda et al. "
        "2016: rate * 10^(-i/7) for 3^i epochs, i = 0..7, 3280 epochs; fewer epochs "
        "truncate it)",
    ),
    "warmup_steps": (
        "train",
        "warmup_steps",
        _nonnegative_int,
        None,
        "linear learning-rate warm-up from 0 over this many steps; the schedule starts after it",
    ),
    "decay_rate": (
        "train",
        "decay_rate",
        _positive_float,
        None,
        "learning-rate factor per epoch of the exponential schedule, in (0, 1]",
    ),
    "clip_norm": (
        "train",
        "clip_norm",
        _nonnegative_float,
        None,
        "clip gradients to this global norm before the optimizer (0 = off)",
    ),
    "seed": (
        "train",
        "seed",
        _seed,
        None,
        "seed of every random stream (init, data order, samples, evaluation)",
    ),
    "eval_batch_size": (
        "train",
        "eval_batch_size",
        _positive_int,
        None,
        "examples per evaluation call (memory). Each batch draws its own noise for the "
        "1-sample test ELBO, so that estimate changes with it (MNIST after 1 epoch: 121.180 "
        "at 1000, 121.060 at 500; equally valid); training does not. It may differ on resume",
    ),
    "steps_per_call": (
        "train",
        "steps_per_call",
        _positive_int,
        None,
        "train steps fused into one compiled call (progress-bar granularity); rounded to the "
        "nearest divisor of the epoch's steps within a factor of 2, if any, so that one "
        "compiled call serves the whole epoch (469 steps: 67)",
    ),
    "checkpoint_every": (
        "train",
        "checkpoint_every",
        _positive_int,
        None,
        "epochs between checkpoints",
    ),
    "keep_checkpoints": (
        "train",
        "keep_checkpoints",
        _positive_int,
        None,
        "how many recent checkpoints to keep",
    ),
    "num_devices": (
        "train",
        "num_devices",
        _nonnegative_int,
        None,
        "devices for data parallelism (0 = all local devices)",
    ),
    "tensorboard": (
        "train",
        "tensorboard",
        _bool,
        None,
        "also write TensorBoard event files in WORKDIR/tensorboard/ (view them with "
        "tensorboard --logdir runs/): true or false",
    ),
    "architecture": ("model", "architecture", str, ARCHITECTURES, "encoder/decoder family"),
    "hidden": (
        "model",
        "hidden",
        _int_list,
        None,
        "MLP hidden widths, comma-separated (the decoder mirrors them)",
    ),
    "activation": ("model", "activation", str, sorted(ACTIVATIONS), "MLP activation"),
    "z_dim": ("model", "z_dim", _positive_int, None, "latent dimension"),
    "conv_channels": (
        "model",
        "conv_channels",
        _int_list,
        None,
        "conv widths, one stride-2 layer each",
    ),
    "likelihood": (
        "model",
        "likelihood",
        str,
        LIKELIHOODS,
        "p(x|z): bernoulli (logits), gaussian (fixed --obs_std), gaussian_global "
        "or gaussian_pixel (learned variance)",
    ),
    "obs_std": (
        "model",
        "obs_std",
        _positive_float,
        None,
        "standard deviation of the fixed-variance Gaussian likelihood",
    ),
    "num_classes": (
        "model",
        "num_classes",
        _positive_int,
        None,
        "labels 0..N-1 of a conditional model (a TFDS ClassLabel's count replaces it)",
    ),
    "dtype": (
        "model",
        "dtype",
        str,
        ("float32", "bfloat16"),
        "compute dtype (bfloat16: mixed precision, parameters stay float32)",
    ),
    "upper_latent_dims": (
        "model",
        "upper_latent_dims",
        _int_list,
        None,
        "sizes of the stochastic layers above z, comma-separated (Burda et al.'s 2-layer "
        "model: --z_dim 100 --hidden 100,100 --upper_latent_dims 50 --upper_hidden 50,50); "
        "empty: one stochastic layer. MLP, standard prior, gaussian posterior only",
    ),
    "upper_hidden": (
        "model",
        "upper_hidden",
        _int_list,
        None,
        "hidden widths of each upper stochastic layer's MLPs, comma-separated (with "
        "--upper_latent_dims)",
    ),
    "prior": (
        "model",
        "prior",
        str,
        PRIORS,
        "p(z): standard (N(0, I)), or vamp (the VampPrior, a mixture of the posterior at "
        "--num_pseudo_inputs learned pseudo-inputs; unconditional models only)",
    ),
    "num_pseudo_inputs": (
        "model",
        "num_pseudo_inputs",
        _positive_int,
        None,
        "the VampPrior's number of pseudo-inputs K (with --prior vamp)",
    ),
    "posterior": (
        "model",
        "posterior",
        str,
        POSTERIORS,
        "q(z|x): gaussian (diagonal), or iaf (the diagonal Gaussian followed by "
        "--flow_depth inverse autoregressive flow steps)",
    ),
    "flow_depth": (
        "model",
        "flow_depth",
        _positive_int,
        None,
        "IAF steps (with --posterior iaf)",
    ),
    "flow_hidden": (
        "model",
        "flow_hidden",
        _int_list,
        None,
        "hidden widths of each IAF step's autoregressive (MADE) network, comma-separated",
    ),
    "bound": ("objective", "bound", str, ("elbo", "iwae"), "training objective"),
    "beta": ("objective", "beta", _nonnegative_float, None, "KL weight (1 = the ELBO)"),
    "num_samples": (
        "objective",
        "num_samples",
        _positive_int,
        None,
        "posterior samples per example: L for the ELBO, k for IWAE",
    ),
    "free_bits": (
        "objective",
        "free_bits",
        _nonnegative_float,
        None,
        "minimum KL per latent dimension in nats (0 = off)",
    ),
    "kl_warmup_steps": (
        "objective",
        "kl_warmup_steps",
        _nonnegative_int,
        None,
        "KL weight rises linearly from 0 to --beta over this many steps",
    ),
    "dataset": (
        "data",
        "dataset",
        _dataset,
        None,
        "the data: mnist; the name of a TFDS dataset prepared as array_record in --data_dir; "
        "or a .npz file (x_train, optional x_test, y_train, y_test) or .npy file (one array "
        "[N, *event_shape]). uint8 arrays are levels scaled by 1/255, other dtypes are used as "
        "given",
    ),
    "binarize": (
        "data",
        "binarize",
        str,
        ("none", "dynamic"),
        "none: grey levels in [0,1]; dynamic: resample pixels ~ Bernoulli(grey) at "
        "every training use, test set binarized once with a fixed seed",
    ),
    "image_size": (
        "data",
        "image_size",
        _int,
        (28, 32),
        "MNIST only: 28, or 32 (zero-padded, for the conv VAE)",
    ),
}


def build_parser(prog: str = "python -m experiments.train") -> argparse.ArgumentParser:
    defaults = ExperimentConfig()
    parser = OneLineParser(
        prog=prog,
        description="Train a VAE on --dataset (default MNIST): per-epoch sample and "
        "reconstruction grids (for image data), "
        "metrics.jsonl (nats per example) and Orbax checkpoints in --workdir. Re-running "
        "the same command resumes from the last checkpoint, exactly. A --workdir of another "
        "configuration is refused, and so is --no_resume on one with checkpoints, unless "
        "--overwrite. SIGTERM or SIGUSR1 (preemption) finishes the current compiled call, "
        "writes a checkpoint and exits with status 75 (resumable); exit status 0 done, 1 a "
        "failure while running, 2 a bad input, 130 interrupted.",
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="pytorch",
        help="named configuration the other flags modify (default: pytorch, "
        "the PyTorch examples/vae recipe); see vae_jax/recipes.py",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag, (section, field, kind, choices, text) in FLAGS.items():
        group = groups.setdefault(section, parser.add_argument_group(f"{section} options"))
        default = getattr(getattr(defaults, section), field)
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        if isinstance(default, bool):
            default = str(default).lower()
        if choices is not None:
            text += f"; one of {', '.join(map(str, choices))}"
        group.add_argument(
            f"--{flag}",
            type=kind,
            choices=choices,
            metavar=flag.upper(),
            help=f"{text} (default: {default})",
        )
    model = groups["model"]
    model.add_argument(
        "--conditional",
        action="store_true",
        default=False,
        help="conditional VAE: encoder and decoder see the one-hot label",
    )
    run = parser.add_argument_group("run options")
    run.add_argument(
        "--workdir",
        type=_path,
        default="runs/mnist",
        help="where checkpoints, metrics and images go (default: runs/mnist)",
    )
    run.add_argument(
        "--data_dir",
        type=_path,
        default=None,
        help="TFDS data directory: where MNIST is prepared and TFDS datasets are read "
        "(default: $TFDS_DATA_DIR or ~/tensorflow_datasets)",
    )
    run.add_argument(
        "--mnist_dir",
        type=_path,
        default=None,
        help="directory with the four MNIST IDX files, used to prepare the "
        "dataset offline (default: $VAE_JAX_MNIST_DIR)",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        default=False,
        help="start afresh in a work directory that holds a different (or unreadable) "
        "configuration, or, with --no_resume, checkpoints of this one: its checkpoints, "
        "metrics and images are deleted first (a directory of the same configuration is "
        "still resumed without --no_resume)",
    )
    run.add_argument(
        "--no_resume",
        action="store_true",
        default=False,
        help="start from scratch; refused if the work directory has checkpoints, "
        "unless --overwrite (which deletes them)",
    )
    run.add_argument(
        "--checkpoint_every_steps",
        type=_nonnegative_int,
        default=0,
        help="also checkpoint once N train steps have passed since the last checkpoint, "
        "at the end of a compiled call (default: 0, epochs only)",
    )
    run.add_argument(
        "--data_placement",
        choices=("auto", "device", "host"),
        default="auto",
        help="where the training and test sets live while training: device (each step gathers its "
        "batch on the device: fastest), host (batches gathered in host memory and prefetched "
        "to the device: for data larger than device memory), or auto (device when the data "
        "take at most a quarter of a device's memory). The same batches and random streams "
        "either way; numbers agree to float rounding, not bitwise (default: auto)",
    )
    run.add_argument(
        "--skip_nonfinite",
        action="store_true",
        default=False,
        help="skip (and count, as skipped_updates in metrics.jsonl) updates whose loss or "
        "gradient is NaN/inf, or whose loss explodes (above the first loss plus 1000 times its "
        "size), instead of stopping; stops anyway if a whole epoch is skipped",
    )
    run.add_argument(
        "--no_progress",
        action="store_true",
        default=False,
        help="no progress bars (training, and TFDS's while it prepares MNIST)",
    )
    run.add_argument(
        "--distributed",
        action="store_true",
        default=False,
        help="multi-host: call jax.distributed.initialize() first",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The recipe's configuration with every given flag applied (raises ValueError)."""
    config = RECIPES[args.recipe]()
    sections: dict[str, dict[str, Any]] = {}
    for flag, (section, field, *_rest) in FLAGS.items():
        if hasattr(args, flag):
            sections.setdefault(section, {})[field] = getattr(args, flag)
    if getattr(args, "conditional", False):
        sections.setdefault("model", {})["conditional"] = True
    for section, changes in sections.items():
        config = dataclasses.replace(
            config, **{section: dataclasses.replace(getattr(config, section), **changes)}
        )
    check_config(config)  # the model against MNIST's image size (other data: once read)
    return config


def fail(prog: str, message: str, status: int) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(status)
