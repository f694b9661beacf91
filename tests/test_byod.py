"""Bring your own data, optimizer and model: arrays of any shape and dtype, .npz/.npy files,
TFDS datasets by name, any optax transformation, and a module of your own."""

from __future__ import annotations

import functools
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

import vae_jax
from experiments import evaluate as evaluate_cli
from experiments import train as train_cli
from tests.cli_runner import run_cli
from tests.kill_helpers import _kill_when, _writing, start_cli

SMALL = ("--epochs", "1", "--batch_size", "16", "--z_dim", "2", "--no_progress")


def _cli(argv, capsys):
    return run_cli(train_cli.main, argv, capsys)


def _records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------- files


def test_real_valued_vectors_from_npz_train_from_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(96, 6)) * 40.0 - 25.0).astype(np.float32)  # far beyond [0, 1]
    np.savez(tmp_path / "vectors.npz", x_train=x[:64], x_test=x[64:])
    workdir = tmp_path / "run"
    argv = ["--dataset", tmp_path / "vectors.npz", "--likelihood", "gaussian_global"]
    status, err = _cli([*argv, "--hidden", "16", "--workdir", workdir, *SMALL], capsys)
    assert status == 0, err
    (record,) = _records(workdir)
    assert math.isfinite(record["test_loss"]) and "values as given" in record["data"]
    config = json.loads((workdir / "config.json").read_text())
    assert config["data"]["event_shape"] == [6]
    assert config["data"]["dataset"] == str(tmp_path / "vectors.npz")
    loaded = vae_jax.load_checkpoint(workdir)
    assert loaded.model.image_shape == (6,) and loaded.step == 4
    # evaluated as the README says: IS log-density of the vectors, pictures for vectors only
    argv = ["--workdir", workdir, "--num_samples", "20", "--no_progress"]
    status, err = run_cli(evaluate_cli.main, argv, capsys)
    assert status == 0, err
    report = json.loads((workdir / "evaluation_k20.json").read_text())
    assert math.isfinite(report["nll_is_k20"]) and report["nll_is_k20"] <= report["neg_elbo"]
    assert sorted(p.name for p in (workdir / "images").glob("latent_*")) == ["latent_scatter.png"]


def test_uint8_rgb_images_from_npz_train_an_mlp_with_colour_grids(tmp_path, capsys):
    """(The conv VAE on the same kind of file: test_experiment.py's model zoo, RGB case.)"""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", x_train=images[:32], x_test=images[32:])
    for flags in (("--hidden", "16"),):
        workdir = tmp_path / "-".join(flags)
        argv = ["--dataset", tmp_path / "rgb.npz", "--workdir", workdir, *SMALL, *flags]
        status, err = _cli(argv, capsys)
        assert status == 0, err
        for name in ("samples_epoch001.png", "reconstructions_epoch001.png"):
            with Image.open(workdir / "images" / name) as picture:
                assert picture.mode == "RGB"
                pixels = np.asarray(picture)
            assert (pixels[..., 0] != pixels[..., 1]).any()  # colour, not grey


# ------------------------------------------------------------------------------- TFDS


@functools.cache  # (TFDS registers a builder class by its name: define it once)
def _tiny_colours():
    import tensorflow_datasets as tfds

    class TinyColours(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict(
                {
                    "picture": tfds.features.Image(shape=(8, 8, 3)),
                    "kind": tfds.features.ClassLabel(num_classes=3),
                    "note": tfds.features.Text(),
                }
            )
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(48, 0), "test": self._generate_examples(16, 1)}

        def _generate_examples(self, n, seed):
            rng = np.random.default_rng(seed)
            for i in range(n):
                buffer = io.BytesIO()
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(buffer, format="PNG")
                yield i, {"picture": buffer.getvalue(), "kind": i % 3, "note": "x"}

    return TinyColours


