"""SAN's training augmentation (`modeling_pat/apps/data/augmentation.py`): geometry, padding, the label resize and
the photometric distortion against detectron2's float formulas."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_pat import PATImageProcessor
from modeling_pat.apps.data import (
    SAN_TRAIN_SHORT_EDGES,
    SANTrainAugmentation,
    hsv_uint8_to_rgb,
    photometric_distortion,
    resize_label_nearest,
    rgb_to_hsv_uint8,
)
from modeling_pat.apps.data.augmentation import _convert
from modeling_pat.apps.data.batches import _normalize
from modeling_pat.image_processing_pat import get_resize_output_size, resize_label


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


def test_augmentation_without_jitter_takes_any_pixel_layout():
    """A channels-reversed (BGR -> RGB) view, no colour jitter, no resize: the crop is copied as the values say."""
    bgr = np.random.default_rng(0).integers(0, 256, (50, 70, 3)).astype(np.uint8)
    augment = SANTrainAugmentation(crop_size=64, short_edges=(50,), photometric_distortion=False, flip_prob=1.0)
    image, _, (height, width) = augment(bgr[..., ::-1], np.zeros((50, 70), dtype=np.int64), np.random.default_rng(0))
    crop = image[:height, :width]
    assert (height, width) == (50, 64)
    assert any(np.array_equal(crop, bgr[:, left : left + 64, ::-1][:, ::-1]) for left in range(7))


@pytest.mark.parametrize("size", [(37, 53), (97, 131), (128, 96), (300, 41)])
def test_label_resize_twins_agree(size):
    """Training (numpy) and the image processor (torch) resize labels with one rule: output pixel y takes input
    pixel floor((y + 0.5) * H_in / H_out), in exact rationals; ids beyond 255 (ADE-847's uint16) kept as they are."""
    label = np.random.default_rng(0).integers(0, 3000, (97, 131)).astype(np.uint16)
    rows = [min((2 * y + 1) * 97 // (2 * size[0]), 96) for y in range(size[0])]
    cols = [min((2 * x + 1) * 131 // (2 * size[1]), 130) for x in range(size[1])]
    expected = label[np.ix_(rows, cols)]
    np.testing.assert_array_equal(resize_label_nearest(label, size), expected)
    torch.testing.assert_close(resize_label(torch.from_numpy(label.astype(np.int64)), size),
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
    values = np.random.default_rng(0).permutation(np.arange(256, dtype=np.uint8).repeat(3)).reshape(16, 16, 3)
    # contiguous with an even size (looked up two bytes at a time), a strided view and an odd size (byte by byte)
    for view in (values, values[:, ::2], values[:15, :15, :1]):
        expected = np.clip(view.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(_convert(view, alpha, beta), expected)


def test_label_resize_window_is_the_crop_of_the_resized_map():
    label = np.random.default_rng(0).integers(0, 300, (97, 131))
    for size, window in [((150, 203), (13, 40, 100, 120)), ((60, 81), (0, 0, 60, 81)), ((97, 131), (5, 7, 50, 60))]:
        top, left, height, width = window
        expected = resize_label_nearest(label, size)[top : top + height, left : left + width]
        np.testing.assert_array_equal(resize_label_nearest(label, size, window=window), expected)


# The augmentation and normalisation as first written (full-size resize then crop, the float HSV formulas, the
# processor on a channels-last view): the oracle every faster path must reproduce byte for byte.
def reference_example(augment, image, label, rng, processor):
    height, width = label.shape
    short = int(augment.short_edges[rng.integers(len(augment.short_edges))])
    new_height, new_width = get_resize_output_size(height, width, short, augment.max_long_edge)
    crop_height, crop_width = min(augment.crop_size, new_height), min(augment.crop_size, new_width)
    top = int(rng.integers(new_height - crop_height + 1))
    left = int(rng.integers(new_width - crop_width + 1))
    resized = np.asarray(Image.fromarray(image).resize((new_width, new_height), Image.BILINEAR))
    image = resized[top : top + crop_height, left : left + crop_width]
    label = resize_label_nearest(label, (new_height, new_width))[top : top + crop_height, left : left + crop_width]
    if augment.photometric_distortion:
        image = reference_photometric_distortion(image, rng)
    if rng.random() < augment.flip_prob:
        image, label = image[:, ::-1], label[:, ::-1]
    padded_image = np.full((augment.crop_size, augment.crop_size, 3), augment.image_pad_value, dtype=np.uint8)
    padded_label = np.full((augment.crop_size, augment.crop_size), augment.ignore_index, dtype=np.int64)
    padded_image[:crop_height, :crop_width], padded_label[:crop_height, :crop_width] = image, label
    pixels = torch.from_numpy(padded_image).permute(2, 0, 1)[None]
    pixels = processor.rescale_and_normalize(pixels, processor.do_rescale, processor.rescale_factor,
                                             processor.do_normalize, processor.image_mean, processor.image_std)[0]
    return pixels, torch.from_numpy(padded_label), (crop_height, crop_width)


def reference_photometric_distortion(image, rng):
    def convert(img, alpha=1.0, beta=0.0):
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def brightness(img):
        return convert(img, beta=rng.uniform(-32, 32)) if rng.integers(2) else img

    def contrast(img):
        return convert(img, alpha=rng.uniform(0.5, 1.5)) if rng.integers(2) else img

    def saturation(img):
        if rng.integers(2):
            hsv = formula_rgb_to_hsv(img)
            hsv[..., 1] = convert(hsv[..., 1], alpha=rng.uniform(0.5, 1.5))
            return formula_hsv_to_rgb(hsv)
        return img

    def hue(img):
        if rng.integers(2):
            hsv = formula_rgb_to_hsv(img)
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + rng.integers(-18, 19)) % 180
            return formula_hsv_to_rgb(hsv)
        return img

    image = brightness(image)
    if rng.integers(2):
        return hue(saturation(contrast(image)))
    return contrast(hue(saturation(image)))


PHOTOS = Path(__file__).parent / "fixtures" / "data" / "images"


@pytest.mark.parametrize("crop_size, short_edges", [(640, SAN_TRAIN_SHORT_EDGES), (160, (96, 150, 224, 333))])
def test_training_examples_equal_the_first_implementation(crop_size, short_edges):
    """Photos of several sizes (JPEG and PNG), every draw of scale, crop, jitter and flip over 12 seeds each: the
    dataset's pixel values, labels and sizes equal the oracle's exactly."""
    augment = SANTrainAugmentation(crop_size=crop_size, short_edges=short_edges)
    processor = PATImageProcessor()
    photos = sorted(PHOTOS.glob("*"))[::3]
    assert len(photos) >= 4
    for number, path in enumerate(photos):
        image = np.asarray(Image.open(path).convert("RGB"))
        label = np.random.default_rng(number).integers(0, 200, image.shape[:2])
        for seed in range(12):
            rng = np.random.default_rng([seed, number])
            image_out, label_out, content = augment(image, label, np.random.default_rng([seed, number]))
            pixels, labels, expected_content = reference_example(augment, image, label, rng, processor)
            assert content == expected_content
            assert torch.equal(_normalize(image_out, processor), pixels), (path.name, seed)
            assert torch.equal(torch.from_numpy(np.ascontiguousarray(label_out)), labels), (path.name, seed)
