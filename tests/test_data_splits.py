"""Dataset splits (`modeling_pat/apps/data/splits.py`): one test per supported layout, on small folders built from
tests/fixtures/data, plus your own folders and Hub-style repositories."""

import json

import datasets
import numpy as np
import pytest

from modeling_pat.apps.data import DatasetSpec, load_split, load_vocabulary

import segmentation_layouts as layouts
from segmentation_layouts import ADE_STEMS, COCO_STEMS, MANIFEST, VOC21, VOC_STEMS


def first_synonym(name: str) -> str:
    return name.split(",")[0].strip()


def check_names(split, index: int, stem: str | None, expected_names: set[str]) -> np.ndarray:
    """The class names at the labelled pixels of example `index` are exactly `expected_names`."""
    image, label, name = split.load(index)
    assert stem is None or name.endswith(stem.split("_", 1)[-1])
    assert image.shape[:2] == label.shape and image.dtype == np.uint8
    present = {first_synonym(split.class_names[v]) for v in np.unique(label) if v != split.ignore_index}
    assert present == expected_names
    return label


def manifest_names(stem: str, skip_values) -> set[str]:
    return {c["name"] for c in MANIFEST[stem]["classes_present"] if c["value"] not in skip_values}


# -- benchmark layouts --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prepared", [False, True], ids=["raw-annotations", "annotations_detectron2"])
def test_ade150_layout(tmp_path, prepared):
    layouts.make_ade150(tmp_path, ADE_STEMS[:4], ADE_STEMS[4:], prepared)
    train = load_split("ade150", "train", data_root=str(tmp_path))
    validation = load_split("ade150", "validation", data_root=str(tmp_path))
    assert (len(train), len(validation)) == (4, 2)
    assert train.num_labels == 150 and train.ignore_index == 255 and train.display_name == "ADE20K-150"
    stem = sorted(ADE_STEMS[:4], key=lambda s: s.removeprefix("ade150_"))[0]
    label = check_names(train, 0, stem, manifest_names(stem, {0}))
    np.testing.assert_array_equal(label, layouts.reduce_zero(layouts.raw_label(stem)))


@pytest.mark.parametrize("prepared", [False, True], ids=["stuffthingmaps", "stuffthingmaps_detectron2"])
def test_coco_stuff_171_layout(tmp_path, prepared):
    layouts.make_coco(tmp_path, COCO_STEMS[:6], COCO_STEMS[6:], prepared)
    split = load_split(f"coco171={tmp_path / 'coco'}", "train")
    assert len(split) == 6 and split.num_labels == 171 and split.ignore_index == 255
    for index, stem in enumerate(COCO_STEMS[:6]):
        # the raw COCO ids (value = id - 1) land on the 171-class names of the same objects
        check_names(split, index, stem, manifest_names(stem, {255}))
    assert len(load_split("coco_stuff_164k", "validation", data_root=str(tmp_path))) == 2


def test_ade847_layout_16bit(tmp_path):
    layouts.make_ade847(tmp_path, ADE_STEMS[:2], ADE_STEMS[2:3])
    split = load_split("ade847", "train", data_root=str(tmp_path))
    assert split.num_labels == 847 and split.ignore_index == 65535
    stem = sorted(ADE_STEMS[:2], key=lambda s: s.removeprefix("ade150_"))[0]
    label = check_names(split, 0, stem, manifest_names(stem, {0}))
    assert label.max() == 65535 and label[label != 65535].max() < 847  # 16-bit ignore survives decoding


@pytest.mark.parametrize("full", [False, True], ids=["pc59", "pc459"])
def test_pascal_context_layouts(tmp_path, full):
    layouts.make_pcontext(tmp_path, VOC_STEMS[:2], VOC_STEMS[2:], full)
    kind = "pc459" if full else "pc59"
    split = load_split(kind, "train", data_root=str(tmp_path))
    assert split.num_labels == (459 if full else 59)
    assert split.ignore_index == (65535 if full else 255)
    for index, stem in enumerate(VOC_STEMS[:2]):
        check_names(split, index, stem, manifest_names(stem, {0, 255}))
    assert len(load_split(kind, "validation", data_root=str(tmp_path))) == 1


@pytest.mark.parametrize("prepared", [False, True], ids=["SegmentationClass", "annotations_detectron2"])
def test_voc20_layout(tmp_path, prepared):
    layouts.make_voc(tmp_path, VOC_STEMS[:2], VOC_STEMS[2:], prepared)
    train = load_split("voc20", "train", data_root=str(tmp_path))
    validation = load_split("voc", "val", data_root=str(tmp_path))
    assert (len(train), len(validation)) == (2, 1)  # JPEGImages holds all three: the split decides
    assert train.class_names == load_vocabulary("voc20")["class_names"]
    for index, stem in enumerate(VOC_STEMS[:2]):
        label = check_names(train, index, stem, {"aeroplane" if "sample1" == stem[-7:] else n
                                                 for n in manifest_names(stem, {0, 255})})
        assert (label == 255).sum() == sum(c["pixels"] for c in MANIFEST[stem]["classes_present"]
                                           if c["value"] in (0, 255))  # background and void are ignored


