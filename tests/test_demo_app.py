"""The demo's behaviour without a browser: inputs and their error messages, segmentation results, the region query,
the subtask table, the page's layout and the command line (the page in a browser: test_demo_browser.py)."""

import configparser
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modeling_pat import PATProcessor
from modeling_pat.apps import demo_app
from modeling_pat.apps.model_loading import ModelLoadError
from modeling_pat.demo import main as demo_main
from modeling_pat.apps.demo_app import SUBTASKS, DemoInputError, SegmentationDemo

from conftest import tiny_model


SAMPLE = Path(__file__).parent / "fixtures" / "samples" / "chelsea.png"
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> SegmentationDemo:
    model = tiny_model()
    return SegmentationDemo(
        model, PATProcessor.from_config(model.config), "random:san-tiny", output_root=tmp_path_factory.mktemp("out")
    )


# -- inputs -----------------------------------------------------------------------------------------------------------
def test_class_names_from_text_and_presets():
    assert SegmentationDemo.class_names(" cat,sofa , ,floor ", "") == ["cat", "sofa", "floor"]
    ade = SegmentationDemo.class_names("ignored when a preset is chosen", "ade150")
    assert len(ade) == 150 and ade[0] == "wall"
    assert [value for _, value in demo_app.vocabulary_choices()][1:] == list(demo_app.VOCABULARY_FILES)


@pytest.mark.parametrize(
    ("text", "preset", "message"),
    [
        ("", "", "No class names"),
        (" , ,", None, "No class names"),
        ("cat, sofa, Cat", "", "The class list names the same class twice: 'cat' (index 0) and 'Cat' (index 2)"),
        ("cat", "imagenet", "Unknown vocabulary preset 'imagenet'"),
    ],
)
def test_bad_class_names_are_explained(text, preset, message):
    with pytest.raises(DemoInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SegmentationDemo.class_names(text, preset)


def test_bad_images_are_explained(demo, tmp_path):
    with pytest.raises(DemoInputError, match="No image"):
        demo.read_image(None)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(SAMPLE.read_bytes()[:2000])  # a valid header, then the pixel data stops
    for path in (not_an_image, truncated):
        with pytest.raises(DemoInputError, match="Cannot read this file as an image"):
            demo.read_image(str(path))
    small_limit = SegmentationDemo(demo.model, demo.processor, "tiny", max_pixels=1000, output_root=tmp_path)
    with pytest.raises(DemoInputError, match=r"too large: 451 x 300 pixels .* up to 0.0 MP"):
        small_limit.read_image(str(SAMPLE))
    assert demo.read_image(str(SAMPLE)).size == (451, 300)


# -- segmentation -----------------------------------------------------------------------------------------------------
def test_segment_returns_overlay_table_and_files(demo):
    steps = []
    result = demo.segment(str(SAMPLE), "cat, sofa, floor", "", progress=lambda f, text: steps.append(text))
    [label_file] = result.label_files  # no segment map in a semantic run
    label_map = np.asarray(Image.open(label_file))
    assert label_map.shape == (300, 451) and label_map.dtype == np.uint8
    summary = json.loads(result.json_file.read_text())
    assert summary["labels"] == ["cat", "sofa", "floor"] and summary["image"] == "chelsea.png"
    # the table: one row per class present, its share as in the label map, largest first
    counts = np.bincount(label_map.ravel(), minlength=3) / label_map.size
    assert [row[1] for row in result.table] == [
        ["cat", "sofa", "floor"][i] for i in sorted(np.flatnonzero(counts), key=lambda i: (-counts[i], i))
    ]
    assert all(row[0].startswith("#") and len(row[0]) == 7 and row[2].endswith("%") for row in result.table)
    assert result.overlay.height == 300 and result.overlay.width > 451  # the photo, then the legend to its right
    assert result.class_names == ["cat", "sofa", "floor"]
    assert steps[0].startswith("Computing text embeddings of 3 class names")


def test_old_result_folders_are_removed(demo):
    stale, fresh = demo.output_root / "stale", demo.output_root / "fresh"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "x_labels.png").write_bytes(b"")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    result = demo.segment(str(SAMPLE), "cat", "")
    assert not stale.exists() and fresh.exists() and result.label_files[0].exists()


