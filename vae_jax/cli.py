"""The command line: ``vae-jax train|mnist|evaluate|paper``, its flags derived from the configs.

Every flag is a field of a typed dataclass (`vae_jax.config`'s sections, and `RunOptions`,
`EvaluateOptions`, `PaperOptions` below), declared once with `vae_jax.fields.option`: the
flag's name (``--field_name``), its help text, its default and the parser that turns the
string into the field's type all come from that declaration, so a new field is one line in
one place. The parser only converts strings (``--hidden 400,200`` to ``(400, 200)``; a bool
field gives ``--name`` and ``--no_name``); the dataclass judges the value (its range, its
choices, the rules between fields), and the CLI words its `ValueError` as one line on
stderr with exit status 2. A flag's error names the flag and the text given
(``argument --z_dim: must be a positive integer, got '0'``).

``--config FILE`` reads a configuration as JSON (a run's recorded ``config.json``, or any
part of one); flags given on the command line override it, and it overrides ``--recipe``.

Why a derivation of our own (argparse + `dataclasses.fields`, about 100 lines) and not a
library (measured on the 2-core machine, loaded, December 2026):
  - tyro 1.0.17: `import tyro` 70-136 ms; it takes ``--z_dim`` but prints ``--z-dim`` in
    ``--help``, a tuple flag is space-separated (``--hidden 400 200``: ``--hidden 400,200``
    is an error, so every README command and run script with a list would break), and its
    errors are 9-line boxes (exit status 2).
  - ml_collections 1.1.0 ``config_flags``: ~55 ms with absl; every flag is renamed
    (``--config.model.z_dim=20``; ``--z_dim`` is "Unknown command line flag"), and a bad value
    exits with status 1 in two lines.
  - argparse and dataclasses are imported anyway: 0 ms more, every flag name and message
    kept.

Exit statuses (`EXIT_STATUSES`, the one table every command uses): 0 done; 1 a failure while
running; 2 a bad input (flag, configuration, path, data file, work directory; and, for an
evaluation, a checkpoint that cannot be read); 75 preempted (resumable); 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from vae_jax.config import ExperimentConfig
from vae_jax.fields import PLAIN_FIELD, FieldError, option
from vae_jax.options import MAX_SEED, PLACEMENTS

# ------------------------------------------------------------------------- exit statuses
OK, FAILURE, USAGE, PREEMPTED, INTERRUPTED = 0, 1, 2, 75, 130

# The most importance samples an evaluation takes: 200 times the IWAE paper's k = 5000 (the
# time grows like k: the 10,000 test images at 10^6 take 200 times the paper's evaluation).
MAX_IS_SAMPLES = 1_000_000


def _error_types() -> list[tuple[type[BaseException], int, int, str]]:
    """(exception, status in a run, status while reading a run back (evaluate), message).

    The first matching row wins. Messages: "line" the error on one line; "as is" its own
    lines (each source tried, and the fixes); "hint" one line and how to resume; "intact"
    says that the checkpoints are intact, and how to resume.
    """
    from vae_jax.checkpoint import CheckpointError, NoReadableCheckpointError
    from vae_jax.distributed import CLUSTER_STATUS, ClusterError
    from vae_jax.evaluate import EvaluationError
    from vae_jax.loop import Preempted
    from vae_jax.mnist import DataUnavailableError
    from vae_jax.train import DivergenceError

    return [
        (Preempted, PREEMPTED, PREEMPTED, "line"),  # a scheduler may requeue on it
        (KeyboardInterrupt, INTERRUPTED, INTERRUPTED, "hint"),
        (ClusterError, CLUSTER_STATUS, CLUSTER_STATUS, "line"),  # a peer failed, or never came
        (ValueError, USAGE, USAGE, "line"),  # (WorkdirError and FieldError are ValueErrors)
        (NoReadableCheckpointError, FAILURE, USAGE, "line"),  # resuming cannot help
        (CheckpointError, FAILURE, USAGE, "hint"),
        (DivergenceError, FAILURE, FAILURE, "line"),  # (NonFiniteError is one)
        (DataUnavailableError, FAILURE, FAILURE, "as is"),
        (EvaluationError, FAILURE, FAILURE, "line"),
        (OSError, FAILURE, FAILURE, "intact"),  # e.g. a full disk while writing metrics
    ]


EXIT_STATUSES = """\
  0    done
  1    a failure while running: a non-finite or exploding loss, a checkpoint that cannot
       be written or read, no data (each source tried), a full disk, another process of a
       distributed run that failed, stopped or never came
  2    a bad input: flag, configuration, path, data file, work directory; for an
       evaluation also a run without a readable checkpoint
  75   preempted (SIGTERM or SIGUSR1): a checkpoint was written; run it again to resume
  130  interrupted (Ctrl-C)
