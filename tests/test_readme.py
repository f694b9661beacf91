"""The README's Python example runs as written, and its gradient is finite."""

import re
from pathlib import Path

import jax
import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_api_example_runs_as_written(capsys):
    block = python_blocks()[0]
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    out = capsys.readouterr().out
    assert "ELBO" in out and "IWAE k=50" in out
    grads = namespace["grads"]
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    terms = namespace["terms"]
    np.testing.assert_allclose(terms.elbo, terms.log_likelihood - terms.kl, rtol=1e-6)


def test_readme_quick_start_commands_are_the_ones_ci_runs():
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    setup, test = quick.strip().splitlines()
    assert setup.endswith("python -m experiments.mnist --z_dim 20")
    ci = (README.parent / ".ci" / "run").read_text()
    assert test in ci


def test_readme_own_data_and_own_model_examples_run_as_written(capsys):
    """ "Your own data" and "Your own model": as written, with finite results, and the
    importance-sampled log-likelihood of the user's module at least its test ELBO."""
    own_data, own_model = python_blocks()[1:3]
    namespace: dict = {}
    exec(compile(own_data, str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert np.isfinite(namespace["result"].records[-1]["test_loss"])
    namespace = {}
    exec(compile(own_model, str(README), "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "test log p(x) ~" in out
    test_elbo = -namespace["result"].records[-1]["test_loss"]
    log_px = float(np.mean(namespace["log_px"]))
    assert np.isfinite(log_px) and log_px >= test_elbo - 0.05  # IS >= ELBO (up to MC noise)


def test_readme_latent_models_example_runs_as_written(capsys):
    """ "More latent layers, a learned prior, a flow posterior": each model trains and gets a
    finite importance-sampled log-likelihood, at least its test ELBO."""
    block = python_blocks()[3]
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    out = capsys.readouterr().out.splitlines()  # (fit's epoch lines, then each result)
    lines = [line for line in out if "test log p(x) ~" in line]
    assert [line.split(":")[0] for line in lines] == list(namespace["models"])
    test_elbo = -namespace["result"].records[-1]["test_loss"]  # (the last model's)
    log_px = float(np.mean(namespace["log_px"]))
    assert np.isfinite(log_px) and log_px >= test_elbo - 0.5  # IS >= ELBO (up to MC noise)


def test_readme_counts_the_robustness_rows_that_exist():
    """The README's "N numbered rows and M safety cases" is the table's own count: rows
    1..N of docs/robustness.md's bad-input table, none missing or repeated, and the W cases."""
    readme = README.read_text()
    doc = (README.parent / "docs" / "robustness.md").read_text()
    stated = re.search(r"\((\d+) numbered rows and (\d+) safety cases\)", readme)
    assert stated is not None
    table = doc[doc.index("## Bad inputs tried") :]
    numbers = [int(n) for n in re.findall(r"^\| (\d+) \|", table, flags=re.M)]
    assert numbers == list(range(1, len(numbers) + 1))
    safety = re.findall(r"^\| W(\d+) \|", doc, flags=re.M)
    assert safety == [str(i) for i in range(1, len(safety) + 1)]
    assert (int(stated.group(1)), int(stated.group(2))) == (len(numbers), len(safety))
