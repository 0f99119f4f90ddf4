"""SAN's training augmentation: random resize, crop and flip, and detectron2's photometric distortion, bit for bit."""

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ...image_processing_pat import get_resize_output_size


SAN_TRAIN_SHORT_EDGES = tuple(int(x * 0.1 * 640) for x in range(5, 16))  # 320, 384, ..., 960


@dataclass
class SANTrainAugmentation:
    """SAN's training augmentation (Mask2Former's semantic dataset mapper, as SAN's configs set it):

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
        """uint8 [H_out, W_out, 3], int64 [H_out, W_out] (the photo's own size) -> (uint8 [H_img, W_img, 3], int64
        [H_img, W_img] (the square crop, model input), (height, width) of the content before padding)."""
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
        _copy_pixels(padded_image[:crop_height, :crop_width], image)
        padded_label[:crop_height, :crop_width] = label
        return padded_image, padded_label, content


def _copy_pixels(destination: np.ndarray, source: np.ndarray) -> None:
    """destination[...] = source for [H, W, C] uint8 arrays, a whole C-byte pixel per step where both keep a pixel's
    bytes together (a flipped crop copied byte by byte took 2.5x as long)."""
    if destination.strides[-1] == source.strides[-1] == 1:
        pixel = np.dtype((np.void, source.shape[-1]))
        destination, source = destination.view(pixel), source.view(pixel)
    destination[...] = source


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H_out, W_out, 3] -> [H_img, W_img, 3] with PIL bilinear (what detectron2's ResizeTransform does for uint8
    images)."""
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def resize_label_nearest(label: np.ndarray, size: tuple[int, int], window: tuple[int, int, int, int] | None = None):
    """[H_out, W_out] -> [H_img, W_img] nearest neighbour at pixel centres (source row floor((i + 0.5) * H_out /
    H_img)), any dtype.

    `window` = (top, left, height, width): only that crop of the resized map (the same pixels as cropping it)."""
    height, width = label.shape
    top, left, crop_height, crop_width = (0, 0, *size) if window is None else window
    if (height, width) == tuple(size):
        return label[top : top + crop_height, left : left + crop_width]
    rows = np.minimum(((np.arange(size[0]) + 0.5) * height / size[0]).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * width / size[1]).astype(np.int64), width - 1)
    rows, cols = rows[top : top + crop_height], cols[left : left + crop_width]
    return label.take(rows, axis=0).take(cols, axis=1)  # two gathers: half the time of one 2-D fancy index


# the two bytes of each 16-bit word 0..65535 in memory order (whatever the machine's byte order)
_BYTE_PAIRS = np.arange(65536, dtype=np.uint16).view(np.uint8).reshape(65536, 2)


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """uint8 -> uint8 clip(v * alpha + beta), computed in float32 for the 256 values once, then looked up."""
    table = np.clip(np.arange(256, dtype=np.float32) * alpha + beta, 0, 255).astype(np.uint8)
    if values.flags.c_contiguous and values.size % 2 == 0:
        # two bytes per lookup in a table of every byte pair (128 kB): half the index conversions and reads
        pairs = table.take(_BYTE_PAIRS).view(np.uint16).reshape(-1)
        return pairs.take(values.reshape(-1).view(np.uint16)).view(np.uint8).reshape(values.shape)
    return table.take(values)


# OpenCV's 8-bit HSV formulas in float32, as functions of a few small integers, tabulated once per process (SAN's
# colour jitter makes up to two round trips per image; the elementwise float formulas on a 640 x 640 crop made them
# most of a loader worker's time). The small tables give `_rgb_to_hsv_formula` / `_hsv_uint8_to_rgb_formula`, which
# fill the tables of every input triple (`_EveryTriple`) that the jitter looks pixels up in. Every entry is the
# formula's float32 result for that entry's inputs, so the outputs are the formulas' exactly.
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


