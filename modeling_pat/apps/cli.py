"""`pat-segment`: open-vocabulary semantic segmentation of image files from the command line.

    pat-segment samples/*.png --labels "cat,cup,person,sky,grass"     # the default model, san-vit-b16
    pat-segment photos/ --vocabulary ade150 --model san-vit-l14-336 --device cuda --dtype bfloat16
    pat-segment samples/ --labels cat,sky --model random:san-tiny      # offline smoke test, random weights
    pat-segment big_photo.jpg --vocabulary ade150 --sliding-window --window-stride 320
    pat-segment samples/ --labels "cat,person,cup,sky" --subtask instance --threshold 0.3
    pat-segment --list-cache                                           # converted official models (--clear-cache)

`--model` takes an official model name (`san-vit-b16`, `san-vit-l14-336`: the checkpoint is fetched from the Hub
once and converted once into a local cache, see `modeling_pat.apps.pretrained`), an official `.pth` file, a
`save_pretrained` folder or a Hub id.

For every image, three files go into `--output-dir` (default `outputs/`), named after the image's file stem:
`<stem>_labels.png` (class index per pixel: 8-bit, or 16-bit when there are more than 256 classes),
`<stem>_overlay.png` (the image blended with class colours, plus a legend of the classes present, largest first)
and `<stem>.json` (labels, per-class pixel fractions, image size, model). With `--subtask instance` or `panoptic`
there is also `<stem>_segments.png` (16-bit segment id per pixel, 0 = no segment; ids as in the JSON), the JSON
lists the segments (id, label, score, area in pixels, box [x0, y0, x1, y1) in pixels) best first, and the overlay
outlines every segment.

Nothing the run did not create is overwritten. Each result file is marked as a pat-segment result (a PNG text chunk,
a JSON key); an existing file is replaced only when it is a previous result of the same kind and not an input of
this run. Otherwise the image's results get the next free stem (`<stem>-2`, `<stem>-3`, ...), reported at the end.
Previous results found in an input folder or glob are not segmented again (name such a file itself to segment it).
Every file is written under a temporary name and renamed when complete, so none is ever half-written. The result files,
their names and that rule are in `result_files`, loading `--model` in `model_loading`; this module checks the
arguments and runs the job.

Exit codes: 0 success; 1 unexpected runtime error (e.g. out of memory); 2 usage error (bad arguments, an input that
matches no image, no or duplicate labels, unavailable device); 3 the model could not be loaded; 4 some images could
not be read or their results not written (the others were still processed; the failed ones are listed at the end).
"""

import argparse
import glob
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from modeling_pat_cli import (  # the console script's front: it parses the arguments before this module loads
    DEFAULT_MODEL,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_RUNTIME,
    EXIT_UNREADABLE,
    EXIT_USAGE,
    segment_main,
)

from ..configuration_pat import load_vocabulary, stuff_class_names
from ..image_processing_pat import load_image, padding_groups
from ..modeling_pat import PATForOpenVocabSegmentation
from ..processing_pat import PATProcessor, validate_class_names
from .model_loading import (
    DTYPES,
    ModelLoadError,
    UsageError,
    compute_class_embeddings,
    first_line,
    load_model,
    resolve_device,
)
from .pretrained import clear_cache, converted_cache_dir, list_cache
from .result_files import output_stems, result_files, result_kind, result_name_taken, write_outputs
from .sliding_window import sliding_window_segmentation
from .visualization import make_palette


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
POSTPROCESS_BUDGET = 2**28  # floats the full-resolution post-processing may hold per image (1 GiB in float32)


# -- arguments (parsed by modeling_pat_cli before torch is imported; checked here) ------------------------------------
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

    Every argument must match at least one file; a folder must hold at least one image file. Folders and globs skip
    earlier pat-segment results (an output folder that is also the input folder is not segmented a second time); a
    result named as a file is taken as asked.
    """
    paths, seen, unmatched = [], set(), []
    for pattern in patterns:
        matches = _expand(pattern)
        if not Path(pattern).is_file():
            matches = [path for path in matches if result_kind(path) is None]
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


# -- images -----------------------------------------------------------------------------------------------------------
def read_image(path: Path) -> Image.Image:
    """Decode an image fully, upright (EXIF) and RGB (16-bit scaled, transparency over white): `load_image`, which
    raises a ValueError naming the file when it is empty, truncated, not an image or over PIL's pixel limit."""
    return load_image(path)


