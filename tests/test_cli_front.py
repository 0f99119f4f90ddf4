"""The console scripts' front (`modeling_pat_cli`): `--help` and usage errors answer before torch or transformers load,
and the names its parsers offer are the package's own."""

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

import modeling_pat_cli
from modeling_pat import demo
from modeling_pat.apps import pretrained
from modeling_pat.cli import main as cli_main  # the entry module users import
from modeling_pat.configuration_pat import VOCABULARY_FILES


REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "modeling_pat")
# Calls an entry point as its console script does, then reports which heavy modules it had imported by then.
PROBE = (
    "import sys, modeling_pat_cli\n"
    "code = getattr(modeling_pat_cli, sys.argv[1])(sys.argv[2:])\n"
    f"print('loaded:', sorted(name for name in {HEAVY!r} if name in sys.modules), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def run_entry(function: str, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PROBE, function, *arguments],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
    )


@pytest.mark.parametrize(
    "function, arguments, code, usage",
    [
        ("segment_main", ["--help"], 0, "usage: pat-segment"),
        ("segment_main", ["photo.png"], 2, "one of the arguments --labels --vocabulary is required"),
        ("segment_main", ["photo.png", "--labels", "cat", "--batch-size", "0"], 2, "must be at least 1"),
        ("demo_main", ["--help"], 0, "usage: pat-demo"),
    ],
)
def test_help_and_usage_errors_answer_without_torch_or_transformers(function, arguments, code, usage):
    done = run_entry(function, *arguments)
    assert done.returncode == code, done.stderr
    assert usage in (done.stdout if code == 0 else done.stderr)
    assert done.stderr.splitlines()[-1] == "loaded: []", done.stderr


def test_console_scripts_point_at_the_front():
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    scripts = dict(line.split(" = ") for line in setup["options.entry_points"]["console_scripts"].split("\n") if line)
    assert scripts == {"pat-segment": "modeling_pat_cli:segment_main", "pat-demo": "modeling_pat_cli:demo_main"}
    assert "modeling_pat_cli" in setup["options"]["py_modules"].split()


def test_offered_names_are_the_packages_own():
    assert sorted(modeling_pat_cli.VOCABULARY_NAMES) == sorted(VOCABULARY_FILES)
    assert modeling_pat_cli.OFFICIAL_MODEL_NAMES == tuple(pretrained.OFFICIAL_MODELS)


def test_in_process_entry_points_still_parse_and_run(tmp_path, capsys):
    """`from modeling_pat.cli import main` and `modeling_pat.demo.main` take the same arguments as the scripts."""
    assert cli_main(["photo.png", "--labels", "cat", "--dtype", "float64"]) == 2
    assert "invalid choice: 'float64'" in capsys.readouterr().err
    assert cli_main([str(tmp_path / "missing.png"), "--labels", "cat"]) == 2  # parsed, then checked by the runner
    assert "no image matched" in capsys.readouterr().err
    assert demo.main(["--port", "not-a-number"]) == 2
    assert "invalid int value" in capsys.readouterr().err


def test_python_dash_m_keeps_working():
    done = subprocess.run(
        [sys.executable, "-m", "modeling_pat.cli", "--help"], capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: pat-segment")
