"""Helpers for segmentation results: a class palette, a colour overlay, a legend panel and label-map PNGs (PIL only).

Nothing here touches the model: every function takes a label map (int array [H_out, W_out] of class indices, at the
image's size; symbols as in the table of `modeling_pat/modeling_pat.py`) and plain Python values, and returns arrays or
new PIL images (or writes one PNG, atomically: complete or not at all).
"""

import colorsys
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from ..atomic_files import atomic_path


# Golden-ratio hue steps put consecutive class indices far apart on the colour wheel; the (saturation, value)
# tiers separate classes whose hues end up close once there are many of them.
_GOLDEN_RATIO_CONJUGATE = (math.sqrt(5) - 1) / 2
_TONE_TIERS = ((0.85, 0.95), (0.60, 0.75), (0.95, 0.60), (0.45, 0.95))

LEGEND_BACKGROUND = (255, 255, 255)
LEGEND_TEXT = (20, 20, 20)
LEGEND_BORDER = (60, 60, 60)
MAX_LEGEND_ROWS = 24
MAX_NAME_CHARS = 40
MAX_LEGEND_ASPECT = 4  # images up to 4:1 keep text sized by their longer side


def save_label_map(label_map: np.ndarray, num_classes: int, path: Path, text: dict[str, str] | None = None) -> None:
    """Class indices as a grayscale PNG: 8-bit when every index fits (<= 256 classes), else 16-bit (`save_png`)."""
    dtype = np.uint8 if num_classes <= 256 else np.uint16
    save_png(Image.fromarray(np.ascontiguousarray(label_map.astype(dtype))), path, text)


def save_png(image: Image.Image, path: Path, text: dict[str, str] | None = None) -> None:
    """`image` as a PNG at `path`, with `text` as PNG text chunks, written atomically (temporary file + rename), so
    an interrupted or failed write never leaves a truncated PNG or destroys the file it replaces."""
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG", pnginfo=info)


def save_segment_map(segment_map: np.ndarray, path: Path, text: dict[str, str] | None = None) -> None:
    """Segment ids (0 = no segment) as a 16-bit grayscale PNG, whatever their number (ids above 65535 are an error),
    written atomically (`save_png`)."""
    segment_map = np.asarray(segment_map)
    if segment_map.size and (segment_map.min() < 0 or segment_map.max() > np.iinfo(np.uint16).max):
        low, high = segment_map.min(), segment_map.max()
        raise ValueError(f"segment ids must lie in 0..65535 for a 16-bit PNG, got {low}..{high}.")
    save_png(Image.fromarray(np.ascontiguousarray(segment_map.astype(np.uint16))), path, text)