@dataclass
class SegmentOptions:
    """`--subtask` and its thresholds; "semantic" needs none of them."""

    subtask: str = "semantic"
    threshold: float = 0.5
    mask_threshold: float = 0.5
    overlap_mask_area_threshold: float = 0.8

    def thresholds(self) -> dict:
        return {"threshold": self.threshold, "mask_threshold": self.mask_threshold,
                "overlap_mask_area_threshold": self.overlap_mask_area_threshold}


@torch.inference_mode()
def segment_batch_results(
    model, processor, images, class_embeddings, device, dtype, class_names, options: SegmentOptions
) -> list[dict]:
    """PIL images -> per image {"label_map": [H_out, W_out] int64} and, for instance / panoptic,
    "segment_map" ([H_out, W_out] int64 segment ids, 0 = none) and "segments" (the processor's segments_info plus
    "label" and "box"), from one forward pass for the whole batch, or one per `padding_groups` group: sizes too
    different to pad together (one very wide image among small ones) run as separate passes."""
    image_processor = processor.image_processor
    resized = [image_processor.resized_size(image.height, image.width) for image in images]
    results = [None] * len(images)
    for group in padding_groups(resized, image_processor.size_divisibility):
        group_results = _segment_group(
            model, processor, [images[i] for i in group], class_embeddings, device, dtype, class_names, options
        )
        for index, result in zip(group, group_results, strict=True):
            results[index] = result
    return results


def _segment_group(model, processor, images, class_embeddings, device, dtype, class_names, options) -> list[dict]:
    """`segment_batch_results` for images that pad into one batch: one forward pass."""
    sizes = [(image.height, image.width) for image in images]
    targets = [_postprocess_size(size, model.config.num_queries, class_embeddings.shape[0]) for size in sizes]
    inputs = processor(images=images, return_tensors="pt", device=device)  # uploaded as uint8, resized there
    outputs = model(
        pixel_values=inputs["pixel_values"].to(device=device, dtype=dtype),
        class_embeddings=class_embeddings,
        image_sizes=inputs["image_sizes"].to(device),
    )
    maps = processor.post_process_semantic_segmentation(outputs, target_sizes=targets)
    results = [{"label_map": _to_size(label_map.cpu(), size)} for label_map, size in zip(maps, sizes, strict=True)]
    if options.subtask == "semantic":
        return results
    if options.subtask == "instance":
        segmented = processor.image_processor.post_process_instance_segmentation(
            outputs, target_sizes=targets, **options.thresholds()
        )
    else:
        stuff = stuff_class_names()
        segmented = processor.image_processor.post_process_panoptic_segmentation(
            outputs, target_sizes=targets, **options.thresholds(),
            label_ids_to_fuse={i for i, name in enumerate(class_names) if name.lower() in stuff},
        )
    for result, segments, size in zip(results, segmented, sizes, strict=True):
        result["segment_map"] = _to_size(segments["segmentation"].cpu(), size)
        result["segments"] = describe_segments(result["segment_map"], segments["segments_info"], class_names)
    return results


def describe_segments(segment_map: np.ndarray, segments_info: list[dict], class_names) -> list[dict]:
    """segments_info -> JSON-ready entries (id, label_id, label, score, area, box [x0, y0, x1, y1)) measured on
    the final segment map (it may have been upsampled); segments left without pixels are dropped."""
    described = []
    for segment in segments_info:
        rows, columns = np.nonzero(segment_map == segment["id"])
        if len(rows) == 0:
            continue
        described.append({
            "id": int(segment["id"]),
            "label_id": int(segment["label_id"]),
            "label": class_names[segment["label_id"]],
            "score": float(segment["score"]),
            "area": int(len(rows)),
            "box": [int(columns.min()), int(rows.min()), int(columns.max()) + 1, int(rows.max()) + 1],
        })
    return described