"""


def one_line(error: BaseException) -> str:
    return " | ".join(line.strip() for line in str(error).splitlines() if line.strip())


def exit_status(
    error: BaseException, *, reading: bool = False, resume_hint: str = ""
) -> tuple[int, str]:
    """The exit status and the message of `error` (`_error_types`); `reading`: the command
    reads a finished run (evaluate), so a checkpoint it cannot read is a bad input."""
    row = next((row for row in _error_types() if isinstance(error, row[0])), None)
    if row is None:
        raise error
    _, status, read_status, form = row
    message = one_line(error)
    if isinstance(error, KeyboardInterrupt):
        message = "interrupted"
    if form == "as is":
        message = str(error)
    elif resume_hint and form == "hint":
        message = (
            f"{message}; {resume_hint}"
            if message == "interrupted"
            else (f"{message}; once fixed, {resume_hint}")
        )
    elif resume_hint and form == "intact":
        message = f"{error}; the checkpoints are intact, once fixed, {resume_hint}"
    return (read_status if reading else status), message


def guarded(
    prog: str, action: Callable[[], Any], *, reading: bool = False, resume_hint: str = ""
) -> int:
    """Run `action`; an error it raises becomes one message on stderr and its exit status:
    SystemExit(status), or the status PREEMPTED returned (the command ran as asked)."""
    try:
        action()
    except (Exception, KeyboardInterrupt) as error:
        status, message = exit_status(error, reading=reading, resume_hint=resume_hint)
        if status == PREEMPTED:
            print(f"{prog}: preempted: {message}", file=sys.stderr)
            return status
        fail(prog, message, status)
    return OK


def fail(prog: str, message: str, status: int) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(status)


# ------------------------------------------------------------------ options of the commands
@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a training command runs, beside what it trains (not recorded in config.json)."""

    workdir: str = option("runs/mnist", "where checkpoints, metrics and images go")
    data_dir: str | None = option(
        None,
        "TFDS data directory: where MNIST is prepared and TFDS datasets are read (default: "
        "$TFDS_DATA_DIR or ~/tensorflow_datasets)",
        kind=str,
    )
    mnist_dir: str | None = option(
        None,
        "directory with the four MNIST IDX files, used to prepare the dataset offline "
        "(default: $VAE_JAX_MNIST_DIR)",
        kind=str,
    )
    overwrite: bool = option(
        False,
        "start afresh in a work directory that holds a different (or unreadable) "
        "configuration, or, with --no_resume, checkpoints of this one: its checkpoints, "
        "metrics and images are deleted first (a directory of the same configuration is "
        "still resumed without --no_resume)",
    )
    resume: bool = option(
        True,
        "start from scratch; refused if the work directory has checkpoints, "
        "unless --overwrite (which deletes them)",
    )
    checkpoint_every_steps: int = option(
        0,
        "also checkpoint once N train steps have passed since the last checkpoint, at the "
        "end of a compiled call (0: epochs only)",
        low=0,
    )
    data_placement: str = option(
        "auto",
        "where the training and test sets live while training: device (each step gathers "
        "its batch on the device: fastest), host (batches gathered in host memory and "
        "prefetched to the device: for data larger than device memory), or auto (device "
        "when the data take at most a quarter of a device's memory). The same batches and "
        "random streams either way; numbers agree to float rounding, not bitwise",
        choices=PLACEMENTS,
    )
    skip_nonfinite: bool = option(
        False,
        "skip (and count, as skipped_updates in metrics.jsonl) updates whose loss or "
        "gradient is NaN/inf, or whose loss explodes (above the first loss plus 1000 times "
        "its size), instead of stopping; stops anyway if a whole epoch is skipped",
    )
    progress: bool = option(True, "no progress bars (training, and TFDS's while it prepares MNIST)")
    distributed: bool = option(False, "multi-host: call jax.distributed.initialize() first")

    def __post_init__(self) -> None:
        _check_paths(self, "workdir", "data_dir", "mnist_dir")


