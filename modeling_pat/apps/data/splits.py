"""Dataset splits: the benchmarks' own folder layouts, your own folders and Hub datasets, each read into a
`SegmentationSplit` (the layouts are listed in `modeling_pat.apps.data`)."""

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np

from ...configuration_pat import load_vocabulary
from .labels import LabelFileError, LabelMapping, check_label_values, read_id2label, single_channel_label


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABEL_EXTENSIONS = (".png", ".tif", ".tiff")
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "validation": "validation", "val": "validation", "valid": "validation",
    "test": "test",
}


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
        """(RGB uint8 [H_out, W_out, 3], class-index label int64 [H_out, W_out], stem) of example `index`.

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


__all__ = [
    "BenchmarkLayout",
    "BENCHMARKS",
    "check_split",
    "DatasetSpec",
    "default_data_root",
    "FOLDER_OPTIONS",
    "HUB_OPTIONS",
    "IMAGE_COLUMNS",
    "IMAGE_EXTENSIONS",
    "KIND_ALIASES",
    "LABEL_COLUMNS",
    "LABEL_EXTENSIONS",
    "load_benchmark",
    "load_folder",
    "load_hub_dataset",
    "load_split",
    "pair_files",
    "SegmentationSplit",
    "SPLIT_ALIASES",
]
