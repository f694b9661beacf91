"""`vae_jax.__version__`, and the version a run's config.json records (no compilation)."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version

import vae_jax
from vae_jax.cli import read_config_file
from vae_jax.config import DataConfig, ExperimentConfig, ModelConfig
from vae_jax.workdir import VERSION_FIELD, claim, read_config, write_config


def test_version_comes_from_the_package_metadata():
    try:
        installed = version("vae-jax")
    except PackageNotFoundError:  # (a source tree, not installed)
        installed = "0+unknown"
    assert vae_jax.__version__ == installed and "__version__" in vae_jax.__all__


def _config() -> ExperimentConfig:
    return ExperimentConfig(
        model=ModelConfig(hidden=(8,), z_dim=2),
        data=DataConfig(dataset="toy", event_shape=(4, 4, 1)),
    )


def test_config_json_records_the_version_and_reads_back_without_it(tmp_path):
    """The field is a record, not configuration: the run's configuration reads back equal,
    a run of another version resumes (claim accepts it), and --config takes the file."""
    config = _config()
    write_config(tmp_path, config)
    path = tmp_path / "config.json"
    values = json.loads(path.read_text())
    assert values[VERSION_FIELD] == vae_jax.__version__
    assert {k: v for k, v in values.items() if k != VERSION_FIELD} == json.loads(
        json.dumps(config.to_dict())
    )
    assert read_config(tmp_path) == config
    path.write_text(json.dumps({**values, VERSION_FIELD: "0.0.1"}))
    claim(tmp_path, config)  # (another version's run of this configuration: not refused)
    assert json.loads(path.read_text())[VERSION_FIELD] == vae_jax.__version__
    assert read_config_file(str(path), ExperimentConfig()) == config


def test_a_record_of_pieces_records_the_version_too(tmp_path):
    record = {"model": "Mine()", "run": {"epochs": 1}}
    claim(tmp_path, record)
    values = json.loads((tmp_path / "config.json").read_text())
    assert values == {**record, VERSION_FIELD: vae_jax.__version__}
    claim(tmp_path, {**record, "run": {"epochs": 2}})  # the same run, resumed
