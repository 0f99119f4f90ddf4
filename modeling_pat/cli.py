"""`pat-segment`: open-vocabulary semantic segmentation of image files from the command line.

    pat-segment samples/*.png --labels "cat,cup,person,sky,grass" --model san-vit-b16-hf
    pat-segment photos/ --vocabulary ade150 --model san-vit-b16-hf --device cuda --dtype bfloat16
    pat-segment samples/ --labels cat,sky --model random:san-tiny      # offline smoke test, random weights
    pat-segment big_photo.jpg --vocabulary ade150 --model san-vit-b16-hf --sliding-window --window-stride 320

For every image, three files go into `--output-dir` (default `outputs/`), named after the image's file stem:
`<stem>_labels.png` (class index per pixel: 8-bit, or 16-bit when there are more than 256 classes),
`<stem>_overlay.png` (the image blended with class colours, plus a legend of the classes present, largest first)
and `<stem>.json` (labels, per-class pixel fractions, image size, model).

Exit codes: 0 success; 1 unexpected runtime error (e.g. out of memory); 2 usage error (bad arguments, an input that
matches no image, no or duplicate labels, unavailable device); 3 the model could not be loaded; 4 some images could
not be read (the others were still processed; the unreadable ones are listed at the end).
"""

import argparse
import glob
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .configuration_pat import VOCABULARY_FILES, PATConfig, load_vocabulary
from .image_processing_pat import load_image
from .modeling_pat import PATForOpenVocabSegmentation
from .processing_pat import PATProcessor, validate_class_names
from .sliding_window import sliding_window_segmentation
from .visualization import make_palette, pixel_fractions, render_overlay, save_label_map


EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_MODEL, EXIT_UNREADABLE = 0, 1, 2, 3, 4

DEFAULT_MODEL = "san-vit-b16-hf"
RANDOM_PREFIX = "random:"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # owner/name
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
POSTPROCESS_BUDGET = 2**28  # floats the full-resolution post-processing may hold per image (1 GiB in float32)

CONVERT_COMMAND = (
    "python conversion_scripts/convert_san_to_hf.py --checkpoint_path san_vit_b_16.pth --config san-clip-vit-b16 "
    f"--output_dir {DEFAULT_MODEL}"
)
HOW_TO_GET_WEIGHTS = f"""\
To get a checkpoint:
  1. download san_vit_b_16.pth from the Hugging Face Hub repository Mendel192/san
     (e.g. `hf download Mendel192/san san_vit_b_16.pth --local-dir .`, on a machine that can reach the Hub);
  2. convert it, from the root of a modeling_pat clone and with its Python environment
     (e.g. put `bash .ci/setup` in front of the command):
     {CONVERT_COMMAND}
  3. run again with --model {DEFAULT_MODEL}.
Or try the whole pipeline offline with random weights: --model random:san-tiny"""


class UsageError(Exception):
    """Bad command-line input: exit code 2."""


class ModelLoadError(Exception):
    """The model (or its processor) could not be loaded: exit code 3."""


# -- arguments --------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pat-segment",
        description="Segment images into the classes you name (SAN / PAT open-vocabulary segmentation).",
        epilog="Exit codes: 0 ok, 1 runtime error, 2 usage error, 3 model not loadable, 4 some images unreadable.",
    )
    parser.add_argument(
        "inputs", nargs="+", help="image files, folders (their images, not recursive) or glob patterns (** recurses)"
    )
    vocabulary = parser.add_mutually_exclusive_group(required=True)
    vocabulary.add_argument(
        "--labels", action="append", metavar="NAMES", help="class names, comma-separated; may be repeated"
    )
    vocabulary.add_argument("--vocabulary", choices=sorted(VOCABULARY_FILES), help="a benchmark's class names")
    parser.add_argument(
        "--model",
        default=None,
        help=f"save_pretrained folder, Hub id (owner/name) or random:<preset> (e.g. random:san-tiny); "
        f"default: the folder {DEFAULT_MODEL} if it exists",
    )
    parser.add_argument("--output-dir", default="outputs", type=Path, help="where results go (default: outputs/)")
    parser.add_argument("--batch-size", default=4, type=_positive_int, help="images per forward pass (default: 4)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: auto")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="default: float32")
    parser.add_argument(
        "--sliding-window",
        action="store_true",
        help="sliding-window inference: overlapping windows of the model's training size, scores averaged "
        "(for images much larger than that size)",
    )
    parser.add_argument(
        "--window-stride", type=_positive_int, default=None, metavar="PIXELS",
        help="with --sliding-window: pixels between windows (default: two thirds of the window)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-image messages")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_labels(values: list[str]) -> list[str]:
    """Repeated, comma-separated `--labels` values -> class names; empty or duplicate names are usage errors."""
    names = [name.strip() for value in values for name in value.split(",")]
    names = [name for name in names if name]
    if not names:
        raise UsageError("--labels contains no class names (give e.g. --labels \"cat,sky,grass\").")
    try:  # the processor's rule: names equal after CLIP's text cleaning ("Cat", "cat ") are one class
        validate_class_names(names, "--labels")
    except ValueError as error:
        raise UsageError(str(error).replace("`--labels`", "--labels")) from None
    return names


