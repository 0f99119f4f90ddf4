"""`pat-segment --subtask instance | panoptic`: the 16-bit segment-id PNG, the segment list in the JSON, outlines in
the overlay, and the usage errors of the new options."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modeling_pat import PATProcessor
from modeling_pat.apps.cli import EXIT_OK, EXIT_USAGE, main

from test_mask_segments import golden_model


CAT = Path(__file__).parent / "fixtures" / "samples" / "chelsea.png"  # 451 x 300
LENIENT = ["--threshold", "0", "--overlap-mask-area-threshold", "0"]  # random weights: keep every segment


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """The tiny SAN with the golden reference weights (its proposals differ, unlike a fresh random model's)."""
    folder = tmp_path_factory.mktemp("golden_san")
    model = golden_model()
    model.save_pretrained(folder)
    PATProcessor.from_config(model.config, size={"shortest_edge": 96, "longest_edge": 384}).save_pretrained(folder)
    return folder


def run(model_folder, output_dir, *extra) -> int:
    return main([str(CAT), "--labels", "cat,sofa,wall", "--model", str(model_folder), "--quiet",
                 "--output-dir", str(output_dir), *extra])


@pytest.mark.parametrize("subtask", ["instance", "panoptic"])
def test_segment_files(model_folder, tmp_path, subtask):
    assert run(model_folder, tmp_path / "seg", "--subtask", subtask, *LENIENT) == EXIT_OK
    assert run(model_folder, tmp_path / "sem") == EXIT_OK
    with Image.open(tmp_path / "seg" / "chelsea_segments.png") as png:
        segment_map = np.array(png)
    assert segment_map.dtype == np.uint16 and segment_map.shape == (300, 451)
    summary = json.loads((tmp_path / "seg" / "chelsea.json").read_text())
    assert summary["subtask"] == subtask and summary["segment_map"] == "chelsea_segments.png"
    segments = summary["segments"]
    assert segments and set(np.unique(segment_map).tolist()) - {0} == {s["id"] for s in segments}
    scores = [s["score"] for s in segments]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    for segment in segments:
        assert segment["label"] == ["cat", "sofa", "wall"][segment["label_id"]]
        rows, columns = np.nonzero(segment_map == segment["id"])
        assert segment["area"] == len(rows)
        assert segment["box"] == [columns.min(), rows.min(), columns.max() + 1, rows.max() + 1]
    # the semantic files are still written, equal to a semantic run's; the overlay adds the segments' outlines
    semantic = json.loads((tmp_path / "sem" / "chelsea.json").read_text())
    assert summary["pixel_fractions"] == semantic["pixel_fractions"] and "segments" not in semantic
    assert not (tmp_path / "sem" / "chelsea_segments.png").exists()
    overlays = [Image.open(tmp_path / run / "chelsea_overlay.png") for run in ("seg", "sem")]
    outlined, plain = (np.asarray(overlay.convert("RGB"))[:300, :451] for overlay in overlays)
    changed = (outlined != plain).any(axis=-1)
    assert changed.any() and (outlined[changed] == 255).all()  # only white outline pixels were added


def test_segment_options_usage_errors(model_folder, tmp_path, capsys):
    assert run(model_folder, tmp_path, "--subtask", "instance", "--sliding-window") == EXIT_USAGE
    assert "--sliding-window" in capsys.readouterr().err
    assert run(model_folder, tmp_path, "--subtask", "panoptic", "--threshold", "1.5") == EXIT_USAGE
    assert "--threshold must lie in [0, 1]" in capsys.readouterr().err
    assert run(model_folder, tmp_path, "--subtask", "depth") == EXIT_USAGE


def test_a_semantic_rerun_removes_an_earlier_runs_segment_map_but_no_foreign_file(model_folder, tmp_path):
    assert run(model_folder, tmp_path / "out", "--subtask", "instance", *LENIENT) == EXIT_OK
    assert (tmp_path / "out" / "chelsea_segments.png").is_file()
    assert run(model_folder, tmp_path / "out") == EXIT_OK  # semantic: the old segments no longer match its files
    assert not (tmp_path / "out" / "chelsea_segments.png").exists()
    (tmp_path / "mine").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "mine" / "chelsea_segments.png")
    assert run(model_folder, tmp_path / "mine") == EXIT_OK  # a user's own file of that name is kept
    assert (tmp_path / "mine" / "chelsea_segments.png").is_file()
