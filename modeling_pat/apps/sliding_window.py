"""Sliding-window inference for images much larger than the size SAN/PAT was trained at.

The image is resized as usual (`PATImageProcessor`, not padded), then covered by overlapping square windows of the
training size (`config.side_image_size`, 640 for the SAN presets) placed `stride` pixels apart, the last window of
each row / column flush with the image edge, so every pixel is seen. Windows run through the model in batches. Each
window's mask logits are turned into per-class scores (`semantic_map`, exactly as in post-processing) on its
footprint in the output image, and the scores of overlapping windows are averaged. The label map is the argmax.

An axis no longer than the window gets one window, padded at the bottom / right to a multiple of
`size_divisibility` as the normal path pads, so an image that fits in one window gives exactly the normal path's
scores.

    from modeling_pat import sliding_window_segmentation

    label_maps = sliding_window_segmentation(model, processor.image_processor, [image], class_names=["sky", "road"])

Shapes (symbols as in the table of `modeling_pat/modeling_pat.py`): N classes, Q queries, H_img x W_img the resized
image, H_out x W_out the output (default: the original image size).
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput

from ..image_processing_pat import semantic_map


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Offsets of windows of size `window` along an axis of `length`, `stride` apart, the last flush with the end."""
    if length <= window:
        return [0]
    return list(range(0, length - window, stride)) + [length - window]


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def _check_window(window_size, stride, size_divisibility: int) -> tuple[int, int]:
    """Validated (window_size, stride); errors name the argument."""
    if not isinstance(window_size, int) or window_size <= 0 or window_size % max(size_divisibility, 1):
        raise ValueError(
            f"`window_size` must be a positive multiple of size_divisibility={size_divisibility}, got {window_size!r}."
        )
    if stride is None:
        stride = max(1, window_size * 2 // 3)  # a third of each window overlaps its neighbour (mmseg's 640 / 426)
    if not isinstance(stride, int) or not 1 <= stride <= window_size:
        raise ValueError(f"`window_stride` must be an int in [1, window_size={window_size}], got {stride!r}.")
    return window_size, stride


@torch.no_grad()
def sliding_window_scores(
    model,
    pixel_values: torch.Tensor,
    class_embeddings: torch.Tensor,
    window_size: int | None = None,
    stride: int | None = None,
    output_size: Sequence[int] | None = None,
    batch_size: int = 4,
) -> torch.Tensor:
    """One resized, unpadded, normalised image -> (N, H_out, W_out) float32 semantic scores averaged over the windows.

    Args:
        model: a `PATForOpenVocabSegmentation` (eval mode).
        pixel_values: (3, H_img, W_img) or (1, 3, H_img, W_img), e.g. `PATImageProcessor(do_pad=False)` output.
        class_embeddings: (N, D) unit class embeddings (`model.get_class_embeddings`).
        window_size: window side in pixels; default `config.side_image_size`; a multiple of `size_divisibility`.
        stride: pixels between window starts, in [1, window_size]; default two thirds of the window.
        output_size: (H_out, W_out) of the returned scores, e.g. the original image size; default (H_img, W_img).
        batch_size: windows per forward pass.
    """
    config = model.config
    divisibility = config.size_divisibility
    window_size = config.side_image_size if window_size is None else window_size
    window_size, stride = _check_window(window_size, stride, divisibility)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    if pixel_values.ndim == 4 and pixel_values.shape[0] == 1:
        pixel_values = pixel_values[0]
    if pixel_values.ndim != 3 or pixel_values.shape[0] != 3:
        raise ValueError(f"`pixel_values` must be one (3, height, width) image, got {tuple(pixel_values.shape)}.")
    height, width = pixel_values.shape[-2:]
    out_height, out_width = (height, width) if output_size is None else (int(output_size[0]), int(output_size[1]))
    # An axis that fits in one window gets one window, padded as the normal path pads (to size_divisibility).
    win_h = window_size if height > window_size else math.ceil(height / divisibility) * divisibility
    win_w = window_size if width > window_size else math.ceil(width / divisibility) * divisibility
    image = F.pad(pixel_values, (0, max(win_w - width, 0), 0, max(win_h - height, 0)))  # zeros after normalisation
    image = image.to(device=model.device, dtype=model.dtype)
    class_embeddings = class_embeddings.to(model.device)

    windows = [(y, x) for y in window_starts(height, win_h, stride) for x in window_starts(width, win_w, stride)]
    scores = torch.zeros(class_embeddings.shape[0], out_height, out_width, device=model.device)
    counts = torch.zeros(out_height, out_width, device=model.device)
    scale_y, scale_x = out_height / height, out_width / width
    for first in range(0, len(windows), batch_size):
        batch = windows[first : first + batch_size]
        crops = torch.stack([image[:, y : y + win_h, x : x + win_w] for y, x in batch])  # (n, 3, win_h, win_w)
        outputs = model(pixel_values=crops, class_embeddings=class_embeddings)
        for i, (y, x) in enumerate(batch):
            valid = (min(win_h, height - y), min(win_w, width - x))  # the window's real (unpadded) pixels
            # The window's footprint in the output image (rounded): windows cover the image, so footprints do too.
            top, bottom = _round_half_up(y * scale_y), _round_half_up((y + valid[0]) * scale_y)
            left, right = _round_half_up(x * scale_x), _round_half_up((x + valid[1]) * scale_x)
            if bottom <= top or right <= left:
                continue
            window_scores = semantic_map(
                outputs.class_queries_logits[i], outputs.masks_queries_logits[i], padded_size=(win_h, win_w),
                image_size=valid, output_size=(bottom - top, right - left), return_scores=True,
            )["segmentation_scores"]  # (N, bottom - top, right - left), without a (Q, ...) full-size tensor
            scores[:, top:bottom, left:right] += window_scores
            counts[top:bottom, left:right] += 1
    return scores / counts.clamp_min(1)


def sliding_window_segmentation(
    model,
    image_processor,
    images,
    class_names: list[str] | None = None,
    class_embeddings: torch.Tensor | None = None,
    target_sizes: Sequence[Sequence[int]] | None = None,
    window_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
    return_segmentation_scores: bool = False,
):
    """Images -> label maps by sliding-window inference (see the module docstring).

    Args:
        model / image_processor: a `PATForOpenVocabSegmentation` and its `PATImageProcessor` (resize + normalise;
            padding is done per window).
        images: one image or a list (anything `PATImageProcessor` takes: PIL, file path, array, tensor).
        class_names / class_embeddings: the vocabulary (at most one); default `config.id2label`.
        target_sizes: (H_out, W_out) per image of the returned maps; default each image's original size.
        window_size, stride, batch_size: see `sliding_window_scores`.
        return_segmentation_scores: return `SemanticSegmentationPostProcessorOutput`s with `segmentation` and the
            (N, H_out, W_out) `segmentation_scores`, as `post_process_semantic_segmentation` does.

    Returns:
        A list of (H_out, W_out) int64 label maps (indices into the vocabulary), or of outputs with scores.
    """
    if class_names is not None and class_embeddings is not None:
        raise ValueError("Pass at most one of `class_names` and `class_embeddings`.")
    if class_embeddings is None:
        class_embeddings = model.get_class_embeddings(class_names=class_names)
    images = list(images) if isinstance(images, list | tuple) else [images]
    if target_sizes is not None and len(target_sizes) != len(images):
        raise ValueError(f"`target_sizes` has {len(target_sizes)} entries for {len(images)} images.")
    results = []
    for index, image in enumerate(images):
        inputs = image_processor(images=[image], do_pad=False, return_tensors="pt")
        size = inputs["original_sizes"][0].tolist() if target_sizes is None else target_sizes[index]
        scores = sliding_window_scores(
            model, inputs["pixel_values"][0], class_embeddings, window_size, stride, size, batch_size
        )
        segmentation = scores.argmax(dim=0)
        if return_segmentation_scores:
            data = {"segmentation": segmentation, "segmentation_scores": scores}
            results.append(SemanticSegmentationPostProcessorOutput(data=data))
        else:
            results.append(segmentation)
    return results


__all__ = ["sliding_window_scores", "sliding_window_segmentation", "window_starts"]