@dataclasses.dataclass(frozen=True)
class EvaluateOptions:
    """The flags of ``vae-jax evaluate``."""

    workdir: str = option("runs/mnist", "the training run's work directory")
    num_samples: int = option(
        5000,
        "K, importance samples per test example (the IWAE paper's: 5000; at most "
        f"{MAX_IS_SAMPLES:,}, 200 times the paper's; the time grows linearly in K)",
        low=1,
        high=MAX_IS_SAMPLES,
    )
    num_examples: int | None = option(
        None, "evaluate only the first N test examples (default: all)", low=1, kind=int
    )
    sample_chunk: int = option(
        20,
        "samples decoded per step; memory ~ batch_size * sample_chunk decoder outputs, "
        "results do not change",
        low=1,
    )
    batch_size: int = option(100, "test examples per compiled call; results do not change", low=1)
    seed: int = option(0, "seed of the importance samples", low=0, high=MAX_SEED)
    step: int | None = option(
        None, "checkpoint step to evaluate (default: the newest)", low=0, kind=int
    )
    data_dir: str | None = option(
        None, "TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)", kind=str
    )
    mnist_dir: str | None = option(
        None, "directory with the four MNIST IDX files (default: $VAE_JAX_MNIST_DIR)", kind=str
    )
    out: str | None = option(None, "directory for the PNGs (default: WORKDIR/images)", kind=str)
    report: str | None = option(
        None, "path of the JSON report (default: WORKDIR/evaluation_kK.json)", kind=str
    )
    progress: bool = option(True, "no progress bar")

    def __post_init__(self) -> None:
        _check_paths(self, "workdir", "data_dir", "mnist_dir", "out", "report")


@dataclasses.dataclass(frozen=True)
class PaperOptions:
    """The flags ``vae-jax paper`` adds to those of ``vae-jax train``."""

    eval_num_samples: int = option(
        5000,
        f"k of the importance-sampled test NLL (the paper's: 5000; at most {MAX_IS_SAMPLES:,})",
        low=1,
        high=MAX_IS_SAMPLES,
    )
    eval_num_examples: int | None = option(
        None,
        "evaluate the first N test images only (default: all 10000, the paper's)",
        low=1,
        kind=int,
    )

    def __post_init__(self) -> None:
        _check_paths(self)


def _check_paths(options: Any, *names: str) -> None:
    from vae_jax.fields import check_fields

    check_fields(options)
    for name in names:
        value = getattr(options, name)
        if value is not None and not value.strip():
            raise FieldError(name, "a non-empty path", value)


# ---------------------------------------------------------------- flags from the dataclasses
class OneLineParser(argparse.ArgumentParser):
    """argparse, but errors are one line on stderr and exit status 2 (no usage dump); it
    remembers the text each flag was given as (`texts`), for the errors the configuration
    finds in its value."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})
        self.texts: dict[str, str] = {}

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: error: {message} (see --help)\n")

    def words(self, error: BaseException) -> str:
        """`error` on one line; a `FieldError` of a flag given on the command line names
        the flag and its text."""
        if isinstance(error, FieldError) and error.name in self.texts:
            text = self.texts[error.name]
            if error.choices is not None:
                choices = ", ".join(map(repr, error.choices))
                return f"argument --{error.name}: invalid choice: {text!r} (choose from {choices})"
            return f"argument --{error.name}: must be {error.rule}, got {text!r}"
        return one_line(error)


def _converter(parser: OneLineParser, name: str, kind: type) -> Callable[[str], Any]:
    """The function that turns a flag's text into `kind` (int, float, str, tuple of ints)."""

    def convert(text: str) -> Any:
        parser.texts[name] = text
        try:
            if kind is tuple:  # '500,500' -> (500, 500); '' -> () (no layer)
                return tuple(int(v) for v in text.split(",") if v.strip())
            return kind(text)
        except ValueError:
            what = {
                int: "not an integer",
                float: "not a number",
                tuple: "expected comma-separated integers, got",
            }[kind]
            raise argparse.ArgumentTypeError(f"{what}: {text!r}") from None

    convert.__name__ = kind.__name__  # (argparse names the type in its own messages)
    return convert


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def add_fields(
    parser: OneLineParser, kind: type, defaults: Any, title: str, *, skip: Sequence[str] = ()
) -> None:
    """One flag per field of the dataclass `kind` (with `defaults`' values in the help);
    a flag not given leaves the field as it is (argparse.SUPPRESS)."""
    group = parser.add_argument_group(title)
    for field in dataclasses.fields(kind):
        meta, name = {**PLAIN_FIELD, **field.metadata}, field.name
        if not meta["flag"] or name in skip:
            continue
        default = getattr(defaults, name)
        text = meta["help"] or name.replace("_", " ")
        kind_ = meta["kind"] or type(field.default)
        if kind_ is bool:
            on, off = f"--{name}", f"--no_{name}"
            main, other = (off, on) if default else (on, off)
            group.add_argument(main, dest=name, action="store_const", const=not default, help=text)
            group.add_argument(
                other, dest=name, action="store_const", const=default,
                help=f"the default (undoes {main})",
            )  # fmt: skip
            continue
        if meta["choices"] is not None:
            text += f"; one of {', '.join(map(str, meta['choices']))}"
        if default is not None:
            text += f" (default: {_shown(default)})"
        group.add_argument(
            f"--{name}",
            dest=name,
            type=_converter(parser, name, kind_),
            metavar=name.upper(),
            help=text,
        )