def test_progress_is_shown_before_the_text_encoder_runs(demo, monkeypatch):
    events, encode = [], demo.model._encode_class_names
    monkeypatch.setattr(demo.model, "_encode_class_names", lambda ids: events.append("encode") or encode(ids))
    demo.segment(str(SAMPLE), "a new class name, another one", "", progress=lambda f, text: events.append(text))
    assert events.index("encode") > 0 and events[0].startswith("Computing text embeddings")


def test_subtasks_plug_into_the_table(demo, monkeypatch):
    """A new subtask is one entry of SUBTASKS: its label map feeds the same overlay, table and files."""
    def halves(demo, image, class_names, class_embeddings, sliding_window):
        label_map = np.zeros((image.height, image.width), dtype=np.int64)
        label_map[:, image.width // 2:] = 1
        return {"label_map": label_map}

    monkeypatch.setitem(SUBTASKS, "halves", halves)
    result = demo.segment(str(SAMPLE), "cat, sky", "", subtask="halves")
    assert [row[1:] for row in result.table] == [["sky", "50.1%"], ["cat", "49.9%"]]  # 226 vs 225 columns
    with pytest.raises(DemoInputError, match="Unknown subtask 'amodal'; available: semantic, instance, panoptic, hal"):
        demo.segment(str(SAMPLE), "cat", "", subtask="amodal")


@pytest.mark.parametrize("subtask", ["instance", "panoptic"])
def test_segment_subtasks_write_their_segments(demo, subtask):
    result = demo.segment(str(SAMPLE), "cat, sky, wall", "", subtask=subtask)
    summary = json.loads(result.json_file.read_text())
    assert summary["subtask"] == subtask
    label_file, segment_file = result.label_files
    assert segment_file.name == "chelsea_segments.png" and summary["segment_map"] == segment_file.name
    segment_ids = np.unique(np.asarray(Image.open(segment_file)))
    assert {segment["id"] for segment in summary["segments"]} == set(segment_ids.tolist()) - {0}
    assert f"in {len(summary['segments'])} {subtask} segments" in result.message
    with pytest.raises(DemoInputError, match=f"The {subtask} subtask needs the mask proposals"):
        demo.segment(str(SAMPLE), "cat, sky", "", subtask=subtask, sliding_window=True)


def test_concurrent_requests_take_turns_on_the_model(demo, monkeypatch):
    """Web-server threads share one model: one forward pass at a time, whatever the queue's settings."""
    running, overlaps = [], []

    def watched(demo, image, class_names, class_embeddings, sliding_window):
        running.append(1)
        overlaps.append(len(running))
        time.sleep(0.2)  # long enough for the other thread to arrive meanwhile
        running.pop()
        return {"label_map": np.zeros((image.height, image.width), dtype=np.int64)}

    monkeypatch.setitem(SUBTASKS, "watched", watched)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: demo.segment(str(SAMPLE), "cat, sky", "", subtask="watched"), range(3)))
    assert overlaps == [1, 1, 1]
    assert len({result.json_file.parent for result in results}) == 3  # each request has its own files


def test_sliding_window_switch_uses_windows(demo, monkeypatch):
    calls = []
    original = demo_app.segment_batch
    def recording(*args, **kwargs):
        calls.append(kwargs["sliding_window"])
        return original(*args, **kwargs)

    monkeypatch.setattr(demo_app, "segment_batch", recording)
    demo.segment(str(SAMPLE), "cat, sky", "", sliding_window=True)
    demo.segment(str(SAMPLE), "cat, sky", "", sliding_window=False)
    assert calls == [True, False]


# -- region query -----------------------------------------------------------------------------------------------------
def test_region_query_names_and_draws_the_best_proposal(demo):
    result = demo.segment(str(SAMPLE), "cat, sofa, floor", "")
    answer = demo.query_point(result.image_path, result.class_names, 200, 150)
    if answer.image is None:
        assert answer.message == "No mask proposal covers the point (200, 150)."
    else:
        assert answer.image.size == (451, 300)
        assert answer.message.startswith("At (200, 150): **") and "score" in answer.message
        assert any(f"**{name}**" in answer.message for name in result.class_names)


def test_region_query_errors(demo):
    with pytest.raises(DemoInputError, match="Segment an image first"):
        demo.query_point(None, None, 10, 10)
    with pytest.raises(DemoInputError, match="not on the legend"):
        demo.query_point(str(SAMPLE), ["cat"], 451, 10)  # the legend starts right of the photo