def vocabulary_class_names(name: str) -> list[str]:
    """A shipped vocabulary (`configuration/vocabularies/*.json`) -> its class names, in index order."""
    return list(load_vocabulary(name)["class_names"])


def collect_inputs(patterns: list[str]) -> list[Path]:
    """Files, folders (their image files) and glob patterns -> image paths, in order, without repeats.

    Every argument must match at least one file; a folder must hold at least one image file.
    """
    paths, seen, unmatched = [], set(), []
    for pattern in patterns:
        matches = _expand(pattern)
        if not matches:
            unmatched.append(pattern)
        for path in matches:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                paths.append(path)
    if unmatched:
        raise UsageError("no image matched: " + ", ".join(unmatched))
    return paths


def _expand(pattern: str) -> list[Path]:
    path = Path(pattern)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if path.is_file():
        return [path]
    if any(char in pattern for char in "*?["):
        matches = sorted(glob.glob(pattern, recursive=True))
        return [Path(m) for m in matches if os.path.isfile(m)]
    return []


# -- model ------------------------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but PyTorch sees no CUDA device (use --device cpu or auto).")
    return torch.device(name)


def load_model(spec: str | None, device: torch.device, dtype: torch.dtype):
    """`--model` -> (model in eval mode on `device` in `dtype`, processor); raises ModelLoadError with instructions."""
    if spec is None:
        if not Path(DEFAULT_MODEL).is_dir():
            raise ModelLoadError(f"No --model given and there is no converted checkpoint folder ./{DEFAULT_MODEL}.")
        spec = DEFAULT_MODEL
    if spec.startswith(RANDOM_PREFIX):
        model, processor = _random_model(spec.removeprefix(RANDOM_PREFIX))
    elif Path(spec).is_dir():
        model, processor = _pretrained_model(spec, dtype, f"the folder {spec!r} holds no loadable PAT/SAN model")
    elif HUB_ID.fullmatch(spec) and not Path(spec).exists():
        model, processor = _pretrained_model(spec, dtype, f"could not load {spec!r} from the Hugging Face Hub")
    else:  # not a folder, not owner/name: a local path that does not exist (no Hub request is made)
        raise ModelLoadError(f"--model {spec!r} is not a folder here (and not a Hub id of the form owner/name).")
    return model.to(device=device, dtype=dtype).eval(), processor


def _random_model(preset: str):
    """A model with random weights from a named preset (offline smoke tests); seeded, so runs are repeatable."""
    try:
        config = PATConfig.from_preset(preset)
    except ValueError as error:
        raise ModelLoadError(str(error)) from error
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = PATForOpenVocabSegmentation(config)
    return model, PATProcessor.from_config(config)


def _pretrained_model(spec: str, dtype: torch.dtype, failure: str):
    try:
        model = PATForOpenVocabSegmentation.from_pretrained(spec, dtype=dtype)
    except Exception as error:  # OSError (offline / not found), ValueError / KeyError (not a PAT model), ...
        offline = " (offline mode: HF_HUB_OFFLINE is set)" if _hub_offline() and not Path(spec).is_dir() else ""
        raise ModelLoadError(f"{failure}{offline}: {_first_line(error)}") from error
    try:
        processor = PATProcessor.from_pretrained(spec)
    except Exception:  # a folder with weights and config only: the config says everything the processor needs
        processor = PATProcessor.from_config(model.config)
    return model, processor


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def compute_class_embeddings(model, processor, class_names: list[str]) -> torch.Tensor:
    """(N, D) unit text embeddings of the class names, computed once per run (the model encodes them in chunks of
    classes, so large vocabularies stay within memory)."""
    input_ids = processor.encode_class_names(class_names)["input_ids"]
    return model.get_class_embeddings(input_ids=input_ids.to(model.device))


