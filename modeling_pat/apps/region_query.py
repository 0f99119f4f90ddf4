"""Region queries: which of the model's mask proposals covers a point or fits a box, and what is it?

SAN/PAT predict Q mask proposals per image, each with class logits over the vocabulary (+ void). Semantic
segmentation merges them into one label per pixel; a region query instead returns individual proposals:

* every proposal gets a **label** (its most likely class, void excluded), a **class score** (that class's softmax
  probability, void included in the softmax as in post-processing), a **mask** (its mask probability, resized and
  cropped exactly as in post-processing, above `mask_threshold`) and a **mask score** (the mean mask probability
  inside that mask: how confident the mask is, as Mask2Former's instance score). `score = class_score * mask_score`.
* a **point** (x, y) is covered by the proposals whose mask probability there is above `mask_threshold`; they are
  ranked by `score`.
* a **box** (x0, y0, x1, y1) is compared with each proposal's mask by IoU (the box taken as a filled rectangle);
  proposals that overlap it are ranked by `iou * score`.

Coordinates are pixels of the image at `target_size` (normally the original image): x to the right, y down, a point
inside the image when 0 <= x < width and 0 <= y < height, a box covering the pixels x0 <= x < x1, y0 <= y < y1.

    from modeling_pat import query_region

    matches = query_region(model, processor, image, ["cat", "sofa", "floor"], points=[(120, 80)])
    best = matches[0][0]  # best proposal at the first point: best.label, best.score, best.mask (bool H_out x W_out)

Shapes (symbols as in the table of `modeling_pat/modeling_pat.py`): Q queries, N classes, H_out x W_out the target size.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..image_processing_pat import get_padded_size
from ..post_processing import output_field, resize_mask_logits, size_at


@dataclass(eq=False)
class PATRegionMatch:
    """One mask proposal returned by a region query.

    mask: bool (H_out, W_out) at the target (original) size. label / label_id: its most likely class (name, if class
    names were given, else None) and column. score = class_score * mask_score, see the module docstring. iou: with the
    queried box (box queries only).
    """

    query_index: int
    label_id: int
    label: str | None
    score: float
    class_score: float
    mask_score: float
    mask: torch.Tensor
    iou: float | None = None

    def __eq__(self, other) -> bool:  # the dataclass default would compare the masks with `==` (ambiguous)
        if not isinstance(other, PATRegionMatch):
            return NotImplemented
        fields = ("query_index", "label_id", "label", "score", "class_score", "mask_score", "iou")
        same = all(getattr(self, name) == getattr(other, name) for name in fields)
        return same and torch.equal(self.mask, other.mask)


class PATRegionProposals:
    """The mask proposals of one image at the target size, ready to be queried by points and boxes.

    Holds (Q, H_out, W_out) float32 mask probabilities: about 100 x H_out x W_out x 4 bytes for the SAN presets.
    """

    def __init__(self, mask_probs: torch.Tensor, class_logits: torch.Tensor, class_names=None, mask_threshold=0.5):
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"`mask_threshold` must lie in (0, 1), got {mask_threshold!r}.")
        num_classes = class_logits.shape[-1] - 1
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"`class_names` has {len(class_names)} names but the outputs score {num_classes} classes (+ void)."
            )
        self.mask_probs = mask_probs  # (Q, H_out, W_out)
        self.masks = mask_probs > mask_threshold  # (Q, H_out, W_out) bool
        self.mask_threshold = mask_threshold
        class_probs = class_logits.float().softmax(dim=-1)[:, :-1]  # (Q, N): void dropped, not renormalised
        self.class_scores, self.label_ids = class_probs.max(dim=-1)  # (Q,), (Q,)
        area = self.masks.flatten(1).sum(dim=1)  # (Q,)
        inside = (mask_probs * self.masks).flatten(1).sum(dim=1)
        self.mask_scores = torch.where(area > 0, inside / area.clamp_min(1), torch.zeros_like(inside))
        self.scores = self.class_scores * self.mask_scores  # (Q,)
        self.class_names = list(class_names) if class_names is not None else None

    @classmethod
    def from_outputs(
        cls, outputs, target_size: Sequence[int], image_index: int = 0, class_names=None, mask_threshold: float = 0.5,
        size_divisibility: int = 32,
    ) -> "PATRegionProposals":
        """From model outputs (`class_queries_logits`, `masks_queries_logits`, and `image_sizes` / `padded_sizes`
        when present, as post-processing uses them) for image `image_index`, at `target_size` (H_out, W_out)."""
        class_logits = output_field(outputs, "class_queries_logits")
        mask_logits = output_field(outputs, "masks_queries_logits")
        if class_logits is None or mask_logits is None:
            raise ValueError("`outputs` must have `class_queries_logits` and `masks_queries_logits`.")
        if not 0 <= image_index < class_logits.shape[0]:
            raise ValueError(f"`image_index` {image_index} is out of range for a batch of {class_logits.shape[0]}.")
        height, width = (int(v) for v in target_size)
        if height < 1 or width < 1:
            raise ValueError(f"`target_size` must be a positive (height, width), got {tuple(target_size)}.")
        image_sizes, padded_sizes = output_field(outputs, "image_sizes"), output_field(outputs, "padded_sizes")
        image_size = size_at(image_sizes, image_index)
        if padded_sizes is not None:
            padded_size = size_at(padded_sizes, image_index)
        elif image_sizes is not None:
            padded_size = get_padded_size([[int(v) for v in row] for row in image_sizes], size_divisibility)
        else:
            padded_size = None
        mask_logits = resize_mask_logits(mask_logits[image_index], padded_size, image_size, (height, width))
        return cls(mask_logits.sigmoid(), class_logits[image_index], class_names, mask_threshold)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.masks.shape[-2:])

    def match(self, query_index: int, iou: float | None = None) -> PATRegionMatch:
        label_id = int(self.label_ids[query_index])
        return PATRegionMatch(
            query_index=int(query_index),
            label_id=label_id,
            label=self.class_names[label_id] if self.class_names is not None else None,
            score=float(self.scores[query_index]),
            class_score=float(self.class_scores[query_index]),
            mask_score=float(self.mask_scores[query_index]),
            mask=self.masks[query_index].cpu(),
            iou=iou,
        )

    def query_points(self, points, top_k: int | None = 1) -> list[list[PATRegionMatch]]:
        """(x, y) or a list of them -> per point, the proposals covering it, best first (at most `top_k`; None = all;
        an empty list when no proposal's mask covers the point)."""
        _check_top_k(top_k)
        results = []
        for x, y in _check_points(points, self.size):
            covering = torch.nonzero(self.masks[:, int(y), int(x)]).flatten()
            order = covering[torch.argsort(self.scores[covering], descending=True, stable=True)]
            results.append([self.match(q) for q in order[:top_k].tolist()])
        return results

    def query_box(self, box, top_k: int | None = 1) -> list[PATRegionMatch]:
        """(x0, y0, x1, y1) -> the proposals overlapping the box, ranked by IoU(mask, box) x score, best first."""
        _check_top_k(top_k)
        x0, y0, x1, y1 = _check_box(box, self.size)
        region = torch.zeros(self.size, dtype=torch.bool, device=self.masks.device)
        region[y0:y1, x0:x1] = True
        intersection = (self.masks & region).flatten(1).sum(dim=1).float()
        union = (self.masks | region).flatten(1).sum(dim=1).float()
        ious = intersection / union  # union >= box area > 0
        overlapping = torch.nonzero(intersection > 0).flatten()
        ranking = ious[overlapping] * self.scores[overlapping]
        order = overlapping[torch.argsort(ranking, descending=True, stable=True)]
        return [self.match(q, iou=float(ious[q])) for q in order[:top_k].tolist()]


@torch.no_grad()
def query_region(
    model, processor, image, class_names=None, points=None, box=None, top_k: int | None = 1,
    mask_threshold: float = 0.5,
):
    """Run the model on one image and query its proposals: `points` -> one list of matches per point, `box` -> a
    list of matches (exactly one of the two). `class_names` default to `config.id2label`; `processor` is a
    `PATProcessor` (or `PATImageProcessor`). Coordinates are pixels of the original (upright) image."""
    if (points is None) == (box is None):
        raise ValueError("Pass exactly one of `points` and `box`.")
    image_processor = getattr(processor, "image_processor", processor)
    if class_names is None:
        class_names = model.default_class_names()
    class_embeddings = model.get_class_embeddings(class_names=list(class_names))
    inputs = image_processor(images=[image], return_tensors="pt")
    outputs = model(
        pixel_values=inputs["pixel_values"].to(device=model.device, dtype=model.dtype),
        class_embeddings=class_embeddings,
        image_sizes=inputs["image_sizes"].to(model.device),
    )
    target_size = inputs["original_sizes"][0].tolist()
    proposals = PATRegionProposals.from_outputs(
        outputs, target_size, 0, class_names, mask_threshold, image_processor.size_divisibility
    )
    return proposals.query_points(points, top_k) if points is not None else proposals.query_box(box, top_k)


def _check_top_k(top_k) -> None:
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"`top_k` must be a positive int or None (all), got {top_k!r}.")


