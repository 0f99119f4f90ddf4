"""The files `pat-segment` (and the demo's download) write per image, and the rule that keeps others' files safe.

Per image stem: `<stem>_labels.png` (class index per pixel, [H_out, W_out], the image's size: 8-bit, or 16-bit
beyond 256 classes), `<stem>_overlay.png` (the image blended with class colours, plus a legend), `<stem>.json` (labels,
per-class pixel fractions, image size, model) and, for instance / panoptic runs, `<stem>_segments.png` (16-bit segment
id per pixel). Each is marked as a pat-segment result of its kind (a PNG text chunk, a JSON key); an existing file is
replaced only when it is an earlier result of the same kind and not an input of the run, and every file is written
under a temporary name and renamed when complete.
"""

import errno
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic_files import atomic_open
from .visualization import pixel_fractions, render_overlay, save_label_map, save_png, save_segment_map


# Marks a file as a pat-segment result (PNG text-chunk key and JSON key), its value the kind of result: only such a
# file may be overwritten by a later run, and only by a result of the same kind.
RESULT_MARKER = "pat-segment"


def result_files(stem: str) -> dict[str, str]:
    """{kind: file name} of the results of one image (`segments` is written by instance / panoptic runs only, but its
    name is kept free in every run, so that a later --subtask run of the same images finds it so)."""
    return {"labels": f"{stem}_labels.png", "overlay": f"{stem}_overlay.png", "summary": f"{stem}.json",
            "segments": f"{stem}_segments.png"}


def result_kind(path: Path) -> str | None:
    """The kind of pat-segment result `path` is ("labels", "overlay", "summary", "segments"), or None for any other
    file."""
    try:
        if path.suffix.lower() == ".png":
            with Image.open(path) as png:  # text chunks come before the pixel data: only the header is read
                kind = png.info.get(RESULT_MARKER)
        elif path.suffix.lower() == ".json" and path.stat().st_size < 2**20:
            kind = json.loads(path.read_text(encoding="utf-8")).get(RESULT_MARKER)
        else:
            return None
    except Exception:  # unreadable, not an image, a decompression bomb, not a JSON object: not one of ours
        return None
    return kind if kind in result_files("") else None


def output_stems(paths: list[Path], output_dir: Path | None = None) -> list[str]:
    """One output name per input: its file stem, with -2, -3, ... added when two inputs share a stem or (given
    `output_dir`) when one of the stem's result files there may not be overwritten (`result_name_taken`)."""
    inputs = {os.path.realpath(path) for path in paths}
    stems, used = [], set()
    for path in paths:
        stem, number = path.stem, 1
        while stem.casefold() in used or (
            output_dir is not None and result_name_taken(output_dir, stem, inputs) is not None
        ):
            number += 1
            stem = f"{path.stem}-{number}"
        used.add(stem.casefold())
        stems.append(stem)
    return stems


def result_name_taken(output_dir: Path, stem: str, inputs: set[str]) -> str | None:
    """Why the results of `stem` may not be written to `output_dir` (a file there is an input of this run, or exists
    and is not an earlier result of the same kind), or None when they may. A folder in the way is not a file: its
    write fails and is reported with the other failures."""
    for kind, name in result_files(stem).items():
        target = output_dir / name
        if os.path.realpath(target) in inputs:
            return f"{target} is an input of this run"
        if _is_foreign_file(target, kind):
            return f"{target} exists and is not an earlier pat-segment {kind} file"
    return None


def _is_foreign_file(target: Path, kind: str) -> bool:
    """`target` is a file (or link) that is not an earlier result of this kind: it must not be replaced."""
    return os.path.lexists(target) and not target.is_dir() and (target.is_symlink() or result_kind(target) != kind)


def _refuse_foreign_file(target: Path, kind: str) -> None:
    if _is_foreign_file(target, kind):
        reason = "exists and is not an earlier pat-segment result, so it is kept"
        raise FileExistsError(errno.EEXIST, reason, str(target))


# -- writing ----------------------------------------------------------------------------------------------------------
def write_outputs(
    image, label_map, path: Path, stem: str, class_names, palette, output_dir: Path, model_id: str, segments=None
):
    """The result files of one image: label PNG, overlay PNG, JSON summary, and with `segments` (a
    `segment_batch_results` entry of an instance / panoptic run) the segment-id PNG, whose segments the JSON lists;
    each marked as a result of its kind and written atomically (raises OSError when a write fails)."""
    files = result_files(stem)
    for kind, name in files.items():  # a file that appeared since the names were chosen is kept too
        _refuse_foreign_file(output_dir / name, kind)
    label_file, overlay_file, json_file = files["labels"], files["overlay"], files["summary"]
    save_label_map(label_map, len(class_names), output_dir / label_file, text={RESULT_MARKER: "labels"})
    segment_map = None if segments is None else segments["segment_map"]
    overlay = render_overlay(image, label_map, class_names, palette, outline_map=segment_map)
    save_png(overlay, output_dir / overlay_file, text={RESULT_MARKER: "overlay"})
    fractions = pixel_fractions(label_map, len(class_names))
    present = [
        {"index": int(i), "label": class_names[i], "pixel_fraction": float(fractions[i])}
        for i in sorted(np.flatnonzero(fractions), key=lambda i: (-fractions[i], i))
    ]
    summary = {
        RESULT_MARKER: "summary",
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
    if segments is not None:
        segment_file = files["segments"]
        save_segment_map(segment_map, output_dir / segment_file, text={RESULT_MARKER: "segments"})
        summary.update(subtask=segments["subtask"], segment_map=segment_file, segment_map_dtype="uint16",
                       segments=segments["segments"])
    elif result_kind(output_dir / files["segments"]) == "segments":
        (output_dir / files["segments"]).unlink()  # an earlier instance / panoptic run's: it would no longer match
    with atomic_open(output_dir / json_file) as handle:
        json.dump(summary, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


__all__ = [
    "RESULT_MARKER",
    "output_stems",
    "result_files",
    "result_kind",
    "result_name_taken",
    "write_outputs",
]
