"""Post-processing of SAN / PAT outputs: mask logits resized to an image, semantic label maps and the checks that
every post-processing step shares (the processor's `post_process_*` methods and the applications use these).

Shapes (the symbols of `modeling_pat.modeling_pat`): class logits [Q, N + 1] (void last); mask logits [Q, H_s, W_s]
on the grid the masks come from (SAN: the side grid H x W); the padded model input H_img x W_img, of which the
image's own (resized, unpadded) part is the top-left corner; H_out x W_out the requested output size. With a batch,
B in front.

* `resize_mask_logits`: mask logits -> [Q, H_out, W_out]: bilinear to the padded input, crop to the image,
  bilinear to the output size (SAN's / Mask2Former's post-processing order).
* `semantic_map`: the label map (and optionally the [N, H_out, W_out] scores), computed band by band from the
  low-resolution logits: scores[n] = sum_q softmax(class)[q, n] * sigmoid(resized mask)[q], the void column
  dropped after the softmax and the rest not renormalised (SAN / Mask2Former). It is the package's only semantic
  inference; tests keep the dense formula as its oracle.
* `mask_proposals`: per image, the mask probabilities of chosen queries at the output size (instance / panoptic).
* `mask_outputs`, `output_field`, `size_rows`, `size_at`: read and check a model output's logits and size tables.
"""

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def resize_mask_logits(
    mask_logits: torch.Tensor,
    padded_size: Sequence[int] | None = None,
    image_size: Sequence[int] | None = None,
    output_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """[Q, H_s, W_s] -> [Q, H_out, W_out] float32: bilinear to the padded input (`padded_size`, H_img x W_img), crop
    to the image (`image_size`, its resized unpadded part), bilinear to `output_size`; each step skipped when None."""
    masks = mask_logits.unsqueeze(0).float()  # half-precision bilinear is not available everywhere and loses digits
    if padded_size is not None and tuple(masks.shape[-2:]) != tuple(padded_size):
        masks = F.interpolate(masks, size=tuple(padded_size), mode="bilinear", align_corners=False)
    if image_size is not None:
        masks = masks[..., : int(image_size[0]), : int(image_size[1])]
    if output_size is not None and tuple(masks.shape[-2:]) != tuple(output_size):
        masks = F.interpolate(masks, size=tuple(output_size), mode="bilinear", align_corners=False)
    return masks[0]


# `semantic_map` prunes classes by tile bounds from this many classes on (below it the dense product is cheaper).
PRUNE_MIN_CLASSES = 32
# Off the CPU pruning reads the candidate count back to the host (one synchronisation per band), so it is on by default
# only from this many classes on, where the [N, Q] x [Q, pixels] product dominates (ADE-847, Pascal Context 459);
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
    rows `first[o]` .. `first[o] + taps - 1` with the float64 weights `weights[o]` (zeros past its last source row)
    and `last[o]` is one past its last row with a non-zero weight. Its dense (out, in) matrix would be 335 MB for a
    65535-pixel side; this form is out x taps (taps <= 4 for the bilinear chains used here)."""

    first: torch.Tensor  # (out,) int64
    last: torch.Tensor  # (out,) int64
    weights: torch.Tensor  # (out, taps) float64
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
    """(out, taps) source rows and weights (repeats allowed, summed in float64) -> `ResizeRows`."""
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
    """Semantic inference and its argmax after `resize_mask_logits`, by bands of rows, materialising only what is
    asked for.

    class_logits [Q, N + 1], mask_logits [Q, H_s, W_s] (the sizes as in `resize_mask_logits`) -> dict with
    `segmentation` [H_out, W_out] int64, the argmax over classes of the scores (first maximum on ties); with
    `return_scores` also `segmentation_scores` [N, H_out, W_out] float32, scores[n] = sum_q p[q, n] *
    sigmoid(resized mask logits)[q] with p the softmax over N + 1 columns, void dropped, not renormalised; with
    `return_score_summary` also `best_scores` [H_out, W_out] (the winning class's score) and `score_sums`
    [H_out, W_out] (the sum over classes, a [Q] x [Q, pixels] product).

    The maths of the dense formula, in its exact order (the sigmoid comes after the resize: the scores are products
    of the [N, Q] class probabilities with the full-resolution [Q, pixels] mask probabilities), arranged to stay small:
    * the resize chain is separable: its width part runs once at low resolution ([Q, H_s, W_out], the same
      `F.interpolate` calls), its height part (`mask_resize_rows`, a few low-resolution rows per output row, never
      a dense [H_out, H_s] matrix) per band of output rows (`_band_plan`), so no [Q, H_out, W_out] tensor is ever
      allocated (fresh GB-sized buffers cost about as much in page faults as the arithmetic);
    * per band: sigmoid, [N, Q] @ [Q, band pixels] and its argmax while the band is in cache (on a GPU: a few
      large bands, each a handful of large kernels; the band's row range and resize block are cached per size and
      device, so nothing waits for the device);
    * pruning (default on the CPU from `PRUNE_MIN_CLASSES` classes on, elsewhere from `DEVICE_PRUNE_MIN_CLASSES`;
      label map only): on each `tile` x `tile` tile the mask probabilities' per-query max and min (bounded by the
      low-resolution rows each group of `tile` output rows interpolates: bilinear weights are >= 0 and sum to 1)
      give each class an upper bound U_n = p_n . max and a lower bound L_n = p_n . min of its score on the whole
      tile (probabilities are >= 0); a class whose U_n is below the best L_n, by more than a margin covering float
      rounding, loses on every pixel of the tile, so only the band's other classes are scored.
    Results equal the dense formula's up to float rounding (label maps: except exact ties within rounding).
    """
    probs = _flush_subnormal(class_logits.float().softmax(dim=-1)[..., :-1].T.contiguous())  # (N, Q)
    num_classes, num_queries = probs.shape
    height_chain, logits = _separable_resize(mask_logits.float(), padded_size, image_size, output_size)
    row_map, identity_rows = _height_rows(*height_chain)
    height, width = row_map.out_size, logits.shape[-1]
    rows, prune = _band_plan(logits.device.type, num_queries, num_classes, width, tile, prune, return_scores)
    result = {"segmentation": torch.empty(height, width, dtype=torch.int64, device=logits.device)}
    if return_scores:
        result["segmentation_scores"] = logits.new_empty(num_classes, height, width)
    if return_score_summary:
        result["best_scores"] = logits.new_empty(height, width)
        result["score_sums"] = logits.new_empty(height, width)
    total_probs = probs.sum(dim=0, keepdim=True) if return_score_summary else None  # (1, Q)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        mask_probs = _band_mask_probs(logits, height_chain, identity_rows, top, bottom)  # (rows, Q, W_out)
        classes = _band_candidates(probs, logits, height_chain, top, bottom, tile) if prune else None
        scores = torch.matmul(probs if classes is None else probs[classes], mask_probs)  # (rows, N or fewer, W_out)
        best, index = scores.max(dim=1)  # (rows, W_out)
        result["segmentation"][top:bottom] = index if classes is None else classes[index]
        if return_scores:
            result["segmentation_scores"][:, top:bottom] = scores.transpose(0, 1)
        if return_score_summary:
            result["best_scores"][top:bottom] = best
            result["score_sums"][top:bottom] = torch.matmul(total_probs, mask_probs)[:, 0]
    return result


def _separable_resize(logits: torch.Tensor, padded_size, image_size, output_size) -> tuple[tuple, torch.Tensor]:
    """(the height chain (H_s, padded, image, output) as host ints or None, the logits with the width chain applied
    and laid out (H_s, Q, W_out), so that a band of rows is one small GEMM)."""
    pad = (None, None) if padded_size is None else padded_size
    img = (None, None) if image_size is None else image_size
    out = (None, None) if output_size is None else output_size
    height_chain = (logits.shape[-2], *(None if size is None else int(size) for size in (pad[0], img[0], out[0])))
    logits = _resize_columns(logits, pad[1], img[1], out[1])  # (Q, H_s, W_out): the width chain, at low resolution
    return height_chain, logits.transpose(0, 1).contiguous()


def _band_mask_probs(logits: torch.Tensor, height_chain: tuple, identity_rows: bool, top: int, bottom: int):
    """(rows, Q, W_out) mask probabilities of output rows top..bottom-1: the band's rows of the height resize, which
    read only a few low-resolution rows of the (H_s, Q, W_out) logits, then the sigmoid."""
    if identity_rows:
        return logits[top:bottom].sigmoid()
    first, last, block = _band_block(height_chain, top, bottom, logits.device)
    source = logits[first:last]
    mask_probs = (block @ source.view(last - first, -1)).view(-1, *source.shape[1:])
    return mask_probs.sigmoid_()


def _band_candidates(probs, logits, height_chain: tuple, top: int, bottom: int, tile: int) -> torch.Tensor | None:
    """Sorted ids of the classes that can win somewhere in output rows top..bottom-1 (see `semantic_map`); None when
    every class can (then all are scored, without an index)."""
    num_classes, num_queries = probs.shape
    # every row of a group of `tile` output rows is a convex combination of its low-res source rows
    # (bilinear weights >= 0, sum 1): their min / max bound its logits
    sources = _tile_row_sources(height_chain, top, bottom, tile, logits.device)  # (groups, source rows)
    low, high = torch.aminmax(logits[sources], dim=1)  # (groups, Q, W_out)
    # relative margin: 4x the rounding of a length-Q sum of products plus that of sigmoid(x) for x this
    # large (a device number: nothing waits for it)
    eps = torch.finfo(torch.float32).eps
    margin = 4 * eps * (num_queries + torch.maximum(high.abs(), low.abs()).amax())
    classes = _candidate_classes(probs, low.sigmoid(), high.sigmoid(), tile, margin)
    return classes if len(classes) < num_classes else None


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
    """(groups, source rows) int64 on `device`: for each group of `tile` output rows top..bottom-1 of the height
    chain (the last group may be shorter), the low-resolution rows its resize reads (the last one repeated to fill
    the row)."""
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
    """(Q, H_s, W_s) -> (Q, H_s, W_out): `resize_mask_logits`' chain along the width only (the height is kept), with
    the same `F.interpolate` calls (a bilinear resize that keeps one axis is exactly the 1-D resize of the other)."""
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
    large as a block of DEVICE_BAND_ELEMENTS allows (the larger of the band's [Q, rows, W_out] mask probabilities
    and [rows, N, W_out] scores: four bands for a 640 x 640 image at 150 classes). Pruning reads each band's candidate
    count back to the host, so it is on by default only from DEVICE_PRUNE_MIN_CLASSES classes, and its bands are
    sized by the mask probabilities alone (whole tiles), since only the candidates are scored: three bands at
    640 x 640 (without structure in the masks, all N classes survive and a band's scores take up to N / Q times
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
    """(N, Q) class probabilities, ([groups,] Q, W_out) lower / upper bounds of a band's mask probabilities (per
    group of `tile` rows) -> sorted ids of the classes that can win on some `tile`-wide tile of the band (see
    `semantic_map`).

    `margin` (a number or a 0-d tensor) is relative to the tile's largest upper bound."""
    if low.shape[-1] > tile:  # the bounds over `tile` columns (the last tile may be narrower)
        high = F.max_pool1d(high, tile, ceil_mode=True)
        low = -F.max_pool1d(-low, tile, ceil_mode=True)
    upper = probs @ high  # ([groups,] N, tiles): no pixel of the tile scores higher
    lower = probs @ low  # ([groups,] N, tiles): no pixel of the tile scores lower
    threshold = lower.amax(dim=-2, keepdim=True) - margin * upper.amax(dim=-2, keepdim=True)
    wins_somewhere = (upper >= threshold).movedim(-2, 0).flatten(1).any(dim=1)  # (N,)
    return wins_somewhere.nonzero().squeeze(1)