def _check_points(points, size) -> list[tuple[float, float]]:
    """(x, y), a list of them or a (points, 2) tensor / array -> list of (x, y); each inside the (H_out, W_out) image."""
    values = points.double() if isinstance(points, torch.Tensor) else torch.as_tensor(points, dtype=torch.float64)
    if values.ndim == 1:
        values = values[None]
    if values.ndim != 2 or values.shape[-1] != 2 or values.shape[0] == 0:
        raise ValueError(f"`points` must be an (x, y) pair or a list of them, got shape {tuple(values.shape)}.")
    height, width = size
    for x, y in values.tolist():
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(
                f"`points` has ({x:g}, {y:g}) outside the image: x must lie in [0, {width}) and y in [0, {height})."
            )
    return [tuple(point) for point in values.tolist()]


def _check_box(box, size) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) -> integer pixel bounds; the box must be non-empty and inside the (H_out, W_out) image."""
    values = (box.double() if isinstance(box, torch.Tensor) else torch.as_tensor(box, dtype=torch.float64)).flatten()
    if values.numel() != 4:
        raise ValueError(f"`box` must be (x0, y0, x1, y1), got {values.numel()} values.")
    x0, y0, x1, y1 = values.tolist()
    height, width = size
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(
            f"`box` ({x0:g}, {y0:g}, {x1:g}, {y1:g}) must satisfy 0 <= x0 < x1 <= {width} and "
            f"0 <= y0 < y1 <= {height}."
        )
    # pixels whose centres lie inside the box; at least one pixel each way
    left, top = min(int(x0 + 0.5), width - 1), min(int(y0 + 0.5), height - 1)
    right, bottom = max(int(x1 + 0.5), left + 1), max(int(y1 + 0.5), top + 1)
    return left, top, min(right, width), min(bottom, height)


__all__ = ["PATRegionMatch", "PATRegionProposals", "query_region"]
