"""Paths from users and from file names never leave the configured directories: everything semspark
writes resolves inside SEMSPARK_HOME, names given by users are checked, and installed without a
checkout semspark refuses to guess a working folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from semspark import config as config_module
from semspark.analysis.job import analysis_key
from semspark.config import ConfigError
from semspark.storage import home_path
from semspark import registry


@pytest.fixture
def home(tmp_path, monkeypatch):
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("SEMSPARK_HOME", str(folder))
    return folder.resolve()


@pytest.mark.parametrize("relative", ["../outside", "/etc", "models/../../outside", "a/b/../../../c"])
def test_home_paths_cannot_leave_home(home, relative):
    with pytest.raises(ValueError, match="leaves SEMSPARK_HOME"):
        home_path(relative)


def test_a_link_inside_home_pointing_out_is_refused(home, tmp_path):
    (home / "models").symlink_to(tmp_path)  # resolves outside
    with pytest.raises(ValueError, match="leaves SEMSPARK_HOME"):
        home_path("models/x")
    assert home_path("reports/x") == home / "reports" / "x"


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "x" * 65, "..", "a b", "name\n"])
def test_user_given_names_are_checked(home, name):
    with pytest.raises(registry.RegistryError):
        registry.check_name(name)
    with pytest.raises(registry.RegistryError):
        registry.run_dir(name)
    with pytest.raises(registry.RegistryError):
        registry.resolve(f"{name}/latest")


def test_analysis_report_folders_stay_inside_reports(home):
    key = analysis_key("../../etc/1", ("../x", "1um"), "embedding", "10", "../../Particles")
    assert "/" not in key and key not in (".", "..")  # one path component
    assert home_path(f"reports/{key}").parent == home / "reports"


def test_installed_without_a_checkout_semspark_needs_semspark_home(tmp_path, monkeypatch):
    monkeypatch.delenv("SEMSPARK_HOME", raising=False)
    monkeypatch.setattr(config_module, "PROJECT_ROOT", tmp_path / "site-packages")
    with pytest.raises(ConfigError, match="SEMSPARK_HOME is not set"):
        config_module.semspark_home()
    monkeypatch.setenv("SEMSPARK_HOME", str(tmp_path / "h"))
    assert config_module.semspark_home() == (tmp_path / "h").resolve()
    assert os.fspath(config_module.semspark_home()).startswith(os.fspath(tmp_path))
    assert not Path(tmp_path / "site-packages" / "var").exists()
