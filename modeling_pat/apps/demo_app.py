"""The Gradio demo behind `pat-demo` / `python -m modeling_pat.demo`: segment a photo into the classes you name.

Two layers, so that the behaviour is testable without a browser:

* `SegmentationDemo` holds the one model of the process (shared by every visitor) and does the work with plain Python
  values: class names from free text or a vocabulary preset, image checks, segmentation (overlay, class table, label
  PNG and JSON files), the region query for a clicked point. Bad input raises `DemoInputError` with a message meant
  for the page.
* `build_interface` lays out the Gradio page and turns every error into a message in it (never a stack trace). All
  events that touch the model share one queue of width one, so concurrent requests wait their turn.

Gradio is imported only by `build_interface` and `main`: the rest needs only the package's own dependencies.
"""

import argparse
import atexit
import logging
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from modeling_pat_cli import (  # the console script's front: it parses the arguments before this module loads
    DEFAULT_MODEL,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_USAGE,
    MAX_IMAGE_PIXELS,
    build_demo_parser,
    demo_main,
)

from ..configuration_pat import VOCABULARY_FILES, load_vocabulary
from ..image_processing_pat import load_image
from ..processing_pat import validate_class_names
from .cli import SegmentOptions, segment_batch, segment_batch_results
from .model_loading import (
    DTYPES,
    ModelLoadError,
    UsageError,
    compute_class_embeddings,
    load_model,
    resolve_device,
)
from .region_query import query_region
from .result_files import write_outputs
from .visualization import blend_labels, format_fraction, legend_entries, make_palette, pixel_fractions


logger = logging.getLogger(__name__)

RESULT_LIFETIME_S = 3600  # result files (and Gradio's copies of them) are deleted after an hour: a Space runs for days
TYPED_NAMES = ""  # the preset value meaning "use the class names typed in the text box"
VOCABULARY_TITLES = {
    "ade150": "ADE-150",
    "ade847": "ADE-847",
    "coco171": "COCO-Stuff-171",
    "pc59": "Pascal Context-59",
    "pc459": "Pascal Context-459",
    "voc20": "Pascal VOC-20",
}

Progress = Callable[[float, str], None]


class DemoInputError(ValueError):
    """Input the demo cannot use; the message is shown in the page as it is."""


# -- subtasks ---------------------------------------------------------------------------------------------------------
def semantic_subtask(demo: "SegmentationDemo", image: Image.Image, class_names, class_embeddings, sliding_window):
    """One class per pixel: {"label_map": [H_out, W_out] int64 class indices}."""
    [label_map] = segment_batch(
        demo.model, demo.processor, [image], class_embeddings, demo.model.device, demo.model.dtype,
        sliding_window=sliding_window,
    )
    return {"label_map": label_map}


def segments_subtask(name: str):
    """Instance or panoptic segmentation as `pat-segment --subtask` does it: the class label map plus a segment-id
    map and its segments (label, score, area, box), outlined in the overlay and listed in the JSON."""

    def run(demo: "SegmentationDemo", image: Image.Image, class_names, class_embeddings, sliding_window):
        if sliding_window:
            raise DemoInputError(
                f"The {name} subtask needs the mask proposals of one pass over the whole image; sliding windows give "
                "semantic scores only. Turn the sliding window off or choose the semantic subtask."
            )
        [result] = segment_batch_results(
            demo.model, demo.processor, [image], class_embeddings, demo.model.device, demo.model.dtype, class_names,
            SegmentOptions(subtask=name),
        )
        return {**result, "subtask": name}

    return run


# Subtask name -> function(demo, image, class names, (N, D) class embeddings, sliding window) -> {"label_map":
# [H_out, W_out] class indices} plus, for subtasks with segments, what `write_outputs(segments=...)` takes
# ("segment_map", "segments", "subtask"). The page offers every key; a new subtask is one more entry.
SUBTASKS = {
    "semantic": semantic_subtask,
    "instance": segments_subtask("instance"),
    "panoptic": segments_subtask("panoptic"),
}


# -- the demo's work, without Gradio ----------------------------------------------------------------------------------
@dataclass
class SegmentationResult:
    """What the page shows after a run: the overlay (photo + legend), the table rows, the two files to download."""

    overlay: Image.Image
    table: list[list[str]]  # [colour "#rrggbb", class name, pixel share "12.3%"], largest share first
    label_files: list[Path]  # the class label PNG, and the segment-id PNG for subtasks with segments
    json_file: Path
    class_names: list[str]  # the vocabulary (what region queries score)
    image_path: str
    message: str


@dataclass
class RegionAnswer:
    """The best proposal at a clicked point: its mask drawn on the photo and a sentence naming it."""

    image: Image.Image | None
    message: str


