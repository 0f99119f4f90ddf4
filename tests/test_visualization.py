"""Palette, overlay, legend and label-map PNGs (`modeling_pat/apps/visualization.py`), on synthetic label maps."""

import numpy as np
import pytest
from PIL import Image

from modeling_pat.apps.visualization import (
    blend_labels,
    class_boundaries,
    format_fraction,
    legend_entries,
    legend_font_size,
    legend_rows,
    make_palette,
    pixel_fractions,
    render_overlay,
    save_label_map,
)


NAMES = ["cat", "cup", "person", "sky", "grass"]


def _image(height=120, width=160) -> Image.Image:
    gradient = np.linspace(0, 255, width, dtype=np.float32)[None, :, None].repeat(height, 0).repeat(3, 2)
    return Image.fromarray(gradient.astype(np.uint8), mode="RGB")


def _label_map(height=120, width=160) -> np.ndarray:
    """cat on the left half, sky top right, grass bottom right; cup and person absent."""
    label_map = np.zeros((height, width), dtype=np.int64)
    label_map[: height // 2, width // 2 :] = 3
    label_map[height // 2 :, width // 2 :] = 4
    return label_map


@pytest.mark.parametrize("num_classes", [1, 5, 20, 150, 171, 459, 847])
def test_palette_colours_are_distinct(num_classes):
    palette = make_palette(num_classes)
    assert palette.shape == (num_classes, 3) and palette.dtype == np.uint8
    assert len({tuple(colour) for colour in palette}) == num_classes


def test_palette_first_colours_are_far_apart_and_stable():
    palette = make_palette(12).astype(int)
    distances = np.abs(palette[:, None] - palette[None]).sum(-1) + np.eye(12, dtype=int) * 10_000
    assert distances.min() >= 40  # summed RGB difference: clearly different colours, not near-duplicates
    np.testing.assert_array_equal(make_palette(30)[:12], make_palette(12))  # same class -> same colour


def test_pixel_fractions_and_legend_entries_only_list_present_classes_largest_first():
    fractions = pixel_fractions(_label_map(), len(NAMES))
    np.testing.assert_allclose(fractions, [0.5, 0.0, 0.0, 0.25, 0.25])
    entries = legend_entries(fractions, NAMES)
    assert [name for _, name, _ in entries] == ["cat", "sky", "grass"]  # ties keep index order
    assert [index for index, _, _ in entries] == [0, 3, 4]


def test_legend_rows_fold_the_tail_into_one_row():
    entries = [(i, f"class {i}", 1 / 30) for i in range(30)]
    rows = legend_rows(entries, make_palette(30), max_rows=10)
    assert len(rows) == 10
    assert rows[-1][0] is None and rows[-1][1] == "+ 21 more" and rows[-1][2] == "70.0%"


def test_format_fraction():
    assert format_fraction(0.0) == "0%"
    assert format_fraction(0.0004) == "<0.1%"
    assert format_fraction(0.1234) == "12.3%"


def test_blend_keeps_size_and_marks_boundaries():
    image, label_map = _image(), _label_map()
    overlay = blend_labels(image, label_map, make_palette(len(NAMES)))
    assert overlay.mode == "RGB" and overlay.size == image.size
    edges = class_boundaries(label_map)
    assert edges[:, 79].all() and not edges[:, :79].any()  # the vertical cat | sky/grass edge
    with pytest.raises(ValueError, match="label_map has shape"):
        blend_labels(image, label_map[:-1], make_palette(len(NAMES)))


def test_overlay_size_and_legend_lists_only_present_classes():
    image, label_map = _image(), _label_map()
    palette = make_palette(len(NAMES))
    overlay = render_overlay(image, label_map, NAMES, palette)
    assert overlay.mode == "RGB"
    assert overlay.width > image.width and overlay.height >= image.height
    legend = np.asarray(overlay)[:, image.width :].reshape(-1, 3)
    colours_in_legend = {tuple(colour) for colour in np.unique(legend, axis=0)}
    for index in (0, 3, 4):  # present: an exact swatch of its colour
        assert tuple(palette[index]) in colours_in_legend, NAMES[index]
    for index in (1, 2):  # absent: no swatch
        assert tuple(palette[index]) not in colours_in_legend, NAMES[index]


def test_legend_text_scales_with_the_image():
    assert legend_font_size(20, 30) == 14  # never below a readable minimum
    assert legend_font_size(300, 451) == 15  # about 1/30 of the longer side
    assert legend_font_size(6000, 8000) == 96  # capped
    small = render_overlay(_image(), _label_map(), NAMES)
    large = render_overlay(_image(1200, 1600), _label_map(1200, 1600), NAMES)
    assert (large.width - 1600) > 3 * (small.width - 160)  # the legend panel grows with the text


def test_legend_text_of_an_elongated_image_follows_its_shorter_side():
    assert legend_font_size(480, 640) == legend_font_size(640, 480) == 21  # up to 4:1 the longer side sets the size
    assert legend_font_size(200, 800) == 27
    assert legend_font_size(200, 4000) == 27  # past 4:1 the longer side counts as 4x the shorter one
    assert legend_font_size(1, 65535) == legend_font_size(65535, 1) == 14


@pytest.mark.parametrize("height, width", [(1, 65535), (65535, 1)])
def test_overlay_of_an_extreme_strip_stays_small(height, width):
    """The legend's extent does not grow with the strip's length: the canvas is the strip plus a small panel."""
    image = Image.new("RGB", (width, height), (90, 90, 90))
    label_map = (np.arange(height * width).reshape(height, width) * 3 // (height * width)).astype(np.int64)
    palette = make_palette(len(NAMES))
    overlay = render_overlay(image, label_map, NAMES, palette)
    assert overlay.width >= width + 1 and overlay.height >= height
    assert overlay.width * overlay.height < 200 * max(height, width)  # was ~900 x 66500 px (text sized by 65535)
    pixels = np.asarray(overlay)
    assert (pixels[:height, :width] == np.asarray(blend_labels(image, label_map, palette))).all()
    legend = {tuple(colour) for colour in np.unique(pixels[:, width:].reshape(-1, 3), axis=0)}
    assert all(tuple(palette[index]) in legend for index in (0, 1, 2))  # every class present has its swatch


def test_tiny_image_gets_a_legible_legend():
    overlay = render_overlay(_image(20, 30), _label_map(20, 30), NAMES)
    assert overlay.height > 20  # the canvas grows so that the rows fit at the minimum text size


@pytest.mark.parametrize("num_classes, dtype", [(2, np.uint8), (256, np.uint8), (257, np.uint16), (847, np.uint16)])
def test_label_map_png_bit_depth(tmp_path, num_classes, dtype):
    label_map = np.array([[0, num_classes - 1]], dtype=np.int64)
    save_label_map(label_map, num_classes, tmp_path / "labels.png")
    with Image.open(tmp_path / "labels.png") as png:
        read_back = np.array(png)
    assert read_back.dtype == dtype
    np.testing.assert_array_equal(read_back, label_map)
