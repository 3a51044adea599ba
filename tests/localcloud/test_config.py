"""Config: LOCALCLOUD_* variables, flags winning over them, and bad values named."""

import pytest

from localcloud.config import Config


def test_config_reads_environment_and_names_bad_values(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCALCLOUD_PORT", "4999")
    monkeypatch.setenv("LOCALCLOUD_DATA_DIR", str(tmp_path))
    config = Config.from_env(region="eu-west-1")
    assert (config.port, config.data_dir, config.region) == (4999, tmp_path, "eu-west-1")
    assert Config.from_env(port=5000).port == 5000  # flags win
    monkeypatch.setenv("LOCALCLOUD_PORT", "forty")
    with pytest.raises(ValueError, match="LOCALCLOUD_PORT must be an integer, got 'forty'"):
        Config.from_env()
