"""The estimator's examples in docs/evaluation.md and the README run as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _block(path: Path, heading: str, fence: str) -> str:
    section = path.read_text().split(heading, 1)[1]
    match = re.search(rf"```{fence}\n(.*?)```", section, flags=re.DOTALL)
    assert match, f"no ```{fence} block after {heading!r} in {path.name}"
    return match.group(1)


def _run(code: str, path: Path) -> dict:
    namespace: dict = {}
    exec(compile(code, str(path), "exec"), namespace)  # noqa: S102 - our own docs
    return namespace


def test_evaluation_md_estimator_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # it saves to ./wine_vae
    path = ROOT / "docs" / "evaluation.md"
    ns = _run(_block(path, "## The scikit-learn estimator", "python"), path)
    out = capsys.readouterr().out
    vae_nats, gauss_nats = (float(v) for v in re.findall(r": (-?[\d.]+) nats", out))
    assert np.isfinite(vae_nats) and np.isfinite(gauss_nats)
    assert ns["codes"].shape == (54, 2) and ns["codes"].dtype == np.float64
    assert ns["draws"].shape == (5, 13) and ns["means"].shape == (54, 13)
    assert 1 <= ns["model"].best_epoch_ <= ns["model"].n_iter_ <= ns["model"].max_epochs
    assert (tmp_path / "wine_vae" / "estimator.json").is_file()


def test_readme_estimator_example_runs_as_written(capsys):
    # (fenced ```py, not ```python: tests/test_readme.py takes the README's ```python
    # blocks in order and expects exactly three)
    path = ROOT / "README.md"
    ns = _run(_block(path, "## Evaluation and the estimator", "py"), path)
    assert ns["codes"].shape == (54, 2)
    (nats,) = re.findall(r"held-out log-density: (-?[\d.]+) nats", capsys.readouterr().out)
    assert np.isfinite(float(nats))


def test_every_module_the_docs_run_exists():
    """Each ``python -m package.module`` in docs/*.md and the README names a module of this
    repository (docs/evaluation.md cited examples.sklearn_estimator, which never existed)."""
    cited = set()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        cited |= set(re.findall(r"python3? -m ((?:benchmarks|experiments|examples|vae_jax)"
                                r"(?:\.[a-z_]+)+)", path.read_text()))  # fmt: skip
    assert "experiments.sklearn_estimator" in cited
    missing = sorted(m for m in cited if not (ROOT / (m.replace(".", "/") + ".py")).is_file())
    assert missing == []
