"""Instance and panoptic inference over SAN/PAT's mask proposals (the processor's post_process_* methods use these).

SAN predicts Q mask proposals per image, each with logits over the N classes plus a void column (last). Semantic
inference sums the proposals into one score per class and pixel; the two functions here keep them apart instead:

* `instance_segments` (Mask2Former's instance inference): the Q best (query, class) pairs by class probability
  (a query may appear with several classes); each pair's binary mask is its mask probability above
  `mask_threshold`, and its score is

      score = p(class | query) * mean(mask probability over the binary mask)

  with p the softmax over N + 1 columns, void dropped and not renormalised (as in semantic inference), and the
  second factor Mask2Former's mask quality. Pairs scoring at least `threshold` are kept, best first.
* `panoptic_segments` (Mask2Former's panoptic inference): each query's most likely column; queries whose column
  is void or whose probability is not above `threshold` are dropped. Every pixel goes to the kept query with the
  largest p(class) * mask probability there, and keeps it only where that mask probability is at least
  `mask_threshold`. A segment's score is computed as for instances. Classes in `label_ids_to_fuse` ("stuff")
  become one segment per class (its score: the best of the merged queries').

In both, a segment that keeps no more than `overlap_mask_area_threshold` of its own binary mask once better
segments took their pixels is dropped (a duplicate, or a disconnected sliver). Segments are numbered 1, 2, ... in
order of decreasing score; 0 in `segmentation` means "no segment" (Mask2Former's instance output uses -1 for that;
one convention for both outputs here, and it fits an unsigned PNG).

Shapes (the symbols of `modeling_pat.modeling_pat`): Q queries, N classes (N + 1 with void), H_out x W_out the
output size; Q_k <= Q the masks a step works on (kept queries, or kept (query, class) pairs for instances).
"""

from collections.abc import Callable, Iterable

import torch


# Called with the ids of the queries that still matter: their (Q_k, H_out, W_out) mask probabilities at the output size.
MaskProbabilities = Callable[[torch.Tensor], torch.Tensor]