@torch.inference_mode()
def segment_batch(
    model, processor, images, class_embeddings, device, dtype, sliding_window=False, window_stride=None
) -> list[np.ndarray]:
    """PIL images -> [H_out, W_out] int64 label maps at each image's own size (one forward pass for the whole batch,
    or for each of its `padding_groups`; with `sliding_window` batches of windows per image)."""
    sizes = [(image.height, image.width) for image in images]
    targets = [_postprocess_size(size, model.config.num_queries, class_embeddings.shape[0]) for size in sizes]
    if sliding_window:
        maps = sliding_window_segmentation(
            model, processor.image_processor, images, class_embeddings=class_embeddings, target_sizes=targets,
            stride=window_stride,
        )
        return [_to_size(label_map.cpu(), size) for label_map, size in zip(maps, sizes, strict=True)]
    results = segment_batch_results(model, processor, images, class_embeddings, device, dtype, None, SegmentOptions())
    return [result["label_map"] for result in results]


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
    options: SegmentOptions = field(default_factory=SegmentOptions)

    def __post_init__(self):
        self.palette = make_palette(len(self.class_names))  # class i has the same colour in every overlay

    def process(self, batch: list[tuple[Path, str, Image.Image]]) -> list[tuple[Path, str]]:
        """Segment a batch of (path, output stem, image) in one forward pass and write each image's files; returns
        the (path, reason) of every image whose files could not be written (the others are still written)."""
        images = [image for _, _, image in batch]
        if self.options.subtask != "semantic":
            results = segment_batch_results(
                self.model, self.processor, images, self.class_embeddings, self.device, self.dtype,
                self.class_names, self.options,
            )
            for result in results:
                result["subtask"] = self.options.subtask
        else:
            label_maps = segment_batch(
                self.model, self.processor, images, self.class_embeddings, self.device, self.dtype,
                self.sliding_window, self.window_stride,
            )
            results = [{"label_map": label_map} for label_map in label_maps]
        failures = []
        for (path, stem, image), result in zip(batch, results, strict=True):
            segments = result if "segments" in result else None
            try:
                write_outputs(image, result["label_map"], path, stem, self.class_names, self.palette,
                              self.output_dir, self.model_id, segments=segments)
            except OSError as error:  # a folder in the way, a read-only or full disk: this image failed, not the run
                failures.append((path, f"cannot write its results: {_describe_os_error(error)}"))
        return failures


def _describe_os_error(error: OSError) -> str:
    """'<file>: <reason>' of a failed write, one line (the final name, not the temporary one, when a rename failed)."""
    reason = error.strerror or first_line(error)
    file = error.filename2 or error.filename
    return f"{file}: {reason}" if file else reason


def segment_files(
    job: SegmentationJob, paths: list[Path], stems: list[str], batch_size: int, quiet: bool
) -> list[tuple[Path, str]]:
    """Read, batch and segment `paths` (results named after `stems`) with a progress bar; returns the (path, reason)
    of every file that could not be read or whose results could not be written."""
    failures, batch = [], []
    with tqdm(total=len(paths), desc="pat-segment", unit="image", disable=quiet, file=sys.stderr) as progress:
        for index, (path, stem) in enumerate(zip(paths, stems, strict=True)):
            try:
                batch.append((path, stem, read_image(path)))
            except Exception as error:  # any decoding failure: report the file, keep going
                failures.append((path, f"{type(error).__name__}: {first_line(error)}"))
                if not quiet:
                    tqdm.write(f"warning: skipping {path}: cannot read it as an image", file=sys.stderr)
                progress.update(1)
            if batch and (len(batch) == batch_size or index == len(paths) - 1):
                write_failures = job.process(batch)
                if not quiet:
                    for failed, reason in write_failures:
                        tqdm.write(f"warning: {failed}: {reason}", file=sys.stderr)
                failures += write_failures
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
    options = segment_options(args)
    model, processor = load_model(args.model, device, dtype, args.revision)
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
        sliding_window=args.sliding_window, window_stride=args.window_stride, options=options,
    )
    stems = output_stems(paths, args.output_dir)
    renamed = _renamed(paths, stems, args.output_dir)  # before writing: the reasons are about files found there
    failures = segment_files(job, paths, stems, args.batch_size, args.quiet)
    _report_renamed(renamed)
    return _report(len(paths) - len(failures), failures, args.output_dir, args.quiet)