SECTIONS = ("model", "objective", "data", "train")


def build_parser(prog: str = "python -m experiments.train") -> OneLineParser:
    """The flags of a training command: `ExperimentConfig`'s fields, `RunOptions`,
    ``--recipe`` and ``--config``."""
    from vae_jax.recipes import RECIPES

    parser = OneLineParser(
        prog=prog,
        description="Train a VAE on --dataset (default MNIST): per-epoch sample and "
        "reconstruction grids (for image data), metrics.jsonl (nats per example) and Orbax "
        "checkpoints in --workdir. Re-running the same command resumes from the last "
        "checkpoint, exactly. A --workdir of another configuration is refused, and so is "
        "--no_resume on one with checkpoints, unless --overwrite. SIGTERM or SIGUSR1 "
        "(preemption) finishes the current compiled call, writes a checkpoint and exits with "
        "status 75 (resumable); exit status 0 done, 1 a failure while running, 2 a bad "
        "input, 130 interrupted.",
        usage="%(prog)s [--recipe NAME] [--config FILE] [--FIELD VALUE ...] (see below)",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="pytorch",
        help="named configuration the other flags modify (default: pytorch, the PyTorch "
        "examples/vae recipe); see vae_jax/recipes.py",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="a configuration as JSON (a run's config.json, or any part of one: "
        '{"model": {"z_dim": 8}}); it replaces the recipe\'s values, flags replace its own',
    )
    defaults = ExperimentConfig()
    for section in SECTIONS:
        add_fields(parser, type(getattr(defaults, section)), getattr(defaults, section),
                   f"{section} options")  # fmt: skip
    add_fields(parser, RunOptions, RunOptions(), "run options")
    return parser


def config_from_args(
    args: argparse.Namespace, base: ExperimentConfig | None = None
) -> ExperimentConfig:
    """The recipe's configuration (or `base`), with ``--config``'s values, then every flag
    given, applied; raises ValueError (one line). A .npz/.npy dataset path is made absolute
    (so a resume from another directory finds the same file)."""
    from vae_jax.recipes import RECIPES
    from vae_jax.sources import is_file_spec

    config = base if base is not None else RECIPES[args.recipe]()
    if getattr(args, "config", None):
        config = read_config_file(args.config, config)
    for section in SECTIONS:
        current = getattr(config, section)
        changes = {
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(current)
            if f.metadata.get("flag", True) and hasattr(args, f.name)
        }
        if changes:
            config = dataclasses.replace(
                config, **{section: dataclasses.replace(current, **changes)}
            )
    dataset = config.data.dataset
    if is_file_spec(dataset) and dataset.strip():
        absolute = str(Path(dataset).expanduser().absolute())
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, dataset=absolute)
        )
    return config


def read_config_file(path: str, base: ExperimentConfig) -> ExperimentConfig:
    """`base` with the values of the JSON configuration in `path` (ValueError, one line)."""
    from vae_jax.workdir import VERSION_FIELD

    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
        if isinstance(values, dict):  # (a run's config.json records the version that wrote it)
            values.pop(VERSION_FIELD, None)
        return ExperimentConfig.from_dict(values, base=base)
    except (OSError, ValueError, TypeError, RecursionError) as error:
        raise ValueError(f"--config {path}: {one_line(error)}") from None


def options_from_args(kind: type, args: argparse.Namespace) -> Any:
    """The `kind` dataclass (RunOptions, ...) with the flags given."""
    names = {f.name for f in dataclasses.fields(kind)}
    return kind(**{k: v for k, v in vars(args).items() if k in names})


