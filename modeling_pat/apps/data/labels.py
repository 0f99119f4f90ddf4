"""Class names and label files: `id2label.json`, the checks every label map passes and the mapping from stored
pixel values to class indices."""

import json
from dataclasses import dataclass

import numpy as np


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
    """[H_out, W_out] class indices from a stored label; a label saved as RGB / LA with equal channels is accepted, a
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
    """A colour-coded label map [H_out, W_out, 3] -> class indices [H_out, W_out]: pixel colour `palette[i]` -> i, any
    colour not in the palette -> `ignore_index`."""
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
        label = single_channel_label(label, "label map")
        if self.lut is None:
            return label.astype(np.int64)
        if label.dtype == np.uint8 and len(self.lut) >= 256:
            # every 8-bit value has an entry: one gather instead of a widened copy, a range test, a clip and a select
            return self.lut.take(label)
        label = label.astype(np.int64)
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


__all__ = [
    "check_label_values",
    "LabelFileError",
    "LabelMapping",
    "palette_to_class_indices",
    "read_id2label",
    "single_channel_label",
]
