"""Images into the model: their sources (file, URL, base64, PIL), the one RGB normalisation, and input checks.

* `normalize_rgb` is the package's only conversion of a PIL image into what the model takes: the first frame,
  upright (EXIF orientation applied), 8-bit RGB with 16-bit samples scaled (not clipped) and any transparency
  composited over white. `load_image`, the processor (PIL inputs, host and device paths), the pipeline, the CLI and
  the demo all reach it through `load_image` or the processor.
* `load_image` resolves a source as transformers' `load_image` does (an http(s) URL, an existing file, else a base64
  string or `data:image/...` URI), then decodes it fully and normalises it. It does not call transformers' function:
  that one ends in PIL's `convert("RGB")`, which clips 16-bit samples to white and drops transparency (the colour
  hidden under transparent pixels shows), and its errors name neither the file nor the problem. URLs are fetched
  with huggingface_hub's HTTP session, the client transformers itself uses (proxies and certificates set once).
* `check_image_array`, `channels_first` and `flatten_images` check array / tensor inputs and lay them out
  channels first; `label_map_to_tensor` / `as_label_list` do the same for label maps.

Images here are `[channels, height, width]` or `[height, width, channels]` before the processor resizes them (the
shape symbols of `modeling_pat.modeling_pat` start at the model's input, H_img x W_img).
"""

import base64
import binascii
import io
import os
import warnings

import numpy as np
import torch
from transformers.image_utils import ChannelDimension


try:
    import PIL.Image
    import PIL.ImageOps
except ImportError:  # PIL is optional for images given as arrays or tensors
    PIL = None


# PIL modes holding 16-bit samples (PNG / TIFF); "I" is 32-bit in PIL but is how 16-bit files come back in some
# versions, so it is read as 0..65535 too.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
EXIF_ORIENTATION = 0x0112  # the EXIF tag of the image orientation (1 = upright)
# Strings shorter than this that are neither a URL nor a file are mistyped paths, never base64 images.
MIN_BASE64_LENGTH = 64


def normalize_rgb(image: "PIL.Image.Image", to_rgb: bool = True) -> "PIL.Image.Image":
    """Any PIL image -> what the model takes: its first frame, upright, and (with `to_rgb`) 8-bit RGB.

    A first-frame, upright RGB image without transparency is returned as it is (no full-size copy). `to_rgb=False`
    (the processor's `do_convert_rgb=False`) keeps the mode and only selects the frame and applies the orientation.
    """
    image = upright(first_frame(image))
    return convert_image_to_rgb(image) if to_rgb else image


def first_frame(image: "PIL.Image.Image") -> "PIL.Image.Image":
    """Frame 0 of a multi-frame image (GIF, TIFF, APNG), as files are opened; the caller's image keeps its frame."""
    position = image.tell()  # 0 for single-frame images (counting frames would read through an animation)
    if position == 0:
        return image
    try:
        image.seek(0)
        return image.copy()
    finally:
        image.seek(position)


def upright(image: "PIL.Image.Image") -> "PIL.Image.Image":
    """The image with its EXIF orientation applied; the image itself when there is none to apply.

    `PIL.ImageOps.exif_transpose` copies even an upright image; images that went through `load_image` already
    had their orientation applied (and the tag removed), so the processor would copy them again for nothing.
    """
    if image.getexif().get(EXIF_ORIENTATION, 1) == 1:
        return image
    return PIL.ImageOps.exif_transpose(image)


def convert_image_to_rgb(image: "PIL.Image.Image") -> "PIL.Image.Image":
    """Any PIL image -> 8-bit RGB (the colour step of `normalize_rgb`; no orientation or frame).

    16-bit grayscale is scaled by 255 / 65535 (PIL's own conversion would clip everything above 255 to white); 32-bit
    float ("F") is taken as 0..255 and clipped; transparency (RGBA, LA, PA, palette or colour-key transparency) is
    composited over white, as transformers' `convert_to_rgb` does; grayscale, palette, bilevel, CMYK and YCbCr are
    converted by PIL.
    """
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image  # already what the model takes (PIL's convert would return a copy)
    if mode in SIXTEEN_BIT_MODES or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("The image (PIL mode 'F') contains NaN or infinite values.")
        scale = 255.0 / 65535.0 if mode in SIXTEEN_BIT_MODES else 1.0
        image = PIL.Image.fromarray(np.clip(np.round(values * scale), 0, 255).astype(np.uint8))  # mode "L"
    has_alpha = any(band in ("A", "a") for band in image.getbands()) or "transparency" in image.info
    try:
        if has_alpha:
            background = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
            return PIL.Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
        return image.convert("RGB")
    except (ValueError, OSError) as error:  # e.g. modes PIL cannot convert ("LAB" -> "RGB" on some builds)
        raise ValueError(f"Cannot convert a PIL image of mode {mode!r} to RGB: {error}") from error