def _renamed(paths: list[Path], stems: list[str], output_dir: Path) -> list[tuple[Path, str, str]]:
    """(path, stem, reason) of every image whose results avoid a file the run must not overwrite (not those that
    merely share a stem with another input)."""
    inputs = {os.path.realpath(path) for path in paths}
    reasons = [
        (path, stem, result_name_taken(output_dir, path.stem, inputs))
        for path, stem in zip(paths, stems, strict=True)
        if stem != path.stem
    ]
    return [entry for entry in reasons if entry[2] is not None]


def _report_renamed(renamed: list[tuple[Path, str, str]]) -> None:
    """Always, even with --quiet: a user looking for <stem>_labels.png must learn where the results went."""
    if renamed:
        print(f"pat-segment: {len(renamed)} image(s) got other result names, so that no file is overwritten:",
              file=sys.stderr)
    for path, stem, reason in renamed:
        print(f"  {path} -> {', '.join(result_files(stem).values())} ({reason})", file=sys.stderr)


def segment_options(args: argparse.Namespace) -> SegmentOptions:
    """--subtask and its thresholds, checked: thresholds within [0, 1], no segments from sliding windows."""
    for name in ("threshold", "mask_threshold", "overlap_mask_area_threshold"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise UsageError(f"--{name.replace('_', '-')} must lie in [0, 1], got {getattr(args, name)}.")
    if args.subtask != "semantic" and args.sliding_window:
        raise UsageError(f"--subtask {args.subtask} needs the mask proposals; --sliding-window gives semantic "
                         "scores only.")
    return SegmentOptions(args.subtask, args.threshold, args.mask_threshold, args.overlap_mask_area_threshold)


def _report(num_done: int, failures: list, output_dir: Path, quiet: bool) -> int:
    if not quiet:
        print(f"pat-segment: wrote results for {num_done} image(s) to {output_dir}/", file=sys.stderr)
    if not failures:
        return EXIT_OK
    print(f"pat-segment: {len(failures)} image(s) failed (not read, or results not written):", file=sys.stderr)
    for path, reason in failures:
        print(f"  {path}: {reason}", file=sys.stderr)
    return EXIT_UNREADABLE


def cache_command(request: str) -> int:
    """`--clear-cache` ("clear") / `--list-cache` ("list"): answered before the main parser, which requires inputs
    and labels."""
    if request == "clear":
        count = clear_cache()
        print(f"pat-segment: removed {count} converted model(s) from {converted_cache_dir()}")
        return EXIT_OK
    entries = list_cache()
    print(f"converted models in {converted_cache_dir()}: {len(entries)}")
    for entry in entries:
        state = "ok" if entry["complete"] else "incomplete (redone on next use)"
        source = f"{entry.get('source', '?')} {entry.get('source_file', '')}".strip()
        print(f"  {entry['folder']}  {entry['size_bytes'] / 2**20:.0f} MiB  {source}  [{state}]")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`pat-segment` in-process (the console script calls `modeling_pat_cli.segment_main`); returns the exit code."""
    return segment_main(argv)


def run_command(args: argparse.Namespace) -> int:
    """Parsed `pat-segment` arguments -> the whole job, errors reported as one message; returns the exit code."""
    try:
        return run(args)
    except UsageError as error:
        print(f"pat-segment: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ModelLoadError as error:
        print(f"pat-segment: error: {error.report()}", file=sys.stderr)
        return EXIT_MODEL
    except torch.OutOfMemoryError as error:
        message = f"out of memory ({first_line(error)}); try a smaller --batch-size"
        print(f"pat-segment: error: {message}", file=sys.stderr)
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
