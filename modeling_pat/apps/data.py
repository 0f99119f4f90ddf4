"""Segmentation data for training and evaluation: the benchmarks' own folder layouts, Hub datasets, SAN's
augmentation and a padding collator.

Every source becomes a `SegmentationSplit`: a `datasets.Dataset` with `image` and `label` columns (decoded lazily
as PIL images), the class names, the ignore value and a `LabelMapping` from the stored pixel values to class
indices. `SegmentationTrainDataset` / `SegmentationEvalDataset` turn a split into model inputs and
`SegmentationCollator` pads them into a batch.

Layouts (`load_split(kind, root, split)`; `root` is the dataset's own folder, by default `<data_root>/<folder>`
where `data_root` is detectron2's `DETECTRON2_DATASETS`, as SAN registers them):

| kind | folder | images | labels (values -> class index) | ignore |
|---|---|---|---|---|
| `coco171` (COCO-Stuff-164k) | `coco/` | `train2017/`, `val2017/` `*.jpg` | `stuffthingmaps_detectron2/{train2017,val2017}/*.png` (0..170); or the raw `stuffthingmaps/...` (COCO id - 1, mapped with the vocabulary's `pixel_value_to_index`) | 255 |
| `ade150` (ADE20K-150) | `ADEChallengeData2016/` | `images/{training,validation}/*.jpg` | `annotations_detectron2/{training,validation}/*.png` (0..149); or the raw `annotations/...` (1..150, 0 = other: v - 1, 0 -> 255) | 255 |
| `ade847` (ADE20K-847) | `ADE20K_2021_17_01/` | `images_detectron2/{training,validation}/*.jpg` | `annotations_detectron2/{training,validation}/*.tif` (16-bit, 0..846) | 65535 |
| `pc59` (Pascal Context-59) | `pcontext/` | `{train,val}/image/*.jpg` | `{train,val}/label/*.png` (0..58) | 255 |
| `pc459` (Pascal Context-459) | `pcontext_full/` | `{train,val}/image/*.jpg` | `{train,val}/label/*.tif` (16-bit, 0..458) | 65535 |
| `voc20` (Pascal VOC-20) | `VOC2012/` | `JPEGImages/*.jpg` | `annotations_detectron2/{train,val}/*.png` (0..19); or the raw `SegmentationClass/*.png` listed in `ImageSets/Segmentation/{train,val}.txt` (1..20, 0 = background: v - 1, 0 -> 255) | 255 |
| `folder` (your own classes) | any | `[<split>/]image/*` | `[<split>/]label/*.png` (class indices; `ignore_index` 255 unless `id2label.json` says otherwise) with `id2label.json` at the root | 255 |
| `hub` (Hub / local dataset repo) | a Hub id or a local folder | parquet or imagefolder with an image and a label column | class indices; `id2label.json` in the repo | 255 |

The `*_detectron2` folders are what SAN's / Mask2Former's preparation scripts write (`prepare_ade20k_sem_seg.py`,
`prepare_coco_stuff_164k_sem_seg.py`, SAN's `datasets/prepare_{voc,pcontext_59cls,pcontext_459cls}_sem_seg.py`,
`prepare_ade20k_full_sem_seg.py`); the raw folders are read directly where the mapping is a pure pixel-value lookup
(COCO-Stuff, ADE-150, VOC). ADE-847 and PC-459 need the preparation scripts (they decode the full ADE20K index and
the Pascal Context `.mat` files). Images and labels are paired by file stem (detectron2's `load_sem_seg`).

What is checked when (cheap whatever the dataset's size): `load_split` reads `id2label.json` strictly
(`read_id2label`), refuses an empty split and reads and checks the first label file (`check_split`); every label file
is checked again each time it is read (`SegmentationSplit.load`: one vectorised pass beside the image decoding).
A colour-coded (RGB) map or a value that is neither a class index nor the ignore value raises `LabelFileError`
naming the file (and the values); `palette_to_class_indices` converts colour-coded maps to class indices.
"""

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image
from transformers import TrainerCallback

from ..configuration_pat import load_vocabulary
from ..image_processing_pat import (
    PATImageProcessor,
    _pad_bottom_right,
    get_padded_size,
    get_resize_output_size,
    padding_groups,
)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABEL_EXTENSIONS = (".png", ".tif", ".tiff")
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "validation": "validation", "val": "validation", "valid": "validation",
    "test": "test",
}


# -- vocabularies ---------------------------------------------------------------------------------------------------
def read_id2label(path) -> tuple[list[str], dict]:
    """`id2label.json` (`{"0": "road", ...}`, the official example's format; optionally wrapped as
    `{"id2label": {...}, "ignore_index": 255}`) -> (class names in index order, extra fields).

    Raises `ValueError` naming the file for anything else: invalid JSON, not an id -> name object, ids that are not
    0..N-1, empty or non-string names, one class named twice (the same prompt twice makes two classes that can never
    be told apart), an ignore value that is not a non-negative integer."""
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle, object_pairs_hook=_refuse_duplicate_keys)
    except _DuplicateKey as error:  # json.load would silently keep the last of the two
        raise ValueError(f"{path}: the key {error.args[0]!r} is given twice.") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}).") from error
    extra = {}
    if isinstance(content, dict) and isinstance(content.get("id2label"), dict):
        extra = {k: v for k, v in content.items() if k != "id2label"}
        content = content["id2label"]
    if not isinstance(content, dict) or not content:
        raise ValueError(
            f"{path}: expected a non-empty object mapping class ids to names, like {{\"0\": \"road\", \"1\": "
            f"\"car\"}}; got {_short(content)}."
        )
    names = _id_to_name(path, content)
    ids = sorted(names)
    if ids != list(range(len(ids))):
        raise ValueError(f"{path}: the ids must be 0..N-1 without gaps, got {ids[:10]}...")
    _check_unique_names(path, names)
    ignore = extra.get("ignore_index", 255)
    if isinstance(ignore, bool) or not isinstance(ignore, int) or ignore < 0:
        raise ValueError(f"{path}: ignore_index must be a non-negative integer, got {ignore!r}.")
    return [names[i] for i in ids], extra


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicate_keys(pairs: list) -> dict:
    content = {}
    for key, value in pairs:
        if key in content:
            raise _DuplicateKey(key)
        content[key] = value
    return content


