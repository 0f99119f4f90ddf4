"""Dataset layouts (one test per supported layout, on small folders built from tests/fixtures/data), label
conventions, SAN's augmentation, the datasets and the collator."""

import json
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from modeling_pat import PATImageProcessor
from modeling_pat.apps.data import (
    DatasetSpec,
    EpochCallback,
    LabelFileError,
    LabelMapping,
    SANTrainAugmentation,
    SegmentationCollator,
    SegmentationEvalDataset,
    SegmentationTrainDataset,
    hsv_uint8_to_rgb,
    load_split,
    load_vocabulary,
    palette_to_class_indices,
    photometric_distortion,
    resize_label_nearest,
    rgb_to_hsv_uint8,
)
from modeling_pat.apps.data.augmentation import _convert
from modeling_pat.image_processing_pat import _resize_label

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


def test_label_mapping_tables():
    assert LabelMapping(255)(np.array([[3, 255]])).tolist() == [[3, 255]]
    reduce = LabelMapping.reduce_zero_label(255)
    assert reduce(np.array([[0, 1, 150, 255]])).tolist() == [[255, 0, 149, 255]]
    coco = LabelMapping.from_dict(load_vocabulary("coco171")["pixel_value_to_index"], 255)
    assert coco(np.array([[0, 11, 12, 181, 255]])).tolist() == [[0, 255, 11, 170, 255]]  # 11 is never annotated


# -- augmentation ---------------------------------------------------------------------------------------------------------
def test_san_augmentation_geometry_and_padding():
    """Two halves of different colour and class: the label stays on its colour through resize, crop and flip."""
    image = np.zeros((60, 100, 3), dtype=np.uint8)
    image[:, :50] = (250, 10, 10)
    image[:, 50:] = (10, 10, 250)
    label = np.zeros((60, 100), dtype=np.int64)
    label[:, 50:] = 1
    augment = SANTrainAugmentation(crop_size=96, short_edges=(48, 72), max_long_edge=2560,
                                   photometric_distortion=False)
    flips = set()
    for seed in range(12):
        out_image, out_label, (height, width) = augment(image, label, np.random.default_rng(seed))
        assert out_image.shape == (96, 96, 3) and out_label.shape == (96, 96)
        assert (out_label[height:] == 255).all() and (out_label[:, width:] == 255).all()
        assert (out_image[height:] == 128).all() and (out_image[:, width:] == 128).all()
        assert height in (48, 72) and width <= 96
        red = out_image[:height, :width, 0].astype(int) > out_image[:height, :width, 2].astype(int) + 100
        blue = out_image[:height, :width, 2].astype(int) > out_image[:height, :width, 0].astype(int) + 100
        content = out_label[:height, :width]
        assert (content[red] == 0).all() and (content[blue] == 1).all()
        flips.add(bool(content[0, 0] == 1))
    assert flips == {True, False}  # both flipped and unflipped crops occur
    again = augment(image, label, np.random.default_rng(5))
    np.testing.assert_array_equal(again[0], augment(image, label, np.random.default_rng(5))[0])