def test_missing_benchmark_folder_says_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016"):
        load_split("ade150", "validation", data_root=str(tmp_path))
    with pytest.raises(ValueError, match="Unknown dataset kind"):
        DatasetSpec.parse("cityscapes")


# -- generic folder and Hub-style repositories ----------------------------------------------------------------------
def test_folder_layout_with_splits_and_own_classes(tmp_path):
    names = ["zebra", "grass"]
    def label_fn(stem):  # COCO-Stuff ids 23 (zebra) and 123 (grass) -> 0, 1; everything else ignored
        raw = layouts.raw_label(stem)
        return np.select([raw == 23, raw == 123], [0, 1], 255)
    root = layouts.make_folder(tmp_path / "zebras", {"train": [COCO_STEMS[6]], "validation": [COCO_STEMS[6]]},
                               names, label_fn)
    split = load_split(f"folder={root}", "train")
    assert split.class_names == names and split.ignore_index == 255 and len(split) == 1
    check_names(split, 0, COCO_STEMS[6], {"zebra", "grass"})
    assert DatasetSpec.parse(f"folder={root}:train").label() == "zebras_train"


def test_flat_folder_holdout_and_ignore_from_json(tmp_path):
    root = layouts.make_folder(tmp_path / "flat", {"all": ADE_STEMS}, load_vocabulary("ade150")["class_names"],
                               layouts.raw_label, ignore_index=0, flat=True)
    options = {"reduce_labels": True, "train_val_split": 0.34, "seed": 3}
    train = load_split(f"folder={root}", "train", **options)
    validation = load_split(f"folder={root}", "validation", **options)
    assert (len(train), len(validation)) == (4, 2)
    assert not set(train.dataset["file_name"]) & set(validation.dataset["file_name"])
    assert train.ignore_index == 0  # from id2label.json; reduce_labels: 0 stays ignored, v -> v - 1
    _, label, stem = train.load(0)
    expected = layouts.raw_label(stem).astype(np.int64) - 1
    expected[layouts.raw_label(stem) == 0] = 0
    np.testing.assert_array_equal(label, expected)


def _hub_style_dataset(stems) -> datasets.Dataset:
    rows = {"image": [str(layouts.image_path(s)) for s in stems],
            "annotation": [str(layouts.DATA / MANIFEST[s]["label"]) for s in stems]}
    return datasets.Dataset.from_dict(rows, features=datasets.Features(
        {"image": datasets.Image(), "annotation": datasets.Image()}))


def test_hub_parquet_repository_layout(tmp_path):
    """A dataset repository stored as parquet (data/<split>-*.parquet + id2label.json), as on the Hub, read from a
    local copy with datasets.load_dataset; its `annotation` column is found and `reduce_labels` applied."""
    repo = tmp_path / "ade-mini"
    (repo / "data").mkdir(parents=True)
    for split, stems in (("train", ADE_STEMS[:3]), ("validation", ADE_STEMS[3:4])):
        data = _hub_style_dataset(stems).cast_column("image", datasets.Image(decode=True))
        data = data.map(lambda ex: ex)  # embed the image bytes in the parquet file
        data.to_parquet(str(repo / "data" / f"{split}-00000-of-00001.parquet"))
    names = load_vocabulary("ade150")["class_names"]
    (repo / "id2label.json").write_text(json.dumps({str(i): n for i, n in enumerate(names)}))
    split = load_split(f"hub={repo}", "train", reduce_labels=True)
    assert len(split) == 3 and split.num_labels == 150
    check_names(split, 0, None, manifest_names(ADE_STEMS[0], {0}))
    assert len(load_split(f"hub={repo}", "validation", reduce_labels=True)) == 1


def test_hub_imagefolder_layout_with_carved_validation(tmp_path):
    """imagefolder with `label_file_name` in metadata.jsonl: image + label columns; no validation split, so
    `train_val_split` carves one."""
    repo = tmp_path / "voc-mini"
    (repo / "train").mkdir(parents=True)
    with open(repo / "train" / "metadata.jsonl", "w") as handle:
        for stem in VOC_STEMS:
            layouts._copy_image(stem, repo / "train")
            layouts._save_label(layouts.raw_label(stem), repo / "train" / f"{stem}_label.png")
            handle.write(json.dumps({"file_name": f"{stem}.png", "label_file_name": f"{stem}_label.png"}) + "\n")
    (repo / "id2label.json").write_text(json.dumps({str(i): n for i, n in enumerate(VOC21)}))
    train = load_split(f"hub={repo}", "train", train_val_split=0.34)
    validation = load_split(f"hub={repo}", "validation", train_val_split=0.34)
    assert (len(train), len(validation)) == (2, 1) and train.class_names == VOC21
    labels = [train.load(i)[1] for i in range(2)] + [validation.load(0)[1]]
    assert sorted(int(v) for lab in labels for v in np.unique(lab)) == [0, 0, 0, 1, 3, 17, 255, 255, 255]
