"""The README's Python example runs as written (on a saved tiny random model instead of a converted checkpoint)."""

import os
import re
from pathlib import Path

from modeling_pat import PATProcessor

from conftest import tiny_model


README = Path(__file__).resolve().parent.parent / "README.md"


def test_python_example_runs(tmp_path, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    folder = tmp_path / "san-vit-b16-hf"
    model = tiny_model()
    model.save_pretrained(folder)
    PATProcessor.from_config(model.config).save_pretrained(folder)
    cwd = os.getcwd()
    os.chdir(README.parent)  # the example reads samples/ relative to the repository root
    try:
        exec(compile(blocks[0].replace('"san-vit-b16-hf"', repr(str(folder))), "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out
    assert re.search(r"\{'(cup|coffee|saucer|spoon|table)': ", printed)
