"""SAN's training augmentation (`modeling_pat/apps/data/augmentation.py`): geometry, padding, the label resize and
the photometric distortion against detectron2's float formulas."""

import numpy as np
import pytest
import torch

from modeling_pat.apps.data import (
    SANTrainAugmentation,
    hsv_uint8_to_rgb,
    photometric_distortion,
    resize_label_nearest,
    rgb_to_hsv_uint8,
)
from modeling_pat.apps.data.augmentation import _convert
from modeling_pat.image_processing_pat import resize_label


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
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(_convert(values, alpha, beta), expected)


def test_label_resize_window_is_the_crop_of_the_resized_map():
    label = np.random.default_rng(0).integers(0, 300, (97, 131))
    for size, window in [((150, 203), (13, 40, 100, 120)), ((60, 81), (0, 0, 60, 81)), ((97, 131), (5, 7, 50, 60))]:
        top, left, height, width = window
        expected = resize_label_nearest(label, size)[top : top + height, left : left + width]
        np.testing.assert_array_equal(resize_label_nearest(label, size, window=window), expected)
