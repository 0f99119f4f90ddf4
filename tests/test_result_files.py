"""The per-image result files (`modeling_pat/apps/result_files.py`): their names, the marker that makes them
replaceable, and the rule that keeps every other file safe. No model: a synthetic image and label map."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modeling_pat.apps.result_files import (
    RESULT_MARKER,
    output_stems,
    result_files,
    result_kind,
    result_name_taken,
    write_outputs,
)
from modeling_pat.apps.visualization import make_palette


CLASSES = ["sky", "grass", "cat"]


def write_one(output_dir: Path, stem: str = "photo", segments=None) -> dict[str, str]:
    image = Image.new("RGB", (12, 8), (90, 140, 200))
    label_map = np.zeros((8, 12), dtype=np.int64)
    label_map[4:, :] = 1  # the lower half is grass
    output_dir.mkdir(parents=True, exist_ok=True)
    write_outputs(image, label_map, Path("photo.png"), stem, CLASSES, make_palette(len(CLASSES)), output_dir, "tiny",
                  segments=segments)
    return result_files(stem)


def test_written_files_are_marked_with_their_kind(tmp_path):
    files = write_one(tmp_path)
    for kind in ("labels", "overlay", "summary"):
        assert result_kind(tmp_path / files[kind]) == kind
    assert not (tmp_path / files["segments"]).exists()  # a semantic run writes no segment map
    summary = json.loads((tmp_path / files["summary"]).read_text())
    assert summary[RESULT_MARKER] == "summary"
    assert summary["pixel_fractions"] == pytest.approx([0.5, 0.5, 0.0])
    assert [entry["label"] for entry in summary["classes_present"]] == ["sky", "grass"]
    assert np.array_equal(np.unique(np.array(Image.open(tmp_path / files["labels"]))), [0, 1])


def test_files_of_others_are_no_results(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "photo_labels.png")  # an ordinary PNG with the same name
    (tmp_path / "photo.json").write_text(json.dumps({"labels": ["sky"]}))
    (tmp_path / "notes.txt").write_text("x")
    assert result_kind(tmp_path / "photo_labels.png") is None
    assert result_kind(tmp_path / "photo.json") is None
    assert result_kind(tmp_path / "notes.txt") is None
    assert result_kind(tmp_path / "missing.png") is None


def test_a_foreign_file_is_never_replaced(tmp_path):
    foreign = tmp_path / "photo_overlay.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(foreign)
    before = foreign.read_bytes()
    assert "is not an earlier pat-segment overlay file" in result_name_taken(tmp_path, "photo", set())
    with pytest.raises(FileExistsError):
        write_one(tmp_path)
    assert foreign.read_bytes() == before
    assert output_stems([Path("in/photo.png")], tmp_path) == ["photo-2"]  # the next free stem instead


def test_earlier_results_are_replaced_but_not_inputs(tmp_path):
    files = write_one(tmp_path)
    assert result_name_taken(tmp_path, "photo", set()) is None  # an earlier run's results may be replaced
    labels = str((tmp_path / files["labels"]).resolve())
    assert "is an input of this run" in result_name_taken(tmp_path, "photo", {labels})
    write_one(tmp_path)  # the rerun replaces its own results
    expected = sorted(files[kind] for kind in ("labels", "overlay", "summary"))
    assert sorted(path.name for path in tmp_path.iterdir()) == expected


def test_an_earlier_segment_map_goes_when_a_semantic_run_replaces_it(tmp_path):
    segment_map = np.zeros((8, 12), dtype=np.int64)
    segment_map[:4] = 1
    segments = {"segment_map": segment_map, "subtask": "instance",
                "segments": [{"id": 1, "label": "sky", "score": 0.9, "area": 48, "box": [0, 0, 12, 4]}]}
    files = write_one(tmp_path, segments=segments)
    assert result_kind(tmp_path / files["segments"]) == "segments"
    assert json.loads((tmp_path / files["summary"]).read_text())["segments"][0]["label"] == "sky"
    write_one(tmp_path)  # a semantic run of the same image: the segment map would no longer match
    assert not (tmp_path / files["segments"]).exists()


def test_stems_are_unique_whatever_the_case():
    assert output_stems([Path("x/a.png"), Path("y/A.jpg"), Path("a-2.png")]) == ["a", "A-2", "a-2-2"]