# -- images -----------------------------------------------------------------------------------------------------------
def read_image(path: Path) -> Image.Image:
    """Decode an image fully, upright (EXIF) and RGB (16-bit scaled, transparency over white): `load_image`, which
    raises a ValueError naming the file when it is empty, truncated, not an image or over PIL's pixel limit."""
    return load_image(path)


def output_stems(paths: list[Path]) -> list[str]:
    """One output name per input: its file stem, with -2, -3, ... added when two inputs share a stem."""
    stems, used = [], set()
    for path in paths:
        stem, number = path.stem, 1
        while stem.casefold() in used:
            number += 1
            stem = f"{path.stem}-{number}"
        used.add(stem.casefold())
        stems.append(stem)
    return stems


@torch.inference_mode()
def segment_batch(
    model, processor, images, class_embeddings, device, dtype, sliding_window=False, window_stride=None
) -> list[np.ndarray]:
    """PIL images -> [H, W] int64 label maps at each image's own size (one forward pass for the whole batch, or
    with `sliding_window` batches of windows per image)."""
    sizes = [(image.height, image.width) for image in images]
    targets = [_postprocess_size(size, model.config.num_queries, class_embeddings.shape[0]) for size in sizes]
    if sliding_window:
        maps = sliding_window_segmentation(
            model, processor.image_processor, images, class_embeddings=class_embeddings, target_sizes=targets,
            stride=window_stride,
        )
        return [_to_size(label_map.cpu(), size) for label_map, size in zip(maps, sizes, strict=True)]
    inputs = processor(images=images, return_tensors="pt", device=device)  # uploaded as uint8, resized there
    outputs = model(
        pixel_values=inputs["pixel_values"].to(device=device, dtype=dtype),
        class_embeddings=class_embeddings,
        image_sizes=inputs["image_sizes"].to(device),
    )
    maps = processor.post_process_semantic_segmentation(outputs, target_sizes=targets)
    return [_to_size(label_map.cpu(), size) for label_map, size in zip(maps, sizes, strict=True)]