def make_palette(num_classes: int) -> np.ndarray:
    """(N, 3) uint8 RGB colours, pairwise distinct, bright enough for dark text borders; index i = class i."""
    colours, seen = [], set()
    for index in range(num_classes):
        hue = (index * _GOLDEN_RATIO_CONJUGATE) % 1.0
        saturation, value = _TONE_TIERS[(index // 7) % len(_TONE_TIERS)]
        colour = _hsv_to_rgb8(hue, saturation, value)
        while colour in seen:  # 8-bit quantisation can merge very close hues: nudge the hue until it is new
            hue = (hue + 0.002) % 1.0
            colour = _hsv_to_rgb8(hue, saturation, value)
        seen.add(colour)
        colours.append(colour)
    return np.array(colours, dtype=np.uint8).reshape(num_classes, 3)


def _hsv_to_rgb8(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(red * 255), round(green * 255), round(blue * 255)


def pixel_fractions(label_map: np.ndarray, num_classes: int) -> np.ndarray:
    """[H_out, W_out] class indices -> (N,) float64 share of pixels per class (sums to 1 for a non-empty map)."""
    counts = np.bincount(np.asarray(label_map).ravel().astype(np.int64), minlength=num_classes)[:num_classes]
    return counts / max(int(counts.sum()), 1)


def legend_entries(fractions, class_names: list[str]) -> list[tuple[int, str, float]]:
    """(index, name, fraction) of every class present (fraction > 0), largest share first, ties by index."""
    present = [(index, name, float(f)) for index, (name, f) in enumerate(zip(class_names, fractions)) if f > 0]
    return sorted(present, key=lambda entry: (-entry[2], entry[0]))


def blend_labels(
    image: Image.Image, label_map: np.ndarray, palette: np.ndarray, alpha: float = 0.5, outline_map=None
) -> Image.Image:
    """RGB image [H_out, W_out] blended with the class colours of `label_map`, class boundaries drawn in white, and also
    the boundaries of `outline_map` ([H_out, W_out] segment ids, e.g. instances) when given."""
    label_map = np.asarray(label_map)
    if label_map.shape != (image.height, image.width):
        raise ValueError(f"label_map has shape {label_map.shape}, the image is {image.height}x{image.width}.")
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    colours = palette[label_map].astype(np.float32)  # (H_out, W_out) -> (H_out, W_out, 3)
    blended = (1.0 - alpha) * pixels + alpha * colours
    line_width = _line_width(image.height, image.width)
    edges = class_boundaries(label_map, line_width)
    if outline_map is not None:
        edges |= class_boundaries(outline_map, line_width)
    blended[edges] = 255.0
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def class_boundaries(label_map: np.ndarray, width: int = 1) -> np.ndarray:
    """[H_out, W_out] bool: pixels whose right or lower neighbour (within `width` pixels) has another class."""
    label_map = np.asarray(label_map)
    edges = np.zeros(label_map.shape, dtype=bool)
    for shift in range(1, width + 1):
        edges[:, :-shift] |= label_map[:, :-shift] != label_map[:, shift:]
        edges[:-shift, :] |= label_map[:-shift, :] != label_map[shift:, :]
    return edges


def _line_width(height: int, width: int) -> int:
    return max(1, round(min(height, width) / 400))


def legend_font_size(height: int, width: int) -> int:
    """Text size in pixels for an image of this size: about 1/30 of its longer side, between 14 and 96.

    The longer side counts for at most `MAX_LEGEND_ASPECT` times the shorter one: the legend's rows run along both
    sides of the canvas, so text sized by the length of a strip (65535x1) would make a canvas hundreds of times the
    image's area, mostly blank, that takes seconds to fill and encode.
    """
    longer, shorter = max(height, width), min(height, width)
    return int(min(96, max(14, round(min(longer, MAX_LEGEND_ASPECT * shorter) / 30))))


def load_font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled scalable font at `size` pixels (the fixed-size bitmap font when FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):
        return ImageFont.load_default()


def format_fraction(fraction: float) -> str:
    if fraction <= 0:
        return "0%"
    if fraction < 0.001:
        return "<0.1%"
    return f"{100 * fraction:.1f}%"


def _shorten(name: str, limit: int = MAX_NAME_CHARS) -> str:
    return name if len(name) <= limit else name[: limit - 1].rstrip() + "\u2026"


def legend_rows(entries, palette: np.ndarray, max_rows: int = MAX_LEGEND_ROWS) -> list[tuple]:
    """(colour or None, name, share text) rows; past `max_rows` the rest is folded into one "+ k more" row."""
    shown = entries if len(entries) <= max_rows else entries[: max_rows - 1]
    rows = [(tuple(int(c) for c in palette[index]), _shorten(name), format_fraction(f)) for index, name, f in shown]
    rest = entries[len(shown):]
    if rest:
        rows.append((None, f"+ {len(rest)} more", format_fraction(sum(f for _, _, f in rest))))
    return rows


def draw_legend(rows, font_size: int) -> Image.Image:
    """Legend panel: a swatch, the class name and its share of pixels per row, on white, just tall enough for them."""
    font = load_font(font_size)
    margin, gap = round(0.8 * font_size), round(0.5 * font_size)
    swatch, row_height = round(1.1 * font_size), round(1.6 * font_size)
    name_width = max((_text_width(font, name) for _, name, _ in rows), default=0)
    share_width = max((_text_width(font, share) for _, _, share in rows), default=0)
    width = 2 * margin + swatch + gap + name_width + 2 * gap + share_width
    height = 2 * margin + row_height * len(rows)
    panel = Image.new("RGB", (width, height), LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(panel)
    for row, (colour, name, share) in enumerate(rows):
        top = margin + row * row_height
        centre = top + row_height // 2
        if colour is not None:
            box = (margin, centre - swatch // 2, margin + swatch, centre - swatch // 2 + swatch)
            draw.rectangle(box, fill=colour, outline=LEGEND_BORDER, width=max(1, font_size // 16))
        draw.text((margin + swatch + gap, centre), name, fill=LEGEND_TEXT, font=font, anchor="lm")
        draw.text((width - margin, centre), share, fill=LEGEND_TEXT, font=font, anchor="rm")
    return panel


def _text_width(font, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(math.ceil(right - left))


def render_overlay(
    image: Image.Image,
    label_map: np.ndarray,
    class_names: list[str],
    palette: np.ndarray | None = None,
    alpha: float = 0.5,
    outline_map: np.ndarray | None = None,
) -> Image.Image:
    """The colour overlay with a legend of the classes present (largest share first) to its right; with
    `outline_map` ([H_out, W_out] segment ids) every segment is outlined too.

    The result is RGB, `image.width + legend width` wide and at least `image.height` tall (taller only when the
    legend needs more room than a small image offers); the image sits at the top left. The legend's size does not
    grow with an extreme side (`legend_font_size`, `MAX_LEGEND_ROWS`, `MAX_NAME_CHARS` bound it), so a 65535x1
    strip gets a canvas a few hundred times its area at most, not one as tall or wide as the strip on both axes.
    Placing the legend below instead would not make such canvases smaller (it trades legend width for height).
    """
    palette = make_palette(len(class_names)) if palette is None else palette
    overlay = blend_labels(image, label_map, palette, alpha, outline_map)
    entries = legend_entries(pixel_fractions(label_map, len(class_names)), class_names)
    legend = draw_legend(legend_rows(entries, palette), legend_font_size(image.height, image.width))
    # The canvas is background already: the legend panel is pasted at its own height, never stretched to the image's.
    canvas = Image.new("RGB", (overlay.width + legend.width, max(overlay.height, legend.height)), LEGEND_BACKGROUND)
    canvas.paste(overlay, (0, 0))
    canvas.paste(legend, (overlay.width, 0))
    return canvas


__all__ = [
    "blend_labels",
    "class_boundaries",
    "draw_legend",
    "format_fraction",
    "legend_entries",
    "legend_font_size",
    "legend_rows",
    "load_font",
    "make_palette",
    "pixel_fractions",
    "render_overlay",
    "save_label_map",
    "save_png",
    "save_segment_map",
]
