"""Weights-file checks (`modeling_pat/weights_files.py`): a bad safetensors file is named with what is wrong."""

import pytest
import torch
from safetensors.torch import save_file

from modeling_pat.weights_files import bad_weights_error, safetensors_problem


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.randn(10, 10), "b": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    return path


def test_a_sound_file_has_no_problem(weights):
    assert safetensors_problem(weights) is None
    assert bad_weights_error([weights]) is None


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda data: data[: len(data) - 7], "truncated: "),  # an interrupted download
        (lambda data: data[:30], "truncated: its header alone"),
        (lambda data: b"", "only 0 bytes"),
        (lambda data: data + b"\0\0\0", "3 bytes after the last tensor"),
        (lambda data: data[:8] + b"#" + data[9:], "corrupt header"),
        (lambda data: b"PK\x03\x04\x14\x00\x08\x08" + data[8:], "not a safetensors file"),  # a zip, renamed
    ],
)
def test_damaged_files_are_named_with_the_problem(weights, damage, reason):
    weights.write_bytes(damage(weights.read_bytes()))
    assert reason in safetensors_problem(weights)
    error = bad_weights_error([weights])
    assert isinstance(error, OSError) and str(weights) in str(error) and reason in str(error)
