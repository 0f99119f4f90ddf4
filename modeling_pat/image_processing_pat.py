"""PATImageProcessor: SAN/PAT test-time resize, CLIP normalisation, padding, label maps, semantic post-processing."""

import base64
import binascii
import functools
import io
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import group_images_by_shape, reorder_images
from transformers.image_utils import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ChannelDimension,
    ImageInput,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs, Unpack

from .mask_segments import instance_segments, panoptic_segments


try:
    import PIL.Image
    import PIL.ImageOps
except ImportError:  # PIL is optional for label maps given as arrays or tensors
    PIL = None


class PATImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    size_divisibility (`int`, *optional*, defaults to 32):
        The padded height and width are rounded up to a multiple of this (SAN's `SIZE_DIVISIBILITY`); 0 or 1 = none.
    ignore_index (`int`, *optional*, defaults to 255):
        Label value that is never a class: used to pad label maps and as the target of `do_reduce_labels`' 0.
    do_reduce_labels (`bool`, *optional*, defaults to `False`):
        ADE20K convention: label 0 ("other") becomes `ignore_index` and every other value v becomes v - 1.
    """

    size_divisibility: int
    ignore_index: int
    do_reduce_labels: bool


def get_resize_output_size(
    height: int, width: int, shortest_edge: int, longest_edge: int | None = None
) -> tuple[int, int]:
    """(H, W) after SAN's test resize (detectron2 ResizeShortestEdge): short side = shortest_edge, long side capped."""
    scale = shortest_edge / min(height, width)
    if height < width:
        new_height, new_width = float(shortest_edge), scale * width
    else:
        new_height, new_width = scale * height, float(shortest_edge)
    if longest_edge is not None and max(new_height, new_width) > longest_edge:
        cap = longest_edge / max(new_height, new_width)
        new_height, new_width = new_height * cap, new_width * cap
    # Round half up, as detectron2 does; transformers' get_size_with_aspect_ratio truncates (683x512 -> 853 vs 854).
    # At least 1 pixel: a very thin image (e.g. 1 x 10000) would otherwise round its short side to 0.
    return max(1, int(new_height + 0.5)), max(1, int(new_width + 0.5))


def get_padded_size(sizes: Sequence[Sequence[int]], size_divisibility: int = 32) -> tuple[int, int]:
    """Padded (Hp, Wp) of a batch: the largest H and W, each rounded up to a multiple of `size_divisibility`."""
    height = max(int(s[0]) for s in sizes)
    width = max(int(s[1]) for s in sizes)
    if size_divisibility and size_divisibility > 1:
        height = math.ceil(height / size_divisibility) * size_divisibility
        width = math.ceil(width / size_divisibility) * size_divisibility
    return height, width


# `padding_groups` splits a batch when one padded batch costs more than this many times its images padded alone.
MAX_PADDING_OVERHEAD = 1.5


def padding_groups(
    image_sizes: Sequence[Sequence[int]], size_divisibility: int = 32, max_overhead: float = MAX_PADDING_OVERHEAD
) -> list[list[int]]:
    """Indices of a batch's images, in groups that are padded and run together.

    A batch padded to its largest height and width costs `batch x Hp x Wp` pixels of model input: one very wide image
    among small ones makes every other image as wide. Images are taken in order of their padded (H, W) and join the
    current group while its padded cost stays within `max_overhead` times the sum of its images' own padded sizes
    (at most a third of its pixels padding with the default 1.5); otherwise they start a new group. A batch of
    similar sizes stays one group (in its order), so the common case runs exactly as before."""
    padded = [get_padded_size([size], size_divisibility) for size in image_sizes]
    order = sorted(range(len(padded)), key=lambda i: (padded[i], i))
    groups, current, own_pixels = [], [], 0
    for index in order:
        height, width = get_padded_size([padded[i] for i in current + [index]], 1)
        pixels = own_pixels + padded[index][0] * padded[index][1]
        if current and (len(current) + 1) * height * width > max_overhead * pixels:
            groups.append(current)
            current, pixels = [], padded[index][0] * padded[index][1]
        current.append(index)
        own_pixels = pixels
    if current:
        groups.append(current)
    if len(groups) == 1:
        return [list(range(len(padded)))]
    return [sorted(group) for group in groups]


def reduce_labels(label: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """[H, W] int -> [H, W]: 0 -> ignore_index, v -> v - 1, ignore_index kept (ADE20K's reduce_zero_label)."""
    reduced = torch.where(label == 0, torch.full_like(label, ignore_index), label - 1)
    return torch.where(label == ignore_index, label, reduced)


def convert_segmentation_map_to_binary_masks(
    segmentation_map: "torch.Tensor | np.ndarray", ignore_index: int | None = 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """[H, W] label map -> (class_ids int64 [K] sorted, masks bool [K, H, W]): a mask per present non-ignored class."""
    if isinstance(segmentation_map, np.ndarray):
        segmentation_map = torch.from_numpy(segmentation_map.astype(np.int64))
    if not isinstance(segmentation_map, torch.Tensor) or segmentation_map.ndim != 2:
        raise ValueError(
            "`segmentation_map` must be a 2-D [H, W] tensor or array of class ids, got "
            f"{type(segmentation_map).__name__} with shape {tuple(getattr(segmentation_map, 'shape', ()))}."
        )
    segmentation_map = segmentation_map.to(torch.int64)
    class_ids = torch.unique(segmentation_map)  # sorted
    if ignore_index is not None:
        class_ids = class_ids[class_ids != ignore_index]
    masks = segmentation_map.unsqueeze(0) == class_ids.view(-1, 1, 1)
    return class_ids, masks


def resize_mask_logits(
    mask_logits: torch.Tensor,
    padded_size: Sequence[int] | None = None,
    image_size: Sequence[int] | None = None,
    output_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """[Q, h, w] -> [Q, H, W] float32: bilinear to the padded input, crop to the image, bilinear to `output_size`."""
    masks = mask_logits.unsqueeze(0).float()  # half-precision bilinear is not available everywhere and loses digits
    if padded_size is not None and tuple(masks.shape[-2:]) != tuple(padded_size):
        masks = F.interpolate(masks, size=tuple(padded_size), mode="bilinear", align_corners=False)
    if image_size is not None:
        masks = masks[..., : int(image_size[0]), : int(image_size[1])]
    if output_size is not None and tuple(masks.shape[-2:]) != tuple(output_size):
        masks = F.interpolate(masks, size=tuple(output_size), mode="bilinear", align_corners=False)
    return masks[0]


def semantic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """class_logits [Q, C+1], mask_logits [Q, H, W] -> [C, H, W] = sum_q softmax(class)[q, c] * sigmoid(mask)[q]."""
    # The void column is dropped after the softmax and the rest is not renormalised (SAN / Mask2Former).
    class_probs = class_logits.float().softmax(dim=-1)[..., :-1]
    mask_probs = mask_logits.float().sigmoid()
    return torch.einsum("qc,qhw->chw", class_probs, mask_probs)


# `semantic_map` prunes classes by tile bounds from this many classes on (below it the dense product is cheaper).
PRUNE_MIN_CLASSES = 32
# Off the CPU pruning reads the candidate count back to the host (one synchronisation per band), so it is on by default
# only from this many classes on, where the [C, Q] x [Q, pixels] product dominates (ADE-847, Pascal Context 459);
# fewer classes keep a synchronisation-free path that CUDA graphs can capture.
DEVICE_PRUNE_MIN_CLASSES = 256
# Off the CPU, `semantic_map`'s bands hold at most this many elements per block (64 MB of fp32; see `_band_plan`):
# a 640 x 640 image at 150 classes is four bands. Larger bands cost more than they save: the height resize of a band
# is a dense (rows x source rows) GEMM, whose zeros grow with the band.
DEVICE_BAND_ELEMENTS = 1 << 24


# On the CPU, `semantic_map`'s bands hold at least this many output pixels: a thin image (65535 x 1) in bands of
# `tile` rows would spend its time in the per-band overhead of thousands of tiny bands.
CPU_BAND_PIXELS = 8192


@dataclass(frozen=True)
class ResizeRows:
    """A 1-D resize chain (out, in) kept as what it is, a few source rows per output row: output row o reads source
    rows `first[o]` .. `first[o] + S - 1` with the float64 weights `weights[o]` (zeros past its last source row) and
    `last[o]` is one past its last row with a non-zero weight. Its dense (out, in) matrix would be 335 MB for a
    65535-pixel side; this form is out x S (S <= 4 for the bilinear chains used here)."""

    first: torch.Tensor  # (out,) int64
    last: torch.Tensor  # (out,) int64
    weights: torch.Tensor  # (out, S) float64
    in_size: int

    @property
    def out_size(self) -> int:
        return len(self.first)

    def is_identity(self) -> bool:
        rows = torch.arange(self.out_size)
        return (self.out_size == self.in_size and bool((self.first == rows).all())
                and bool((self.weights[:, 0] == 1).all()) and bool((self.weights[:, 1:] == 0).all()))

    def block(self, top: int, bottom: int, first: int, last: int) -> torch.Tensor:
        """The dense (bottom - top, last - first) block of output rows top..bottom-1 over source rows first..last-1
        (which must cover their non-zero weights), in the weights' dtype and device."""
        weights = self.weights[top:bottom]
        columns = (self.first[top:bottom] - first)[:, None] + torch.arange(weights.shape[1], device=weights.device)
        inside = columns < last - first  # the zero weights past a row's support may point past the block
        block = weights.new_zeros(bottom - top, last - first)
        block.scatter_add_(1, columns.clamp(max=last - first - 1), torch.where(inside, weights, 0))
        return block

    def dense(self) -> torch.Tensor:
        return self.block(0, self.out_size, 0, self.in_size)


def _bilinear_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """((out, 2) source rows, (out, 2) float64 weights) of a 1-D bilinear resize (align_corners=False, no
    antialias), as `F.interpolate` computes them."""
    if in_size == out_size:
        rows = torch.arange(out_size)
        weights = torch.zeros(out_size, 2, dtype=torch.float64)
        weights[:, 0] = 1.0
        return torch.stack([rows, rows], dim=1), weights
    source = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    first = source.floor().long().clamp(max=in_size - 1)
    second = (first + 1).clamp(max=in_size - 1)
    weight = (source - first).clamp(0, 1)
    return torch.stack([first, second], dim=1), torch.stack([1 - weight, weight], dim=1)


def _rows_from_taps(index: torch.Tensor, weights: torch.Tensor, in_size: int) -> ResizeRows:
    """(out, K) source rows and weights (repeats allowed, summed in float64) -> `ResizeRows`."""
    nonzero = weights != 0
    big = torch.iinfo(torch.int64).max
    first = torch.where(nonzero, index, big).amin(dim=1)
    last = torch.where(nonzero, index, -1).amax(dim=1) + 1
    first = torch.where(last > 0, first, 0)  # a row without weight (cannot happen for these resizes) reads row 0
    last = torch.maximum(last, first + 1)
    span = int((last - first).max()) if len(first) else 1
    window = torch.zeros(len(first), span, dtype=torch.float64)
    offsets = (index - first[:, None]).clamp(0, span - 1)
    window.scatter_add_(1, offsets, torch.where(nonzero, weights, 0.0))
    return ResizeRows(first=first, last=last, weights=window, in_size=in_size)


def mask_resize_rows(in_size: int, padded: int | None, image: int | None, output: int | None) -> ResizeRows:
    """`resize_mask_logits`' chain along one axis as `ResizeRows`: resize to `padded`, crop to `image`, resize to
    `output` (each step skipped when None or already that size). Bilinear resizes act on each axis separately, so
    the 2-D resize chain is `R_y @ logits @ R_x.T`."""
    index, weights = _bilinear_taps(in_size, in_size)
    if padded is not None and padded != in_size:
        index, weights = _bilinear_taps(in_size, padded)
    if image is not None:
        index, weights = index[: int(image)], weights[: int(image)]
    if output is not None and output != index.shape[0]:
        outer_index, outer_weights = _bilinear_taps(index.shape[0], output)
        # each output row reads two rows of the chain so far, each of which reads a few source rows
        index = index[outer_index].flatten(1)
        weights = (outer_weights[:, :, None] * weights[outer_index]).flatten(1)
    return _rows_from_taps(index, weights, in_size)


def mask_resize_matrix(in_size: int, padded: int | None, image: int | None, output: int | None) -> torch.Tensor:
    """The dense (output, in) float64 matrix of `mask_resize_rows` (for small sizes and tests)."""
    return mask_resize_rows(in_size, padded, image, output).dense()


def semantic_map(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    padded_size: Sequence[int] | None = None,
    image_size: Sequence[int] | None = None,
    output_size: Sequence[int] | None = None,
    return_scores: bool = False,
    return_score_summary: bool = False,
    prune: bool | None = None,
    tile: int = 16,
) -> dict[str, torch.Tensor]:
    """`resize_mask_logits` + `semantic_inference` + argmax, by bands of rows, materialising only what is asked for.

    class_logits [Q, C+1], mask_logits [Q, h, w] (the model's resolution; the sizes as in `resize_mask_logits`) ->
    dict with `segmentation` [H, W] int64, the argmax over classes of the scores (first maximum on ties); with
    `return_scores` also `segmentation_scores` [C, H, W]; with `return_score_summary` also `best_scores` [H, W] (the
    winning class's score) and `score_sums` [H, W] (the sum over classes, a [Q] x [Q, pixels] product).

    Same maths as the plain path, in the exact order (the sigmoid comes after the resize: the scores are products of
    the [C, Q] class probabilities with the full-resolution [Q, pixels] mask probabilities), arranged to stay small:
    * the resize chain is separable: its width part runs once at low resolution ([Q, h, W], the same
      `F.interpolate` calls), its height part (`mask_resize_rows`, a few low-resolution rows per output row, never
      a dense [H, h] matrix) per band of output rows (`_band_plan`), so no [Q, H, W] tensor is ever allocated
      (fresh GB-sized buffers cost about as much in page faults as the arithmetic);
    * per band: sigmoid, [C, Q] @ [Q, band pixels] and its argmax while the band is in cache (on a GPU: a few
      large bands, each a handful of large kernels; the band's row range and resize block are cached per size and
      device, so nothing waits for the device);
    * pruning (default on the CPU from `PRUNE_MIN_CLASSES` classes on, elsewhere from `DEVICE_PRUNE_MIN_CLASSES`;
      label map only): on each `tile` x `tile` tile the mask probabilities' per-query max and min (bounded by the
      low-resolution rows each group of `tile` output rows interpolates: bilinear weights are >= 0 and sum to 1)
      give each class an upper bound U_c = P_c . max and a lower bound L_c = P_c . min of its score on the whole
      tile (probabilities are >= 0); a class whose U_c is below the best L_c, by more than a margin covering float
      rounding, loses on every pixel of the tile, so only the band's other classes are scored.
    Results equal the plain path's up to float rounding (label maps: except exact ties within rounding).
    """
    probs = _flush_subnormal(class_logits.float().softmax(dim=-1)[..., :-1].T.contiguous())  # (C, Q)
    logits = mask_logits.float()
    num_classes, num_queries = probs.shape
    in_height, in_width = logits.shape[-2:]
    pad = (None, None) if padded_size is None else padded_size
    img = (None, None) if image_size is None else image_size
    out = (None, None) if output_size is None else output_size
    height_chain = (in_height, *(None if size is None else int(size) for size in (pad[0], img[0], out[0])))
    row_map, identity_rows = _height_rows(*height_chain)
    logits = _resize_columns(logits, pad[1], img[1], out[1])  # (Q, h, W): the width chain, at low resolution
    height, width = row_map.out_size, logits.shape[-1]
    logits = logits.transpose(0, 1).contiguous()  # (h, Q, W): a band of rows is then one small GEMM
    rows, prune = _band_plan(logits.device.type, num_queries, num_classes, width, tile, prune, return_scores)
    segmentation = torch.empty(height, width, dtype=torch.int64, device=logits.device)
    result = {"segmentation": segmentation}
    if return_scores:
        result["segmentation_scores"] = logits.new_empty(num_classes, height, width)
    if return_score_summary:
        result["best_scores"] = logits.new_empty(height, width)
        result["score_sums"] = logits.new_empty(height, width)
        total_probs = probs.sum(dim=0, keepdim=True)  # (1, Q)
    eps = torch.finfo(torch.float32).eps
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        if identity_rows:
            first, last = top, bottom
            mask_probs = logits[top:bottom].sigmoid()  # (r, Q, W)
        else:  # the band's rows of the resize read only a few low-resolution rows
            first, last, block = _band_block(height_chain, top, bottom, logits.device)
            source = logits[first:last]
            mask_probs = (block @ source.view(last - first, -1)).view(-1, *source.shape[1:])
            mask_probs.sigmoid_()
        classes, weights = None, probs
        if prune:
            # every row of a group of `tile` output rows is a convex combination of its low-res source rows
            # (bilinear weights >= 0, sum 1): their min / max bound its logits
            sources = _tile_row_sources(height_chain, top, bottom, tile, logits.device)  # (groups, S)
            low, high = torch.aminmax(logits[sources], dim=1)  # (groups, Q, W)
            # relative margin: 4x the rounding of a length-Q sum of products plus that of sigmoid(x) for x this
            # large (a device number: nothing waits for it)
            margin = 4 * eps * (num_queries + torch.maximum(high.abs(), low.abs()).amax())
            classes = _candidate_classes(probs, low.sigmoid(), high.sigmoid(), tile, margin)
            if len(classes) < num_classes:
                weights = probs[classes]
            else:
                classes = None
        scores = torch.matmul(weights, mask_probs)  # (r, C or K, W)
        best, index = scores.max(dim=1)  # (r, W)
        if return_scores:
            result["segmentation_scores"][:, top:bottom] = scores.transpose(0, 1)
        if classes is not None:
            index = classes[index]
        segmentation[top:bottom] = index
        if return_score_summary:
            result["best_scores"][top:bottom] = best
            result["score_sums"][top:bottom] = torch.matmul(total_probs, mask_probs)[:, 0]
    return result


@functools.lru_cache(maxsize=64)
def _height_rows(in_size: int, padded: int | None, image: int | None, output: int | None):
    """(`mask_resize_rows` of the height chain, whether it is the identity), on the host, cached per sizes."""
    with torch.inference_mode(False):  # cached tensors must serve later calls in any grad mode
        rows = mask_resize_rows(in_size, padded, image, output)
        return rows, rows.is_identity()


@functools.lru_cache(maxsize=128)  # a GPU image is a few bands of at most (rows x source rows) floats each
def _band_block(height_chain: tuple, top: int, bottom: int, device: torch.device):
    """(first, last, the float32 (bottom - top, last - first) block on `device`) of output rows top..bottom-1 of the
    height chain, which read source rows first..last-1. Cached per band and device: at a repeated size nothing is
    built or copied (a blocking host-to-device copy waits for the device and cannot be captured in a CUDA graph)."""
    rows, _ = _height_rows(*height_chain)
    first, last = int(rows.first[top:bottom].min()), int(rows.last[top:bottom].max())
    with torch.inference_mode(False):
        return first, last, rows.block(top, bottom, first, last).to(device, torch.float32)


@functools.lru_cache(maxsize=128)
def _tile_row_sources(height_chain: tuple, top: int, bottom: int, tile: int, device: torch.device) -> torch.Tensor:
    """(groups, S) int64 on `device`: for each group of `tile` output rows top..bottom-1 of the height chain (the
    last group may be shorter), the low-resolution rows its resize reads (the last one repeated to fill S)."""
    rows, _ = _height_rows(*height_chain)
    groups = [slice(start, min(start + tile, bottom)) for start in range(top, bottom, tile)]
    ranges = [(int(rows.first[group].min()), int(rows.last[group].max())) for group in groups]
    span = max(last - first for first, last in ranges)
    with torch.inference_mode(False):
        return torch.tensor([[min(first + k, last - 1) for k in range(span)] for first, last in ranges]).to(device)


def _flush_subnormal(probs: torch.Tensor) -> torch.Tensor:
    """Probabilities below float32's smallest normal number (1.2e-38) -> 0.

    A peaked softmax over hundreds of classes (a calibrated model: CLIP's logit scale 100) leaves many class
    probabilities subnormal, and x86 CPUs multiply subnormals tens of times slower: measured 17x on the score
    product at 847 classes. Flushing them changes each score by less than Q * 1.2e-38, far below float rounding."""
    return probs.masked_fill(probs < torch.finfo(torch.float32).tiny, 0.0)


def _resize_columns(logits: torch.Tensor, padded: int | None, image: int | None, output: int | None):
    """(Q, h, w) -> (Q, h, W): `resize_mask_logits`' chain along the width only (the height is kept), with the same
    `F.interpolate` calls (a bilinear resize that keeps one axis is exactly the 1-D resize of the other)."""
    x = logits[None]
    if padded is not None and padded != x.shape[-1]:
        x = F.interpolate(x, size=(x.shape[-2], int(padded)), mode="bilinear", align_corners=False)
    if image is not None:
        x = x[..., : int(image)]
    if output is not None and output != x.shape[-1]:
        x = F.interpolate(x, size=(x.shape[-2], int(output)), mode="bilinear", align_corners=False)
    return x[0]


def _band_plan(device_type: str, num_queries: int, num_classes: int, width: int, tile: int, prune: bool | None,
               return_scores: bool) -> tuple[int, bool]:
    """(rows per band, prune) for `semantic_map`.

    CPU: bands of `tile` rows (the pruning tiles), whose blocks stay in cache, or more rows for images narrower than
    CPU_BAND_PIXELS / tile (at least that many pixels per band); with all the scores, few enough rows for an 8 MB
    score block. Pruning is on by default from PRUNE_MIN_CLASSES classes (label map only).
    Other devices: every band costs about five kernel launches (its resize block is cached), so the bands are as
    large as a block of DEVICE_BAND_ELEMENTS allows (the larger of the band's [Q, rows, W] mask probabilities and
    [rows, C, W] scores: four bands for a 640 x 640 image at 150 classes). Pruning reads each band's candidate
    count back to the host, so it is on by default only from DEVICE_PRUNE_MIN_CLASSES classes, and its bands are
    sized by the mask probabilities alone (whole tiles), since only the candidates are scored: three bands at
    640 x 640 (without structure in the masks, all C classes survive and a band's scores take up to C / Q times
    the block).
    """
    on_host = device_type == "cpu"
    if prune is None or return_scores:  # every class is scored when the scores are returned
        least = PRUNE_MIN_CLASSES if on_host else DEVICE_PRUNE_MIN_CLASSES
        prune = num_classes >= least and not return_scores
    if on_host:
        rows = max(tile, CPU_BAND_PIXELS // max(1, width))
        if return_scores:  # all the scores: few enough rows for an 8 MB score block
            rows = min(rows, (1 << 21) // max(1, num_classes * width))
        return max(1, rows), prune
    if prune:  # the band's mask probabilities set the size, in whole pruning tiles
        rows = DEVICE_BAND_ELEMENTS // max(1, num_queries * width)
        return max(tile, rows - rows % tile), True
    row_elements = max(num_queries, num_classes) * width  # per band row: mask probabilities or scores, the larger
    return max(1, DEVICE_BAND_ELEMENTS // max(1, row_elements)), False


def _candidate_classes(probs: torch.Tensor, low: torch.Tensor, high: torch.Tensor, tile: int, margin: float):
    """(C, Q) class probabilities, ([G,] Q, W) lower / upper bounds of a band's mask probabilities (G groups of
    rows) -> sorted ids of the classes that can win on some `tile`-wide tile of the band (see `semantic_map`).

    `margin` (a number or a 0-d tensor) is relative to the tile's largest upper bound."""
    if low.shape[-1] > tile:  # the bounds over `tile` columns (the last tile may be narrower)
        high = F.max_pool1d(high, tile, ceil_mode=True)
        low = -F.max_pool1d(-low, tile, ceil_mode=True)
    upper = probs @ high  # ([G,] C, tiles): no pixel of the tile scores higher
    lower = probs @ low  # ([G,] C, tiles): no pixel of the tile scores lower
    threshold = lower.amax(dim=-2, keepdim=True) - margin * upper.amax(dim=-2, keepdim=True)
    wins_somewhere = (upper >= threshold).movedim(-2, 0).flatten(1).any(dim=1)  # (C,)
    return wins_somewhere.nonzero().squeeze(1)


def _mask_outputs(outputs, target_sizes) -> tuple[torch.Tensor, torch.Tensor]:
    """The model outputs' (B, Q, C+1) class logits and (B, Q, h, w) mask logits, checked against each other and
    against `target_sizes` (one entry per image) before any post-processing reads them."""
    class_logits = _field(outputs, "class_queries_logits")
    mask_logits = _field(outputs, "masks_queries_logits")
    if not isinstance(class_logits, torch.Tensor) or class_logits.ndim != 3:
        raise ValueError("`outputs.class_queries_logits` must be a [batch, queries, classes + 1] tensor.")
    if not isinstance(mask_logits, torch.Tensor) or mask_logits.ndim != 4:
        raise ValueError("`outputs.masks_queries_logits` must be a [batch, queries, height, width] tensor.")
    if mask_logits.shape[:2] != class_logits.shape[:2]:
        raise ValueError(
            f"`outputs.class_queries_logits` {tuple(class_logits.shape)} and `outputs.masks_queries_logits` "
            f"{tuple(mask_logits.shape)} disagree on batch size or number of queries."
        )
    batch_size = class_logits.shape[0]
    if target_sizes is not None and len(target_sizes) != batch_size:
        raise ValueError(f"`target_sizes` has {len(target_sizes)} entries for a batch of {batch_size}.")
    return class_logits, mask_logits


def _field(outputs, name: str):
    """outputs.name for ModelOutputs / namespaces, outputs[name] for plain dicts; None when absent."""
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


def _size_rows(sizes, batch_size: int) -> list[tuple[int, int] | None]:
    """Every row of a size table (see `_size_at`) as host ints, read at once: a table on an accelerator costs one
    transfer (one wait for the device), not one per number; None gives None per image."""
    if sizes is None:
        return [None] * batch_size
    if isinstance(sizes, torch.Tensor):
        sizes = sizes.tolist()
    return [_size_at(sizes, i) for i in range(batch_size)]


def _size_at(sizes, index: int) -> tuple[int, int] | None:
    """Row `index` of a [B, 2] size table (tensor or list); a single [2] size applies to every image."""
    if sizes is None:
        return None
    if isinstance(sizes, torch.Tensor):
        row = sizes if sizes.ndim == 1 else sizes[index]
        return int(row[0]), int(row[1])
    first = sizes[0]
    row = sizes if isinstance(first, int | np.integer) else sizes[index]
    return int(row[0]), int(row[1])


# -- loading and converting images ------------------------------------------------------------------------------------
# PIL modes holding 16-bit samples (PNG / TIFF); "I" is 32-bit in PIL but is how 16-bit files come back in some
# versions, so it is read as 0..65535 too.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
EXIF_ORIENTATION = 0x0112  # the EXIF tag of the image orientation (1 = upright)


def convert_image_to_rgb(image: "PIL.Image.Image") -> "PIL.Image.Image":
    """Any PIL image -> 8-bit RGB, the way the model expects it.

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


def upright(image: "PIL.Image.Image") -> "PIL.Image.Image":
    """The image with its EXIF orientation applied; the image itself when there is none to apply.

    `PIL.ImageOps.exif_transpose` copies even an upright image; images that went through `load_image` already
    had their orientation applied (and the tag removed), so the processor would copy them again for nothing.
    """
    if image.getexif().get(EXIF_ORIENTATION, 1) == 1:
        return image
    return PIL.ImageOps.exif_transpose(image)


def load_image(image, timeout: float | None = None) -> "PIL.Image.Image":
    """Open an image for the model: upright (EXIF orientation applied) 8-bit RGB (see `convert_image_to_rgb`).

    A PIL image that is already upright RGB is returned as it is, not copied.

    Args:
        image: a file path (`str` or `os.PathLike`), an http(s) URL, a base64 string / `data:image/...` URI (as
            transformers' `load_image` accepts), or a PIL image.
        timeout: seconds to wait for a URL.

    Raises:
        ValueError naming the file when it does not exist, is empty (0 bytes), is not an image, is truncated or
        corrupt, or has more pixels than PIL's decompression-bomb limit `PIL.Image.MAX_IMAGE_PIXELS` (raise that
        limit, or set it to None, to open a large image you trust). TypeError for anything else than the above.
    """
    if PIL is None:
        raise ImportError("Loading images needs Pillow (pip install pillow).")
    if isinstance(image, PIL.Image.Image):
        return convert_image_to_rgb(upright(image))
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if not isinstance(image, str):
        raise TypeError(f"`image` must be a file path, URL or PIL image, got {type(image).__name__}.")
    if image.startswith(("http://", "https://")):
        return _decode_image(_download(image, timeout), image)
    if os.path.isfile(image):
        if os.path.getsize(image) == 0:
            raise ValueError(f"Image file {image!r} is empty (0 bytes).")
        return _decode_image(image, image)
    if os.path.exists(image):
        raise ValueError(f"{image!r} is not an image file (it is a folder or another kind of path).")
    data = _base64_image_bytes(image)
    if data is None:
        raise ValueError(f"Image file {image!r} does not exist.")
    try:
        return _decode_image(io.BytesIO(data), "<base64 image string>")
    except ValueError as error:  # a long string that merely looks like base64: most likely a mistyped path
        shown = image if len(image) <= 80 else image[:77] + "..."
        raise ValueError(f"Image file {shown!r} does not exist (nor is it a base64-encoded image: {error})") from error


def _decode_image(source, name: str) -> "PIL.Image.Image":
    """Open and fully decode `source` (a path or file object) -> upright RGB; clear ValueErrors naming `name`."""
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
    return convert_image_to_rgb(image)


def _download(url: str, timeout: float | None):
    """The bytes of an http(s) URL as a file object (the standard library only: this module is also remote code)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # follows redirects
            content = response.read()
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise ValueError(f"Could not download the image {url!r}: {error}") from error
    if not content:
        raise ValueError(f"Image {url!r} is empty (0 bytes).")
    return io.BytesIO(content)


def _base64_image_bytes(text: str) -> bytes | None:
    """The bytes of a `data:image/...;base64,` URI or of a long base64 string; None for anything else (a path)."""
    if text.startswith("data:image/"):
        text = text.partition(",")[2]
    elif len(text) < 64:  # short strings are mistyped paths, not images
        return None
    try:
        return base64.b64decode(text, validate=True) or None
    except (binascii.Error, ValueError):
        return None


def _check_image_array(image, index: int, do_rescale: bool = True):
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


def _prepare_image(image, index: int, do_convert_rgb: bool, do_rescale: bool, input_data_format=None):
    """One flattened input -> what the torchvision backend takes: files loaded (`load_image`), PIL images upright
    (EXIF) and RGB, array / tensor values checked (`_check_image_array`) and laid out channels first
    (`_channels_first`)."""
    if isinstance(image, str | os.PathLike):
        return load_image(image)
    if PIL is not None and isinstance(image, PIL.Image.Image):
        image = upright(image)
        return convert_image_to_rgb(image) if do_convert_rgb else image
    return _channels_first(_check_image_array(image, index, do_rescale), index, input_data_format)


def _channels_first(image, index: int, input_data_format=None):
    """A [H, W], [C, H, W] or [H, W, C] array / tensor -> [C, H, W] (a view where possible).

    `input_data_format` decides when given. Otherwise the channel axis is the last one when it holds 3 or 4 values
    (numpy's and PIL's layout: a (1, 65535, 3) array is a 1x65535 RGB strip, not a 65535x3 grey image, which is how
    transformers' own inference reads it), else the first one when it holds 1, 3 or 4, else a last axis of 1. A
    shape that both readings fit gets a warning saying which one was used and how to choose the other.
    """
    if image.ndim == 2:  # grayscale [H, W]: a channel axis of one, which RGB conversion expands
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


def _flatten_images(images) -> list:
    """Check `images` and return a flat list of single images (PIL, path/URL string, [C, H, W] or [H, W, C] array)."""
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


def _label_map_to_tensor(label, index: int) -> torch.Tensor:
    """One label map (PIL, numpy [H, W] / [H, W, 1] / [1, H, W], torch alike) -> int64 [H, W]."""
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


def _as_label_list(segmentation_maps) -> list:
    """A single map, a [B, H, W] stack or a list/tuple of maps -> list of maps."""
    if isinstance(segmentation_maps, list | tuple):
        return list(segmentation_maps)
    if isinstance(segmentation_maps, np.ndarray | torch.Tensor) and segmentation_maps.ndim == 3:
        if segmentation_maps.shape[0] > 1 and segmentation_maps.shape[-1] > 1:
            return list(segmentation_maps)  # [B, H, W]; [1, H, W] and [H, W, 1] are single maps
    return [segmentation_maps]


def _resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[H, W] int64 -> [h, w] int64 by nearest-exact sampling: input pixel floor((y + 0.5) * H / h) (pixel centres)."""
    if tuple(label.shape) == tuple(size):
        return label
    # float32 holds every integer up to 2**24 exactly, far beyond any class id.
    resized = F.interpolate(label[None, None].float(), size=size, mode="nearest-exact")
    return resized[0, 0].round().to(torch.int64)


# Subclasses the 5.x torchvision backend: it supplies input conversion (PIL / numpy / torch, RGB conversion,
# channels-first, device placement), saving and kwargs handling; SAN's rounding, arithmetic order and padding need
# only `resize`, `rescale_and_normalize` and `_preprocess` to be overridden.
class PATImageProcessor(TorchvisionBackend):
    r"""
    Image processor for SAN / PAT: detectron2-style shortest-edge resize (640, long edge <= 2560, bilinear), CLIP
    normalisation, zero padding at the bottom/right (after normalisation) to a multiple of `size_divisibility`, and
    label maps resized with nearest-exact and padded with `ignore_index`.

    Returns `pixel_values` float32 [B, 3, Hp, Wp], `image_sizes` int64 [B, 2] (resized, unpadded H, W),
    `original_sizes` int64 [B, 2] (input H, W) and, with `segmentation_maps`, `labels` int64 [B, Hp, Wp].
    A batch is padded to its largest image; callers that batch images of any size split them first with
    `padding_groups` (planned from `resized_size`), as the pipeline and `pat-segment` do.
    """

    valid_kwargs = PATImageProcessorKwargs
    model_input_names = ["pixel_values"]

    resample = PILImageResampling.BILINEAR
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = {"shortest_edge": 640, "longest_edge": 2560}
    default_to_square = False
    do_resize = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_pad = True
    do_convert_rgb = True
    size_divisibility = 32
    ignore_index = 255
    do_reduce_labels = False

    def __init__(self, **kwargs: Unpack[PATImageProcessorKwargs]):
        super().__init__(**kwargs)

    def preprocess(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        **kwargs: Unpack[PATImageProcessorKwargs],
    ) -> BatchFeature:
        r"""
        images (`ImageInput`):
            One image or a list (PIL, file path / URL, numpy HWC/CHW, torch CHW; uint8 0..255, uint16 0..65535 or
            float on the 0..255 scale); sizes may differ. Files and PIL images are made upright (EXIF orientation) and
            RGB (`load_image` / `convert_image_to_rgb`: 16-bit scaled, transparency over white). NaN / inf values,
            integers outside 0..255 and channel counts other than 1, 3 or 4 are errors. Without `input_data_format`,
            a last axis of 3 or 4 is the channel axis (numpy's HWC: (1, 65535, 3) is a one-pixel-high RGB strip),
            else a first axis of 1, 3 or 4 (`infer_channel_layout`); shapes both readings fit give a warning.
        segmentation_maps (`ImageInput`, *optional*):
            One label map per image (PIL, numpy or torch [H, W]), same size as its image.
        """
        do_convert_rgb = kwargs.get("do_convert_rgb")
        do_convert_rgb = self.do_convert_rgb if do_convert_rgb is None else do_convert_rgb
        do_rescale = self.do_rescale if kwargs.get("do_rescale") is None else kwargs["do_rescale"]
        input_data_format = kwargs.get("input_data_format")
        images = [
            _prepare_image(image, index, do_convert_rgb, do_rescale, input_data_format)
            for index, image in enumerate(_flatten_images(images))
        ]
        # Arrays and tensors are channels first now (`_channels_first`); PIL images are read channels last anyway.
        kwargs["input_data_format"] = ChannelDimension.FIRST
        kwargs.setdefault("return_tensors", "pt")
        return super().preprocess(images, segmentation_maps, **kwargs)

    def _preprocess_image_like_inputs(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None,
        do_convert_rgb: bool,
        input_data_format,
        device=None,
        **kwargs,
    ) -> BatchFeature:
        """Convert raw inputs to channels-first tensors, check them, then run `_preprocess`."""
        images = self._prepare_image_like_inputs(
            images, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, device=device
        )
        for index, image in enumerate(images):
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(
                    f"`images[{index}]` must have 3 (RGB) channels after conversion, got shape {tuple(image.shape)}; "
                    "pass do_convert_rgb=True for grayscale or RGBA inputs."
                )
        labels = None
        if segmentation_maps is not None:
            labels = [_label_map_to_tensor(m, i) for i, m in enumerate(_as_label_list(segmentation_maps))]
            if len(labels) != len(images):
                raise ValueError(
                    f"Got {len(images)} images but {len(labels)} `segmentation_maps`; pass one per image."
                )
            for index, (image, label) in enumerate(zip(images, labels, strict=True)):
                if tuple(label.shape) != tuple(image.shape[-2:]):
                    raise ValueError(
                        f"`segmentation_maps[{index}]` has size {tuple(label.shape)} but `images[{index}]` has size "
                        f"{tuple(image.shape[-2:])}."
                    )
            if device is not None:
                labels = [label.to(device) for label in labels]
        return self._preprocess(images, labels, **kwargs)

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, device=None, **kwargs):
        """One image -> [C, H, W] tensor on `device`. Host images go up as they are (uint8, channels last): the
        channels-first copy, like everything after it, then runs on the device, and the host only uploads."""
        if device is not None and PIL is not None and isinstance(image, PIL.Image.Image):
            if do_convert_rgb:  # `preprocess` already made it RGB; this covers direct calls
                image = convert_image_to_rgb(image)
            image = np.array(image)
            input_data_format = ChannelDimension.LAST if image.ndim == 3 else input_data_format
        if device is not None and isinstance(image, np.ndarray):
            image = torch.from_numpy(image)
        if device is not None and isinstance(image, torch.Tensor):
            image = image.to(device)
        return super().process_image(image, do_convert_rgb, input_data_format, device, **kwargs)

    def resize(
        self, image: torch.Tensor, size: SizeDict, resample=None, antialias: bool = True, **kwargs
    ) -> torch.Tensor:
        """[..., C, H, W] -> [..., C, h, w]; `shortest_edge` sizes use detectron2 rounding (get_resize_output_size)."""
        height, width = image.shape[-2:]
        if size.shortest_edge:
            new_size = get_resize_output_size(height, width, size.shortest_edge, size.longest_edge)
            if new_size == (height, width):
                return image
            size = SizeDict(height=new_size[0], width=new_size[1])
        return super().resize(image, size, resample=resample, antialias=antialias, **kwargs)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) `preprocess` resizes a (height, width) image to with this processor's settings, before
        padding: what a caller needs to plan batches (`padding_groups`) without preprocessing first."""
        if not self.do_resize:
            return int(height), int(width)
        size = self.size if isinstance(self.size, SizeDict) else SizeDict(**self.size)
        if size.shortest_edge:
            return get_resize_output_size(height, width, size.shortest_edge, size.longest_edge)
        return int(size.height), int(size.width)

    def rescale_and_normalize(
        self,
        images: torch.Tensor,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, C, H, W] -> float32; rescale + normalise is (x - mean / rescale_factor) / (std / rescale_factor).

        With `out` (a float32 tensor of the images' shape, e.g. an image's slot in the padded batch) the result is
        written there: the batch is then filled in place, with no per-image float copy, padding copy or stack.
        """
        if images.is_floating_point() and images.dtype != torch.float32:
            images = images.to(torch.float32)  # integers and float32 enter the float32 subtraction as they are
        if do_normalize:
            # SAN normalises 0..255 values with 255 * mean and 255 * std, computed in float64 and stored as float32;
            # folding the rescale into the constants this way reproduces its float32 results bit for bit.
            scale = 1.0 / rescale_factor if do_rescale else 1.0
            num_channels = images.shape[-3]
            mean = torch.tensor(_per_channel(image_mean, num_channels), dtype=torch.float64) * scale
            std = torch.tensor(_per_channel(image_std, num_channels), dtype=torch.float64) * scale
            mean = mean.to(torch.float32, copy=False).view(-1, 1, 1).to(images.device)
            std = std.to(torch.float32, copy=False).view(-1, 1, 1).to(images.device)
            return torch.sub(images, mean, out=out).div_(std)
        if out is None:
            out = images.to(torch.float32, copy=True)
        else:
            out.copy_(images)
        return out.mul_(rescale_factor) if do_rescale else out

    def _preprocess(
        self,
        images: list[torch.Tensor],
        labels: list[torch.Tensor] | None,
        do_resize: bool,
        size: SizeDict,
        resample,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        do_pad: bool,
        pad_size: SizeDict | None,
        size_divisibility: int,
        ignore_index: int,
        do_reduce_labels: bool,
        disable_grouping: bool | None,
        return_tensors,
        **kwargs,
    ) -> BatchFeature:
        """Resize, normalise and pad [3, H, W] images (and their [H, W] labels) into one batch.

        Every step is torch ops on the images' own device: given `device`, the images are uploaded as they come
        (uint8) and resized, normalised and padded there; the host path is the same code on the CPU.
        """
        original_sizes = [tuple(image.shape[-2:]) for image in images]

        if do_resize:
            grouped, index = group_images_by_shape(images, disable_grouping=disable_grouping)
            resized = {shape: self.resize(stacked, size=size, resample=resample) for shape, stacked in grouped.items()}
            images = reorder_images(resized, index)
        image_sizes = [tuple(image.shape[-2:]) for image in images]
        normalise = (do_rescale, rescale_factor, do_normalize, image_mean, image_std)

        if labels is not None:
            if do_reduce_labels:
                labels = [reduce_labels(label, ignore_index) for label in labels]
            labels = [_resize_label(label, image_size) for label, image_size in zip(labels, image_sizes, strict=True)]

        if do_pad:
            padded_size = self._padded_size(image_sizes, pad_size, size_divisibility)
            # One zero-filled batch, each image normalised straight into its top-left slot (the zeros are the
            # padding, which comes after normalisation): one float pass per pixel instead of four copies.
            batch = images[0].new_zeros((len(images), images[0].shape[0], *padded_size), dtype=torch.float32)
            for slot, image in zip(batch, images, strict=True):
                self.rescale_and_normalize(image, *normalise, out=slot[:, : image.shape[-2], : image.shape[-1]])
            images = batch if return_tensors is not None else list(batch)
            if labels is not None:
                labels = [_pad_bottom_right(label, padded_size, ignore_index) for label in labels]
        else:
            images = [self.rescale_and_normalize(image[None], *normalise)[0] for image in images]

        data = {"pixel_values": images, "image_sizes": image_sizes, "original_sizes": original_sizes}
        if labels is not None:
            data["labels"] = labels
        return _to_batch_feature(data, return_tensors)

    @staticmethod
    def _padded_size(image_sizes, pad_size: SizeDict | None, size_divisibility: int) -> tuple[int, int]:
        """The batch's padded (Hp, Wp): `pad_size` if given (must fit every image), else get_padded_size."""
        if pad_size is None:
            return get_padded_size(image_sizes, size_divisibility)
        if not (pad_size.height and pad_size.width):
            raise ValueError(f"`pad_size` must have 'height' and 'width', got {dict(pad_size)}.")
        largest = get_padded_size(image_sizes, 1)
        if largest[0] > pad_size.height or largest[1] > pad_size.width:
            raise ValueError(f"`pad_size` {dict(pad_size)} is smaller than the largest resized image {largest}.")
        return pad_size.height, pad_size.width

    def post_process_semantic_segmentation(
        self,
        outputs,
        target_sizes: "list[tuple[int, int]] | torch.Tensor | None" = None,
        return_segmentation_scores: bool = False,
        fast: bool = True,
    ) -> "list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]":
        """
        Turn model outputs into per-image semantic maps.

        Args:
            outputs: a model output (or dict) with `class_queries_logits` [B, Q, C+1] (last column = void),
                `masks_queries_logits` [B, Q, h, w] and optionally `image_sizes` [B, 2] (resized, unpadded H, W inside
                the padded input) and `padded_sizes` [B, 2] (padded input H, W). Without `padded_sizes` the padded size
                is rebuilt as the largest `image_sizes` rounded up to `self.size_divisibility` (what `preprocess` does
                unless `pad_size` was given). Without `image_sizes` nothing is cropped: the masks are taken to cover
                the whole image and are only resized to `target_sizes`.
            target_sizes: (H, W) per image, e.g. the processor's `original_sizes`; None keeps the cropped size.
            return_segmentation_scores: also return the [C, H, W] scores.
            fast: compute the label map with `semantic_map` (by bands of rows, argmax in cache, on the CPU classes
                pruned by exact bounds; the [C, H, W] scores only when asked for). False: the plain
                `semantic_inference` + argmax. Both give the same maps and scores up to float rounding.

        Returns:
            A list of LongTensor [H, W] class maps, or with `return_segmentation_scores=True` a list of
            `SemanticSegmentationPostProcessorOutput` with `segmentation` and float32 [C, H, W] `segmentation_scores`.
        """
        class_logits, mask_logits = _mask_outputs(outputs, target_sizes)
        batch_size = class_logits.shape[0]

        results = []
        for i, sizes in enumerate(self._post_processing_sizes(outputs, target_sizes, batch_size)):
            if fast:  # the resize happens inside, band by band
                computed = semantic_map(class_logits[i], mask_logits[i], **sizes,
                                        return_scores=return_segmentation_scores)
                segmentation, scores = computed["segmentation"], computed.get("segmentation_scores")
            else:
                scores = semantic_inference(class_logits[i], resize_mask_logits(mask_logits[i], **sizes))
                segmentation = scores.argmax(dim=0)
            if return_segmentation_scores:
                results.append(
                    SemanticSegmentationPostProcessorOutput(
                        data={"segmentation": segmentation, "segmentation_scores": scores}
                    )
                )
            else:
                results.append(segmentation)
        return results

    def post_process_instance_segmentation(
        self,
        outputs,
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        target_sizes: "list[tuple[int, int]] | torch.Tensor | None" = None,
        return_binary_maps: bool = False,
    ) -> list[dict]:
        """
        Turn model outputs into per-image instance segments (Mask2Former's format and instance inference).

        Args:
            outputs: as for `post_process_semantic_segmentation` (`class_queries_logits`, `masks_queries_logits`,
                optionally `image_sizes` / `padded_sizes` to crop the padding).
            threshold: the least score a segment needs; score = p(class) * mean mask probability inside the mask
                (see `modeling_pat.mask_segments`).
            mask_threshold: mask probabilities above this make a segment's binary mask.
            overlap_mask_area_threshold: a segment is dropped unless more than this share of its mask remains
                once better segments took their pixels.
            target_sizes: (H, W) per image, e.g. the processor's `original_sizes`; None keeps the cropped size.
            return_binary_maps: `segmentation` is then a bool (K, H, W) tensor, segment i + 1's whole mask in row
                i (masks may overlap there), instead of the id map.

        Returns:
            Per image a dict: `segmentation`, an int64 (H, W) map of segment ids (0 = no segment), and
            `segments_info`, best score first: `{"id", "label_id", "score", "was_fused" (False), "area" (pixels
            in the id map), "query_index"}`.
        """
        return [
            instance_segments(
                class_logits, masks_at, size, threshold, mask_threshold, overlap_mask_area_threshold,
                return_binary_maps,
            )
            for class_logits, masks_at, size in self._mask_proposals(outputs, target_sizes)
        ]

    def post_process_panoptic_segmentation(
        self,
        outputs,
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        label_ids_to_fuse: "set[int] | None" = None,
        target_sizes: "list[tuple[int, int]] | torch.Tensor | None" = None,
    ) -> list[dict]:
        """
        Turn model outputs into per-image panoptic segments (Mask2Former's format and panoptic inference).

        Args:
            outputs, mask_threshold, overlap_mask_area_threshold, target_sizes: as in
                `post_process_instance_segmentation`.
            threshold: a query makes a segment when its most likely column is a class, not void, with a probability
                above this.
            label_ids_to_fuse: "stuff" classes, one segment per class (e.g. a shipped vocabulary's
                `stuff_class_ids` from `load_vocabulary`); default none.

        Returns:
            Per image a dict: `segmentation`, an int64 (H, W) map of segment ids (0 = no segment), and
            `segments_info`, best score first: `{"id", "label_id", "score", "was_fused", "area", "query_index"}`.
        """
        return [
            panoptic_segments(
                class_logits, masks_at, size, threshold, mask_threshold, overlap_mask_area_threshold,
                label_ids_to_fuse,
            )
            for class_logits, masks_at, size in self._mask_proposals(outputs, target_sizes)
        ]

    def _post_processing_sizes(self, outputs, target_sizes, batch_size: int) -> list[dict]:
        """Per image: the `padded_size`, `image_size` and `output_size` of `resize_mask_logits`, as host ints. Each
        size table is read once; tables on the host (the processor's, the model's `padded_sizes`) cost no wait for
        the device."""
        given_image_sizes = _field(outputs, "image_sizes")
        image_sizes = _size_rows(given_image_sizes, batch_size)
        padded_sizes = _field(outputs, "padded_sizes")
        if padded_sizes is None and given_image_sizes is not None:
            padded_sizes = get_padded_size(image_sizes, self.size_divisibility)
        padded_sizes = _size_rows(padded_sizes, batch_size)
        output_sizes = _size_rows(target_sizes, batch_size)
        return [{"padded_size": padded, "image_size": image, "output_size": output}
                for padded, image, output in zip(padded_sizes, image_sizes, output_sizes)]

    def _mask_proposals(self, outputs, target_sizes):
        """Per image: (class_logits (Q, C+1), a function of query ids -> their (K, H, W) mask probabilities at the
        output size, padding cropped as in semantic post-processing, and that output size (H, W))."""
        class_logits, mask_logits = _mask_outputs(outputs, target_sizes)
        batch_size = class_logits.shape[0]
        for i, sizes in enumerate(self._post_processing_sizes(outputs, target_sizes, batch_size)):
            output_size = sizes["output_size"] or sizes["image_size"] or sizes["padded_size"]
            output_size = output_size or tuple(mask_logits.shape[-2:])

            def masks_at(queries, logits=mask_logits[i], sizes=sizes):
                return resize_mask_logits(logits[queries.to(logits.device)], **sizes).sigmoid()

            yield class_logits[i], masks_at, tuple(output_size)



def _per_channel(values, num_channels: int) -> list[float]:
    """A scalar or per-channel sequence -> list of `num_channels` floats."""
    if isinstance(values, int | float):
        return [float(values)] * num_channels
    values = [float(v) for v in values]
    if len(values) != num_channels:
        raise ValueError(f"`image_mean` / `image_std` have {len(values)} values for {num_channels} channels.")
    return values


def _pad_bottom_right(tensor: torch.Tensor, size: tuple[int, int], value: float) -> torch.Tensor:
    """[..., H, W] -> [..., Hp, Wp], the new rows and columns at the bottom/right filled with `value`."""
    pad_height = size[0] - tensor.shape[-2]
    pad_width = size[1] - tensor.shape[-1]
    if pad_height == 0 and pad_width == 0:
        return tensor
    return F.pad(tensor, (0, pad_width, 0, pad_height), value=value)


def _to_batch_feature(data: dict, return_tensors) -> BatchFeature:
    """Stack per-image tensors and size lists for return_tensors "pt" (or "np"); keep lists otherwise."""
    if return_tensors is None:
        return BatchFeature(data=data)
    stacked = {}
    for key, value in data.items():
        if key.endswith("_sizes"):
            stacked[key] = torch.tensor(value, dtype=torch.int64).reshape(-1, 2)
            continue
        if isinstance(value, torch.Tensor):  # already one batch tensor
            stacked[key] = value
            continue
        shapes = {tuple(v.shape) for v in value}
        if len(shapes) > 1:
            raise ValueError(
                f"Cannot stack `{key}` of different sizes {sorted(shapes)} into one tensor; use do_pad=True "
                "(or return_tensors=None for lists)."
            )
        stacked[key] = torch.stack(value)
    return BatchFeature(data=stacked, tensor_type=return_tensors)


__all__ = [
    "PATImageProcessor",
    "convert_image_to_rgb",
    "convert_segmentation_map_to_binary_masks",
    "get_padded_size",
    "get_resize_output_size",
    "load_image",
    "mask_resize_rows",
    "padding_groups",
    "reduce_labels",
    "resize_mask_logits",
    "semantic_inference",
    "semantic_map",
]