def _id_to_name(path, content: dict) -> dict[int, str]:
    names = {}
    for key, name in content.items():
        if not str(key).strip().isdigit():
            raise ValueError(f"{path}: {key!r} is not a class id; the keys must be the ids 0..N-1.")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{path}: class {key} must have a non-empty name, got {_short(name)}.")
        if int(key) in names:
            raise ValueError(f"{path}: class id {int(key)} is given twice.")
        names[int(key)] = name
    return names


def _check_unique_names(path, names: dict[int, str]) -> None:
    """Names are compared as the tokenizer sees them (case and surrounding spaces do not count)."""
    first = {}
    for index in sorted(names):
        key = names[index].strip().lower()
        if key in first:
            raise ValueError(f"{path}: class {names[index]!r} is named twice (ids {first[key]} and {index}).")
        first[key] = index


def _short(value) -> str:
    text = json.dumps(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


# -- label checks ---------------------------------------------------------------------------------------------------
class LabelFileError(ValueError):
    """A label file that cannot be used as it is; the message names the file and what is wrong."""


def single_channel_label(label: np.ndarray, where: str) -> np.ndarray:
    """[H, W] class indices from a stored label; a label saved as RGB / LA with equal channels is accepted, a
    colour-coded one (channels that differ) is refused, since reading its red channel as class ids is garbage."""
    label = np.asarray(label)
    if label.ndim == 2:
        return label
    if label.ndim != 3:
        raise LabelFileError(f"{where}: a label map must be [height, width], got shape {label.shape}.")
    colour = label[..., :3] if label.shape[-1] >= 3 else label[..., :1]
    differs = (colour != colour[..., :1]).any(axis=-1)
    if differs.any():
        first = tuple(int(v) for v in colour[np.unravel_index(int(np.argmax(differs)), differs.shape)])
        raise LabelFileError(
            f"{where}: a colour-coded (RGB) label map (e.g. colour {first}); labels must be class indices, one "
            "channel holding the class id of each pixel. Convert it with "
            "modeling_pat.data.palette_to_class_indices(rgb, palette) (palette: the (r, g, b) of each class id) and "
            "save the result as a mode 'L' or 'P' PNG."
        )
    return label[..., 0]


def palette_to_class_indices(rgb: np.ndarray, palette, ignore_index: int = 255) -> np.ndarray:
    """A colour-coded label map [H, W, 3] -> class indices [H, W]: pixel colour `palette[i]` -> i, any colour not in
    the palette -> `ignore_index`."""
    colours = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    codes = _colour_codes(colours)
    if len(np.unique(codes)) != len(codes):
        raise ValueError("palette_to_class_indices: two classes share one colour.")
    order = np.argsort(codes)
    pixels = _colour_codes(np.asarray(rgb)[..., :3].astype(np.int64))
    position = np.clip(np.searchsorted(codes[order], pixels), 0, len(codes) - 1)
    found = codes[order][position] == pixels
    return np.where(found, order[position], ignore_index).astype(np.int64)


def _colour_codes(colours: np.ndarray) -> np.ndarray:
    return (colours[..., 0] << 16) | (colours[..., 1] << 8) | colours[..., 2]


def check_label_values(label: np.ndarray, num_labels: int, ignore_index: int, where: str) -> None:
    """Every value is a class index (0..num_labels-1) or the ignore value; one vectorised pass over the map."""
    outside = (label < 0) | (label >= num_labels)
    outside &= label != ignore_index
    if outside.any():
        values = np.unique(label[outside])
        shown = ", ".join(str(int(v)) for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise LabelFileError(
            f"{where}: label value(s) {shown} are neither a class index (0..{num_labels - 1}, from the "
            f"{num_labels} classes of the vocabulary) nor the ignore value {ignore_index}. Check the class list "
            "(id2label.json), the ignore value (--ignore_index) and whether 0 means 'other' (--do_reduce_labels)."
        )


# -- label mapping --------------------------------------------------------------------------------------------------
@dataclass
class LabelMapping:
    """Stored pixel values -> class indices, `ignore_index` for everything else. `lut=None` keeps the values (they
    are class indices already); a lookup table maps value v to `lut[v]` and values beyond it to `ignore_index`."""

    ignore_index: int = 255
    lut: np.ndarray | None = None

    def __call__(self, label: np.ndarray) -> np.ndarray:
        label = single_channel_label(label, "label map").astype(np.int64)
        if self.lut is None:
            return label
        inside = (label >= 0) & (label < len(self.lut))
        return np.where(inside, self.lut[np.clip(label, 0, len(self.lut) - 1)], self.ignore_index)

    @classmethod
    def reduce_zero_label(cls, ignore_index: int = 255, num_values: int = 256) -> "LabelMapping":
        """ADE20K / VOC raw convention: 0 -> ignore, v -> v - 1, the ignore value itself kept."""
        lut = np.arange(num_values, dtype=np.int64) - 1
        lut[0] = ignore_index
        if ignore_index < num_values:
            lut[ignore_index] = ignore_index
        return cls(ignore_index=ignore_index, lut=lut)

    @classmethod
    def from_dict(cls, mapping: dict, ignore_index: int = 255, num_values: int = 256) -> "LabelMapping":
        """{stored value: class index}; unlisted values -> ignore."""
        lut = np.full(num_values, ignore_index, dtype=np.int64)
        for value, index in mapping.items():
            lut[int(value)] = int(index)
        return cls(ignore_index=ignore_index, lut=lut)


# -- splits -----------------------------------------------------------------------------------------------------------
@dataclass
class SegmentationSplit:
    """One split of one dataset, ready for `SegmentationTrainDataset` / `SegmentationEvalDataset`.

    `dataset` has the columns `image`, `label` (`datasets.Image`, decoded on access) and `file_name` (the stem).
    """

    name: str
    display_name: str
    dataset_type: str
    split: str
    class_names: list[str]
    ignore_index: int
    dataset: datasets.Dataset
    label_mapping: LabelMapping
    root: str | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def num_labels(self) -> int:
        return len(self.class_names)

    def select(self, indices) -> "SegmentationSplit":
        return _replace(self, dataset=self.dataset.select(list(indices)))

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """(RGB uint8 [H, W, 3], class-index label int64 [H, W], stem) of example `index`.

        The label is checked on every read (one vectorised pass, small next to decoding the image): a colour-coded
        map or a value that is neither a class nor the ignore value raises `LabelFileError` naming the file."""
        example = self.dataset[int(index)]
        where = self._label_source(example, index)
        image = np.array(example["image"].convert("RGB"))
        label = self.label_mapping(single_channel_label(np.array(example["label"]), where))
        check_label_values(label, self.num_labels, self.ignore_index, where)
        if label.shape != image.shape[:2]:
            raise LabelFileError(f"{where}: label {label.shape} and image {image.shape[:2]} differ in size.")
        return image, label, example.get("file_name") or str(index)

    def _label_source(self, example: dict, index: int) -> str:
        """The label's file name when it was read from a file, else the split and example number."""
        filename = getattr(example["label"], "filename", None)
        if filename:
            return str(filename)
        return f"{self.name}/{self.split} example {index} ({example.get('file_name') or index})"


def _replace(split: SegmentationSplit, **changes) -> SegmentationSplit:
    values = {name: getattr(split, name) for name in split.__dataclass_fields__}
    values.update(changes)
    return SegmentationSplit(**values)


@dataclass(frozen=True)
class BenchmarkLayout:
    """Where a benchmark keeps its images and labels (relative to its folder) and how to read the labels."""

    kind: str
    display_name: str
    dataset_type: str
    folder: str
    vocabulary: str
    image_dirs: dict  # split -> candidate image folders
    label_dirs: dict  # split -> candidate (label folder, mapping name) pairs, prepared first, raw second
    label_ext: str = ".png"
    list_files: dict = field(default_factory=dict)  # (split, label folder) -> file listing the stems


BENCHMARKS = {
    "coco171": BenchmarkLayout(
        kind="coco171", display_name="COCO-Stuff-171", dataset_type="coco-stuff-164k", folder="coco",
        vocabulary="coco171",
        image_dirs={"train": ["train2017"], "validation": ["val2017"]},
        label_dirs={
            "train": [("stuffthingmaps_detectron2/train2017", "identity"), ("stuffthingmaps/train2017", "coco_raw")],
            "validation": [("stuffthingmaps_detectron2/val2017", "identity"), ("stuffthingmaps/val2017", "coco_raw")],
        },
    ),
    "ade150": BenchmarkLayout(
        kind="ade150", display_name="ADE20K-150", dataset_type="scene_parse_150", folder="ADEChallengeData2016",
        vocabulary="ade150",
        image_dirs={"train": ["images/training"], "validation": ["images/validation"]},
        label_dirs={
            "train": [("annotations_detectron2/training", "identity"), ("annotations/training", "reduce_zero")],
            "validation": [("annotations_detectron2/validation", "identity"), ("annotations/validation", "reduce_zero")],
        },
    ),
    "ade847": BenchmarkLayout(
        kind="ade847", display_name="ADE20K-847", dataset_type="ade20k-full-847", folder="ADE20K_2021_17_01",
        vocabulary="ade847",
        image_dirs={"train": ["images_detectron2/training"], "validation": ["images_detectron2/validation"]},
        label_dirs={
            "train": [("annotations_detectron2/training", "identity")],
            "validation": [("annotations_detectron2/validation", "identity")],
        },
        label_ext=".tif",
    ),
    "pc59": BenchmarkLayout(
        kind="pc59", display_name="Pascal Context-59", dataset_type="pascal-context-59", folder="pcontext",
        vocabulary="pc59",
        image_dirs={"train": ["train/image"], "validation": ["val/image"]},
        label_dirs={"train": [("train/label", "identity")], "validation": [("val/label", "identity")]},
    ),
    "pc459": BenchmarkLayout(
        kind="pc459", display_name="Pascal Context-459", dataset_type="pascal-context-459", folder="pcontext_full",
        vocabulary="pc459",
        image_dirs={"train": ["train/image"], "validation": ["val/image"]},
        label_dirs={"train": [("train/label", "identity")], "validation": [("val/label", "identity")]},
        label_ext=".tif",
    ),
    "voc20": BenchmarkLayout(
        kind="voc20", display_name="Pascal VOC-20", dataset_type="pascal-voc-2012-20", folder="VOC2012",
        vocabulary="voc20",
        image_dirs={
            "train": ["JPEGImages", "images_detectron2/train"],
            "validation": ["JPEGImages", "images_detectron2/val"],
        },
        label_dirs={
            "train": [("annotations_detectron2/train", "identity"), ("SegmentationClass", "reduce_zero")],
            "validation": [("annotations_detectron2/val", "identity"), ("SegmentationClass", "reduce_zero")],
        },
        list_files={
            ("train", "SegmentationClass"): "ImageSets/Segmentation/train.txt",
            ("validation", "SegmentationClass"): "ImageSets/Segmentation/val.txt",
        },
    ),
}
KIND_ALIASES = {"coco_stuff_171": "coco171", "coco_stuff_164k": "coco171", "coco-stuff": "coco171",
                "ade20k_150": "ade150", "ade20k_847": "ade847", "pcontext_59": "pc59", "pcontext_459": "pc459",
                "voc": "voc20", "imagefolder": "folder"}


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed `KIND[=PATH][:SPLIT]` argument, e.g. `ade150`, `ade150=/data/ADEChallengeData2016:validation`,
    `folder=/data/mine`, `hub=segments/sidewalk-semantic:train`."""

    kind: str
    path: str | None = None
    split: str | None = None

    @classmethod
    def parse(cls, text: str) -> "DatasetSpec":
        spec = text.strip()
        split = None
        head, sep, tail = spec.rpartition(":")
        if sep and tail.lower() in SPLIT_ALIASES:
            spec, split = head, SPLIT_ALIASES[tail.lower()]
        kind, _, path = spec.partition("=")
        kind = KIND_ALIASES.get(kind.strip().lower(), kind.strip().lower())
        if kind not in BENCHMARKS and kind not in ("folder", "hub"):
            raise ValueError(
                f"Unknown dataset kind {kind!r} in {text!r}; use one of {sorted(BENCHMARKS)}, folder=PATH or hub=ID "
                "(optionally followed by :train / :validation)."
            )
        if kind in ("folder", "hub") and not path:
            raise ValueError(f"{text!r}: `{kind}` needs a location, e.g. {kind}=/path/to/data.")
        return cls(kind=kind, path=path.strip() or None, split=split)

    def label(self) -> str:
        """A short name used as the metric prefix: the benchmark kind, or the folder / repo name."""
        if self.kind in BENCHMARKS:
            base = self.kind
        else:
            base = Path(self.path.rstrip("/")).name or self.path
            base = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in base)
        return base if self.split in (None, "validation") else f"{base}_{self.split}"


def default_data_root() -> str:
    """detectron2's convention: `$DETECTRON2_DATASETS`, else `./datasets`."""
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


def load_split(spec: "DatasetSpec | str", split: str, data_root: str | None = None, **options) -> SegmentationSplit:
    """Any supported source -> a `SegmentationSplit`. `split` is used unless the spec names one.

    Options for `folder` / `hub`: `id2label_file`, `ignore_index`, `reduce_labels`, `image_column`, `label_column`,
    `dataset_config_name`, `train_val_split`, `seed`, `cache_dir`, `token`.
    """
    if isinstance(spec, str):
        spec = DatasetSpec.parse(spec)
    split = SPLIT_ALIASES.get((spec.split or split).lower(), spec.split or split)
    if spec.kind in BENCHMARKS:
        layout = BENCHMARKS[spec.kind]
        root = spec.path or os.path.join(data_root or default_data_root(), layout.folder)
        loaded = load_benchmark(layout, root, split)
    elif spec.kind == "folder":
        loaded = load_folder(spec.path, split, **_pick(options, FOLDER_OPTIONS))
    else:
        loaded = load_hub_dataset(spec.path, split, **_pick(options, HUB_OPTIONS))
    check_split(loaded)
    return loaded


def check_split(split: SegmentationSplit) -> None:
    """The checks made when a split is loaded, cheap whatever its size: it has examples, and its first label passes
    the per-file checks of `SegmentationSplit.load`, so that a wrong class list or ignore value and colour-coded
    labels fail before a model is built. The other label files are checked as they are read (`LabelFileError`)."""
    if len(split) == 0:
        raise ValueError(f"{split.display_name} ({split.split}): the split has no examples.")
    split.load(0)


FOLDER_OPTIONS = ("id2label_file", "ignore_index", "reduce_labels", "train_val_split", "seed")
HUB_OPTIONS = FOLDER_OPTIONS + ("image_column", "label_column", "dataset_config_name", "cache_dir", "token")


def _pick(options: dict, names) -> dict:
    return {k: v for k, v in options.items() if k in names and v is not None}


def load_benchmark(layout: BenchmarkLayout, root: str, split: str) -> SegmentationSplit:
    """A benchmark in its own folder layout (see the module docstring)."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise FileNotFoundError(
            f"{layout.display_name}: folder {root} does not exist. Put the dataset under "
            f"$DETECTRON2_DATASETS/{layout.folder} (or pass --data_root), or give its location as "
            f"{layout.kind}=/path/to/{layout.folder}."
        )
    if split not in layout.image_dirs:
        raise ValueError(f"{layout.display_name} has the splits {sorted(layout.image_dirs)}, not {split!r}.")
    image_dir = _first_dir(root_path, layout.image_dirs[split])
    label_dir, mapping_name = None, None
    for candidate, name in layout.label_dirs[split]:
        if (root_path / candidate).is_dir():
            label_dir, mapping_name = root_path / candidate, name
            break
    if image_dir is None or label_dir is None:
        expected = ", ".join(
            [f"{layout.image_dirs[split]}"] + [f"{d}" for d, _ in layout.label_dirs[split]]
        )
        raise FileNotFoundError(
            f"{layout.display_name} ({split}) under {root}: expected image folder one of {layout.image_dirs[split]} "
            f"and label folder one of {[d for d, _ in layout.label_dirs[split]]} (looked for {expected})."
        )
    vocabulary = load_vocabulary(layout.vocabulary)
    ignore_index = int(vocabulary["ignore_index"])
    num_values = 65536 if ignore_index > 255 else 256
    if mapping_name == "identity":
        mapping = LabelMapping(ignore_index=ignore_index)
    elif mapping_name == "reduce_zero":
        mapping = LabelMapping.reduce_zero_label(ignore_index, num_values)
    elif mapping_name == "coco_raw":
        mapping = LabelMapping.from_dict(vocabulary["pixel_value_to_index"], ignore_index, num_values)
    else:
        raise ValueError(mapping_name)
    list_file = layout.list_files.get((split, label_dir.relative_to(root_path).as_posix()))
    stems = None
    if list_file is not None:
        listing = root_path / list_file
        if not listing.is_file():
            raise FileNotFoundError(f"{layout.display_name}: {listing} lists the {split} images; it is missing.")
        stems = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    pairs = pair_files(image_dir, label_dir, stems=stems)
    notes = [f"labels from {label_dir.relative_to(root_path)} ({mapping_name})"]
    return SegmentationSplit(
        name=layout.kind,
        display_name=layout.display_name,
        dataset_type=layout.dataset_type,
        split=split,
        class_names=list(vocabulary["class_names"]),
        ignore_index=ignore_index,
        dataset=_pairs_to_dataset(pairs),
        label_mapping=mapping,
        root=str(root_path),
        notes=notes,
    )


def _first_dir(root: Path, candidates) -> Path | None:
    for candidate in candidates:
        if (root / candidate).is_dir():
            return root / candidate
    return None


def pair_files(image_dir, label_dir, stems=None) -> list[tuple[str, str, str]]:
    """(stem, image path, label path) for every label file with an image of the same stem, sorted by stem."""
    image_dir, label_dir = Path(image_dir), Path(label_dir)
    images = _files_by_stem(image_dir, IMAGE_EXTENSIONS)
    labels = _files_by_stem(label_dir, LABEL_EXTENSIONS)
    wanted = sorted(labels) if stems is None else [s for s in stems if s in labels]
    pairs = [(stem, str(images[stem]), str(labels[stem])) for stem in wanted if stem in images]
    if not pairs:
        raise FileNotFoundError(f"No image/label pairs: {image_dir} and {label_dir} share no file stem.")
    missing = len(wanted) - len(pairs) + (0 if stems is None else len(stems) - len(wanted))
    if missing:  # extra images are normal (VOC's JPEGImages holds every split), labels without an image are not
        warnings.warn(f"{missing} labels of {label_dir} have no image in {image_dir}; they are skipped.", stacklevel=2)
    return pairs


def _files_by_stem(folder: Path, extensions) -> dict[str, Path]:
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in extensions:
            stem = path.relative_to(folder).with_suffix("").as_posix()
            files.setdefault(stem, path)
    return files


def _pairs_to_dataset(pairs) -> datasets.Dataset:
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.Image(), "file_name": datasets.Value("string")}
    )
    return datasets.Dataset.from_dict(
        {"image": [p[1] for p in pairs], "label": [p[2] for p in pairs], "file_name": [p[0] for p in pairs]},
        features=features,
    )


def load_folder(
    root, split: str, id2label_file=None, ignore_index: int | None = None, reduce_labels: bool = False,
    train_val_split: float | None = 0.15, seed: int = 0,
) -> SegmentationSplit:
    """The generic layout: `root/id2label.json` and `root/<split>/{image,label}/` (split = train / validation,
    also `training` / `val`), or a flat `root/{image,label}/` from which `train_val_split` of the pairs (shuffled
    with `seed`) are held out as the validation split. Label PNGs hold class indices, `ignore_index` (default 255,
    or the `ignore_index` field of the JSON) is not a class; `reduce_labels` applies ADE20K's 0 -> ignore, v -> v-1."""
    root = Path(root)
    id2label_path = Path(id2label_file) if id2label_file else root / "id2label.json"
    if not id2label_path.is_file():
        raise FileNotFoundError(f"{root}: the folder layout needs the class names in {id2label_path}.")
    class_names, extra = read_id2label(id2label_path)
    ignore_index = int(ignore_index if ignore_index is not None else extra.get("ignore_index", 255))
    split_dirs = {SPLIT_ALIASES[p.name]: p for p in sorted(root.iterdir()) if p.is_dir() and p.name in SPLIT_ALIASES}
    if split in split_dirs:
        pairs = pair_files(split_dirs[split] / "image", split_dirs[split] / "label")
    elif (root / "image").is_dir():
        pairs = pair_files(root / "image", root / "label")
        pairs = _holdout(pairs, split, train_val_split, seed)
    else:
        raise FileNotFoundError(
            f"{root}: no {split!r} split. Expected {root}/<split>/image + label (split one of train, validation) or "
            f"{root}/image + {root}/label."
        )
    num_values = 65536 if ignore_index > 255 else 256
    mapping = LabelMapping.reduce_zero_label(ignore_index, num_values) if reduce_labels else LabelMapping(ignore_index)
    return SegmentationSplit(
        name=root.name, display_name=root.name, dataset_type=root.name, split=split, class_names=class_names,
        ignore_index=ignore_index, dataset=_pairs_to_dataset(pairs), label_mapping=mapping, root=str(root),
    )


def _holdout(items: list, split: str, fraction: float | None, seed: int) -> list:
    """Deterministic train / validation partition of a list (the official example's `train_val_split`)."""
    if split not in ("train", "validation"):
        raise ValueError(f"Only train / validation can be carved from a single folder, not {split!r}.")
    if not fraction:
        if split == "validation":
            raise ValueError("No validation split and train_val_split is 0.")
        return items
    order = np.random.default_rng(seed).permutation(len(items))
    num_validation = max(1, int(round(fraction * len(items))))
    chosen = order[:num_validation] if split == "validation" else order[num_validation:]
    return [items[i] for i in sorted(chosen)]


IMAGE_COLUMNS = ("image", "pixel_values", "img")
LABEL_COLUMNS = ("label", "annotation", "semantic_segmentation", "segmentation", "mask", "semantic_map")


def load_hub_dataset(
    name, split: str, dataset_config_name=None, image_column=None, label_column=None, id2label_file=None,
    ignore_index: int | None = None, reduce_labels: bool = False, train_val_split: float | None = 0.15,
    seed: int = 0, cache_dir=None, token=None,
) -> SegmentationSplit:
    """A dataset repository stored as parquet or imagefolder (a Hub id, or the same files in a local folder), via
    `datasets.load_dataset`. Script-based repositories (e.g. the original `scene_parse_150`) do not load in
    datasets >= 4. The class names come from `id2label.json` in the repository (the official example's convention)
    or `id2label_file`; the label column holds class indices (`reduce_labels` for ADE-style 0 = other)."""
    loaded = datasets.load_dataset(name, dataset_config_name, cache_dir=cache_dir, token=token)
    available = {SPLIT_ALIASES.get(s, s): s for s in loaded}
    carve = "validation" not in available and split in ("train", "validation") and bool(train_val_split)
    if split in available and not carve:
        data = loaded[available[split]]
    elif "train" in available and split in ("train", "validation"):  # no validation split: hold one out of train
        data = loaded[available["train"]]
        indices = _holdout(list(range(len(data))), split, train_val_split, seed)
        data = data.select(indices)
    else:
        raise ValueError(f"{name} has the splits {sorted(loaded)}; {split!r} is not one of them.")
    image_column = image_column or _find_column(data, IMAGE_COLUMNS, "image")
    label_column = label_column or _find_column(data, LABEL_COLUMNS, "label")
    data = data.select_columns([image_column, label_column])
    data = data.rename_columns({c: n for c, n in ((image_column, "image"), (label_column, "label")) if c != n})
    data = data.add_column("file_name", [f"{i:08d}" for i in range(len(data))])
    class_names, extra = read_id2label(_find_id2label(name, id2label_file, cache_dir, token))
    ignore_index = int(ignore_index if ignore_index is not None else extra.get("ignore_index", 255))
    num_values = 65536 if ignore_index > 255 else 256
    mapping = LabelMapping.reduce_zero_label(ignore_index, num_values) if reduce_labels else LabelMapping(ignore_index)
    short = Path(str(name).rstrip("/")).name
    return SegmentationSplit(
        name=short, display_name=str(name), dataset_type=str(name), split=split, class_names=class_names,
        ignore_index=ignore_index, dataset=data, label_mapping=mapping, root=str(name),
    )


def _find_column(data: datasets.Dataset, candidates, what: str) -> str:
    for column in candidates:
        if column in data.column_names:
            return column
    raise ValueError(f"No {what} column among {data.column_names}; name it with --{what}_column_name.")


def _find_id2label(name, id2label_file, cache_dir, token) -> str:
    if id2label_file:
        return id2label_file
    local = Path(str(name)) / "id2label.json"
    if local.is_file():
        return str(local)
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(str(name), "id2label.json", repo_type="dataset", cache_dir=cache_dir, token=token)
    except Exception as error:  # offline, or the repository has no id2label.json
        raise FileNotFoundError(
            f"Could not get id2label.json of dataset {name!r} ({type(error).__name__}: {str(error).splitlines()[0]}); "
            "pass --id2label_file."
        ) from error


# -- augmentation -----------------------------------------------------------------------------------------------------
SAN_TRAIN_SHORT_EDGES = tuple(int(x * 0.1 * 640) for x in range(5, 16))  # 320, 384, ..., 960


@dataclass
class SANTrainAugmentation:
    """SAN's training augmentation (architecture.md section 1.2; Mask2Former's semantic dataset mapper):

    1. resize the short edge to a size drawn from `short_edges` (320..960 in steps of 64), the long edge capped at
       `max_long_edge` (detectron2 `ResizeShortestEdge`, "choice"); image bilinear (PIL), label nearest;
    2. a random `crop_size` x `crop_size` crop (smaller images: the whole side; `SINGLE_CATEGORY_MAX_AREA` = 1.0
       makes SAN's category-area constraint a plain random crop);
    3. SSD photometric distortion (`ColorAugSSDTransform`): brightness +-32, then contrast x[0.5, 1.5], saturation
       x[0.5, 1.5] and hue +-18 (OpenCV 8-bit hue units, i.e. +-36 degrees) in one of two orders, each step with
       probability 1/2; the HSV conversion follows OpenCV's 8-bit formulas in numpy;
    4. a horizontal flip with probability `flip_prob`;
    5. padding at the bottom / right to `crop_size` with `image_pad_value` (128, in 0..255 pixel space) and the
       ignore index for the label.

    All randomness comes from the `numpy.random.Generator` passed in, so a sample's augmentation is a function of
    (seed, epoch, index) and a resumed run reproduces it exactly.
    """

    crop_size: int = 640
    short_edges: tuple = SAN_TRAIN_SHORT_EDGES
    max_long_edge: int = 2560
    photometric_distortion: bool = True
    flip_prob: float = 0.5
    image_pad_value: int = 128
    ignore_index: int = 255

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        """uint8 [H, W, 3], int64 [H, W] -> (uint8 [c, c, 3], int64 [c, c], (h, w) of the content before padding)."""
        height, width = label.shape
        short = int(self.short_edges[rng.integers(len(self.short_edges))])
        new_height, new_width = get_resize_output_size(height, width, short, self.max_long_edge)
        crop_height, crop_width = min(self.crop_size, new_height), min(self.crop_size, new_width)
        top = int(rng.integers(new_height - crop_height + 1))
        left = int(rng.integers(new_width - crop_width + 1))
        image = resize_image(image, (new_height, new_width))[top : top + crop_height, left : left + crop_width]
        # nearest neighbour picks each output pixel alone: only the crop's pixels are looked up
        label = resize_label_nearest(label, (new_height, new_width), window=(top, left, crop_height, crop_width))

        if self.photometric_distortion:
            image = photometric_distortion(image, rng)
        if rng.random() < self.flip_prob:
            image, label = image[:, ::-1], label[:, ::-1]

        content = (crop_height, crop_width)
        padded_image = np.full((self.crop_size, self.crop_size, 3), self.image_pad_value, dtype=np.uint8)
        padded_label = np.full((self.crop_size, self.crop_size), self.ignore_index, dtype=np.int64)
        padded_image[:crop_height, :crop_width] = image
        padded_label[:crop_height, :crop_width] = label
        return padded_image, padded_label, content


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> [h, w, 3] with PIL bilinear (what detectron2's ResizeTransform does for uint8 images)."""
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def resize_label_nearest(label: np.ndarray, size: tuple[int, int], window: tuple[int, int, int, int] | None = None):
    """[H, W] -> [h, w] nearest neighbour at pixel centres (source index floor((i + 0.5) * H / h)), any dtype.

    `window` = (top, left, height, width): only that crop of the resized map (the same pixels as cropping it)."""
    height, width = label.shape
    top, left, crop_height, crop_width = (0, 0, *size) if window is None else window
    if (height, width) == tuple(size):
        return label[top : top + crop_height, left : left + crop_width]
    rows = np.minimum(((np.arange(size[0]) + 0.5) * height / size[0]).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * width / size[1]).astype(np.int64), width - 1)
    rows, cols = rows[top : top + crop_height], cols[left : left + crop_width]
    return label[rows[:, None], cols[None, :]]


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """uint8 -> uint8 clip(v * alpha + beta), computed in float32 for the 256 values once, then looked up."""
    table = np.clip(np.arange(256, dtype=np.float32) * alpha + beta, 0, 255).astype(np.uint8)
    return table.take(values)


# OpenCV's 8-bit HSV formulas in float32, as functions of a few small integers, tabulated once per process: an
# image's conversion is then integer arithmetic and table lookups (SAN's colour jitter makes up to two round trips
# per image; the elementwise float formulas on a 640 x 640 crop made them most of a loader worker's time). Every table entry is
# the formula's float32 result for that entry's inputs, so the outputs are the formulas' exactly.
def _hsv_saturation(value: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """S (0..255, float32) of max channel `value` and max - min `delta` (float32 integers)."""
    return np.round(np.where(value > 0, delta * 255.0 / np.maximum(value, 1e-6), 0.0))


def _hsv_hue(case: int, difference: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """H (0..179, OpenCV's degrees / 2, float32): `case` 0 / 1 / 2 when the max channel is R / G / B (first wins),
    `difference` = G - B / B - R / R - G, `delta` = max - min (float32 integers)."""
    safe = np.maximum(delta, 1e-6)
    # case 0 adds no offset at all, as the formula writes it (adding 0.0 would turn -0.0 into 0.0)
    hue = (0.0, 120.0, 240.0)[case] + 60.0 * difference / safe if case else 60.0 * difference / safe
    hue = np.where(delta > 0, hue, 0.0) % 360.0
    return np.round(hue / 2.0) % 180


def _rgb_from_hsv_parts(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray):
    """OpenCV's HSV2RGB pieces (float32): chroma = V * S, the sector (0..5) of the hue and the second-largest
    component's factor x / chroma."""
    chroma = value * saturation
    sector = (hue / 60.0) % 6.0
    return chroma, np.floor(sector).astype(np.int64), 1.0 - np.abs(sector % 2.0 - 1.0)


class _HSVTables:
    """Lazily built lookup tables of the 8-bit HSV conversions (under 1 MB; built in about 50 ms)."""

    def __init__(self):
        self._tables = None

    def __call__(self) -> dict:
        if self._tables is None:
            levels = np.arange(256, dtype=np.float32)
            differences = np.arange(-255, 256, dtype=np.float32)[:, None]
            hue, saturation, value = (np.arange(180, dtype=np.float32) * 2.0, levels / 255.0, levels)
            chroma, _, _ = _rgb_from_hsv_parts(hue[:1], saturation[None, :], value[:, None])  # (V, S)
            _, sector, factor = _rgb_from_hsv_parts(hue, saturation[:1], value[:1])  # (H,)
            self._tables = {
                "saturation": _hsv_saturation(levels[:, None], levels[None, :]).astype(np.uint8),  # (V, delta)
                "hue": np.stack([_hsv_hue(case, differences, levels[None, :]) for case in range(3)]).astype(
                    np.uint8),  # (case, difference + 255, delta)
                "chroma": chroma.astype(np.float32),
                "factor": factor.astype(np.float32),
                # per sector, the output channel each of (chroma, x, 0) goes to: R, G, B take these indices
                "order": np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1], [2, 1, 0], [1, 2, 0], [0, 2, 1]],
                                  dtype=np.uint8)[sector],  # (H, 3)
            }
        return self._tables


_hsv_tables = _HSVTables()


def rgb_to_hsv_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 HSV in OpenCV's 8-bit convention (H in 0..179 = degrees / 2, S and V in 0..255)."""
    tables = _hsv_tables()
    r, g, b = (image[..., channel].astype(np.int16) for channel in range(3))  # (channel views: max over the last
    value = np.maximum(np.maximum(r, g), b)  # axis of size 3 is many times slower)
    delta = value - np.minimum(np.minimum(r, g), b)
    red_max, green_max = value == r, value == g
    # the hue table's row: case * 511 + difference + 255 (case 0 / 1 / 2: R / G / B is the max, R first)
    row = np.where(red_max, g - b + 255, np.where(green_max, b - r + 766, r - g + 1277))
    hsv = np.empty(image.shape, dtype=np.uint8)
    hsv[..., 0] = tables["hue"].ravel().take(_table_index(row, delta))
    hsv[..., 1] = tables["saturation"].ravel().take(_table_index(value, delta))
    hsv[..., 2] = value
    return hsv


def _table_index(row: np.ndarray, column: np.ndarray) -> np.ndarray:
    """Flat index row * 256 + column of a 256-column table, built in place in the index type `take` uses."""
    index = row.astype(np.intp)
    index <<= 8
    index += column
    return index


def hsv_uint8_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_hsv_uint8` (OpenCV's HSV2RGB for 8-bit images)."""
    tables = _hsv_tables()
    hue, saturation, value = (hsv[..., channel] for channel in range(3))
    chroma = tables["chroma"].ravel().take(_table_index(value, saturation))
    second = chroma * tables["factor"].take(hue)
    low = value.astype(np.float32) - chroma
    # the largest, middle and smallest component (chroma + m, x + m, 0 + m), placed by the hue's sector
    largest, middle, smallest = (np.clip(np.round(x + low), 0, 255).astype(np.uint8) for x in (chroma, second, 0.0))
    rgb = np.empty(hsv.shape, dtype=np.uint8)
    for channel in range(3):
        source = tables["order"][:, channel].take(hue)
        rgb[..., channel] = np.where(source == 0, largest, np.where(source == 1, middle, smallest))
    return rgb


def photometric_distortion(
    image: np.ndarray, rng: np.random.Generator, brightness_delta: int = 32, contrast_range=(0.5, 1.5),
    saturation_range=(0.5, 1.5), hue_delta: int = 18,
) -> np.ndarray:
    """SSD colour augmentation (Mask2Former's `ColorAugSSDTransform`) on a uint8 RGB image."""
    def brightness(img):
        if rng.integers(2):
            return _convert(img, beta=rng.uniform(-brightness_delta, brightness_delta))
        return img

    def contrast(img):
        if rng.integers(2):
            return _convert(img, alpha=rng.uniform(*contrast_range))
        return img

    def saturation(img):
        if rng.integers(2):
            hsv = rgb_to_hsv_uint8(img)
            hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*saturation_range))
            return hsv_uint8_to_rgb(hsv)
        return img

    def hue(img):
        if rng.integers(2):
            hsv = rgb_to_hsv_uint8(img)
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + rng.integers(-hue_delta, hue_delta + 1)) % 180
            return hsv_uint8_to_rgb(hsv)
        return img

    image = brightness(np.ascontiguousarray(image))
    if rng.integers(2):
        return hue(saturation(contrast(image)))
    return contrast(hue(saturation(image)))


# -- torch datasets -----------------------------------------------------------------------------------------------------
def _normalize(image: np.ndarray, processor: PATImageProcessor) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W] normalised exactly as the image processor does (no resize, no pad)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    normalised = processor.rescale_and_normalize(
        tensor, processor.do_rescale, processor.rescale_factor, processor.do_normalize,
        processor.image_mean, processor.image_std,
    )
    return normalised[0]


class SegmentationTrainDataset(torch.utils.data.Dataset):
    """Training examples: SAN augmentation, then CLIP normalisation -> {pixel_values, labels, image_sizes}.

    The augmentation of example i in epoch e draws from `numpy.random.default_rng([seed, e, i])`, independent of
    workers, processes and interruptions. The epoch lives in shared memory, so `set_epoch` (called each epoch by
    `EpochCallback`) also reaches persistent DataLoader workers.
    """

    def __init__(self, split: SegmentationSplit, augmentation: SANTrainAugmentation, processor: PATImageProcessor,
                 seed: int = 0):
        if augmentation.ignore_index != split.ignore_index:
            raise ValueError(
                f"augmentation.ignore_index={augmentation.ignore_index} but {split.name} uses {split.ignore_index}."
            )
        self.split = split
        self.augmentation = augmentation
        self.processor = processor
        self.seed = int(seed)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.split)

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def __getitem__(self, index: int) -> dict:
        image, label, _ = self.split.load(index)
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        image, label, (height, width) = self.augmentation(image, label, rng)
        return {
            "pixel_values": _normalize(image, self.processor),
            "labels": torch.from_numpy(np.ascontiguousarray(label)),
            "image_sizes": torch.tensor([height, width], dtype=torch.int64),
        }


class SegmentationEvalDataset(torch.utils.data.Dataset):
    """Evaluation examples with SAN's test-time resize (the processor's shortest edge, 640 by default) ->
    {pixel_values, image_sizes, original_sizes, semantic_labels (at the original size), file_name}."""

    def __init__(self, split: SegmentationSplit, processor: PATImageProcessor):
        self.split = split
        self.processor = processor

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict:
        image, label, stem = self.split.load(index)
        # `load` gives [H, W, 3] arrays: said explicitly, so that a 3- or 4-pixel-high image is no ambiguous shape.
        inputs = self.processor(images=image, do_pad=False, input_data_format="channels_last", return_tensors="pt")
        return {
            "pixel_values": inputs["pixel_values"][0],
            "image_sizes": inputs["image_sizes"][0],
            "original_sizes": inputs["original_sizes"][0],
            "semantic_labels": torch.from_numpy(label),
            "file_name": stem,
        }


@dataclass
class SegmentationCollator:
    """Pads mixed sizes into one batch: images at the bottom / right with 0 (after normalisation, as detectron2's
    `ImageList.from_tensors`) to a multiple of `size_divisibility`, `labels` (model resolution) and
    `semantic_labels` (original resolution, evaluation) with `ignore_index`. The model builds the per-class binary
    masks from `labels` itself, so none are built here.

    Evaluation batches (examples with `semantic_labels`) whose sizes are too different to pad together
    (`padding_groups`: one very wide image among small ones) are split: `pixel_values` is then a list with one
    padded tensor per group, `padding_groups` the images' batch indices per group, and `semantic_labels` a list of
    unpadded maps; the other keys stay in batch order. Training batches are always one padded tensor."""

    ignore_index: int = 255
    size_divisibility: int = 32

    def __call__(self, examples: list[dict]) -> dict:
        sizes = [tuple(e["pixel_values"].shape[-2:]) for e in examples]
        if "semantic_labels" in examples[0]:
            groups = padding_groups(sizes, self.size_divisibility)
            if len(groups) > 1:
                return self._grouped_eval_batch(examples, groups)
        batch = {}
        padded = get_padded_size(sizes, self.size_divisibility)
        batch["pixel_values"] = self._padded_pixels(examples)
        if "labels" in examples[0]:
            batch["labels"] = torch.stack([_pad_bottom_right(e["labels"], padded, self.ignore_index) for e in examples])
        for key in ("image_sizes", "original_sizes"):
            if key in examples[0]:
                batch[key] = torch.stack([torch.as_tensor(e[key], dtype=torch.int64) for e in examples])
        if "image_sizes" not in batch:
            batch["image_sizes"] = torch.tensor(sizes, dtype=torch.int64)
        if "semantic_labels" in examples[0]:
            label_size = get_padded_size([e["semantic_labels"].shape for e in examples], size_divisibility=1)
            batch["semantic_labels"] = torch.stack(
                [_pad_bottom_right(e["semantic_labels"], label_size, self.ignore_index) for e in examples]
            )
        if "file_name" in examples[0]:
            batch["file_name"] = [e["file_name"] for e in examples]
        return batch

    def _padded_pixels(self, examples: list[dict]) -> torch.Tensor:
        """(B, 3, Hp, Wp): the examples' images padded with 0 to their largest size, a multiple of the divisibility."""
        padded = get_padded_size([e["pixel_values"].shape[-2:] for e in examples], self.size_divisibility)
        return torch.stack([_pad_bottom_right(e["pixel_values"], padded, 0.0) for e in examples])

    def _grouped_eval_batch(self, examples: list[dict], groups: list[list[int]]) -> dict:
        # `image_sizes` first: Trainer counts a batch's examples by the first tensor it finds in it.
        batch = {key: torch.stack([torch.as_tensor(e[key], dtype=torch.int64) for e in examples])
                 for key in ("image_sizes", "original_sizes")}
        batch["padding_groups"] = groups
        batch["pixel_values"] = [self._padded_pixels([examples[i] for i in group]) for group in groups]
        batch["semantic_labels"] = [e["semantic_labels"] for e in examples]
        if "file_name" in examples[0]:
            batch["file_name"] = [e["file_name"] for e in examples]
        return batch


class EpochCallback(TrainerCallback):
    """Tells `SegmentationTrainDataset` the epoch at the start of each one (also after a resume), from the global step
    as Trainer computes it. accelerate's `DataLoaderShard.set_epoch` reaches the sampler but not the dataset when the
    sampler has its own `set_epoch`, hence this callback."""

    def __init__(self, dataset: SegmentationTrainDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        epoch = 0
        if train_dataloader is not None and len(train_dataloader) > 0:
            batches = len(train_dataloader)
            accumulation = args.gradient_accumulation_steps
            steps_per_epoch = max(batches // accumulation + int(batches % accumulation > 0), 1)
            epoch = state.global_step // steps_per_epoch
        self.dataset.set_epoch(epoch)


__all__ = [
    "BENCHMARKS",
    "BenchmarkLayout",
    "DatasetSpec",
    "EpochCallback",
    "LabelFileError",
    "LabelMapping",
    "SANTrainAugmentation",
    "SegmentationCollator",
    "SegmentationEvalDataset",
    "SegmentationSplit",
    "SegmentationTrainDataset",
    "check_label_values",
    "check_split",
    "load_benchmark",
    "load_folder",
    "load_hub_dataset",
    "load_split",
    "load_vocabulary",
    "palette_to_class_indices",
    "photometric_distortion",
    "read_id2label",
]
