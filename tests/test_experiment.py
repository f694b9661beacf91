"""The MNIST experiment end to end on tiny data written by the test, through the CLI."""

import json
import math

import jax
import numpy as np
import pytest
from PIL import Image

from experiments import mnist
from tests.idx_files import write_random_mnist
from vae_jax import load_checkpoint, make_elbo

N_TRAIN, N_TEST = 96, 48


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory):
    """Four IDX files of blurry random 'digits' and the TFDS dir they are prepared into."""
    root = tmp_path_factory.mktemp("tiny_mnist")
    rng = np.random.default_rng(0)
    write_random_mnist(root / "idx", N_TRAIN, N_TEST, rng)
    colour = rng.integers(0, 256, (N_TRAIN + N_TEST, 32, 32, 3), dtype=np.uint8)
    np.savez(root / "rgb.npz", x_train=colour[:N_TRAIN], x_test=colour[N_TRAIN:])
    return {
        "mnist_dir": str(root / "idx"),
        "data_dir": str(root / "tfds"),
        "rgb_npz": str(root / "rgb.npz"),  # uint8 RGB 32x32 images
    }


def run(tiny_mnist, workdir, *flags):
    argv = [
        "--mnist_dir", tiny_mnist["mnist_dir"], "--data_dir", tiny_mnist["data_dir"],
        "--workdir", str(workdir), "--no_progress", "--batch_size", "16",
        "--eval_batch_size", "16", *flags,
    ]  # fmt: skip
    return mnist.main(argv)


def test_default_experiment_writes_images_metrics_and_checkpoint(tiny_mnist, tmp_path):
    workdir = tmp_path / "run"
    assert run(tiny_mnist, workdir, "--z_dim", "20", "--epochs", "2", "--hidden", "64") == 0
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        for key in ("train_loss", "test_loss", "test_log_likelihood", "test_kl", "seconds"):
            assert math.isfinite(r[key]), key
        # the test loss is minus the ELBO: -(E[log p(x|z)] - KL)
        assert r["test_loss"] == pytest.approx(-(r["test_log_likelihood"] - r["test_kl"]), 1e-5)
        assert r["data"] == "grey-level mnist 28x28" and r["test_bound"].startswith("ELBO")
    for epoch in (1, 2):
        for kind in ("samples", "reconstructions"):
            with Image.open(workdir / "images" / f"{kind}_epoch{epoch:03d}.png") as image:
                assert image.size[0] > 100 and image.size[1] > 100
    assert (workdir / "images" / "training_curves.png").exists()
    # the final checkpoint loads back through the documented call, and reproduces the
    # recorded test loss with the evaluation's protocol (the first eval batch's key).
    loaded = load_checkpoint(workdir)
    assert loaded.step == 2 * math.ceil(N_TRAIN / 16)
    assert loaded.config.model.z_dim == 20
    value = make_elbo(loaded.model)(
        loaded.params, np.zeros((4, 28, 28, 1), np.float32), jax.random.key(0)
    )
    assert np.isfinite(value)


def test_readme_command_needs_no_run_option(tiny_mnist, tmp_path, monkeypatch, capsys):
    """The README's `python -m experiments.mnist --z_dim 20` gives no run option (and shows
    the progress bar): every option `main` reads must have its default."""
    from vae_jax.cli import RunOptions, build_parser, config_from_args, options_from_args

    args = build_parser().parse_args(["--z_dim", "20"])
    assert options_from_args(RunOptions, args) == RunOptions()  # every run option's default
    assert RunOptions().progress and RunOptions().workdir == "runs/mnist"
    assert config_from_args(args).model.z_dim == 20
    # The same command, with the data and work directory from the environment and the cwd.
    monkeypatch.setenv("VAE_JAX_MNIST_DIR", tiny_mnist["mnist_dir"])
    monkeypatch.setenv("TFDS_DATA_DIR", tiny_mnist["data_dir"])
    monkeypatch.chdir(tmp_path)
    assert mnist.main(["--z_dim", "20", "--epochs", "1", "--batch_size", "16"]) == 0
    assert (tmp_path / "runs" / "mnist" / "metrics.jsonl").exists()
    assert "epoch   1" in capsys.readouterr().out


def test_rerunning_the_command_resumes_instead_of_restarting(tiny_mnist, tmp_path, capsys):
    workdir = tmp_path / "run"
    assert run(tiny_mnist, workdir, "--epochs", "1", "--hidden", "32", "--z_dim", "4") == 0
    assert run(tiny_mnist, workdir, "--epochs", "2", "--hidden", "32", "--z_dim", "4") == 0
    assert "resumed from the checkpoint at step 6" in capsys.readouterr().out
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]