class SegmentationDemo:
    """One model and processor, shared by every visitor; model calls are serialised by a lock."""

    def __init__(self, model, processor, model_id: str, max_pixels: int = MAX_IMAGE_PIXELS, output_root=None):
        self.model, self.processor, self.model_id, self.max_pixels = model, processor, model_id, max_pixels
        self.output_root = Path(output_root) if output_root is not None else _temporary_folder()
        self._model_lock = threading.Lock()  # one forward pass at a time, whatever the web server's threads do

    # -- inputs -------------------------------------------------------------------------------------------------------
    @staticmethod
    def class_names(labels_text: str | None, preset: str | None) -> list[str]:
        """The vocabulary preset's names when one is chosen, else the comma-separated names typed in."""
        if preset:
            if preset not in VOCABULARY_FILES:
                raise DemoInputError(f"Unknown vocabulary preset {preset!r}; choose one of the list.")
            return list(load_vocabulary(preset)["class_names"])
        names = [name.strip() for name in (labels_text or "").split(",")]
        names = [name for name in names if name]
        if not names:
            raise DemoInputError(
                "No class names: type the classes to look for, comma-separated (e.g. cat, sofa, floor), "
                "or choose a vocabulary preset."
            )
        try:  # the processor's rule: names equal after CLIP's text cleaning ("Cat", "cat ") are one class
            validate_class_names(names, "labels")
        except ValueError as error:
            raise DemoInputError(str(error).replace("`labels`", "The class list")) from None
        return names

    def read_image(self, path: str | None) -> Image.Image:
        """The upload as upright RGB; refused when missing, too large (checked before decoding) or unreadable."""
        if not path:
            raise DemoInputError("No image: upload one, paste one or pick a sample.")
        try:
            with Image.open(path) as probe:  # reads the header only
                width, height = probe.size
        except Exception:  # not an image, truncated header, over PIL's own decompression-bomb limit, ...
            raise DemoInputError(_UNREADABLE) from None
        if width * height > self.max_pixels:
            raise DemoInputError(
                f"The image is too large: {width} x {height} pixels ({width * height / 1e6:.1f} MP); this demo "
                f"accepts up to {self.max_pixels / 1e6:.1f} MP. Downscale it first."
            )
        try:
            return load_image(path)
        except Exception:  # truncated or corrupt pixel data
            raise DemoInputError(_UNREADABLE) from None

    # -- segmentation ---------------------------------------------------------------------------------------------
    def segment(
        self, image_path, labels_text, preset, subtask: str = "semantic", sliding_window: bool = False,
        progress: Progress | None = None,
    ) -> SegmentationResult:
        """Run one subtask on one image; writes the label PNG and JSON into a folder of their own."""
        progress = progress or _no_progress
        if subtask not in SUBTASKS:
            raise DemoInputError(f"Unknown subtask {subtask!r}; available: {', '.join(SUBTASKS)}.")
        class_names = self.class_names(labels_text, preset)
        image = self.read_image(image_path)
        with self._model_lock:
            # the text encoder runs once per vocabulary (the model caches the embeddings); a large one takes a while
            progress(0.1, f"Computing text embeddings of {len(class_names)} class names")
            class_embeddings = compute_class_embeddings(self.model, self.processor, class_names)
            progress(0.5, "Segmenting the image")
            result = SUBTASKS[subtask](self, image, class_names, class_embeddings, sliding_window)
        progress(0.9, "Drawing the overlay")
        return self._result(image, image_path, result, class_names)

    def _result(self, image, image_path, result: dict, class_names) -> SegmentationResult:
        remove_old_results(self.output_root, RESULT_LIFETIME_S)
        folder = self.output_root / uuid.uuid4().hex[:16]
        folder.mkdir(parents=True)
        stem = _safe_stem(Path(image_path).stem)
        palette, label_map = make_palette(len(class_names)), result["label_map"]
        segments = result if "segments" in result else None
        write_outputs(
            image, label_map, Path(Path(image_path).name), stem, class_names, palette, folder, self.model_id, segments
        )
        with Image.open(folder / f"{stem}_overlay.png") as overlay:
            overlay.load()
        fractions = pixel_fractions(label_map, len(class_names))
        table = [
            ["#%02x%02x%02x" % tuple(int(c) for c in palette[index]), name, format_fraction(fraction)]
            for index, name, fraction in legend_entries(fractions, class_names)
        ]
        found = f"Found {len(table)} of {len(class_names)} classes"
        if segments is not None:
            found += f" in {len(segments['segments'])} {segments['subtask']} segments (listed in the JSON)"
        label_files = [folder / f"{stem}_labels.png"]
        if segments is not None:  # the segment-id PNG (16-bit) beside the class label PNG
            label_files.append(folder / f"{stem}_segments.png")
        return SegmentationResult(
            overlay, table, label_files, folder / f"{stem}.json", class_names, image_path,
            f"{found}. Click a point on the photo to see the region there.",
        )

    # -- region query ---------------------------------------------------------------------------------------------
    def query_point(self, image_path, class_names, x: int, y: int) -> RegionAnswer:
        """The best mask proposal covering pixel (x, y) of the photo last segmented, drawn on it and named."""
        if not image_path or not class_names:
            raise DemoInputError("Segment an image first, then click a point on the result.")
        image = self.read_image(image_path)
        if not (0 <= x < image.width and 0 <= y < image.height):
            raise DemoInputError("Click on the photo itself (the left part of the result), not on the legend.")
        with self._model_lock:
            [matches] = query_region(self.model, self.processor, image, class_names, points=[(x, y)])
        if not matches:
            return RegionAnswer(None, f"No mask proposal covers the point ({x}, {y}).")
        best = matches[0]
        mask = best.mask.numpy()
        palette = np.array([[0, 0, 0], make_palette(len(class_names))[best.label_id]], dtype=np.uint8)
        drawn = blend_labels(image, mask.astype(np.int64), palette)  # the region in its class colour, the rest dimmed
        share = format_fraction(float(mask.mean()))
        message = (
            f"At ({x}, {y}): **{best.label}** — score {best.score:.2f} (class {best.class_score:.2f} x mask "
            f"{best.mask_score:.2f}), {share} of the image."
        )
        return RegionAnswer(drawn, message)