def mask_proposals(class_logits: torch.Tensor, mask_logits: torch.Tensor, sizes: list[dict]):
    """Per image: (its class logits (Q, N + 1), a function of query ids -> their (Q_k, H_out, W_out) mask
    probabilities at the output size, and (H_out, W_out)), what `mask_segments` works on. `sizes` holds per image the
    `padded_size`, `image_size` and `output_size` of `resize_mask_logits` (padding cropped as in semantic
    post-processing); without an output size the masks stay at the cropped (or padded, or their own) size."""
    for i, size in enumerate(sizes):
        output_size = size["output_size"] or size["image_size"] or size["padded_size"]
        output_size = output_size or tuple(mask_logits.shape[-2:])

        def masks_at(queries, logits=mask_logits[i], size=size):
            return resize_mask_logits(logits[queries.to(logits.device)], **size).sigmoid()

        yield class_logits[i], masks_at, tuple(output_size)


def mask_outputs(outputs, target_sizes) -> tuple[torch.Tensor, torch.Tensor]:
    """The model outputs' (B, Q, N + 1) class logits and (B, Q, H_s, W_s) mask logits, checked against each other and
    against `target_sizes` (one entry per image) before any post-processing reads them."""
    class_logits = output_field(outputs, "class_queries_logits")
    mask_logits = output_field(outputs, "masks_queries_logits")
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


def output_field(outputs, name: str):
    """outputs.name for ModelOutputs / namespaces, outputs[name] for plain dicts; None when absent."""
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


def size_rows(sizes, batch_size: int) -> list[tuple[int, int] | None]:
    """Every row of a size table (see `size_at`) as host ints, read at once: a table on an accelerator costs one
    transfer (one wait for the device), not one per number; None gives None per image."""
    if sizes is None:
        return [None] * batch_size
    if isinstance(sizes, torch.Tensor):
        sizes = sizes.tolist()
    return [size_at(sizes, i) for i in range(batch_size)]


def size_at(sizes, index: int) -> tuple[int, int] | None:
    """Row `index` of a [B, 2] size table (tensor or list); a single [2] size applies to every image."""
    if sizes is None:
        return None
    if isinstance(sizes, torch.Tensor):
        row = sizes if sizes.ndim == 1 else sizes[index]
        return int(row[0]), int(row[1])
    first = sizes[0]
    row = sizes if isinstance(first, int | np.integer) else sizes[index]
    return int(row[0]), int(row[1])