def _tiny_tfds_builder(data_dir):
    """A TFDS dataset defined here and prepared as array_record, without TensorFlow: PNGs
    written with Pillow, a ClassLabel, an extra text feature; the example feature is not
    called "image" and the label not "label"."""
    builder = _tiny_colours()(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return builder


def test_a_damaged_tfds_dataset_is_one_line_saying_how_to_rebuild_it(tmp_path, capsys):
    builder = _tiny_tfds_builder(tmp_path / "tfds")
    shard = next(Path(builder.data_dir).glob("*-train.array_record*"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    argv = ["--dataset", builder.name, "--data_dir", tmp_path / "tfds"]
    capsys.readouterr()  # (the builder's progress bars)
    status, err = _cli([*argv, "--workdir", tmp_path / "run", *SMALL], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert f"the prepared copy of TFDS dataset '{builder.name}' in" in err
    assert "it is damaged; delete" in err and "tfds build tiny_colours" in err


def test_a_tfds_dataset_prepared_as_array_record_trains_from_the_cli_by_name(tmp_path, capsys):
    builder = _tiny_tfds_builder(tmp_path / "tfds")
    workdir = tmp_path / "run"
    argv = ["--dataset", builder.name, "--data_dir", tmp_path / "tfds", "--conditional"]
    status, err = _cli([*argv, "--hidden", "16", "--workdir", workdir, *SMALL], capsys)
    assert status == 0, err
    (record,) = _records(workdir)
    assert record["data"].startswith("tiny_colours [8x8x3]")
    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["num_classes"] == 3  # from the ClassLabel
    assert (workdir / "images" / "class_samples_epoch001.png").exists()


# ------------------------------------------------------------------------------- Python


class MeanOnly(nn.Module):
    """A model-protocol module whose p(x|z) ignores z: its decoder mean is one learned
    vector, so its maximum-likelihood value is the data's per-dimension mean."""

    z_dim: int = 1
    image_shape: tuple[int, ...] = (4,)
    likelihood: str = "gaussian_pixel"

    def setup(self):
        self.encoder = nn.Dense(2 * self.z_dim)
        self.loc = self.param("loc", nn.initializers.zeros, self.image_shape)
        self.logvar = self.param("logvar", nn.initializers.zeros, self.image_shape)

    def encode(self, x, label=None):
        mean, logvar = jnp.split(self.encoder(x), 2, axis=-1)
        return mean, logvar

    def decode(self, z, label=None):
        loc = jnp.broadcast_to(self.loc, (*z.shape[:-1], *self.image_shape))
        return vae_jax.DecoderOutput(loc, self.logvar)


def test_values_below_one_grey_level_are_used_as_given_not_quantized():
    """Data whose whole range is below 1/255: 8-bit storage would turn the per-dimension
    means [0.0005, 0.0015, 0.0025, 0.0035] into [0, 0, 1/255, 1/255]; a gaussian_pixel
    model trained on the data as given recovers them."""
    means = np.array([0.0005, 0.0015, 0.0025, 0.0035], np.float32)
    x = means + 1e-5 * np.random.default_rng(0).normal(size=(128, 4)).astype(np.float32)
    assert x.max() - x.min() < 1 / 255
    result = vae_jax.fit(
        vae_jax.make_elbo(MeanOnly()),
        optax.adam(optax.cosine_decay_schedule(1e-3, decay_steps=100 * 4)),
        x,
        options=vae_jax.FitOptions(epochs=100, batch_size=32, log=lambda _: None),
        progress=False,
    )
    reconstruction = vae_jax.reconstruct(result.model, result.state.params, jnp.asarray(x))
    np.testing.assert_allclose(reconstruction[0], x.mean(axis=0), atol=1e-6)


def test_fit_takes_any_optax_transformation_and_float_images():
    rng = np.random.default_rng(2)
    x = rng.random((64, 4, 4, 2)).astype(np.float64)  # float64 in [0, 1]: float32, as given
    model = vae_jax.VAE(image_shape=(4, 4, 2), hidden=(8,), z_dim=2)
    options = vae_jax.FitOptions(epochs=2, batch_size=16, log=print)
    sgd = vae_jax.fit(vae_jax.make_elbo(model), optax.sgd(0.0), x, options=options, progress=False)
    init = vae_jax.init_params(sgd.model, vae_jax.train.make_keys(0).init)
    for a, b in zip(jax.tree.leaves(sgd.state.params), jax.tree.leaves(init), strict=True):
        np.testing.assert_array_equal(a, b)  # a zero step: nothing moved, Adam was not used
    assert sgd.model.image_shape == (4, 4, 2) and int(sgd.state.step) == 8


def test_fit_from_pieces_records_them_resumes_and_loads(tmp_path):
    """A run of your own module and optimizer into a work directory: the record names the
    objective, the module and the options; a longer run resumes it (the epoch budget may
    grow), another module is refused, and load_checkpoint(model=, tx=) loads it."""
    x = np.random.default_rng(4).normal(size=(64, 4)).astype(np.float32)
    workdir = tmp_path / "run"

    def run(model, epochs):
        return vae_jax.fit(
            vae_jax.make_elbo(model),
            optax.adam(1e-2),
            x,
            options=vae_jax.FitOptions(epochs=epochs, batch_size=16, log=lambda _: None),
            workdir=workdir,
            progress=False,
        )

    first = run(MeanOnly(), epochs=1)
    record = json.loads((workdir / "config.json").read_text())
    assert record["model"] == "MeanOnly(z_dim=1, image_shape=(4,), likelihood='gaussian_pixel')"
    assert record["event_shape"] == [4]
    assert record["objective"]["kind"] == "elbo" and record["options"]["batch_size"] == 16
    assert record["run"]["epochs"] == 1
    longer = run(MeanOnly(), epochs=2)
    assert [r["epoch"] for r in longer.records] == [1, 2]
    assert longer.records[0] == first.records[0]  # restored, not retrained
    other = r"model: MeanOnly\(z_dim=1, .* there, MeanOnly\(z_dim=2, .* here"
    with pytest.raises(vae_jax.workdir.WorkdirError, match=other):
        run(MeanOnly(z_dim=2), epochs=2)
    loaded = vae_jax.load_checkpoint(workdir, model=MeanOnly(), tx=optax.adam(1e-2))
    with pytest.raises(ValueError, match="the pictures need the run's recorded configuration"):
        vae_jax.evaluate.write_evaluation_pictures(  # (before: an AssertionError, no message)
            workdir, workdir / "out", posterior_mean=None, images=None, labels=None, loaded=loaded
        )
    assert loaded.step == 8 and loaded.config is None
    final = jax.tree.leaves(longer.state.params)
    for a, b in zip(jax.tree.leaves(loaded.params), final, strict=True):
        np.testing.assert_array_equal(a, b)
    # (before: "config.json is not a valid vae_jax configuration: unknown section
    # 'event_shape'", and evaluate_checkpoint advised an option it does not have)
    pieces = r"records a run that fit made from your own model, not an ExperimentConfig: load"
    with pytest.raises(vae_jax.CheckpointError, match=pieces + r" it with load_checkpoint\("):
        vae_jax.load_checkpoint(workdir)
    with pytest.raises(vae_jax.CheckpointError, match=r"and score it with evaluate_dataset\("):
        vae_jax.evaluate_checkpoint(workdir, num_samples=2, progress=False)


def test_an_epoch_hook_that_returns_true_stops_fit_there(tmp_path):
    """Early stopping from Python: the epoch is checkpointed and fit returns."""
    x = np.random.default_rng(4).normal(size=(64, 4)).astype(np.float32)
    result = vae_jax.fit(
        vae_jax.make_elbo(MeanOnly()),
        optax.adam(1e-2),
        x,
        options=vae_jax.FitOptions(epochs=5, batch_size=16, log=lambda _: None),
        workdir=tmp_path / "run",
        on_epoch_end=lambda epoch, state, records: epoch == 2,
        progress=False,
    )
    assert [r["epoch"] for r in result.records] == [1, 2] and int(result.state.step) == 8
    assert (
        vae_jax.load_checkpoint(tmp_path / "run", model=MeanOnly(), tx=optax.adam(1e-2)).step == 8
    )


def test_fit_and_the_trainer_check_a_split_built_by_hand():
    """A `Split` is a plain named tuple anyone can build: it is checked like arrays (before:
    taken as checked, so grey levels 0..255 as floats trained a Bernoulli model to a loss of
    4e12, and 31 labels for 32 examples went through). A checked split passes unchanged."""
    x = np.random.default_rng(4).uniform(size=(32, 4)).astype(np.float32)
    split = vae_jax.arrays.check_split(x, name="x")
    objective, tx = vae_jax.make_elbo(MeanOnly(likelihood="bernoulli")), optax.adam(1e-2)
    options = vae_jax.FitOptions(epochs=1, batch_size=16, log=lambda _: None)
    run = functools.partial(vae_jax.fit, objective, tx, options=options, progress=False)
    assert int(run(split).state.step) == 2
    assert vae_jax.Trainer(objective, tx, split, options=options).train.image is split.image
    levels = vae_jax.Split(255 * x, split.label)
    for bad, message in [
        (levels, r"training data: x has values in \[2.*\]; a Bernoulli likelihood .* \[0, 1\]"),
        (split._replace(label=split.label[:31]), r"\(31,\) labels for 32 examples"),
        (split._replace(image=x[:, :3]), r"training data: examples are .3,., expected .4,."),
    ]:
        with pytest.raises(ValueError, match=message):
            run(bad)
        with pytest.raises(ValueError, match=message):
            vae_jax.Trainer(objective, tx, bad, options=options)
    with pytest.raises(ValueError, match=r"test data: x has values in"):
        run(split, x_test=levels)
    with pytest.raises(ValueError, match="a Split carries its labels; pass None as its y"):
        run(split, np.zeros(32, np.int32))
    with pytest.raises(TypeError, match=r"training data must be a vae_jax.Split\(image, label\)"):
        vae_jax.Trainer(objective, tx, (x, None), options=options)


def test_load_checkpoint_needs_the_module_only(tmp_path):
    """(Before: the module and the exact optimizer; test_safety.py reads the parameters of
    a run trained with another optimizer.)"""
    with pytest.raises(vae_jax.CheckpointError, match="holds no checkpoint"):
        vae_jax.load_checkpoint(tmp_path, model=MeanOnly())
    with pytest.raises(vae_jax.CheckpointError, match="has no config.json"):
        vae_jax.load_checkpoint(tmp_path, tx=optax.adam(1e-3))


def _wrong_kinds():
    """(call, exception, message) for arguments of the wrong kind given to public functions
    (before: AttributeError / TypeError tracebacks from deep inside, or, for a truthy
    "no", a pip download)."""
    x, quiet = np.zeros((16, 4), np.float32), vae_jax.FitOptions(log=lambda _: None)
    fit = functools.partial(vae_jax.fit, vae_jax.make_elbo(MeanOnly()), optax.adam(1e-3), x)
    path = r"must be a path \(a str or a pathlib.Path\), got"
    call = functools.partial(
        vae_jax.make_train_call, vae_jax.make_elbo(MeanOnly()), optax.adam(1e-3), event_shape=(4,)
    )
    bernoulli = vae_jax.make_elbo(MeanOnly(likelihood="bernoulli"))
    evaluate = functools.partial(vae_jax.make_evaluate, bernoulli, batch_size=8)
    levels = vae_jax.train.to_device(
        np.full((16, 4), 200.0), np.zeros(16, np.int32), vae_jax.make_mesh(1)
    )
    key = jax.random.key(0)
    return {
        "evaluate levels": (
            lambda: evaluate(vae_jax.make_mesh(1))(None, levels, key),
            ValueError,
            r"evaluate: data: x has values in \[200, 200\]; a Bernoulli likelihood needs",
        ),
        "host evaluate levels": (
            lambda: vae_jax.train.make_host_evaluate(bernoulli, vae_jax.make_mesh(1), batch_size=8)(
                None,
                vae_jax.Split(np.full((16, 4), 200.0, np.float32), np.zeros(16, np.int32)),
                key,
            ),
            ValueError,
            r"evaluate: data: x has values in \[200, 200\]",
        ),
        "host evaluate batch": (
            lambda: vae_jax.train.make_host_evaluate(bernoulli, vae_jax.make_mesh(1), batch_size=0),
            ValueError,
            "batch_size must be >= 1, got 0",
        ),
        "device labels": (
            lambda: vae_jax.train.to_device(x, np.zeros(3, np.int32), vae_jax.make_mesh(1)),
            ValueError,
            r"to_device: \(3,\) labels for 16 examples",
        ),
        "steps per epoch": (
            lambda: vae_jax.train.steps_per_epoch(8, 0),
            ValueError,
            "batch_size must be >= 1, got 0",
        ),
        "padded batches": (
            lambda: vae_jax.train.padded_batches(np.arange(4), -3),
            ValueError,
            "batch_size must be >= 1, got -3",
        ),
        "digest of a descriptor": (  # (before: hashed open file descriptor 3, then closed it)
            lambda: vae_jax.digests.file_digest(3),
            TypeError,
            f"path {path} int",
        ),
        "seed for a key": (  # (before: JAX's "invalid PRNG key data" from the first draw)
            lambda: vae_jax.make_elbo(MeanOnly())(None, x, 0),
            TypeError,
            r"key must be one jax.random key \(jax.random.key\(seed\)\), got int",
        ),
        "keys for a key": (
            lambda: vae_jax.importance_log_likelihood(
                MeanOnly(), None, x, None, jax.random.split(key), num_samples=2, sample_chunk=2
            ),
            TypeError,
            r"key must be one jax.random key .*, got \S+ key<fry>\[2\]",
        ),
        "batch without image": (
            lambda: vae_jax.make_elbo(MeanOnly())(None, {"x": x}, key),
            ValueError,
            r"a batch mapping needs an 'image' entry, got keys \['x'\]",
        ),
        "evaluate tuple": (
            lambda: evaluate(vae_jax.make_mesh(1))(None, (x, None), key),
            TypeError,
            r"evaluate: data must be a DeviceData \(vae_jax.train.to_device\), got tuple",
        ),
        "evaluate model": (
            lambda: vae_jax.make_evaluate(MeanOnly(), vae_jax.make_mesh(1), batch_size=8),
            TypeError,
            r"objective must be an Objective \(make_elbo\(model\) or make_iwae\(model\)\), got "
            "MeanOnly",
        ),
        "evaluate batch": (
            lambda: evaluate(vae_jax.make_mesh(1), batch_size=0),
            ValueError,
            "batch_size must be >= 1, got 0",
        ),
        "train call binarize": (
            lambda: call(vae_jax.make_mesh(1), binarize="no"),
            ValueError,
            "binarize must be True or False, got 'no'",
        ),
        "train call warm-up": (
            lambda: call(vae_jax.make_mesh(1), kl_warmup_steps=-5),
            ValueError,
            "kl_warmup_steps must be >= 0, got -5",
        ),
        "mesh negative": (
            lambda: vae_jax.make_mesh(-1),
            ValueError,
            r"num_devices must be >= 0 \(0: all devices\), got -1",
        ),
        "mesh float": (
            lambda: vae_jax.make_mesh(2.0),
            ValueError,
            "num_devices must be an integer, got 2.0",
        ),
        "config shape": (
            lambda: vae_jax.ExperimentConfig().build(4),
            ValueError,
            "event_shape must be a tuple of integers, got 4",
        ),
        "config memory": (
            lambda: vae_jax.ExperimentConfig().build(memory=-5),
            ValueError,
            r"memory must be >= 0 bytes \(0: not checked\), got -5",
        ),
        "config base": (
            lambda: vae_jax.ExperimentConfig.from_dict({}, base="x"),
            TypeError,
            "base must be an ExperimentConfig or None, got str",
        ),
        "fit y_test": (
            lambda: fit(options=quiet, y_test=np.zeros(16, np.int32)),
            ValueError,
            "y_test was given without x_test",
        ),
        "fit options": (
            lambda: fit(options={"epochs": 1}),
            TypeError,
            "options must be a FitOptions or None, got dict",
        ),
        "fit hook": (
            lambda: fit(options=quiet, on_epoch_end=3),
            TypeError,
            "on_epoch_end must be callable, got int",
        ),
        "fit state": (
            lambda: fit(options=quiet, initial_state=3),
            TypeError,
            r"initial_state must be a TrainState \(a FitResult's state\), got int",
        ),
        "load_checkpoint path": (
            lambda: vae_jax.load_checkpoint(3),
            TypeError,
            f"workdir {path} int",
        ),
        "load_checkpoint model": (
            lambda: vae_jax.load_checkpoint(".", model=3),
            TypeError,
            "model must be a Flax module or None, got int",
        ),
        "load_checkpoint tx": (
            lambda: vae_jax.load_checkpoint(".", model=MeanOnly(), tx=1e-3),
            TypeError,
            "tx must be an optax.GradientTransformation, got float",
        ),
        "evaluate_checkpoint path": (
            lambda: vae_jax.evaluate_checkpoint([]),
            TypeError,
            f"workdir {path} list",
        ),
        "evaluate_checkpoint report": (
            lambda: vae_jax.evaluate_checkpoint(".", report_path=3),
            TypeError,
            f"report_path {path} int",
        ),
        "evaluate_checkpoint log": (
            lambda: vae_jax.evaluate_checkpoint(".", log=None),
            TypeError,
            "log must be callable, got NoneType",
        ),
        "run_experiment path": (
            lambda: vae_jax.run_experiment(vae_jax.ExperimentConfig(), 3),
            TypeError,
            f"workdir {path} int",
        ),
        "run_experiment log": (
            lambda: vae_jax.run_experiment(vae_jax.ExperimentConfig(), "w", log=None),
            TypeError,
            "log must be callable, got NoneType",
        ),
        "prepare_mnist path": (lambda: vae_jax.prepare_mnist(3), TypeError, f"data_dir {path} int"),
        "prepare_mnist empty": (
            lambda: vae_jax.prepare_mnist(""),
            ValueError,
            "data_dir is empty: give a path",
        ),
        "prepare_mnist idx": (
            lambda: vae_jax.prepare_mnist(mnist_dir=7),
            TypeError,
            f"mnist_dir {path} int",
        ),
        "prepare_mnist pip": (
            lambda: vae_jax.prepare_mnist(allow_pip="no"),
            ValueError,
            "allow_pip must be True or False, got 'no'",
        ),
        "prepare_mnist download": (
            lambda: vae_jax.prepare_mnist(allow_download="no"),
            ValueError,
            "allow_download must be True or False, got 'no'",
        ),
        "load_dataset data_dir": (
            lambda: vae_jax.load_dataset("mnist", data_dir=3),
            TypeError,
            f"data_dir {path} int",
        ),
        "estimator load": (lambda: vae_jax.VAEEstimator.load(3), TypeError, f"path {path} int"),
    }


@pytest.mark.parametrize("case", list(_wrong_kinds()))
def test_public_functions_refuse_arguments_of_the_wrong_kind_in_one_line(
    case, tmp_path, monkeypatch
):
    """Checked before anything is read, written or downloaded (run in an empty directory)."""
    monkeypatch.chdir(tmp_path)
    call, error, message = _wrong_kinds()[case]
    with pytest.raises(error, match=message) as caught:
        call()
    assert "\n" not in str(caught.value) and list(tmp_path.iterdir()) == []


def test_fit_refuses_what_is_not_an_objective_an_optimizer_or_an_option():
    x = np.zeros((16, 4), np.float32)
    with pytest.raises(TypeError, match="objective must be an Objective .make_elbo"):
        vae_jax.fit(MeanOnly(), optax.adam(1e-3), x)
    with pytest.raises(TypeError, match="tx must be an optax.GradientTransformation, got float"):
        vae_jax.fit(vae_jax.make_elbo(MeanOnly()), 1e-3, x)
    with pytest.raises(ValueError, match="epochs must be an integer, got 2.5"):
        vae_jax.FitOptions(epochs=2.5)
    with pytest.raises(ValueError, match="binarize must be True or False, got 'yes'"):
        vae_jax.FitOptions(binarize="yes")
    assert vae_jax.FitOptions(batch_size=np.int64(8)).batch_size.__class__ is int  # JSON-able
    # seeds: the declared 0..2**32-1 (before: capped at int32 with "an integer >= 0 <= ...")
    assert vae_jax.FitOptions(seed=2**32 - 1).seed == 2**32 - 1
    with pytest.raises(ValueError, match=r"seed must be an integer in 0\.\.4294967295"):
        vae_jax.FitOptions(seed=2**32)
    with pytest.raises(ValueError, match=r"epochs must be an integer in 0\.\.2147483647 \(int32\)"):
        vae_jax.FitOptions(epochs=2**31)


def test_init_params_needs_an_example_for_a_module_without_image_shape():
    class Bare(nn.Module):
        likelihood: str = "bernoulli"

        @nn.compact
        def encode(self, x, label=None):
            return nn.Dense(2)(x), jnp.zeros((x.shape[0], 2))

        def decode(self, z, label=None):
            return vae_jax.DecoderOutput(jnp.repeat(z[..., :1], 3, axis=-1), None)

    with pytest.raises(ValueError, match="Bare has no image_shape attribute: pass an example"):
        vae_jax.init_params(Bare(), jax.random.key(0))
    params = vae_jax.init_params(Bare(), jax.random.key(0), np.zeros((1, 3)))
    assert params["Dense_0"]["kernel"].shape == (3, 2)


def test_an_unknown_likelihood_is_an_error():
    with pytest.raises(ValueError, match="likelihood must be one of .* got 'poisson'"):
        vae_jax.make_elbo(MeanOnly(likelihood="poisson"))
    with pytest.raises(ValueError, match="got 'nonsense'"):
        vae_jax.make_iwae(vae_jax.VAE(likelihood="nonsense"), num_samples=5)


def test_npy_streamed_from_host_memory_trains_from_the_cli(tmp_path, capsys):
    """A .npy is memory-mapped; with --data_placement host its rows are read per call."""
    x = np.random.default_rng(3).random((40, 5, 5, 1)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    workdir = tmp_path / "run"
    argv = ["--dataset", tmp_path / "x.npy", "--data_placement", "host", "--hidden", "8"]
    status, err = _cli([*argv, "--workdir", workdir, *SMALL], capsys)
    assert status == 0, err
    (record,) = _records(workdir)
    assert "test_loss" not in record  # no test split in a .npy
    assert (workdir / "images" / "reconstructions_epoch001.png").exists()  # training images


def test_auto_placement_keeps_data_that_fit_on_the_device():
    mesh = vae_jax.make_mesh()
    assert vae_jax.trainer.default_placement(10**6, mesh) == "device"
    assert vae_jax.trainer.default_placement(2**62, mesh) == "host"
    with pytest.raises(ValueError, match="placement must be 'auto', 'device' or 'host', got 'gpu'"):
        vae_jax.FitOptions(placement="gpu")


def test_streamed_run_killed_during_a_checkpoint_resumes_bitwise_equal(tmp_path):
    """A .npy streamed from host memory (--data_placement host), SIGKILLed while a
    checkpoint is being written, then resumed: bitwise the parameters and records of its
    uninterrupted run (test_resume.py kills the device-resident path at random points)."""
    x = (np.random.default_rng(4).random((256, 28, 28, 1)) ** 3 * 255).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    flags = (
        "--dataset", tmp_path / "x.npy", "--data_placement", "host", "--epochs", "3",
        "--batch_size", "32", "--hidden", "32", "--z_dim", "4", "--steps_per_call", "2",
        "--checkpoint_every_steps", "2", "--no_progress",
    )  # fmt: skip
    reference = tmp_path / "reference"
    assert train_cli.main([str(f) for f in (*flags, "--workdir", reference)]) == 0
    workdir = tmp_path / "killed"
    argv = ["experiments.train", *flags, "--workdir", workdir]
    proc = start_cli(argv, tmp_path / "killed.log", tmp_path / "jax_cache")
    assert _kill_when(proc, _writing(workdir, 10)), (tmp_path / "killed.log").read_text()
    final = start_cli(argv, tmp_path / "final.log", tmp_path / "jax_cache")
    assert final.wait(timeout=300) == 0, (tmp_path / "final.log").read_text()[-3000:]
    log = (tmp_path / "final.log").read_text()
    assert "stays in host memory" in log and "resumed from the checkpoint at step" in log
    expected, got = vae_jax.load_checkpoint(reference), vae_jax.load_checkpoint(workdir)
    assert got.step == expected.step == 24
    leaves = zip(jax.tree.leaves(expected.params), jax.tree.leaves(got.params), strict=True)
    assert all(np.array_equal(a, b) for a, b in leaves)
    timing = ("seconds", "eval_seconds")
    strip = lambda records: [{k: v for k, v in r.items() if k not in timing} for r in records]  # noqa: E731
    assert strip(_records(workdir)) == strip(_records(reference))


def test_host_evaluation_matches_the_device_evaluation():
    """The streamed path's test-set evaluation: the same batches and keys as the device
    path's, the same numbers to float rounding."""
    model = vae_jax.VAE(image_shape=(6, 6, 1), hidden=(8,), z_dim=2)
    params = vae_jax.init_params(model, jax.random.key(0))
    x = np.random.default_rng(5).integers(0, 256, (70, 6, 6, 1), dtype=np.uint8)
    labels = np.zeros(70, np.int32)
    mesh, elbo, key = vae_jax.make_mesh(), vae_jax.make_elbo(model), jax.random.key(3)
    on_device = vae_jax.make_evaluate(elbo, mesh, batch_size=32)
    on_host = vae_jax.train.make_host_evaluate(elbo, mesh, batch_size=32)
    a = on_device(params, vae_jax.train.to_device(x, labels, mesh), key)
    b = on_host(params, vae_jax.Split(x, labels), key)
    for name in ("elbo", "log_likelihood", "kl"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5)


def test_load_dataset_takes_a_path_object(tmp_path):
    """(Before: load_dataset(Path(...)) failed with AttributeError: 'PosixPath' object has
    no attribute 'lower'.)"""
    path = tmp_path / "d.npz"
    x = np.zeros((4, 3), np.float32)
    np.savez(path, x_train=x, x_test=x[:2])
    assert vae_jax.load_dataset(path).x_train.shape == vae_jax.load_dataset(str(path)).x_train.shape
    with pytest.raises(TypeError, match="spec must be a dataset name or a file's path, got int"):
        vae_jax.load_dataset(3)
    # a malformed file is refused as it is read (before: returned as read)
    for arrays, message in [
        ({"x_train": x[:, 0]}, r"d.npz: x_train: x must be \[N >= 1"),
        ({"x_train": x, "y_train": np.zeros(3, np.int64)}, r"d.npz: y_train: \(3,\) labels"),
        ({"x_train": x, "x_test": x[:, :2]}, r"d.npz: x_test: examples are \(2,\), expected"),
    ]:
        np.savez(path, **arrays)
        with pytest.raises(ValueError, match=message):
            vae_jax.load_dataset(path)


def test_fit_refuses_a_work_directory_in_use_and_files_it_did_not_write(tmp_path):
    """(Before: fit never took the work directory's lock, so overwrite=True deleted the
    checkpoints of a run in progress; and overwrite deleted another program's config.json,
    metrics.jsonl, images/ and tensorboard/ files with a run's outputs.)"""
    x = np.random.default_rng(4).normal(size=(32, 4)).astype(np.float32)
    options = vae_jax.FitOptions(epochs=1, batch_size=16, log=lambda _: None)
    run = functools.partial(
        vae_jax.fit, vae_jax.make_elbo(MeanOnly()), optax.adam(1e-2), x, options=options
    )
    workdir = tmp_path / "run"
    run(workdir=workdir, progress=False)
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    holder = subprocess.Popen(  # another process holds the lock, as a run in progress does
        [sys.executable, "-c", HOLD_LOCK, str(workdir / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(vae_jax.workdir.WorkdirError, match=r"is in use by another run \(pid"):
            run(workdir=vae_jax.RunDir(workdir, resume=False, overwrite=True), progress=False)
    finally:
        holder.kill()
        holder.wait(timeout=30)
        holder.stdout.close()
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before
    (workdir / "config.json").write_text('{"name": "my project"}')
    (workdir / "images").mkdir()
    (workdir / "images" / "photo.png").write_bytes(b"mine")
    with pytest.raises(vae_jax.workdir.WorkdirError, match=r"did not write \(config.json, images"):
        run(workdir=vae_jax.RunDir(workdir, overwrite=True), progress=False)
    assert (workdir / "images" / "photo.png").read_bytes() == b"mine"
    assert (workdir / "config.json").read_text() == '{"name": "my project"}'


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"999999\\n")
print("held", flush=True)
time.sleep(60)
"""


def test_a_record_that_does_not_describe_the_run_is_refused(tmp_path):
    """RunDir(path, record=config): config.json, and load_checkpoint's model, come from the
    record (before: a relu model recorded as tanh loaded as tanh with relu's weights, and
    config.json kept the record's batch size and seed, not the ones trained with)."""
    import dataclasses

    config = vae_jax.ExperimentConfig()
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, batch_size=16))
    x = np.zeros((32, 28, 28, 1), np.uint8)
    tanh = dataclasses.replace(config.model, activation="tanh").build((28, 28, 1))
    built = config.build()
    options = config.fit_options(log=lambda _: None)
    workdir = vae_jax.RunDir(tmp_path / "run", record=config)
    run = functools.partial(vae_jax.fit, tx=optax.adam(1e-3), workdir=workdir, progress=False)
    cases = [
        (
            lambda: run(vae_jax.make_elbo(tanh), x_train=x, options=options),
            r"another model \(VAE\(image_shape=\(28, 28, 1\), .*activation='relu'.*\) than "
            r"the one trained \(.*activation='tanh'",
        ),
        (
            lambda: run(vae_jax.make_elbo(built.model, beta=4.0), x_train=x, options=options),
            r"another objective \(beta: 1.0 there, 4.0 here\)",
        ),
        (
            lambda: run(built.objective, x_train=x, options=dataclasses.replace(options, seed=5)),
            "the record says seed 0, the options 5",
        ),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as caught:
            call()
        assert "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
