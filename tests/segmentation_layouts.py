"""Builds small datasets in each supported folder layout from the real pairs in tests/fixtures/data (test helper).

Where a benchmark's labels cannot be derived exactly from the fixtures, the labels are re-expressed in the target
vocabulary by class name (ADE-150 -> ADE-847; VOC -> Pascal Context-59 / 459); pixels without a counterpart become
the ignore value. Such data exercises the layout and label handling, not benchmark numbers.
"""

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from modeling_pat.apps.data import load_vocabulary

from conftest import FIXTURES


DATA = FIXTURES / "data"
MANIFEST = {entry["stem"]: entry for entry in json.loads((DATA / "manifest.json").read_text())}
ADE_STEMS = sorted(s for s in MANIFEST if s.startswith("ade150"))
COCO_STEMS = sorted(s for s in MANIFEST if s.startswith("cocostuff"))
VOC_STEMS = sorted(s for s in MANIFEST if s.startswith("voc"))
VOC21 = json.loads((DATA / "vocab" / "voc21.json").read_text())["names"]


def image_path(stem: str) -> Path:
    return DATA / MANIFEST[stem]["image"]


def raw_label(stem: str) -> np.ndarray:
    return np.array(Image.open(DATA / MANIFEST[stem]["label"]))


def _copy_image(stem: str, folder: Path, name: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    source = image_path(stem)
    shutil.copy(source, folder / f"{name or stem}{source.suffix}")


def _save_label(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if path.suffix == ".tif" else np.uint8
    Image.fromarray(np.ascontiguousarray(array.astype(dtype))).save(path)


def reduce_zero(label: np.ndarray, ignore: int = 255) -> np.ndarray:
    out = label.astype(np.int64) - 1
    out[label == 0] = ignore
    out[label == 255] = ignore
    return out


def coco_to_171(label: np.ndarray) -> np.ndarray:
    mapping = load_vocabulary("coco171")["pixel_value_to_index"]
    lut = np.full(256, 255, dtype=np.int64)
    for value, index in mapping.items():
        lut[int(value)] = index
    return lut[label]


def by_name(label: np.ndarray, source_names: list[str], target: str, ignore: int, offset: int = 0) -> np.ndarray:
    """Re-express class ids (value v = source_names[v - offset]) in vocabulary `target` by name (first synonym)."""
    names = [n.split(",")[0].strip() for n in load_vocabulary(target)["class_names"]]
    lut = np.full(65536, ignore, dtype=np.int64)
    for index, name in enumerate(source_names):
        if name in names:
            lut[index + offset] = names.index(name)
    return lut[label.astype(np.int64)]


def make_ade150(root: Path, train, validation, prepared: bool) -> Path:
    base = root / "ADEChallengeData2016"
    for split, stems in (("training", train), ("validation", validation)):
        for stem in stems:
            name = stem.removeprefix("ade150_")
            _copy_image(stem, base / "images" / split, name)
            label = raw_label(stem)
            if prepared:
                _save_label(reduce_zero(label), base / "annotations_detectron2" / split / f"{name}.png")
            else:
                _save_label(label, base / "annotations" / split / f"{name}.png")
    return base


def make_ade847(root: Path, train, validation) -> Path:
    base = root / "ADE20K_2021_17_01"
    ade150 = load_vocabulary("ade150")["class_names"]
    for split, stems in (("training", train), ("validation", validation)):
        for stem in stems:
            name = stem.removeprefix("ade150_")
            _copy_image(stem, base / "images_detectron2" / split, name)
            label = by_name(raw_label(stem), ade150, "ade847", 65535, offset=1)
            _save_label(label, base / "annotations_detectron2" / split / f"{name}.tif")
    return base


def make_coco(root: Path, train, validation, prepared: bool) -> Path:
    base = root / "coco"
    for split, stems in (("train2017", train), ("val2017", validation)):
        for stem in stems:
            name = stem.removeprefix("cocostuff_")
            _copy_image(stem, base / split, name)
            label = raw_label(stem)
            if prepared:
                _save_label(coco_to_171(label), base / "stuffthingmaps_detectron2" / split / f"{name}.png")
            else:
                _save_label(label, base / "stuffthingmaps" / split / f"{name}.png")
    return base


def make_voc(root: Path, train, validation, prepared: bool) -> Path:
    base = root / "VOC2012"
    lists = {}
    for split, stems in (("train", train), ("val", validation)):
        for stem in stems:
            _copy_image(stem, base / "JPEGImages")
            label = raw_label(stem)
            if prepared:
                _save_label(reduce_zero(label), base / "annotations_detectron2" / split / f"{stem}.png")
            else:
                _save_label(label, base / "SegmentationClass" / f"{stem}.png")
        lists[split] = stems
    if not prepared:
        (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        for split, stems in lists.items():
            (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return base


def make_pcontext(root: Path, train, validation, full: bool) -> Path:
    base = root / ("pcontext_full" if full else "pcontext")
    target, ignore, ext = ("pc459", 65535, ".tif") if full else ("pc59", 255, ".png")
    for split, stems in (("train", train), ("val", validation)):
        for stem in stems:
            _copy_image(stem, base / split / "image")
            label = raw_label(stem).astype(np.int64)
            label[label == 255] = 0  # VOC void -> background, then background -> ignore below
            mapped = by_name(label, VOC21, target, ignore)
            mapped[label == 0] = ignore
            _save_label(mapped, base / split / "label" / f"{stem}{ext}")
    return base


def make_folder(root: Path, splits: dict, class_names: list[str], label_fn, ignore_index: int = 255,
                flat: bool = False) -> Path:
    """The generic layout: id2label.json + <split>/image, <split>/label (or a flat image/, label/)."""
    root.mkdir(parents=True, exist_ok=True)
    id2label = {str(i): name for i, name in enumerate(class_names)}
    content = id2label if ignore_index == 255 else {"id2label": id2label, "ignore_index": ignore_index}
    (root / "id2label.json").write_text(json.dumps(content))
    for split, stems in splits.items():
        base = root if flat else root / split
        for stem in stems:
            _copy_image(stem, base / "image")
            _save_label(label_fn(stem), base / "label" / f"{stem}.png")
    return root


def ade_label_150(stem: str) -> np.ndarray:
    """An ADE20K fixture label as ADE-150 class indices, 255 = ignore."""
    return reduce_zero(raw_label(stem))


def present_classes(label: np.ndarray, ignore: int) -> set[int]:
    return {int(v) for v in np.unique(label) if v != ignore}
