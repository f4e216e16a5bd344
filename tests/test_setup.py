"""The set-up itself: requirements, the Makefile's two commands, Streamlit's settings, the README,
and the rule that the ``vgg`` library never imports streamlit."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent


def requirements(name: str) -> dict[str, Requirement]:
    lines = (REPO / name).read_text().splitlines()
    reqs = [Requirement(line.split("#")[0]) for line in lines if line.split("#")[0].strip()]
    return {req.name.lower(): req for req in reqs}


@pytest.mark.parametrize(
    ("package", "version"),
    [("torch", "2.14.1"), ("torchvision", "0.29.1"), ("streamlit", "1.67.0")],
)
def test_requirements_admit_the_versions_installed_here(package: str, version: str) -> None:
    assert Version(version) in requirements("requirements.txt")[package].specifier


def test_requirements_need_streamlit_with_navigation_and_fragments() -> None:
    spec = requirements("requirements.txt")["streamlit"].specifier
    assert Version("1.59.0") not in spec
    assert Version("1.60.0") in spec


def test_dev_requirements_bring_pytest_and_playwright_but_no_browser() -> None:
    dev = requirements("requirements-dev.txt")
    assert {"pytest", "pytest-timeout", "playwright"} <= set(dev)
    assert not set(dev) & set(requirements("requirements.txt"))


def test_vgg_never_imports_streamlit() -> None:
    script = (
        "import pkgutil, sys, importlib, vgg\n"
        "names = [m.name for m in pkgutil.walk_packages(vgg.__path__, 'vgg.')"
        " if not m.name.endswith('__main__')]\n"
        "for name in names: importlib.import_module(name)\n"
        "assert len(names) >= 2, names\n"
        "print(len(names), 'streamlit' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    count, imported = result.stdout.split()
    assert imported == "False", f"importing the {count} vgg modules imported streamlit"


def test_streamlit_config_is_safe_for_a_classroom() -> None:
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["headless"] is True
    assert config["server"]["fileWatcherType"] == "none"
    assert config["server"]["runOnSave"] is False
    assert 1 <= config["server"]["maxUploadSize"] <= 50
    assert config["browser"]["gatherUsageStats"] is False
    assert config["client"]["showErrorDetails"] == "none"
    assert config["client"]["toolbarMode"] in {"viewer", "minimal"}


def test_streamlit_accepts_the_config_values() -> None:
    from streamlit import config as st_config

    values = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    known = st_config.get_config_options()
    for section, options in values.items():
        for name, value in options.items():
            assert f"{section}.{name}" in known, f"Streamlit has no option {section}.{name}"
    assert values["client"]["showErrorDetails"] in {e.value for e in st_config.ShowErrorDetailsConfigOptions}


def make_dry_run(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        ["make", "-n", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_run_serves_the_app_on_port_8501_by_default() -> None:
    env = {key: value for key, value in os.environ.items() if key not in {"PORT", "ADDRESS"}}
    result = subprocess.run(["make", "-n", "run"], cwd=REPO, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "-m streamlit run app.py --server.port 8501 --server.address localhost" in result.stdout


def test_make_run_takes_port_and_address_from_the_command_line_and_environment() -> None:
    assert "--server.port 8600 --server.address 0.0.0.0" in make_dry_run("run", "PORT=8600", "ADDRESS=0.0.0.0")
    assert "--server.port 8700" in make_dry_run("run", env={"PORT": "8700"})


def test_make_test_runs_pytest_after_chromium_and_dev_requirements() -> None:
    out = make_dry_run("test", "PYTEST_ARGS=-x -k shell")
    assert ".venv/bin/python -m pytest -x -k shell" in out
    assert "chromium" in out
    assert "playwright install" not in out


@pytest.fixture
def fake_checkout(tmp_path: Path) -> Path:
    """The Makefile and requirements in a folder whose .venv python is a stand-in."""
    for name in ("Makefile", "requirements.txt", "requirements-dev.txt"):
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def test_make_run_creates_the_venv_when_there_is_none(fake_checkout: Path) -> None:
    out = make_dry_run("run", cwd=fake_checkout)
    assert "python3 -m venv .venv" in out
    assert re.search(r"\.venv/bin/python -m pip install +-r requirements.txt", out)


def test_second_make_run_skips_the_install_until_requirements_change(fake_checkout: Path) -> None:
    (fake_checkout / ".venv" / "bin").mkdir(parents=True)
    (fake_checkout / ".venv" / "bin" / "python").touch()
    stamp = fake_checkout / ".venv" / ".requirements.stamp"
    stamp.touch()
    requirements_txt = fake_checkout / "requirements.txt"
    os.utime(requirements_txt, (1_000_000, 1_000_000))
    os.utime(stamp, (2_000_000, 2_000_000))
    assert "pip install" not in make_dry_run("run", cwd=fake_checkout)
    assert "-m venv" not in make_dry_run("run", cwd=fake_checkout)

    os.utime(requirements_txt, (3_000_000, 3_000_000))  # the requirements changed
    assert re.search(r"pip install +-r requirements.txt", make_dry_run("run", cwd=fake_checkout))


def test_ci_runs_make_test() -> None:
    script = REPO / ".ci" / "run"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert "make test" in text


def test_readme_opens_with_the_two_commands() -> None:
    lines = [line for line in (REPO / "README.md").read_text().splitlines() if line.strip()]
    head = "\n".join(lines[:6])
    assert "make run" in head and "make test" in head and "http://localhost:8501" in head


def test_readme_names_torchvisions_weight_files() -> None:
    from torchvision import models

    readme = (REPO / "README.md").read_text()
    for name in ("VGG11", "VGG11_BN", "VGG13", "VGG13_BN", "VGG16", "VGG16_BN", "VGG19", "VGG19_BN"):
        file_name = getattr(models, f"{name}_Weights").IMAGENET1K_V1.url.rsplit("/", 1)[-1]
        assert file_name in readme


def test_generated_files_are_ignored_by_git() -> None:
    ignored = (REPO / ".gitignore").read_text().splitlines()
    for entry in (".venv/", "tests/artifacts/", "/data/", "/runs/", "__pycache__/"):
        assert entry in ignored


def test_app_shell_runs_and_shows_the_device(tmp_path: Path) -> None:
    from streamlit.testing.v1 import AppTest

    from vgg.settings import default_device, device_description

    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    assert not app.exception, [e.value for e in app.exception]
    sidebar = " ".join(m.value for m in app.sidebar.markdown)
    assert device_description(default_device()) in sidebar
    assert "synthetic" in sidebar
