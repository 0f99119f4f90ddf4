"""Label files (`modeling_pat/apps/data/labels.py`): the stored-value -> class mapping, and the checks that refuse a
bad label map or id2label.json when a split is loaded, naming the file."""

import numpy as np
import pytest
from PIL import Image

from modeling_pat import PATImageProcessor
from modeling_pat.apps.data import (
    LabelFileError,
    LabelMapping,
    SANTrainAugmentation,
    SegmentationTrainDataset,
    load_split,
    load_vocabulary,
    palette_to_class_indices,
)

import segmentation_layouts as layouts
from segmentation_layouts import ADE_STEMS


def test_label_mapping_tables():
    assert LabelMapping(255)(np.array([[3, 255]])).tolist() == [[3, 255]]
    reduce = LabelMapping.reduce_zero_label(255)
    assert reduce(np.array([[0, 1, 150, 255]])).tolist() == [[255, 0, 149, 255]]
    coco = LabelMapping.from_dict(load_vocabulary("coco171")["pixel_value_to_index"], 255)
    assert coco(np.array([[0, 11, 12, 181, 255]])).tolist() == [[0, 255, 11, 170, 255]]  # 11 is never annotated


@pytest.mark.parametrize("table_size", [200, 256, 300])
def test_label_mapping_of_8_bit_maps_equals_the_widened_path(table_size):
    """uint8 maps (the usual PNG labels) take a one-gather path when the table covers every 8-bit value: the same
    int64 values as mapping the widened map, values beyond a shorter table ignored."""
    rng = np.random.default_rng(0)
    mapping = LabelMapping(255, lut=rng.integers(0, 150, table_size))
    stored = rng.integers(0, 256, (37, 53)).astype(np.uint8)
    mapped = mapping(stored)
    assert mapped.dtype == np.int64
    np.testing.assert_array_equal(mapped, mapping(stored.astype(np.int64)))
    values = stored.astype(np.int64)
    expected = np.where(values < table_size, mapping.lut[np.minimum(values, table_size - 1)], 255)
    np.testing.assert_array_equal(mapped, expected)


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