def load_image(image, timeout: float | None = None) -> "PIL.Image.Image":
    """Open an image for the model: fully decoded, then `normalize_rgb` (first frame, upright, 8-bit RGB).

    A PIL image that is already upright RGB is returned as it is, not copied.

    Args:
        image: a file path (`str` or `os.PathLike`), an http(s) URL, a base64 string / `data:image/...` URI (the
            sources transformers' `load_image` accepts), or a PIL image.
        timeout: seconds to wait for a URL.

    Raises:
        ValueError naming the file when it does not exist, is empty (0 bytes), is not an image, is truncated or
        corrupt, or has more pixels than PIL's decompression-bomb limit `PIL.Image.MAX_IMAGE_PIXELS` (raise that
        limit, or set it to None, to open a large image you trust). TypeError for anything else than the above.
    """
    if PIL is None:
        raise ImportError("Loading images needs Pillow (pip install pillow).")
    if isinstance(image, PIL.Image.Image):
        return normalize_rgb(image)
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if not isinstance(image, str):
        raise TypeError(f"`image` must be a file path, URL or PIL image, got {type(image).__name__}.")
    if image.startswith(("http://", "https://")):
        return _decode_image(_fetch_url(image, timeout), image)
    if os.path.isfile(image):
        if os.path.getsize(image) == 0:
            raise ValueError(f"Image file {image!r} is empty (0 bytes).")
        return _decode_image(image, image)
    if os.path.exists(image):
        raise ValueError(f"{image!r} is not an image file (it is a folder or another kind of path).")
    return _decode_base64(image)


def _decode_image(source, name: str) -> "PIL.Image.Image":
    """Open and fully decode `source` (a path or file object) -> `normalize_rgb`; clear ValueErrors naming `name`."""
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; here the limit itself is the error.
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(source) as opened:
                opened.load()  # decode now, so truncated data fails here and not inside the processor
                image = PIL.ImageOps.exif_transpose(opened)  # a decoded copy, independent of the file
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as error:
        raise ValueError(
            f"Image {name!r} has more pixels than PIL's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS = "
            f"{PIL.Image.MAX_IMAGE_PIXELS}): {error} If you trust the file, raise that limit (None removes it)."
        ) from error
    except PIL.UnidentifiedImageError as error:
        raise ValueError(f"{name!r} is not an image file (PIL cannot identify its format).") from error
    except Exception as error:  # OSError "image file is truncated", SyntaxError "broken PNG file", ...
        raise ValueError(f"Image file {name!r} is truncated or corrupt and cannot be decoded: {error}") from error
    return normalize_rgb(image)


def _fetch_url(url: str, timeout: float | None) -> io.BytesIO:
    """The bytes of an http(s) URL (redirects followed), through huggingface_hub's HTTP session."""
    from huggingface_hub import get_session  # a dependency of transformers, so also there for remote code

    try:
        response = get_session().get(url, timeout=timeout, follow_redirects=True)
        response.raise_for_status()
    except Exception as error:  # the HTTP client's connection, timeout and status errors, and malformed URLs
        raise ValueError(f"Could not download the image {url!r}: {error}") from error
    if not response.content:
        raise ValueError(f"Image {url!r} is empty (0 bytes).")
    return io.BytesIO(response.content)