def _postprocess_size(size: tuple[int, int], num_queries: int, num_classes: int) -> tuple[int, int]:
    """The image size, scaled down when masks and class scores at that size would exceed POSTPROCESS_BUDGET."""
    height, width = size
    scale = min(1.0, (POSTPROCESS_BUDGET / (height * width * (num_queries + 2 * num_classes))) ** 0.5)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _to_size(label_map: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    if tuple(label_map.shape) != tuple(size):  # only for huge images x vocabularies (see _postprocess_size)
        label_map = torch.nn.functional.interpolate(label_map[None, None].float(), size=size, mode="nearest-exact")
        label_map = label_map[0, 0].long()
    return label_map.numpy()


# -- outputs ----------------------------------------------------------------------------------------------------------
def write_outputs(image, label_map, path: Path, stem: str, class_names, palette, output_dir: Path, model_id: str):
    """The three result files of one image: label PNG, overlay PNG, JSON summary."""
    label_file, overlay_file, json_file = f"{stem}_labels.png", f"{stem}_overlay.png", f"{stem}.json"
    save_label_map(label_map, len(class_names), output_dir / label_file)
    render_overlay(image, label_map, class_names, palette).save(output_dir / overlay_file)
    fractions = pixel_fractions(label_map, len(class_names))
    present = [
        {"index": int(i), "label": class_names[i], "pixel_fraction": float(fractions[i])}
        for i in sorted(np.flatnonzero(fractions), key=lambda i: (-fractions[i], i))
    ]
    summary = {
        "image": str(path),
        "image_size": {"height": image.height, "width": image.width},
        "model": model_id,
        "labels": list(class_names),
        "pixel_fractions": [float(f) for f in fractions],
        "classes_present": present,
        "label_map": label_file,
        "label_map_dtype": "uint8" if len(class_names) <= 256 else "uint16",
        "overlay": overlay_file,
    }
    with open(output_dir / json_file, "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


# -- main -------------------------------------------------------------------------------------------------------------
@dataclass
class SegmentationJob:
    """Everything fixed for one run: the model, its inputs' vocabulary (embedded once) and where results go."""

    model: PATForOpenVocabSegmentation
    processor: PATProcessor
    class_names: list[str]
    class_embeddings: torch.Tensor
    device: torch.device
    dtype: torch.dtype
    output_dir: Path
    model_id: str
    palette: np.ndarray = field(init=False)
    sliding_window: bool = False
    window_stride: int | None = None

    def __post_init__(self):
        self.palette = make_palette(len(self.class_names))  # class i has the same colour in every overlay

    def process(self, batch: list[tuple[Path, str, Image.Image]]) -> None:
        """Segment a batch of (path, output stem, image) in one forward pass and write each image's files."""
        images = [image for _, _, image in batch]
        label_maps = segment_batch(
            self.model, self.processor, images, self.class_embeddings, self.device, self.dtype,
            self.sliding_window, self.window_stride,
        )
        for (path, stem, image), label_map in zip(batch, label_maps, strict=True):
            write_outputs(image, label_map, path, stem, self.class_names, self.palette, self.output_dir, self.model_id)


def segment_files(job: SegmentationJob, paths: list[Path], batch_size: int, quiet: bool) -> list[tuple[Path, str]]:
    """Read, batch and segment `paths` with a progress bar; returns the (path, reason) of every unreadable file."""
    failures, batch = [], []
    with tqdm(total=len(paths), desc="pat-segment", unit="image", disable=quiet, file=sys.stderr) as progress:
        for index, (path, stem) in enumerate(zip(paths, output_stems(paths), strict=True)):
            try:
                batch.append((path, stem, read_image(path)))
            except Exception as error:  # any decoding failure: report the file, keep going
                failures.append((path, f"{type(error).__name__}: {_first_line(error)}"))
                if not quiet:
                    tqdm.write(f"warning: skipping {path}: cannot read it as an image", file=sys.stderr)
                progress.update(1)
            if batch and (len(batch) == batch_size or index == len(paths) - 1):
                job.process(batch)
                progress.update(len(batch))
                batch = []
    return failures


def run(args: argparse.Namespace) -> int:
    """The whole job; raises UsageError / ModelLoadError, returns EXIT_OK or EXIT_UNREADABLE."""
    class_names = parse_labels(args.labels) if args.labels else vocabulary_class_names(args.vocabulary)
    paths = collect_inputs(args.inputs)
    device, dtype = resolve_device(args.device), DTYPES[args.dtype]
    if args.window_stride is not None and not args.sliding_window:
        raise UsageError("--window-stride only applies with --sliding-window.")
    model, processor = load_model(args.model, device, dtype)
    if args.window_stride is not None and args.window_stride > model.config.side_image_size:
        raise UsageError(
            f"--window-stride {args.window_stride} is larger than the window ({model.config.side_image_size} pixels, "
            "the model's side_image_size): parts of the image would be skipped."
        )
    try:  # only now, so that a run that fails early leaves nothing behind
        args.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the output folder {str(args.output_dir)!r}: {error}") from error
    class_embeddings = compute_class_embeddings(model, processor, class_names)  # once per run
    job = SegmentationJob(
        model, processor, class_names, class_embeddings, device, dtype, args.output_dir, args.model or DEFAULT_MODEL,
        sliding_window=args.sliding_window, window_stride=args.window_stride,
    )
    failures = segment_files(job, paths, args.batch_size, args.quiet)
    return _report(len(paths) - len(failures), failures, args.output_dir, args.quiet)


def _report(num_done: int, failures: list, output_dir: Path, quiet: bool) -> int:
    if not quiet:
        print(f"pat-segment: wrote results for {num_done} image(s) to {output_dir}/", file=sys.stderr)
    if not failures:
        return EXIT_OK
    print(f"pat-segment: {len(failures)} file(s) could not be read and were skipped:", file=sys.stderr)
    for path, reason in failures:
        print(f"  {path}: {reason}", file=sys.stderr)
    return EXIT_UNREADABLE


def main(argv: list[str] | None = None) -> int:
    """Console entry point (`pat-segment`); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # argparse: --help (0) or a usage error (2)
        return int(exit_request.code or 0)
    try:
        return run(args)
    except UsageError as error:
        print(f"pat-segment: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ModelLoadError as error:
        print(f"pat-segment: error: the model could not be loaded.\n{error}\n\n{HOW_TO_GET_WEIGHTS}", file=sys.stderr)
        return EXIT_MODEL
    except torch.OutOfMemoryError as error:
        message = f"out of memory ({_first_line(error)}); try a smaller --batch-size"
        print(f"pat-segment: error: {message}", file=sys.stderr)
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