@pytest.mark.parametrize(
    "flags",
    [
        # architecture x likelihood
        ("--likelihood", "gaussian", "--obs_std", "0.2"),
        ("--likelihood", "gaussian_global", "--image_size", "32"),
        # (each conv run costs ~20 s of XLA:CPU compilation, so the conv options share runs;
        # RGB: uint8 colour 32x32 images from a .npz)
        tuple(
            "--dataset RGB --architecture conv --conv_channels 8,16,16 --likelihood "
            "gaussian_pixel".split()
        ),
        # objectives
        ("--beta", "4", "--kl_warmup_steps", "10", "--free_bits", "0.1"),
        # L samples, with every optimizer option at once
        tuple(
            "--num_samples 3 --optimizer adamw --weight_decay 1e-4 --schedule cosine "
            "--warmup_steps 2 --clip_norm 5".split()
        ),
        # conditional VAE and binarized data
        ("--conditional", "--binarize", "dynamic"),
        tuple(
            "--conditional --architecture conv --likelihood gaussian --bound iwae "
            "--num_samples 4".split()
        ),
        ("--recipe", "iwae_paper_iwae", "--hidden", "16,16", "--num_samples", "5"),
    ],
    ids=lambda flags: " ".join(flags),
)
def test_model_zoo_trains_one_epoch_from_the_cli(tiny_mnist, tmp_path, flags):
    workdir = tmp_path / "run"
    base = ("--epochs", "1", "--z_dim", "4", "--conv_channels", "8,16")
    if "--hidden" not in flags:
        base += ("--hidden", "32")
    flags = tuple(tiny_mnist["rgb_npz"] if flag == "RGB" else flag for flag in flags)
    assert run(tiny_mnist, workdir, *base, *flags) == 0
    (record,) = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(v) for v in record.values() if isinstance(v, float))
    assert (workdir / "images" / "samples_epoch001.png").exists()
    if "--conditional" in flags:
        assert (workdir / "images" / "class_samples_epoch001.png").exists()
    if tiny_mnist["rgb_npz"] in flags:  # colour grids
        for name in ("samples_epoch001.png", "reconstructions_epoch001.png"):
            with Image.open(workdir / "images" / name) as picture:
                pixels = np.asarray(picture.convert("RGB"))
            assert picture.mode == "RGB" and (pixels[..., 0] != pixels[..., 1]).any()
    if "--bound" in flags or "iwae_paper_iwae" in flags:
        assert record["train_bound"].startswith("IWAE")
        assert math.isfinite(record["test_iwae_loss"])
        assert record["test_iwae_loss"] <= record["test_loss"] + 1.0  # IWAE is the tighter bound
    if "dynamic" in flags or "iwae_paper_iwae" in flags:
        assert record["data"].startswith("dynamically binarized")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--z_dim", "0"), "--z_dim: must be a positive integer"),
        (("--epochs", "-1"), "--epochs: must be an integer >= 0"),
        (("--no_such_flag",), "unrecognized arguments: --no_such_flag"),
        (("--learning_rate", "nan"), "--learning_rate"),
        (("--architecture", "conv", "--conv_channels", "8,8,8"), "divisible by 8"),
    ],
)
def test_bad_flags_get_one_line_errors_and_status_2(tiny_mnist, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        run(tiny_mnist, tmp_path / "run", *flags)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unwritable_workdir_gets_a_one_line_error(tiny_mnist, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SystemExit) as exit_info:
        run(tiny_mnist, blocker / "run", "--epochs", "1")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "not writable" in err and len(err.strip().splitlines()) == 1


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        mnist.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--epochs",
        "--batch_size",
        "--learning_rate",
        "--hidden",
        "--z_dim",
        "--seed",
        "--workdir",
        "--data_dir",
        "--mnist_dir",
        "--recipe",
        "--beta",
        "--bound",
    ):
        assert flag in text


def test_a_run_prepares_checks_and_builds_each_once(tiny_mnist, tmp_path, monkeypatch):
    """Issue #20: the model was built five times in a plain run (eight with a model and a
    train flag), MNIST prepared twice and each split checked twice."""
    import collections

    from vae_jax import arrays, config, sources
    from vae_jax import mnist as mnist_data

    counts: collections.Counter = collections.Counter()

    def counted(owner, name, key):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            counts[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    counted(config.ModelConfig, "build", "model built")
    counted(config.ObjectiveConfig, "build", "objective built")
    counted(mnist_data, "prepare_mnist", "MNIST prepared")
    from vae_jax import trainer

    for module in (arrays, mnist_data, sources, trainer):
        counted(module, "check_split", "split checked")
    assert run(tiny_mnist, tmp_path / "run", "--epochs", "1", "--hidden", "16", "--z_dim", "2",
               "--learning_rate", "0.002") == 0  # fmt: skip
    assert counts == {
        "model built": 1,
        "objective built": 1,
        "MNIST prepared": 1,
        # train and test: as MNIST is read, then where every split enters training (the
        # Trainer, which a hand-built Split cannot bypass); uint8, so no value is read twice
        "split checked": 4,
    }


def test_run_experiment_takes_only_run_options_beside_the_configuration(tmp_path):
    """(Before: seed=5, batch_size=4 replaced the configuration's values while config.json
    recorded the configuration's, and a cosine schedule was sized for the other batch.)"""
    from vae_jax.config import ExperimentConfig
    from vae_jax.experiment import run_experiment

    with pytest.raises(TypeError, match=r"got \['batch_size', 'seed'\]: the configuration sets"):
        run_experiment(ExperimentConfig(), tmp_path / "run", seed=5, batch_size=4)
    with pytest.raises(TypeError, match="config must be an ExperimentConfig, got dict"):
        run_experiment(ExperimentConfig().to_dict(), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # (refused before anything is written)