def _decode_base64(text: str) -> "PIL.Image.Image":
    """A `data:image/...;base64,` URI or a long base64 string -> `_decode_image`; anything else is a missing file."""
    is_uri = text.startswith("data:image/")
    data = text.partition(",")[2] if is_uri else text
    try:
        raw = base64.b64decode(data, validate=True) if is_uri or len(text) >= MIN_BASE64_LENGTH else b""
    except (binascii.Error, ValueError):
        raw = b""
    if not raw:
        raise ValueError(f"Image file {text!r} does not exist.")
    try:
        return _decode_image(io.BytesIO(raw), "<base64 image string>")
    except ValueError as error:  # a long string that merely looks like base64: most likely a mistyped path
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ValueError(f"Image file {shown!r} does not exist (nor is it a base64-encoded image: {error})") from error


def check_image_array(image, index: int, do_rescale: bool = True):
    """Values of a numpy / torch image: finite, on the 0..255 scale. uint16 is scaled to 0..255 (float32)."""
    if isinstance(image, torch.Tensor):
        kind = "f" if image.is_floating_point() else "u" if image.dtype in (torch.uint8, torch.uint16) else "i"
        if image.dtype == torch.bool or image.is_complex():
            kind = "other"
        values = image
    else:
        kind = image.dtype.kind if image.dtype.kind in "uif" else "other"
        values = torch.from_numpy(np.ascontiguousarray(image)) if kind != "other" else None
    if kind == "other":
        raise TypeError(f"`images[{index}]` has dtype {image.dtype}; expected uint8, uint16 or float (0..255) values.")
    if values.dtype == torch.uint16:  # 16-bit images: their full range maps to 0..255 (not clipped)
        return values.to(torch.float32) * (255.0 / 65535.0)
    if values.numel() == 0:
        return image
    if kind == "f":
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"`images[{index}]` contains NaN or infinite values.")
        low, high = float(values.min()), float(values.max())
        if do_rescale and 0.0 <= low and 0.0 < high <= 1.0:
            warnings.warn(
                f"`images[{index}]` is a float image with all values in [0, 1]; PATImageProcessor expects 0..255 "
                "values (pass do_rescale=False if the image is already scaled to [0, 1]).",
                UserWarning,
                stacklevel=4,
            )
    elif values.dtype != torch.uint8:
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"`images[{index}]` has {image.dtype} values in [{low}, {high}]; expected 0..255 (uint8), 0..65535 "
                "(uint16) or float on the 0..255 scale."
            )
    return image


def prepare_image(image, index: int, do_convert_rgb: bool, do_rescale: bool, input_data_format=None):
    """One flattened input -> what the torchvision backend takes: files loaded (`load_image`), PIL images normalised
    (`normalize_rgb`), array / tensor values checked (`check_image_array`) and laid out channels first
    (`channels_first`)."""
    if isinstance(image, str | os.PathLike):
        return load_image(image)
    if PIL is not None and isinstance(image, PIL.Image.Image):
        return normalize_rgb(image, to_rgb=do_convert_rgb)
    return channels_first(check_image_array(image, index, do_rescale), index, input_data_format)


def channels_first(image, index: int, input_data_format=None):
    """A [height, width], [channels, height, width] or [height, width, channels] array / tensor -> channels first
    (a view where possible).

    `input_data_format` decides when given. Otherwise the channel axis is the last one when it holds 3 or 4 values
    (numpy's and PIL's layout: a (1, 65535, 3) array is a 1x65535 RGB strip, not a 65535x3 grey image, which is how
    transformers' own inference reads it), else the first one when it holds 1, 3 or 4, else a last axis of 1. A
    shape that both readings fit gets a warning saying which one was used and how to choose the other.
    """
    if image.ndim == 2:  # grayscale [height, width]: a channel axis of one, which RGB conversion expands
        return image[None]
    if input_data_format is not None:
        layout = ChannelDimension(input_data_format)
    else:
        layout = infer_channel_layout(tuple(image.shape))
        if image.shape[0] in (1, 3, 4) and image.shape[-1] in (1, 3, 4):
            warnings.warn(
                f"`images[{index}]` has shape {tuple(image.shape)}, which reads as channels first or last; read as "
                f"{layout.value}. Pass input_data_format='channels_first' or 'channels_last' to choose.",
                UserWarning,
                stacklevel=4,
            )
    if layout == ChannelDimension.FIRST:
        return image
    return image.permute(2, 0, 1) if isinstance(image, torch.Tensor) else image.transpose(2, 0, 1)


