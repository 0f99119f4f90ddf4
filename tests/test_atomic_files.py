"""Atomic writes (`modeling_pat/atomic_files.py`): complete under the final name, or not there at all."""

import os
import stat

import numpy as np
import pytest
from PIL import Image

from modeling_pat.atomic_files import atomic_open, atomic_path, staged_folder, write_text_atomic
from modeling_pat.apps.visualization import save_label_map


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old, complete content")
    with pytest.raises(RuntimeError, match="disk gone"):
        with atomic_open(target) as handle:
            handle.write("new, half")
            raise RuntimeError("disk gone")
    assert target.read_text() == "old, complete content"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_the_final_name_appears_only_when_the_content_is_complete(tmp_path):
    target = tmp_path / "table.md"
    with atomic_path(target) as temporary:
        temporary.write_text("| a |")
        assert not target.exists() and temporary.parent == tmp_path
    assert target.read_text() == "| a |"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_written_files_get_ordinary_permissions(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "x")
    open(tmp_path / "b.txt", "w").close()
    mode = stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "b.txt").st_mode)  # not mkstemp's private 0600


def test_a_folder_in_the_way_raises_oserror_and_leaves_no_temporary(tmp_path):
    (tmp_path / "labels.png").mkdir()
    with pytest.raises(OSError):
        save_label_map(np.zeros((4, 5), dtype=np.int64), 3, tmp_path / "labels.png")
    assert [p.name for p in tmp_path.iterdir()] == ["labels.png"]


def test_an_interrupted_png_write_leaves_the_previous_png(tmp_path, monkeypatch):
    target = tmp_path / "labels.png"
    save_label_map(np.ones((4, 5), dtype=np.int64), 3, target)
    real_save = Image.Image.save

    def save_half(image, fp, *args, **kwargs):  # as a full disk would: part of the file, then an error
        real_save(image, fp, *args, **kwargs)
        with open(fp, "r+b") as handle:
            handle.truncate(20)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", save_half)
    with pytest.raises(OSError, match="No space"):
        save_label_map(np.zeros((4, 5), dtype=np.int64), 3, target)
    monkeypatch.undo()
    with Image.open(target) as png:
        assert np.array(png).tolist() == np.ones((4, 5)).tolist()
    assert [p.name for p in tmp_path.iterdir()] == ["labels.png"]


def test_a_staged_folder_moves_its_files_in_only_when_complete(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_text("the earlier, complete weights")
    with pytest.raises(OSError, match="No space"):
        with staged_folder(folder) as staging:
            (staging / "config.json").write_text("{}")
            (staging / "model.safetensors").write_text("half of the new wei")
            raise OSError(28, "No space left on device")
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors"]
    assert (folder / "model.safetensors").read_text() == "the earlier, complete weights"
    with staged_folder(folder) as staging:
        (staging / "model.safetensors").write_text("new weights")
        (staging / "config.json").write_text("{}")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert (folder / "model.safetensors").read_text() == "new weights"
