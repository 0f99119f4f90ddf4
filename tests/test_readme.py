"""Every Python example in the README runs as written, on saved tiny random models instead of the official ones:
`resolve_pretrained("san-vit-b16")` answers with a saved tiny SAN folder, `"pat-checkpoint"` is a saved tiny PAT."""

import os
import re
from pathlib import Path

import pytest

from modeling_pat import PATProcessor
from modeling_pat.apps import pretrained

from conftest import tiny_model


README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def saved_folder(folder: Path, preset: str) -> Path:
    model = tiny_model(preset=preset)
    model.save_pretrained(folder)
    PATProcessor.from_config(model.config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("readme_models")
    return {"san": saved_folder(root / "san", "san-tiny"), "pat": saved_folder(root / "pat", "pat-tiny")}


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_python_example_runs(index, folders, monkeypatch, capsys, tmp_path):
    requested = []

    def resolve(name, revision=None, token=None):
        requested.append(name)
        return str(folders["san"])

    monkeypatch.setattr(pretrained, "resolve_pretrained", resolve)
    # the examples read samples/ relative to the repository root and may write folders (save_pretrained): run them in
    # a temporary folder that sees the repository's samples/, so that nothing is written into the checkout
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "samples").symlink_to(README.parent / "samples", target_is_directory=True)
    monkeypatch.chdir(workdir)
    code = BLOCKS[index].replace('"pat-checkpoint"', repr(str(folders["pat"])))
    exec(compile(code, f"README.md python example {index + 1}", "exec"), {})
    assert set(requested) <= set(pretrained.OFFICIAL_MODELS)  # only names that exist
    if "print({class_names[i]" in code:
        assert re.search(r"\{'(cup|coffee|saucer|spoon|table)': ", capsys.readouterr().out)
