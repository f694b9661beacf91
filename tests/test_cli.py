"""The command line derived from the configuration dataclasses: every numeric flag bounded,
``--config`` reproducing a run, the ``vae-jax`` command and its one exit-status table."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.cli_runner import run_cli
from vae_jax import cli, load_checkpoint
from vae_jax.config import ExperimentConfig, ModelConfig
from vae_jax.fields import INT32_MAX, FieldError

ROOT = Path(__file__).resolve().parents[1]
TINY = (
    "--hidden", "8", "--z_dim", "2", "--batch_size", "16", "--eval_batch_size", "16",
    "--epochs", "1", "--no_progress", "--likelihood", "gaussian",
)  # fmt: skip


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "x.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.random((64, 6), np.float32), x_test=rng.random((16, 6), np.float32))
    return str(path)


# ------------------------------------------------------------------ every numeric flag bounded
class _Reached(BaseException):
    """Raised where the data would be read: the flags passed every check before it."""


# Values of these flags up to the bound pass the configuration, for the reason given; every
# other numeric flag at 1e9 and 1e38 is refused before any data is read (status 2).
ACCEPTED = {
    "epochs": (1e9, "refused by fit once the data are known: the steps exceed int32"),
    "warmup_steps": (1e9, "refused once the data are known: longer than the run"),
    "learning_rate": (1e38, "finite in float32; a diverging run stops with status 1"),
    "weight_decay": (1e38, "finite in float32; a diverging run stops with status 1"),
    "adam_eps": (1e38, "harmless: the updates become tiny"),
    "clip_norm": (1e38, "harmless: nothing is clipped"),
    "obs_std": (1e38, "finite likelihood: log(obs_std) <= 88 nats per value"),
    "kl_warmup_steps": (1e9, "harmless: the KL weight stays near 0"),
    "seed": (1e9, "a valid 32-bit seed"),
    "steps_per_call": (1e9, "rounded down to the epoch's steps"),
    "checkpoint_every": (1e9, "harmless: the final checkpoint is still written"),
    "keep_checkpoints": (1e9, "harmless: at most one checkpoint per epoch exists"),
    "checkpoint_every_steps": (1e9, "harmless: epochs still checkpoint"),
}
# The flags that make a numeric flag matter (it is unused otherwise).
CONTEXT = {
    "num_pseudo_inputs": ("--prior", "vamp"),
    "flow_depth": ("--posterior", "iaf"),
    "flow_hidden": ("--posterior", "iaf"),
    "conv_channels": ("--architecture", "conv", "--image_size", "32"),
    "num_classes": ("--conditional",),
    "upper_latent_dims": ("--upper_hidden", "4"),
    "upper_hidden": ("--upper_latent_dims", "4"),
    "decay_rate": ("--schedule", "exponential"),
    "weight_decay": ("--optimizer", "adamw"),
}
HUGE = ("1e9", "1000000000", "1e38", "1" + "0" * 38)


def _numeric_flags():
    kinds = {"int": int, "float": float, "tuple": int}
    return {
        a.dest: kinds[a.type.__name__]
        for a in cli.build_parser()._actions
        if getattr(a.type, "__name__", "") in kinds
    }


def test_every_numeric_flag_is_swept():
    flags = _numeric_flags()
    assert len(flags) >= 30 and {"eval_batch_size", "z_dim", "hidden", "epochs"} <= set(flags)
    assert set(ACCEPTED) <= set(flags) and set(CONTEXT) <= set(flags)


@pytest.mark.parametrize("text", HUGE)
@pytest.mark.parametrize("flag", sorted(_numeric_flags()))
def test_huge_numeric_flag_is_refused_in_one_line_or_within_its_bound(
    flag, text, tmp_path, capsys, monkeypatch
):
    """Parse and validation only: reading the data raises `_Reached`, so nothing trains."""

    def reached(*args, **kwargs):
        raise _Reached

    monkeypatch.setattr("vae_jax.experiment.prepare_data", reached)
    kind = _numeric_flags()[flag]
    try:
        value = kind(text)
    except ValueError:
        value = None  # ("1e9" is not an integer: a parse error)
    bound, _ = ACCEPTED.get(flag, (0, ""))
    argv = ["train", *CONTEXT.get(flag, ()), f"--{flag}", text, "--workdir", tmp_path / "run"]
    _passes_or_is_refused(argv, value is not None and value <= bound, flag, capsys)


def _passes_or_is_refused(argv, passes, flag, capsys):
    """`argv` gets past every check (to `_Reached`) when `passes`, else is refused in one
    line naming the flag (or the batch or devices it would overrun), with status 2."""
    if passes:
        with pytest.raises(_Reached):
            cli.main([str(a) for a in argv])
        return
    status, err = run_cli(cli.main, argv, capsys)
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert flag in err or "batch" in err or "devices" in err, err


def test_int32_bound_and_batch_memory_messages(capsys, tmp_path):
    status, err = run_cli(cli.main, ["train", "--z_dim", 2**31, "--workdir", tmp_path], capsys)
    assert status == 2
    assert f"argument --z_dim: must be a positive integer <= {INT32_MAX} (int32)" in err
    argv = ["train", "--eval_batch_size", 10**9, "--workdir", tmp_path / "run"]
    status, err = run_cli(cli.main, argv, capsys)
    assert status == 2 and "eval_batch_size 1000000000: one batch of 1,000,000,000 examples" in err
    assert "GiB of activations, more than the devices'" in err
    assert not (tmp_path / "run").exists()  # refused before the work directory is made


# ----------------------------------------------------------------------- --config FILE
def test_a_recorded_config_fed_back_reproduces_the_run_bitwise(npz, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    argv = ["train", "--dataset", npz, *TINY, "--seed", "3", "--workdir", first]
    assert cli.main([str(a) for a in argv]) == 0
    config_file = first / "config.json"
    argv = ["train", "--config", config_file, "--workdir", second, "--no_progress"]
    assert cli.main([str(a) for a in argv]) == 0
    assert (second / "config.json").read_text() == config_file.read_text()

    def records(workdir):
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if "seconds" not in k} for line in lines]

    assert records(first) == records(second)
    a, b = load_checkpoint(first), load_checkpoint(second)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    capsys.readouterr()


def test_flags_override_the_config_file_which_overrides_the_recipe(tmp_path):
    path = tmp_path / "partial.json"
    path.write_text(json.dumps({"model": {"z_dim": 7, "hidden": [5, 5]}, "train": {"seed": 9}}))
    parser = cli.build_parser()
    args = parser.parse_args(["--recipe", "softplus500", "--config", str(path), "--z_dim", "3"])
    config = cli.config_from_args(args)
    assert (config.model.z_dim, config.model.hidden, config.train.seed) == (3, (5, 5), 9)
    assert config.model.activation == "softplus" and config.train.batch_size == 100  # recipe's


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "CONFIG: Expecting property name"),
        ('{"model": {"depth": 3}}', "unknown ModelConfig fields: ['depth']"),
        ('{"modle": {}}', "unknown configuration sections: ['modle']"),
        ('{"model": {"z_dim": "2"}}', "z_dim must be an integer, got '2'"),
        ('{"model": {"z_dim": 0}}', "z_dim must be a positive integer, got 0"),
        ('{"train": {"learning_rate": 1e39}}', "learning_rate must be a finite float32"),
        ("[1, 2]", "expected a JSON object of sections, got list"),
    ],
)
def test_a_bad_config_file_is_a_one_line_error(tmp_path, capsys, content, message):
    path = tmp_path / "CONFIG"
    path.write_text(content)
    argv = ["train", "--config", path, "--workdir", tmp_path / "run"]
    status, err = run_cli(cli.main, argv, capsys)
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------- one declaration per field
def test_every_config_field_is_a_flag_with_its_help_and_default(capsys):
    parser = cli.build_parser()
    flags = {s for a in parser._actions for s in a.option_strings}
    for section in (ExperimentConfig().model, ExperimentConfig().train):
        for field in dataclasses.fields(section):
            assert f"--{field.name}" in flags and field.metadata["help"], field.name
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--z_dim Z_DIM latent dimension (default: 20)" in text
    assert "--hidden HIDDEN MLP hidden widths, comma-separated" in text and "(default: 400)" in text


def test_a_flag_that_turns_a_default_off_says_so():
    """A field that is on by default is turned off by --no_NAME, whose help is the field's:
    it must describe turning it off (--no_tensorboard said "also write TensorBoard files")."""
    actions = cli.build_parser()._actions
    off = {a.option_strings[0]: a.help for a in actions if a.option_strings[0].startswith("--no_")}
    assert off["--no_tensorboard"].startswith("no TensorBoard event files")
    assert off["--no_progress"].startswith("no progress bars")
    assert not [flag for flag, text in off.items() if text.startswith("also")]


def test_a_new_field_is_one_line():
    """A field declared with `option` is a flag, parsed and checked, with no other change."""
    from vae_jax.fields import check_fields, option

    @dataclasses.dataclass(frozen=True)
    class Extra:
        width: int = option(3, "a width", low=1)

        def __post_init__(self) -> None:
            check_fields(self)

    parser = cli.OneLineParser(prog="t")
    cli.add_fields(parser, Extra, Extra(), "extra")
    assert cli.options_from_args(Extra, parser.parse_args(["--width", "5"])).width == 5
    with pytest.raises(FieldError, match="width must be a positive integer, got 0") as error:
        cli.options_from_args(Extra, parser.parse_args(["--width", "0"]))
    assert parser.words(error.value) == "argument --width: must be a positive integer, got '0'"


# -------------------------------------------------------------------------- the vae-jax command
def test_the_command_runs_from_another_directory(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    run = subprocess.run(
        [sys.executable, "-m", "vae_jax.cli", "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    for command in ("train", "mnist", "evaluate", "paper", "75   preempted"):
        assert command in run.stdout
    run = subprocess.run(
        [sys.executable, "-m", "vae_jax.cli", "nonsense"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2 and "unknown command 'nonsense'" in run.stderr


def test_main_trains_and_evaluates(npz, tmp_path, capsys):
    workdir = tmp_path / "run"
    assert cli.main(["train", "--dataset", npz, *TINY, "--workdir", str(workdir)]) == 0
    argv = ["evaluate", "--workdir", workdir, "--num_samples", "4", "--no_progress"]
    status, err = run_cli(cli.main, argv, capsys)
    assert status == 0, err
    assert (workdir / "evaluation_k4.json").exists()


def test_pyproject_declares_the_command():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'vae-jax = "vae_jax.cli:main"' in text


# ---------------------------------------------------------------------- one exit-status table
def test_one_exit_status_table():
    from vae_jax.checkpoint import CheckpointError, NoReadableCheckpointError
    from vae_jax.evaluate import EvaluationError
    from vae_jax.loop import Preempted
    from vae_jax.mnist import DataUnavailableError
    from vae_jax.train import NonFiniteError
    from vae_jax.workdir import WorkdirError

    cases = {
        ValueError("bad"): (2, 2),
        WorkdirError("in use"): (2, 2),
        NoReadableCheckpointError("none"): (1, 2),
        CheckpointError("write"): (1, 2),
        NonFiniteError("nan"): (1, 1),
        DataUnavailableError("a\nb"): (1, 1),
        EvaluationError("x"): (1, 1),
        OSError("disk full"): (1, 1),
        Preempted("SIGTERM"): (75, 75),
        KeyboardInterrupt(): (130, 130),
    }
    for error, (run, read) in cases.items():
        assert cli.exit_status(error)[0] == run, error
        assert cli.exit_status(error, reading=True)[0] == read, error
    hint = "run it again"
    assert cli.exit_status(DataUnavailableError("a\nb"), resume_hint=hint)[1] == "a\nb"
    assert cli.exit_status(KeyboardInterrupt(), resume_hint=hint)[1] == "interrupted; run it again"
    assert (
        cli.exit_status(CheckpointError("x"), resume_hint=hint)[1] == "x; once fixed, run it again"
    )
    for module in ("train", "evaluate", "paper", "mnist"):
        source = (ROOT / "experiments" / f"{module}.py").read_text()
        assert "except" not in source and "fail(" not in source, module


@pytest.mark.parametrize("kind", [cli.RunOptions, cli.EvaluateOptions, cli.PaperOptions])
def test_every_options_dataclass_checks_its_fields(kind):
    name = next(
        f.name
        for f in dataclasses.fields(kind)
        if f.metadata.get("low") == 0 or f.metadata.get("low") == 1
    )
    with pytest.raises(FieldError, match=f"{name} must be"):
        kind(**{name: -1})


def test_model_config_checks_without_building():
    with pytest.raises(ValueError, match="prior vamp and posterior iaf cannot be combined"):
        ModelConfig(prior="vamp", posterior="iaf")
    with pytest.raises(FieldError, match=r"flow_depth must be an integer in 1..1024"):
        ModelConfig(flow_depth=10**9)


@pytest.mark.parametrize("flag", ["--batch_size", "--sample_chunk"])
def test_an_evaluation_batch_beyond_memory_is_refused_before_loading(flag, tmp_path, capsys):
    """(issue #21: a huge batch used to be allocated; now refused from config.json alone.)"""
    from vae_jax.workdir import write_config

    write_config(tmp_path, ExperimentConfig())
    other = "--sample_chunk" if flag == "--batch_size" else "--batch_size"
    argv = ["evaluate", "--workdir", tmp_path, flag, 10**9, other, 10**4]
    argv += ["--num_samples", cli.MAX_IS_SAMPLES]
    status, err = run_cli(cli.main, argv, capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "GiB of activations, more than the devices'" in err


# Evaluation flags whose huge values pass, and why; every other one is refused in one line.
EVALUATE_ACCEPTED = {
    "num_examples": "harmless: at most the test set is evaluated",
    "seed": "a valid 32-bit seed",
    "step": "the evaluation says no checkpoint has that step (status 2)",
    "sample_chunk": "harmless: at most num_samples are decoded per step",
}


@pytest.mark.parametrize("text", HUGE)
@pytest.mark.parametrize("flag", ["num_samples", "batch_size", *EVALUATE_ACCEPTED])
def test_huge_evaluation_flag_is_refused_in_one_line_or_harmless(
    flag, text, tmp_path, capsys, monkeypatch
):
    """(issue #21: `evaluate --num_samples 1e9` used to start an evaluation that would run for
    years; now every evaluation flag is bounded before the checkpoint is read.)"""
    from vae_jax.workdir import write_config

    def reached(*args, **kwargs):
        raise _Reached

    monkeypatch.setattr("vae_jax.evaluate.evaluate_checkpoint", reached)
    write_config(tmp_path, ExperimentConfig())
    argv = ["evaluate", "--workdir", tmp_path, f"--{flag}", text]
    _passes_or_is_refused(argv, flag in EVALUATE_ACCEPTED and text == "1000000000", flag, capsys)