# ------------------------------------------------------------------------------- commands
def train(argv: Sequence[str] | None = None, *, prog: str = "vae-jax train") -> int:
    """``vae-jax train`` (and ``python -m experiments.train``): train `--dataset` into
    ``--workdir``, resuming it if it holds this configuration's checkpoints."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        run = options_from_args(RunOptions, args)
    except ValueError as error:
        parser.error(parser.words(error))
    return _train(parser.prog, config, run)


def _train(prog: str, config: ExperimentConfig, run: RunOptions) -> int:
    hint = f"run the same command again to resume from the last checkpoint in {run.workdir}"
    return guarded(prog, lambda: _run_training(prog, config, run), resume_hint=hint)


def _run_training(prog: str, config: ExperimentConfig, run: RunOptions) -> None:
    from vae_jax.experiment import run_experiment

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Orbax logs its failures (with tracebacks from its threads) before raising them; the
    # exception is reported by `guarded`, in one line.
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    if not run.progress:  # also TFDS's own bars, shown while it prepares MNIST
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
    run_function = run_experiment
    if run.distributed:  # (a missing peer or address: one line and status 1 within 60 s)
        from vae_jax.distributed import ClusterError, initialize, watch_peers

        try:
            initialize(prog=prog)
        except ValueError as error:  # (a variable, or nothing that says how many processes)
            raise ValueError(f"--distributed: {one_line(error)}") from None
        except ClusterError as error:  # (the processes disagree on their count)
            raise ClusterError(f"--distributed: {one_line(error)}") from None
        run_function = watch_peers(run_experiment)  # (a peer stopped: ClusterError)
    run_function(
        config,
        run.workdir,
        data_dir=run.data_dir,
        mnist_dir=run.mnist_dir,
        overwrite=run.overwrite,
        resume=run.resume,
        progress=run.progress,
        skip_nonfinite=run.skip_nonfinite,
        checkpoint_every_steps=run.checkpoint_every_steps,
        placement=run.data_placement,
    )


def evaluate_parser(prog: str = "python -m experiments.evaluate") -> OneLineParser:
    parser = OneLineParser(
        prog=prog,
        description="Evaluate a checkpoint on the test set of its data (with the padding and "
        "binarization it was trained with): importance-sampled log p(x) with K samples "
        "(Burda et al. 2016), ELBO, KL, bits/dim (binarized data only), active units; then "
        "the latent scatter, the 2-D manifold (z_dim 2), interpolations and training curves "
        "as PNGs. Numbers are nats per example. Exit status 0 done, 1 a failure while "
        "evaluating, 2 a bad input (flag, run directory, checkpoint), 130 interrupted.",
        argument_default=argparse.SUPPRESS,
    )
    add_fields(parser, EvaluateOptions, EvaluateOptions(), "evaluate options")
    return parser


def evaluate(argv: Sequence[str] | None = None, *, prog: str = "vae-jax evaluate") -> int:
    """``vae-jax evaluate``: the importance-sampled evaluation of a run's checkpoint."""
    parser = evaluate_parser(prog)
    args = parser.parse_args(argv)
    try:
        options = options_from_args(EvaluateOptions, args)
    except ValueError as error:
        parser.error(parser.words(error))
    if not Path(options.workdir).is_dir():
        fail(parser.prog, f"--workdir {options.workdir} is not a directory", USAGE)

    def action() -> None:
        from vae_jax.evaluate import evaluate_checkpoint

        check_evaluation_memory(options)
        evaluate_checkpoint(
            options.workdir,
            num_samples=options.num_samples,
            sample_chunk=options.sample_chunk,
            batch_size=options.batch_size,
            num_examples=options.num_examples,
            seed=options.seed,
            step=options.step,
            data_dir=options.data_dir,
            mnist_dir=options.mnist_dir,
            report_path=options.report,
            progress=options.progress,
            pictures_dir=options.out or Path(options.workdir) / "images",
        )

    return guarded(parser.prog, action, reading=True)