# -- the page and the command line ------------------------------------------------------------------------------------
def test_unexpected_errors_are_one_line_without_a_trace(caplog):
    try:
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")
    except RuntimeError as error:
        text = demo_app._error_text(error)
    assert text == "**Error:** the model could not process this request (RuntimeError: CUDA out of memory.)."
    assert "Traceback" in caplog.text  # the trace is logged for the operator
    assert demo_app._error_text(DemoInputError("No image.")) == "**Error:** No image."


def test_page_offers_the_subtasks_presets_and_samples(demo):
    import gradio as gr

    samples = demo_app.sample_images(SAMPLE.parent)
    assert [Path(path).name for path in samples] == ["astronaut.png", "chelsea.png", "coffee.png"]
    assert demo_app.sample_images(SAMPLE.parent / "missing") == []
    page = demo_app.build_interface(demo, samples)
    components = {getattr(block, "elem_id", None): block for block in page.blocks.values()}
    assert [choice[1] for choice in components["subtask"].choices] == list(SUBTASKS)
    assert list(SUBTASKS) == ["semantic", "instance", "panoptic"]
    assert [choice[1] for choice in components["preset"].choices][0] == demo_app.TYPED_NAMES
    assert isinstance(components["overlay"], gr.Image) and isinstance(components["legend"], gr.Dataframe)
    # every event that runs the model waits in one queue of width one
    model_events = [dep for dep in page.fns.values() if dep.concurrency_id == "model"]
    assert len(model_events) == 2 and all(dep.concurrency_limit == 1 for dep in model_events)


def test_default_model_is_the_official_san_by_name(monkeypatch):
    tried = []
    monkeypatch.setattr(demo_app, "load_model", lambda spec, device, dtype: tried.append(spec) or ("model", "proc"))
    assert demo_app.load_demo_model(None, "cpu", None) == ("model", "proc", "san-vit-b16")
    assert demo_app.load_demo_model("random:san-tiny", "cpu", None)[2] == "random:san-tiny"
    assert tried == ["san-vit-b16", "random:san-tiny"]


def test_command_line_reports_an_unloadable_model(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "modeling_pat.demo", "--model", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 3, done.stderr
    assert "pat-demo: error: the model could not be loaded" in done.stderr and "random:san-tiny" in done.stderr
    assert "{names}" not in done.stderr and "san-vit-b16" in done.stderr  # the instructions name the official models
    assert "Traceback" not in done.stderr


def test_space_app_serves_every_address_with_its_settings():
    spec = importlib.util.spec_from_file_location("space_app", REPO_ROOT / "demo" / "app.py")
    space_app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(space_app)  # defines the arguments; the page starts only under __main__
    defaults = demo_app.build_parser().parse_args(space_app.space_arguments({}))
    assert (defaults.host, defaults.port, defaults.model) == ("0.0.0.0", 7860, None)
    assert defaults.samples == REPO_ROOT / "demo" / "samples"
    chosen = space_app.space_arguments({"PAT_DEMO_MODEL": "random:san-tiny", "PAT_DEMO_DTYPE": "bfloat16"})
    chosen = demo_app.build_parser().parse_args(chosen)
    assert (chosen.model, chosen.dtype) == ("random:san-tiny", "bfloat16")
    requirement = (REPO_ROOT / "demo" / "requirements.txt").read_text()
    assert "modeling_pat[demo] @ git+" in requirement


def test_missing_gradio_is_one_clear_line(monkeypatch, capsys):
    from modeling_pat import demo as entry

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real_find_spec(name, *a)
    )
    assert entry.main(["--model", "random:san-tiny"]) == 2
    assert capsys.readouterr().err == 'pat-demo: error: the demo needs Gradio: pip install "modeling_pat[demo]"\n'


def test_install_declares_the_command_and_the_extras():
    """`pip install .[demo]` gets Gradio, `.[dev]` (what CI installs) also the browser test's driver library."""
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    scripts = dict(line.split(" = ") for line in setup["options.entry_points"]["console_scripts"].split("\n") if line)
    module, function = scripts["pat-demo"].split(":")
    assert getattr(importlib.import_module(module), function) is demo_main
    extras = {name: value.split() for name, value in setup["options.extras_require"].items()}
    assert any(r.startswith("gradio") for r in extras["demo"])
    assert {"gradio", "playwright"} <= {re.split(r"[<>=!~ ]", r)[0] for r in extras["dev"]}