_UNREADABLE = "Cannot read this file as an image (it is empty, truncated or not an image file)."


def _no_progress(fraction: float, description: str) -> None:
    pass


def _safe_stem(stem: str) -> str:
    stem = re.sub(r"[^\w.-]+", "_", stem).strip("._")
    return stem[:80] or "image"


def remove_old_results(root: Path, max_age_s: float) -> None:
    """Delete the result folders under `root` last modified more than `max_age_s` seconds ago."""
    cutoff = time.time() - max_age_s
    for folder in root.iterdir():
        try:
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except FileNotFoundError:  # removed meanwhile
            pass


def _temporary_folder() -> Path:
    """A folder for the result files of this process, removed when it exits."""
    folder = Path(tempfile.mkdtemp(prefix="pat-demo-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


# -- the page ---------------------------------------------------------------------------------------------------------
def vocabulary_choices() -> list[tuple[str, str]]:
    """(shown text, value) of the preset menu: typed names first, then every shipped vocabulary with its size."""
    choices = [("None: the class names typed above", TYPED_NAMES)]
    for key in VOCABULARY_FILES:
        count = len(load_vocabulary(key)["class_names"])
        choices.append((f"{VOCABULARY_TITLES.get(key, key)} ({count} classes)", key))
    return choices


def sample_images(folder: Path | None) -> list[str]:
    if folder is None or not Path(folder).is_dir():
        return []
    return [str(path) for path in sorted(Path(folder).iterdir()) if path.suffix.lower() in (".png", ".jpg", ".jpeg")]


def _error_text(error: Exception) -> str:
    """The page's message for an error: the input problem as it is, anything else named without a trace."""
    if isinstance(error, DemoInputError):
        return f"**Error:** {error}"
    logger.exception("pat-demo: the request failed")  # the trace goes to the server's log, not to the visitor
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"**Error:** the model could not process this request ({type(error).__name__}: {first_line[:200]})."


def build_interface(demo: SegmentationDemo, samples: list[str] | None = None):
    """The Gradio Blocks page for `demo` (queue it and launch it; see `main`)."""
    import gradio as gr

    with gr.Blocks(
        title="SAN / PAT open-vocabulary segmentation", analytics_enabled=False,
        delete_cache=(RESULT_LIFETIME_S, RESULT_LIFETIME_S),
    ) as page:
        gr.Markdown(
            "# Open-vocabulary segmentation\n"
            f"Model: `{demo.model_id}`. Name the classes to look for, run, then click the result to ask what is there."
        )
        with gr.Row():
            with gr.Column():
                inputs = _input_controls(gr, samples)
            with gr.Column():
                outputs = _output_panels(gr)
        state = gr.State()  # the image and class names of the last run, for region queries
        # one queue for every event that uses the model: concurrent visitors wait their turn
        inputs["run"].click(
            _segmentation_handler(demo, gr),
            [inputs[name] for name in ("image", "labels", "preset", "subtask", "sliding")],
            [*(outputs[name] for name in ("overlay", "table", "label_file", "json_file", "status")), state,
             outputs["region_image"], outputs["region_text"]],
            concurrency_id="model", concurrency_limit=1,
        )
        outputs["overlay"].select(
            _region_handler(demo, gr), [state], [outputs["region_image"], outputs["region_text"]],
            concurrency_id="model", concurrency_limit=1,
        )
    return page


def _input_controls(gr, samples) -> dict:
    image = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"], elem_id="image")
    if samples:
        gr.Examples(examples=[[path] for path in samples], inputs=[image], label="Samples")
    return {
        "image": image,
        "labels": gr.Textbox(label="Class names (comma-separated)", placeholder="cat, sofa, floor", elem_id="labels"),
        "preset": gr.Dropdown(
            choices=vocabulary_choices(), value=TYPED_NAMES, label="Vocabulary preset", elem_id="preset"
        ),
        "subtask": gr.Radio(choices=list(SUBTASKS), value="semantic", label="Subtask", elem_id="subtask"),
        "sliding": gr.Checkbox(
            label="Sliding window (for images much larger than the model's training size)", elem_id="sliding"
        ),
        "run": gr.Button("Segment", variant="primary", elem_id="run"),
    }


def _output_panels(gr) -> dict:
    panels = {
        "status": gr.Markdown(elem_id="status"),
        "overlay": gr.Image(
            label="Overlay (click a point of the photo)", type="pil", format="png", interactive=False,
            elem_id="overlay",
        ),
        "table": gr.Dataframe(
            headers=["colour", "class", "pixel share"], interactive=False, label="Classes", elem_id="legend"
        ),
    }
    with gr.Row():
        panels["label_file"] = gr.File(
            label="Label map (PNG)", file_count="multiple", interactive=False, elem_id="label-file"
        )
        panels["json_file"] = gr.File(label="Summary (JSON)", interactive=False, elem_id="json-file")
    panels["region_text"] = gr.Markdown(elem_id="region-answer")
    panels["region_image"] = gr.Image(
        label="Region at the clicked point", type="pil", format="png", interactive=False, elem_id="region-image"
    )
    return panels


def _segmentation_handler(demo: SegmentationDemo, gr):
    def run_segmentation(image_path, labels_text, preset, subtask, sliding_window, progress=gr.Progress()):
        # every run clears the previous run's outputs and region answer, so that nothing stale stays in the page
        try:
            result = demo.segment(image_path, labels_text, preset, subtask, sliding_window, progress=progress)
        except Exception as error:
            return None, None, None, None, _error_text(error), None, None, ""
        state = {"image_path": result.image_path, "class_names": result.class_names}
        label_files = [str(path) for path in result.label_files]
        return result.overlay, result.table, label_files, str(result.json_file), result.message, state, None, ""

    return run_segmentation


def _region_handler(demo: SegmentationDemo, gr):
    def run_region_query(state, event: gr.SelectData):
        try:
            state = state or {}
            x, y = (int(v) for v in event.index)
            answer = demo.query_point(state.get("image_path"), state.get("class_names"), x, y)
        except Exception as error:
            return None, _error_text(error)
        return answer.image, answer.message

    return run_region_query


# -- command line (arguments parsed by modeling_pat_cli before torch is imported) ----------------------------------
build_parser = build_demo_parser  # the `pat-demo` arguments (Hugging Face Spaces' app.py parses with it too)


def load_demo_model(spec: str | None, device, dtype):
    """`--model` (default: the official SAN ViT-B/16 by name) -> (model, processor, the name shown in the page)."""
    spec = spec or DEFAULT_MODEL
    return (*load_model(spec, device, dtype), spec)


def main(argv: list[str] | None = None) -> int:
    """`pat-demo` in-process (the console script calls `modeling_pat_cli.demo_main`); returns the exit code."""
    return demo_main(argv)


def run_demo(args: argparse.Namespace) -> int:
    """Parsed `pat-demo` arguments: load the model once, then serve the page until interrupted; returns the exit
    code."""
    try:
        device, dtype = resolve_device(args.device), DTYPES[args.dtype]
        model, processor, model_id = load_demo_model(args.model, device, dtype)
    except UsageError as error:
        print(f"pat-demo: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ModelLoadError as error:
        print(f"pat-demo: error: {error.report()}", file=sys.stderr)
        return EXIT_MODEL
    demo = SegmentationDemo(model, processor, model_id, max_pixels=args.max_pixels)
    page = build_interface(demo, sample_images(args.samples))
    page.queue(default_concurrency_limit=1).launch(
        server_name=args.host, server_port=args.port, share=args.share, allowed_paths=[str(demo.output_root)]
    )
    return EXIT_OK


__all__ = [
    "DemoInputError",
    "RegionAnswer",
    "SegmentationDemo",
    "SegmentationResult",
    "SUBTASKS",
    "build_interface",
    "build_parser",
    "run_demo",
    "load_demo_model",
    "main",
]