def check_evaluation_memory(options: EvaluateOptions) -> None:
    """Refuse (ValueError) an evaluation whose batch (``batch_size`` x ``sample_chunk``
    decoded samples) cannot fit in the devices' memory, before anything is allocated."""
    from vae_jax.experiment import devices_memory
    from vae_jax.workdir import read_config

    config = read_config(options.workdir)
    if config is None or not config.data.image_shape:
        return  # (the evaluation itself says what is missing)
    memory = devices_memory(0)
    rows = options.batch_size * min(options.sample_chunk, options.num_samples)
    nbytes = config.activation_bytes(config.data.image_shape, rows)
    if nbytes > memory:
        raise ValueError(
            f"--batch_size {options.batch_size} x --sample_chunk {options.sample_chunk}: "
            f"about {nbytes / 2**30:,.1f} GiB of activations, more than the devices' "
            f"{memory / 2**30:,.1f} GiB (a smaller --batch_size or --sample_chunk; the "
            "numbers do not change)"
        )


def paper_parser(prog: str = "python -m experiments.paper") -> OneLineParser:
    from vae_jax.recipes import PAPER_ROWS

    parser = build_parser(prog)
    parser.description = (
        "Train one row of the IWAE paper (Burda et al. 2016, Table 1: --recipe), evaluate "
        "its newest checkpoint with the paper's protocol (or the shorter one that "
        "--eval_num_samples and --eval_num_examples state) and print the test NLL beside "
        "the published number. Every training flag applies; flags that change the model or "
        "the objective make a configuration the paper did not report, and the output says "
        "so. --workdir defaults to runs/RECIPE. Exit statuses as the train command's."
    )
    for action in parser._actions:
        if action.dest == "recipe":
            action.choices = sorted(PAPER_ROWS)
            action.required = True
            action.default = argparse.SUPPRESS
            action.help = "the paper's row (Burda et al. 2016, Table 1); see vae_jax/recipes.py"
        if action.dest == "workdir":
            action.help = "where checkpoints, metrics and images go (default: runs/RECIPE)"
    add_fields(parser, PaperOptions, PaperOptions(), "paper options")
    return parser


def paper(argv: Sequence[str] | None = None, *, prog: str = "vae-jax paper") -> int:
    """``vae-jax paper``: train a row of the IWAE paper, evaluate it, compare it."""
    from vae_jax.recipes import comparison

    parser = paper_parser(prog)
    args = parser.parse_args(argv)
    if not hasattr(args, "workdir"):
        args.workdir = str(Path("runs") / args.recipe)
    try:
        config = config_from_args(args)
        run = options_from_args(RunOptions, args)
        options = options_from_args(PaperOptions, args)
    except ValueError as error:
        parser.error(parser.words(error))
    status = _train(parser.prog, config, run)
    if status:
        return status
    reports: list[dict[str, Any]] = []

    def action() -> None:
        from vae_jax.evaluate import evaluate_checkpoint

        report, _ = evaluate_checkpoint(
            run.workdir,
            num_samples=options.eval_num_samples,
            num_examples=options.eval_num_examples,
            data_dir=run.data_dir,
            mnist_dir=run.mnist_dir,
            progress=run.progress,
            pictures_dir=Path(run.workdir) / "images",
        )
        reports.append(report)

    status = guarded(parser.prog, action, reading=True)
    if not status:
        print("\n" + comparison(args.recipe, config, reports[0]))
    return status


COMMANDS: dict[str, tuple[Callable[..., int], str]] = {
    "train": (train, "train a VAE (any data set; default MNIST); resumes a run"),
    "mnist": (train, "the same as train (its default data set is MNIST)"),
    "evaluate": (evaluate, "importance-sampled evaluation of a run's checkpoint"),
    "paper": (paper, "train, evaluate and compare one row of the IWAE paper's Table 1"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """``vae-jax COMMAND [FLAGS]`` (``python -m vae_jax.cli COMMAND``); see ``--help``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: vae-jax {" + ",".join(COMMANDS) + "} [--help] [FLAGS]"
    if not argv or argv[0] in ("-h", "--help"):
        lines = [usage, "", "commands:"]
        lines += [f"  {name:<9} {text}" for name, (_, text) in COMMANDS.items()]
        lines += ["", "exit statuses:", EXIT_STATUSES]
        print("\n".join(lines), file=sys.stdout if argv else sys.stderr)
        return OK if argv else USAGE
    if argv[0] not in COMMANDS:
        fail("vae-jax", f"unknown command {argv[0]!r}; one of {', '.join(COMMANDS)}", USAGE)
    command, _ = COMMANDS[argv[0]]
    return command(argv[1:], prog=f"vae-jax {argv[0]}")


if __name__ == "__main__":
    sys.exit(main())
