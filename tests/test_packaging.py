"""Installing the package leaves a ready environment alone: setup.cfg declares ranges (exact versions live in
constraints.txt, for CI only), and `pip install .` into this environment would install nothing but the package."""

import configparser
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement


REPO = Path(__file__).resolve().parent.parent
# the oldest versions the package must run with (the GPU machine's)
LOWEST = {"torch": "2.11", "torchvision": "0.26", "transformers": "5.17"}


def requirements() -> dict[str, Requirement]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = [line.strip() for line in config["options"]["install_requires"].splitlines() if line.strip()]
    return {Requirement(line).name.lower(): Requirement(line) for line in lines}


def test_install_requires_are_ranges_that_admit_the_lowest_supported_versions():
    declared = requirements()
    for requirement in declared.values():
        assert not any(spec.operator in ("==", "===", "<", "<=", "~=") for spec in requirement.specifier), requirement
    for name, lowest in LOWEST.items():
        assert declared[name].specifier.contains(lowest), (name, str(declared[name].specifier))
        assert declared[name].specifier.contains(version(name)), (name, version(name))


def test_constraints_pin_what_ci_installs():
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            pins[requirement.name.lower()] = requirement
    for name in requirements():
        assert name in pins and str(pins[name].specifier).startswith("=="), name


@pytest.mark.slow
def test_pip_install_into_this_environment_changes_no_installed_package(tmp_path):
    report = tmp_path / "report.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation", "--quiet",
         "--report", str(report), str(REPO)],
        check=True, timeout=600, cwd=tmp_path,
    )
    to_install = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    assert to_install == ["modeling_pat"], to_install


def test_every_subpackage_is_installed():
    """setup.cfg lists packages by name: a subpackage left out (e.g. `modeling_pat.apps`) would be missing from a
    wheel while every test run from the checkout still passes."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    declared = {line.strip() for line in config["options"]["packages"].splitlines() if line.strip()}
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "modeling_pat").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert on_disk <= declared, sorted(on_disk - declared)
