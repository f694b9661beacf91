"""The IWAE paper's rows as recipes, and `python -m experiments.paper` (train, evaluate,
print beside the published number)."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from experiments import paper
from tests.cli_runner import run_cli
from vae_jax.latents import HierarchicalVAE
from vae_jax.models import VAE, init_params
from vae_jax.recipes import PAPER_ROWS, RECIPES, paper_row

# Burda, Grosse & Salakhutdinov (2016), Table 1, MNIST (../shared/REFERENCES.md section 3):
# (layers, k) -> (VAE, IWAE) test NLL in nats.
TABLE_1 = {
    (1, 1): (86.76, 86.76),
    (1, 5): (86.47, 85.54),
    (1, 50): (86.35, 84.78),
    (2, 1): (85.33, 85.33),
    (2, 5): (85.01, 83.89),
    (2, 50): (84.78, 82.90),
}


def test_every_cell_of_table_1_is_a_recipe_with_its_protocol():
    cells = {(r.layers, r.k, r.bound): r.published_nll for r in PAPER_ROWS.values()}
    expected = {(layers, k, "vae"): vae for (layers, k), (vae, _) in TABLE_1.items()}
    expected.update({(la, k, "iwae"): iwae for (la, k), (_, iwae) in TABLE_1.items() if k > 1})
    assert cells == expected  # 10 rows: k = 1 is one model for both bounds
    for name, row in PAPER_ROWS.items():
        config = RECIPES[name]()
        assert config == paper_row(name)
        assert (config.objective.bound, config.objective.num_samples) == (
            "iwae" if row.bound == "iwae" else "elbo",
            row.k,
        )
        tc = config.train
        assert (tc.batch_size, tc.epochs, tc.schedule, tc.adam_eps) == (
            20,
            3280,
            "iwae_paper",
            1e-4,
        )
        assert config.data.binarize == "dynamic"
        model = config.model.build((28, 28, 1))
        if row.layers == 1:
            assert isinstance(model, VAE) and (model.hidden, model.z_dim) == ((200, 200), 50)
        else:
            assert isinstance(model, HierarchicalVAE) and model.latent_dims == (100, 50)
            assert model.hidden == ((200, 200), (100, 100))
        assert model.activation == "tanh"


def _dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


# Parameters of the paper's networks (Section 5.1, Appendix C; yburda/iwae experiments.py),
# counted from its widths: Gaussian heads give a mean and a log-scale per unit.
PAPER_PARAMETERS = {
    # q: 784-200-200-(50, 50); p: 50-200-200-784.
    1: _dense(784, 200)
    + _dense(200, 200)
    + 2 * _dense(200, 50)
    + _dense(50, 200)
    + _dense(200, 200)
    + _dense(200, 784),
    # q(z1|x): 784-200-200-(100, 100); q(z2|z1): 100-100-100-(50, 50);
    # p(z1|z2): 50-100-100-(100, 100); p(x|z1): 100-200-200-784.
    2: _dense(784, 200)
    + _dense(200, 200)
    + 2 * _dense(200, 100)
    + _dense(100, 100)
    + _dense(100, 100)
    + 2 * _dense(100, 50)
    + _dense(50, 100)
    + _dense(100, 100)
    + 2 * _dense(100, 100)
    + _dense(100, 200)
    + _dense(200, 200)
    + _dense(200, 784),
}


def test_every_row_has_the_papers_number_of_parameters():
    assert PAPER_PARAMETERS == {1: 425_284, 2: 521_084}
    for name, row in PAPER_ROWS.items():
        model = RECIPES[name]().model.build((28, 28, 1))
        shapes = jax.eval_shape(lambda m=model: init_params(m, jax.random.key(0)))
        count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))
        assert count == PAPER_PARAMETERS[row.layers], name


def test_paper_row_refuses_a_name_that_is_not_a_row():
    with pytest.raises(ValueError, match="'pytorch' is not a row of the IWAE paper's Table 1"):
        paper_row("pytorch")
    # (before: TypeError "unhashable type: 'list'", and comparison a KeyError)
    with pytest.raises(ValueError, match=r"\['x'\] is not a row of the IWAE paper's Table 1"):
        paper_row(["x"])
    with pytest.raises(ValueError, match="'pytorch' is not a row of the IWAE paper's Table 1"):
        paper.comparison("pytorch", paper_row("iwae_paper_vae"), _report(86.0, 5000, 10_000))


def _report(nll: float, k: int, n: int) -> dict:
    return {"is_key": f"nll_is_k{k}", f"nll_is_k{k}": nll, f"nll_is_k{k}_stderr": 0.25,
            "num_samples": k, "num_examples": n}  # fmt: skip


def test_comparison_prints_the_published_number_only_for_the_rows_configuration():
    config = paper_row("iwae_paper_2layer_iwae")
    short = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=30))
    text = paper.comparison("iwae_paper_2layer_iwae", short, _report(88.123, 5000, 10_000))
    assert "2 stochastic layers, IWAE, k=50" in text
    assert "test NLL 88.12 +- 0.25 nats (IS k=5000, 10000 test images; 30 of" in text
    assert "published: test NLL 82.90 nats (3280 epochs, same protocol)" in text
    text = paper.comparison("iwae_paper_2layer_iwae", short, _report(88.1, 100, 500))
    assert "published: test NLL 82.90 nats (3280 epochs, IS k=5000, 10000 test images)" in text
    other = dataclasses.replace(
        short, model=dataclasses.replace(short.model, z_dim=20, flow_depth=3)
    )
    text = paper.comparison("iwae_paper_2layer_iwae", other, _report(88.1, 5000, 10_000))
    assert "published: none for this configuration (it differs from the row in " in text
    assert "model.z_dim, model.flow_depth" in text and "82.90" in text


def test_paper_command_trains_evaluates_and_names_what_it_changed(tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = ((rng.random((48, 4, 4, 1)) < 0.3) * 255).astype(np.uint8)
    np.savez(tmp_path / "tiny.npz", x_train=images[:32], x_test=images[32:])
    argv = ["--recipe", "iwae_paper_2layer_iwae_k5", "--dataset", str(tmp_path / "tiny.npz")]
    argv += ["--hidden", "8", "--z_dim", "3", "--upper_latent_dims", "2", "--upper_hidden", "4"]
    argv += ["--epochs", "1", "--batch_size", "16", "--eval_num_samples", "8", "--no_progress"]
    argv += ["--workdir", str(tmp_path / "run")]
    status = paper.main(argv)
    out = capsys.readouterr().out
    assert status == 0
    assert "2 stochastic layers, IWAE, k=5:" in out
    report = json.loads((tmp_path / "run" / "evaluation_k8.json").read_text())
    assert f"test NLL {report['nll_is_k8']:.2f}" in out and "(IS k=8, 16 test images; 1 of" in out
    assert "published: none for this configuration (it differs from the row in" in out
    for name in ("data.dataset", "model.hidden", "model.z_dim", "train.batch_size"):
        assert name in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--recipe", "pytorch"], "argument --recipe: invalid choice: 'pytorch'"),
        (["--recipe", "iwae_paper_vae", "--eval_num_samples", "0"], "must be a positive"),
        (["--recipe", "iwae_paper_vae", "--flow_depth", "0"], "argument --flow_depth"),
        (["--recipe", "iwae_paper_vae", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_flags_are_one_line_errors_with_status_2(argv, message, tmp_path, capsys):
    status, err = run_cli(paper.main, [*argv, "--workdir", tmp_path / "run"], capsys)
    assert status == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