def _rgb_to_hsv_formula(image: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 HSV by the formulas, through the small tables: what `rgb_to_hsv_uint8`'s table holds."""
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


def _hsv_uint8_to_rgb_formula(hsv: np.ndarray) -> np.ndarray:
    """uint8 HSV -> uint8 RGB by OpenCV's HSV2RGB float32 formulas, through the small tables: what
    `hsv_uint8_to_rgb`'s table holds."""
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


def _table_index(row: np.ndarray, column: np.ndarray) -> np.ndarray:
    """Flat index row * 256 + column of a 256-column table, built in place in the index type `take` uses."""
    index = row.astype(np.intp)
    index <<= 8
    index += column
    return index


def _triple_index(first: np.ndarray, second: np.ndarray, third: np.ndarray) -> np.ndarray:
    """Flat index (first * 256 + second) * 256 + third of a table over three uint8 inputs."""
    index = _table_index(first, second)
    index <<= 8
    index += third
    return index


class _EveryTriple:
    """A lazily built table of a uint8 -> uint8 conversion at every input triple (first, second, third), the outputs
    packed into one `packed_dtype` word per entry so that a pixel's lookup is one read. Built by running `formula`
    over the inputs one `first` level at a time, so each entry is the formula's own bytes; forked loader workers
    share a table the parent built.

    The per-pixel formulas (float chroma, rounding, sector placement one way; case analysis, differences and two
    table reads the other) cost a loader worker about 7 and 3.6 ms per 640 x 640 crop, the lookups 1.5 and 1.3 ms."""

    def __init__(self, formula, first_levels: int, outputs: int, packed_dtype):
        self.formula, self.first_levels, self.outputs, self.packed_dtype = formula, first_levels, outputs, packed_dtype
        self._table = None

    def __call__(self) -> np.ndarray:
        if self._table is None:
            width = np.dtype(self.packed_dtype).itemsize
            grid = np.empty((256, 256, 3), dtype=np.uint8)  # (second, third) at one first level
            grid[..., 1], grid[..., 2] = np.arange(256, dtype=np.uint8)[:, None], np.arange(256, dtype=np.uint8)
            table = np.zeros((self.first_levels, 256, 256, width), dtype=np.uint8)
            for level in range(self.first_levels):
                grid[..., 0] = level
                table[level, ..., : self.outputs] = self.formula(grid)[..., : self.outputs]
            self._table = table.view(self.packed_dtype).reshape(-1)
        return self._table

    def lookup(self, first: np.ndarray, second: np.ndarray, third: np.ndarray) -> np.ndarray:
        """[...] x 3 uint8 -> [..., outputs] uint8 (a view into the packed words)."""
        packed = self().take(_triple_index(first, second, third)).view(np.uint8)
        return packed.reshape(*first.shape, -1)[..., : self.outputs]


# (R, G, B) -> (H, S): 32 MB; V is the largest channel, cheaper to take than to store. (H, S, V) -> (R, G, B): 45 MB,
# four bytes per entry (the fourth zero).
_hue_saturation_of_every_rgb = _EveryTriple(_rgb_to_hsv_formula, 256, 2, np.uint16)
_rgb_of_every_hsv = _EveryTriple(_hsv_uint8_to_rgb_formula, 180, 3, np.uint32)


def build_colour_tables() -> None:
    """Build the HSV conversion tables now (about a second, 77 MB): a process that does so before starting forked
    DataLoader workers shares one copy with all of them instead of each worker building its own at its first image."""
    _hue_saturation_of_every_rgb()
    _rgb_of_every_hsv()


def _hsv_planes(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 RGB [..., 3] -> the H, S and V planes [...] (views; interleaving them costs more than the lookup)."""
    red, green, blue = (image[..., channel] for channel in range(3))
    hue_saturation = _hue_saturation_of_every_rgb.lookup(red, green, blue)
    return hue_saturation[..., 0], hue_saturation[..., 1], np.maximum(np.maximum(red, green), blue)


def rgb_to_hsv_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 HSV in OpenCV's 8-bit convention (H in 0..179 = degrees / 2, S and V in 0..255)."""
    return np.stack(_hsv_planes(image), axis=-1)


def hsv_uint8_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_hsv_uint8` (OpenCV's HSV2RGB for 8-bit images)."""
    return _rgb_of_every_hsv.lookup(hsv[..., 0], hsv[..., 1], hsv[..., 2])


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
            hue_plane, saturation_plane, value = _hsv_planes(img)
            saturation_plane = _convert(saturation_plane, alpha=rng.uniform(*saturation_range))
            return _rgb_of_every_hsv.lookup(hue_plane, saturation_plane, value)
        return img

    def hue(img):
        if rng.integers(2):
            hue_plane, saturation_plane, value = _hsv_planes(img)
            shifted = (np.arange(180) + rng.integers(-hue_delta, hue_delta + 1)) % 180  # H -> (H + shift) mod 180
            return _rgb_of_every_hsv.lookup(shifted.astype(np.uint8).take(hue_plane), saturation_plane, value)
        return img

    image = brightness(np.ascontiguousarray(image))
    if rng.integers(2):
        return hue(saturation(contrast(image)))
    return contrast(hue(saturation(image)))


__all__ = [
    "build_colour_tables",
    "hsv_uint8_to_rgb",
    "photometric_distortion",
    "resize_image",
    "resize_label_nearest",
    "rgb_to_hsv_uint8",
    "SAN_TRAIN_SHORT_EDGES",
    "SANTrainAugmentation",
]