def mask_quality(mask_probs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(Q_k, H_out, W_out) probabilities and their bool masks -> (Q_k,) mean probability inside each mask (0:
    empty)."""
    area = masks.flatten(1).sum(dim=1)
    inside = (mask_probs * masks).flatten(1).sum(dim=1)
    return torch.where(area > 0, inside / area.clamp_min(1), torch.zeros_like(inside))


def instance_segments(
    class_logits: torch.Tensor,
    mask_probs_of: MaskProbabilities,
    output_size: tuple[int, int],
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
    return_binary_maps: bool = False,
) -> dict:
    """class_logits (Q, N + 1) -> {"segmentation": (H_out, W_out) int64 ids (or (Q_k, H_out, W_out) bool masks),
    "segments_info": [...]}.

    See the module docstring; `mask_probs_of(queries)` gives the (Q_k, H_out, W_out) mask probabilities of those
    queries.
    """
    class_probs = class_logits.float().softmax(dim=-1)[:, :-1]  # (Q, N)
    num_queries, num_classes = class_probs.shape
    top_probs, flat = class_probs.flatten().topk(min(num_queries, class_probs.numel()))  # sorted, best first
    # score <= class probability, so pairs below the threshold cannot pass: skip their masks
    keep = top_probs >= threshold
    top_probs, flat = top_probs[keep], flat[keep]
    queries, labels = flat // num_classes, flat % num_classes
    distinct, position = torch.unique(queries, return_inverse=True)
    probs = _probabilities(mask_probs_of, distinct, output_size)[position]  # (Q_k, H_out, W_out)
    masks = probs > mask_threshold
    scores = top_probs * mask_quality(probs, masks)
    candidates = [
        {"query": int(q), "label_id": int(label), "score": float(score), "mask": mask}
        for q, label, score, mask in zip(queries, labels, scores, masks)
        if score >= threshold and mask.any()
    ]
    candidates.sort(key=lambda c: -c["score"])
    segmentation, segments = _paint(candidates, output_size, overlap_mask_area_threshold, fuse=set())
    if return_binary_maps:
        kept = [candidates[i]["mask"] for i in _kept_indices(candidates, segments)]
        segmentation = torch.stack(kept) if kept else torch.zeros(0, *output_size, dtype=torch.bool)
    return {"segmentation": segmentation, "segments_info": segments}


def panoptic_segments(
    class_logits: torch.Tensor,
    mask_probs_of: MaskProbabilities,
    output_size: tuple[int, int],
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
    label_ids_to_fuse: Iterable[int] | None = None,
) -> dict:
    """class_logits (Q, N + 1) -> {"segmentation": (H_out, W_out) int64 ids, "segments_info": [...]} (module
    docstring)."""
    class_probs = class_logits.float().softmax(dim=-1)  # (Q, N + 1), void included: a void query is no segment
    best_probs, labels = class_probs.max(dim=-1)
    keep = (labels != class_probs.shape[-1] - 1) & (best_probs > threshold)
    queries = keep.nonzero().squeeze(1)
    probs = _probabilities(mask_probs_of, queries, output_size)  # (Q_k, H_out, W_out)
    best_probs, labels = best_probs[queries], labels[queries]
    if len(queries):
        owner = (best_probs.view(-1, 1, 1) * probs).argmax(dim=0)  # (H_out, W_out): the strongest query per pixel
    masks = probs >= mask_threshold
    scores = best_probs * mask_quality(probs, masks)
    candidates = [
        {"query": int(queries[k]), "label_id": int(labels[k]), "score": float(scores[k]), "mask": masks[k],
         "visible": (owner == k) & masks[k]}
        for k in range(len(queries))
    ]
    candidates.sort(key=lambda c: -c["score"])
    fuse = set() if label_ids_to_fuse is None else {int(label) for label in label_ids_to_fuse}
    segmentation, segments = _paint(candidates, output_size, overlap_mask_area_threshold, fuse)
    return {"segmentation": segmentation, "segments_info": segments}


def _probabilities(mask_probs_of: MaskProbabilities, queries: torch.Tensor, output_size) -> torch.Tensor:
    if len(queries) == 0:  # nothing to resize
        return torch.zeros(0, *output_size)
    return mask_probs_of(queries).float()


def _paint(candidates: list[dict], output_size, overlap_mask_area_threshold: float, fuse: set[int]):
    """Candidates, best first -> ((H_out, W_out) int64 ids, segments_info). A candidate takes the pixels of its
    `visible` mask (default: its mask) that no better one took; it is dropped when that is no more than
    `overlap_mask_area_threshold` of its mask. Labels in `fuse` share one id."""
    device = candidates[0]["mask"].device if candidates else None
    segmentation = torch.zeros(output_size, dtype=torch.int64, device=device)
    segments, fused_ids = [], {}
    for candidate in candidates:
        mask = candidate["mask"]
        visible = candidate.get("visible", mask) & (segmentation == 0)
        area, own_area = int(visible.sum()), int(mask.sum())
        if area == 0 or own_area == 0 or not area / own_area > overlap_mask_area_threshold:
            continue
        label = candidate["label_id"]
        if label in fused_ids:  # a stuff class already has its segment: grow it (it has the better score)
            segment = segments[fused_ids[label] - 1]
            segment["area"] += area
            segmentation[visible] = segment["id"]
            continue
        segment_id = len(segments) + 1
        segmentation[visible] = segment_id
        segments.append({"id": segment_id, "label_id": label, "score": candidate["score"],
                         "was_fused": label in fuse, "area": area, "query_index": candidate["query"]})
        if label in fuse:
            fused_ids[label] = segment_id
    return segmentation, segments


def _kept_indices(candidates: list[dict], segments: list[dict]) -> list[int]:
    """Positions in `candidates` of the segments that were kept (instances are never fused: one per segment)."""
    by_query_label = {(c["query"], c["label_id"]): i for i, c in enumerate(candidates)}
    return [by_query_label[(s["query_index"], s["label_id"])] for s in segments]


__all__ = ["instance_segments", "mask_quality", "panoptic_segments"]