@pytest.mark.parametrize("size", [(37, 53), (97, 131), (128, 96), (300, 41)])
def test_label_resize_twins_agree(size):
    """Training (numpy) and the image processor (torch) resize labels with one rule: output pixel y takes input
    pixel floor((y + 0.5) * H_in / H_out), in exact rationals; ids beyond 255 (ADE-847's uint16) kept as they are."""
    label = np.random.default_rng(0).integers(0, 3000, (97, 131)).astype(np.uint16)
    rows = [min((2 * y + 1) * 97 // (2 * size[0]), 96) for y in range(size[0])]
    cols = [min((2 * x + 1) * 131 // (2 * size[1]), 130) for x in range(size[1])]
    expected = label[np.ix_(rows, cols)]
    np.testing.assert_array_equal(resize_label_nearest(label, size), expected)
    torch.testing.assert_close(_resize_label(torch.from_numpy(label.astype(np.int64)), size),
                               torch.from_numpy(expected.astype(np.int64)), rtol=0, atol=0)


def test_photometric_distortion_and_hsv():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    round_trip = hsv_uint8_to_rgb(rgb_to_hsv_uint8(image))
    assert np.abs(round_trip.astype(int) - image.astype(int)).max() <= 4  # 8-bit HSV quantisation only
    pure_red = np.array([[[255, 0, 0]]], dtype=np.uint8)
    assert rgb_to_hsv_uint8(pure_red)[0, 0].tolist() == [0, 255, 255]
    assert rgb_to_hsv_uint8(np.array([[[0, 0, 255]]], dtype=np.uint8))[0, 0, 0] == 120  # 240 degrees / 2
    outputs = [photometric_distortion(image, np.random.default_rng(seed)) for seed in range(8)]
    assert all(o.dtype == np.uint8 and o.shape == image.shape for o in outputs)
    assert sum(not np.array_equal(o, image) for o in outputs) >= 6


# The 8-bit HSV formulas (OpenCV's) evaluated elementwise in float32: the reference the table-driven conversions
# of modeling_pat.apps.data must reproduce bit for bit.
def formula_rgb_to_hsv(image):
    rgb = image.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(axis=-1)
    delta = value - rgb.min(axis=-1)
    saturation = np.where(value > 0, delta * 255.0 / np.maximum(value, 1e-6), 0.0)
    safe = np.maximum(delta, 1e-6)
    hue = np.where(value == r, 60.0 * (g - b) / safe,
                   np.where(value == g, 120.0 + 60.0 * (b - r) / safe, 240.0 + 60.0 * (r - g) / safe))
    hue = np.where(delta > 0, hue, 0.0) % 360.0
    return np.stack([np.round(hue / 2.0) % 180, np.round(saturation), value], axis=-1).astype(np.uint8)


def formula_hsv_to_rgb(hsv):
    hue = hsv[..., 0].astype(np.float32) * 2.0
    chroma = hsv[..., 2].astype(np.float32) * (hsv[..., 1].astype(np.float32) / 255.0)
    sector = (hue / 60.0) % 6.0
    x = chroma * (1.0 - np.abs(sector % 2.0 - 1.0))
    zeros = np.zeros_like(chroma)
    index = np.floor(sector).astype(np.int64)
    r = np.choose(index, [chroma, x, zeros, zeros, x, chroma])
    g = np.choose(index, [x, chroma, chroma, x, zeros, zeros])
    b = np.choose(index, [zeros, zeros, x, chroma, chroma, x])
    low = hsv[..., 2].astype(np.float32) - chroma
    return np.clip(np.round(np.stack([r + low, g + low, b + low], axis=-1)), 0, 255).astype(np.uint8)


def test_hsv_tables_reproduce_the_float_formulas():
    """Every (R, G) pair with 12 blue levels (ties, greys, each channel the max), and every (H, S) pair with 12
    value levels: the table lookups give the formulas' bytes exactly."""
    levels = np.array([0, 1, 2, 63, 64, 127, 128, 129, 200, 253, 254, 255])
    grid = np.stack(np.meshgrid(np.arange(256), np.arange(256), levels, indexing="ij"), axis=-1)
    rgb = grid.reshape(256, -1, 3).astype(np.uint8)
    np.testing.assert_array_equal(rgb_to_hsv_uint8(rgb), formula_rgb_to_hsv(rgb))
    grid = np.stack(np.meshgrid(np.arange(180), np.arange(256), levels, indexing="ij"), axis=-1)
    hsv = grid.reshape(180, -1, 3).astype(np.uint8)
    np.testing.assert_array_equal(hsv_uint8_to_rgb(hsv), formula_hsv_to_rgb(hsv))
    photo = np.random.default_rng(1).integers(0, 256, (64, 48, 3), dtype=np.uint8)[:, ::2]  # a strided view too
    np.testing.assert_array_equal(rgb_to_hsv_uint8(photo), formula_rgb_to_hsv(photo))


@pytest.mark.parametrize("alpha, beta", [(1.0, -31.7), (1.0, 25.5), (0.51, 0.0), (1.37, 0.0), (1.5, 0.0)])
def test_brightness_and_contrast_table_reproduces_the_float_formula(alpha, beta):
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(_convert(values, alpha, beta), expected)


def test_label_resize_window_is_the_crop_of_the_resized_map():
    label = np.random.default_rng(0).integers(0, 300, (97, 131))
    for size, window in [((150, 203), (13, 40, 100, 120)), ((60, 81), (0, 0, 60, 81)), ((97, 131), (5, 7, 50, 60))]:
        top, left, height, width = window
        expected = resize_label_nearest(label, size)[top : top + height, left : left + width]
        np.testing.assert_array_equal(resize_label_nearest(label, size, window=window), expected)


# -- datasets and collator ---------------------------------------------------------------------------------------------------
@pytest.fixture
def ade_split(tmp_path):
    layouts.make_ade150(tmp_path, ADE_STEMS[:2], ADE_STEMS[2:3], prepared=True)
    return load_split("ade150", "train", data_root=str(tmp_path))


def test_train_dataset_is_a_function_of_seed_epoch_index(ade_split):
    processor = PATImageProcessor()
    augment = SANTrainAugmentation(crop_size=64, short_edges=(64, 96))
    dataset = SegmentationTrainDataset(ade_split, augment, processor, seed=7)
    first = dataset[1]
    assert first["pixel_values"].shape == (3, 64, 64) and first["labels"].dtype == torch.int64
    assert torch.equal(first["pixel_values"], dataset[1]["pixel_values"])
    dataset.set_epoch(1)
    assert not torch.equal(first["pixel_values"], dataset[1]["pixel_values"])
    twin = SegmentationTrainDataset(ade_split, augment, processor, seed=7)
    twin.set_epoch(1)
    assert torch.equal(dataset[1]["labels"], twin[1]["labels"])
    # padding area: normalised 128-grey pixels, ignored labels
    height, width = first["image_sizes"].tolist()
    assert (first["labels"][height:] == 255).all() and (first["labels"][:, width:] == 255).all()
    # the epoch reaches DataLoader workers through shared memory
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=1, persistent_workers=True)
    dataset.set_epoch(3)
    from_worker = next(iter(loader))["pixel_values"][0]
    dataset.set_epoch(0)
    from_worker_epoch0 = next(iter(loader))["pixel_values"][0]
    reference = SegmentationTrainDataset(ade_split, augment, processor, seed=7)
    reference.set_epoch(3)
    assert torch.equal(from_worker, reference[0]["pixel_values"])
    assert torch.equal(from_worker_epoch0, twin.__class__(ade_split, augment, processor, seed=7)[0]["pixel_values"])


def test_epoch_callback_counts_from_the_global_step(ade_split):
    dataset = SegmentationTrainDataset(ade_split, SANTrainAugmentation(crop_size=64), PATImageProcessor())
    callback = EpochCallback(dataset)
    args = SimpleNamespace(gradient_accumulation_steps=2)
    loader = list(range(5))  # 5 batches -> 3 optimiser steps per epoch
    for global_step, epoch in ((0, 0), (3, 1), (7, 2), (9, 3)):
        callback.on_epoch_begin(args, SimpleNamespace(global_step=global_step), None, train_dataloader=loader)
        assert dataset.epoch == epoch


def test_eval_dataset_uses_san_test_resize_and_keeps_ground_truth(ade_split):
    dataset = SegmentationEvalDataset(ade_split, PATImageProcessor())  # shortest edge 640, long edge <= 2560
    example = dataset[0]
    original = tuple(example["original_sizes"].tolist())
    assert tuple(example["semantic_labels"].shape) == original
    height, width = example["image_sizes"].tolist()
    assert min(height, width) == 640 and tuple(example["pixel_values"].shape[-2:]) == (height, width)
    assert abs(max(height, width) / 640 - max(original) / min(original)) < 0.01


def test_eval_dataset_reads_a_three_pixel_high_image_channels_last(recwarn):
    image = np.random.default_rng(0).integers(0, 256, size=(3, 40, 3), dtype=np.uint8)  # (3, 40, 3): both layouts fit
    split = SimpleNamespace(load=lambda index: (image, np.zeros((3, 40), np.int64), "strip"))
    example = SegmentationEvalDataset(split, PATImageProcessor(do_resize=False))[0]
    assert example["original_sizes"].tolist() == [3, 40]
    assert not [w for w in recwarn if "channels first or last" in str(w.message)]  # the layout is said, not guessed


def _eval_example(height: int, width: int) -> dict:
    return {"pixel_values": torch.ones(3, height, width), "image_sizes": torch.tensor([height, width]),
            "original_sizes": torch.tensor([height, width]), "semantic_labels": torch.zeros(height, width).long(),
            "file_name": f"{height}x{width}"}


def test_collator_groups_an_eval_batch_that_one_wide_image_would_pad():
    examples = [_eval_example(64, 64), _eval_example(64, 480), _eval_example(60, 50)]
    batch = SegmentationCollator()(examples)
    assert next(iter(batch)) == "image_sizes"  # Trainer counts examples by the first tensor
    assert batch["padding_groups"] == [[0, 2], [1]]
    assert [tuple(p.shape) for p in batch["pixel_values"]] == [(2, 3, 64, 64), (1, 3, 64, 480)]
    assert [tuple(label.shape) for label in batch["semantic_labels"]] == [(64, 64), (64, 480), (60, 50)]
    assert batch["file_name"] == ["64x64", "64x480", "60x50"] and batch["image_sizes"][1].tolist() == [64, 480]
    similar = SegmentationCollator()([_eval_example(64, 64), _eval_example(64, 96)])
    assert "padding_groups" not in similar and tuple(similar["pixel_values"].shape) == (2, 3, 64, 96)
    train = SegmentationCollator()([{"pixel_values": torch.zeros(3, 64, width)} for width in (64, 480)])
    assert tuple(train["pixel_values"].shape) == (2, 3, 64, 480)  # training batches stay one tensor


def test_collator_pads_mixed_sizes():
    examples = [
        {"pixel_values": torch.ones(3, 40, 70), "image_sizes": torch.tensor([40, 70]),
         "original_sizes": torch.tensor([80, 140]), "semantic_labels": torch.zeros(80, 140, dtype=torch.long),
         "file_name": "a"},
        {"pixel_values": torch.ones(3, 64, 33), "image_sizes": torch.tensor([64, 33]),
         "original_sizes": torch.tensor([64, 33]), "semantic_labels": torch.ones(64, 33, dtype=torch.long),
         "file_name": "b"},
    ]
    batch = SegmentationCollator(ignore_index=65535, size_divisibility=32)(examples)
    assert batch["pixel_values"].shape == (2, 3, 64, 96)
    assert batch["pixel_values"][0, :, 40:].abs().sum() == 0 and batch["pixel_values"][1, :, :, 33:].abs().sum() == 0
    assert batch["semantic_labels"].shape == (2, 80, 140)
    assert (batch["semantic_labels"][1, 64:] == 65535).all() and (batch["semantic_labels"][1, :64, :33] == 1).all()
    assert batch["image_sizes"].tolist() == [[40, 70], [64, 33]] and batch["file_name"] == ["a", "b"]
    train = SegmentationCollator()([{"pixel_values": torch.zeros(3, 50, 50), "labels": torch.zeros(50, 50).long()}])
    assert train["labels"].shape == (1, 64, 64) and (train["labels"][0, 50:] == 255).all()
    assert train["image_sizes"].tolist() == [[50, 50]]


# -- training data checked when a split is loaded (naming the file) ----------------------------------------------------
def _two_class_folder(root, label_fn, stems=ADE_STEMS[:2]):
    """A folder dataset with the classes wall / sky whose labels `label_fn(stem)` writes."""
    return layouts.make_folder(root, {"train": list(stems)}, ["wall", "sky"], label_fn)


def _write_label(path, array):
    Image.fromarray(array).save(path)


def test_label_value_outside_the_vocabulary_names_file_and_value(tmp_path):
    root = _two_class_folder(tmp_path / "data", lambda stem: np.where(layouts.raw_label(stem) % 2 == 0, 0, 255))
    bad = root / "train" / "label" / f"{ADE_STEMS[0]}.png"
    label = np.array(Image.open(bad))
    label[:3, :3] = 7  # a third class in a two-class vocabulary
    _write_label(bad, label)
    with pytest.raises(LabelFileError, match=rf"{ADE_STEMS[0]}\.png: label value\(s\) 7 are neither"):
        load_split(f"folder={root}", "train")  # the first file: checked at load

    # a later file is checked when it is read, by the datasets too
    good = np.where(layouts.raw_label(ADE_STEMS[0]) % 2 == 0, 0, 255).astype(np.uint8)
    _write_label(bad, good)
    later = root / "train" / "label" / f"{ADE_STEMS[1]}.png"
    _write_label(later, np.full_like(np.array(Image.open(later)), 9))
    split = load_split(f"folder={root}", "train")
    augmentation = SANTrainAugmentation(crop_size=64, short_edges=(64,))
    dataset = SegmentationTrainDataset(split, augmentation, PATImageProcessor())
    dataset[0]
    message = rf"{ADE_STEMS[1]}\.png: label value\(s\) 9 are neither .*ignore value 255"
    with pytest.raises(LabelFileError, match=message):
        dataset[1]


def test_colour_coded_label_map_is_refused_with_the_palette_conversion(tmp_path):
    root = _two_class_folder(tmp_path / "data", lambda stem: np.zeros(layouts.raw_label(stem).shape, np.uint8))
    palette = [(120, 120, 120), (6, 230, 230)]  # wall, sky
    classes = (layouts.raw_label(ADE_STEMS[0]) % 2).astype(np.int64)
    rgb = np.asarray(palette, dtype=np.uint8)[classes]
    path = root / "train" / "label" / f"{ADE_STEMS[0]}.png"
    _write_label(path, rgb)
    with pytest.raises(LabelFileError, match=rf"{ADE_STEMS[0]}\.png: a colour-coded \(RGB\) label map") as error:
        load_split(f"folder={root}", "train")
    assert "class indices" in str(error.value) and "palette_to_class_indices" in str(error.value)

    # the conversion it names gives the class indices back; unknown colours become the ignore value
    rgb[0, 0] = (1, 2, 3)
    converted = palette_to_class_indices(rgb, palette)
    expected = classes.copy()
    expected[0, 0] = 255
    np.testing.assert_array_equal(converted, expected)
    _write_label(path, converted.astype(np.uint8))
    assert load_split(f"folder={root}", "train").load(0)[1][0, 0] == 255
    # a grey label saved as RGB (equal channels) is still read as class indices
    _write_label(path, np.repeat(classes.astype(np.uint8)[..., None], 3, axis=-1))
    np.testing.assert_array_equal(load_split(f"folder={root}", "train").load(0)[1], classes)


@pytest.mark.parametrize("content, message", [
    ('{"0": "wall", "1": ', "not valid JSON"),
    ('["wall", "sky"]', "expected a non-empty object mapping class ids to names"),
    ('{}', "expected a non-empty object"),
    ('{"wall": 0, "sky": 1}', "'wall' is not a class id"),
    ('{"0": "wall", "1": 5}', "class 1 must have a non-empty name"),
    ('{"0": "wall", "1": " "}', "class 1 must have a non-empty name"),
    ('{"0": "wall", "1": "sky", "2": "Wall "}', r"class 'Wall ' is named twice \(ids 0 and 2\)"),
    ('{"0": "wall", "1": "sky", "1": "tree"}', "the key '1' is given twice"),
    ('{"0": "wall", "2": "sky"}', "without gaps"),
    ('{"id2label": {"0": "wall"}, "ignore_index": "255"}', "ignore_index must be a non-negative integer"),
])
def test_malformed_id2label_names_the_file(tmp_path, content, message):
    root = _two_class_folder(tmp_path / "data", lambda stem: np.zeros(layouts.raw_label(stem).shape, np.uint8))
    (root / "id2label.json").write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        load_split(f"folder={root}", "train")
    assert str(root / "id2label.json") in str(error.value)


def test_empty_split_is_refused_at_load(tmp_path):
    root = layouts.make_folder(tmp_path / "flat", {"all": ADE_STEMS[:2]}, ["wall", "sky"],
                               lambda stem: np.zeros(layouts.raw_label(stem).shape, np.uint8), flat=True)
    assert len(load_split(f"folder={root}", "validation", train_val_split=0.99)) == 2
    with pytest.raises(ValueError, match=r"flat \(train\): the split has no examples"):
        load_split(f"folder={root}", "train", train_val_split=0.99)