def infer_channel_layout(shape: tuple[int, ...]) -> ChannelDimension:
    """Where the channels of a 3-D image of this shape are: last when that axis holds 3 or 4 (RGB / RGBA as numpy
    and PIL store them), else first when it holds 1, 3 or 4, else last when it holds 1."""
    if shape[-1] in (3, 4) or (shape[-1] == 1 and shape[0] not in (1, 3, 4)):
        return ChannelDimension.LAST
    if shape[0] in (1, 3, 4):
        return ChannelDimension.FIRST
    raise ValueError(f"An image of shape {shape} has no channel axis of 1, 3 or 4 values at either end.")


def flatten_images(images) -> list:
    """Check `images` and return a flat list of single images (PIL, path / URL string, channels-first or
    channels-last array or tensor)."""
    if images is None:
        raise ValueError("`images` must be given (an image or a list of images).")
    items = list(images) if isinstance(images, list | tuple) else [images]
    if isinstance(images, np.ndarray | torch.Tensor) and images.ndim == 4:
        items = list(images)  # a [B, C, H, W] / [B, H, W, C] batch
    flat = []
    for item in items:
        flat.extend(item if isinstance(item, list | tuple) else [item])
    if not flat:  # an empty list would otherwise fail later as an IndexError
        raise ValueError("`images` is empty: pass at least one image (there is no batch of zero images to process).")
    for index, image in enumerate(flat):
        if isinstance(image, str | os.PathLike) or (PIL is not None and isinstance(image, PIL.Image.Image)):
            continue
        if not isinstance(image, np.ndarray | torch.Tensor):
            raise TypeError(
                f"`images[{index}]` must be a PIL image, numpy array, torch tensor or path/URL, "
                f"got {type(image).__name__}."
            )
        has_channel_axis = image.ndim == 3 and (image.shape[0] in (1, 3, 4) or image.shape[-1] in (1, 3, 4))
        if image.ndim != 2 and not has_channel_axis:
            raise ValueError(
                f"`images[{index}]` has shape {tuple(image.shape)}; expected [H, W], [C, H, W] or [H, W, C] with C in "
                "(1, 3, 4), or a 4-D batch of those."
            )
    return flat


def label_map_to_tensor(label, index: int) -> torch.Tensor:
    """One label map (PIL, numpy [height, width] / [height, width, 1] / [1, height, width], torch alike) -> int64
    [height, width]."""
    if PIL is not None and isinstance(label, PIL.Image.Image):
        label = np.array(label)  # "P" (palette) images give their indices, "L" / "I" their values
    if isinstance(label, np.ndarray):
        if not (np.issubdtype(label.dtype, np.integer) or np.issubdtype(label.dtype, np.floating)):
            raise TypeError(f"`segmentation_maps[{index}]` has dtype {label.dtype}; expected integer class ids.")
        label = torch.from_numpy(label.astype(np.int64))
    if not isinstance(label, torch.Tensor):
        raise TypeError(
            f"`segmentation_maps[{index}]` must be a PIL image, numpy array or torch tensor, "
            f"got {type(label).__name__}."
        )
    if label.ndim == 3 and label.shape[0] == 1:
        label = label[0]
    elif label.ndim == 3 and label.shape[-1] == 1:
        label = label[..., 0]
    if label.ndim != 2:
        raise ValueError(
            f"`segmentation_maps[{index}]` must be a single-channel [H, W] map of class ids, got shape "
            f"{tuple(label.shape)} (colour-coded label images must be converted to class ids first)."
        )
    return label.to(torch.int64)


def as_label_list(segmentation_maps) -> list:
    """A single map, a [B, H, W] stack or a list/tuple of maps -> list of maps."""
    if isinstance(segmentation_maps, list | tuple):
        return list(segmentation_maps)
    if isinstance(segmentation_maps, np.ndarray | torch.Tensor) and segmentation_maps.ndim == 3:
        if segmentation_maps.shape[0] > 1 and segmentation_maps.shape[-1] > 1:
            return list(segmentation_maps)  # [B, H, W]; [1, H, W] and [H, W, 1] are single maps
    return [segmentation_maps]
