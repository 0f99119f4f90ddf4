"""SAN's segmentation loss (the Mask2Former criterion): Hungarian matching, void-weighted CE, point-sampled BCE + Dice.

Shapes in the symbols of `modeling_pat.py`'s table: B, Q, N classes (+1 = void last), M target segments of one
image, M_B the matched (query, segment) pairs of the whole batch (the sum over images of min(Q, M)), P points. Mask
logits lie on their own grid H x W (the side grid; PAT's final level: the early grid H_s x W_s), labels and target
masks on the input's H_img x W_img. Points are (x, y) in [0, 1) and sampled with grid_sample(2p - 1).

Randomness: the matcher draws one (P, 2) point set per image, all images in one (B, P, 2) draw; the mask loss draws
(M_B, 3P, 2) candidates and (M_B, P - 0.75P, 2) extra points, in that order, final level first, then the auxiliary
levels.
Every draw goes through `_PointSource`, which uses the given generator (on its device), else the default generator of
the logits' device, or takes recorded points from `sampling_points` (used by the parity tests).

Host-device synchronisation (one per batch, not per image): `labels_to_targets` reads the classes present in all
images with one host copy, and each level's matcher copies all images' cost matrices to the host at once for scipy's
`linear_sum_assignment`; the matched indices go back in one copy, and the losses index the whole batch with them.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from .configuration_pat import PATConfig


@dataclass
class PATTarget:
    """Targets of one image: `class_ids` (M,) int64 and `masks` (M, H_img, W_img) float 0/1."""

    class_ids: torch.Tensor
    masks: torch.Tensor


@dataclass
class PATMatch:
    """Hungarian result of one image: `query_ids`, `target_ids` (both (min(Q, M),) int64) and `cost` (Q, M)."""

    query_ids: torch.Tensor
    target_ids: torch.Tensor
    cost: torch.Tensor


@dataclass
class PATLossLevel:
    """Per-level record: matches per image and the mask-loss points (M_B, P, 2), for inspection and parity checks."""

    matches: list[PATMatch] = field(default_factory=list)
    mask_points: torch.Tensor | None = None


def labels_to_targets(labels: torch.Tensor, num_classes: int, ignore_index: int) -> list[PATTarget]:
    """(B, H_img, W_img) semantic label maps -> one `PATTarget` per image (sorted class ids present, one binary mask
    each).

    The classes present in every image are found on the labels' device and read back in one host copy (a
    `torch.unique` per image would wait for the device once per image); the ids go back to it in one copy.
    """
    presence = _class_presence(labels, num_classes, ignore_index).cpu()  # (B, N + 2)
    if presence[:, num_classes + 1].any():  # a label outside the vocabulary (rare: the message may be slow)
        bad = labels[presence[:, num_classes + 1].nonzero()[0, 0]]
        class_ids = torch.unique(bad[bad != ignore_index])
        raise ValueError(
            f"`labels` holds class ids {class_ids.tolist()} but the vocabulary has {num_classes} classes "
            f"(valid ids 0..{num_classes - 1}, ignore_index={ignore_index})."
        )
    per_image = [row[:num_classes].nonzero()[:, 0] for row in presence]  # sorted, as torch.unique gives them
    all_ids = torch.cat(per_image).to(labels.device, non_blocking=True)
    targets = []
    for label_map, class_ids in zip(labels, all_ids.split([len(ids) for ids in per_image])):
        masks = (label_map[None] == class_ids[:, None, None]).float()
        targets.append(PATTarget(class_ids=class_ids, masks=masks))
    return targets


def _class_presence(labels: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(B, H_img, W_img) labels -> (B, N + 2) bool: class n occurs in image b; column N: ignored pixels, N + 1: ids
    outside 0..N-1 (an error). A scatter on the labels' device, without waiting for it."""
    in_vocabulary = (labels >= 0) & (labels < num_classes)
    outside = torch.where(labels == ignore_index, num_classes, num_classes + 1)
    columns = torch.where(in_vocabulary & (labels != ignore_index), labels, outside).flatten(1).long()
    presence = torch.zeros(labels.shape[0], num_classes + 2, dtype=torch.bool, device=labels.device)
    return presence.scatter_(1, columns, True)


def point_sample(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(M_B, H, W) maps at (M_B, P, 2) points in [0, 1) -> (M_B, P), bilinear, align_corners=False."""
    grid = 2.0 * points[:, :, None, :] - 1.0  # (M_B, P, 1, 2)
    return F.grid_sample(maps[:, None], grid.to(maps.dtype), align_corners=False)[:, 0, :, 0]


def pairwise_sigmoid_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(Q, P) logits, (M, P) targets -> (Q, M) mean BCE-with-logits over the points."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    cost = torch.einsum("qp,tp->qt", pos, targets) + torch.einsum("qp,tp->qt", neg, 1 - targets)
    return cost / logits.shape[1]


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(Q, P) logits, (M, P) targets -> (Q, M) Dice loss with +1 smoothing."""
    probs = logits.sigmoid()
    numerator = 2 * torch.einsum("qp,tp->qt", probs, targets)
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """(M_B, P) logits and targets -> scalar: sum over masks of the mean BCE over points, / num_masks."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """(M_B, P) logits and targets -> scalar: sum over masks of 1 - (2|x.t| + 1) / (|x| + |t| + 1), / num_masks."""
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


class _PointSource:
    """Hands out the random points of one loss pass: fresh draws from `generator`, or recorded ones.

    Without a generator the points are drawn by the default generator of the device they are used on: drawn on the
    host, the millions of points of a batch (M_B x 3P x 2 per level) cost more than the rest of a GPU training step.
    """

    def __init__(self, recorded: dict | None, generator: torch.Generator | None):
        self.recorded = recorded
        self.generator = generator

    def draw(self, level: str, key: str, shape, device, index: int | None = None) -> torch.Tensor:
        if self.recorded is not None:
            return self.recorded_points(level, key, shape, index).to(device)
        generator_device = self.generator.device if self.generator is not None else device
        return torch.rand(*shape, generator=self.generator, device=generator_device).to(device)

    def draw_per_image(self, level: str, key: str, batch: int, shape, device) -> torch.Tensor:
        """(batch, *shape) points, one set per image: one draw (the same numbers as one draw per image, in image
        order), or the recorded per-image sets stacked."""
        if self.recorded is None:
            return self.draw(level, key, (batch, *shape), device)
        return torch.stack([self.recorded_points(level, key, (1, *shape), b)[0] for b in range(batch)]).to(device)

    def recorded_points(self, level: str, key: str, shape, index: int | None = None) -> torch.Tensor:
        try:
            points = self.recorded[level][key]
        except KeyError as error:
            raise KeyError(f"`loss_sampling_points` has no entry [{level!r}][{key!r}].") from error
        points = points[index] if index is not None else points
        if tuple(points.shape) != tuple(shape):
            raise ValueError(f"Recorded points [{level!r}][{key!r}] have shape {tuple(points.shape)}, need {shape}.")
        return points


class PATHungarianMatcher(nn.Module):
    """class logits (B, Q, N+1) and mask logits (B, Q, H, W) vs targets -> one `PATMatch` per image."""

    def __init__(self, cost_class: float, cost_mask: float, cost_dice: float, num_points: int):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("At least one matching cost must be non-zero.")
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def forward(self, class_logits, mask_logits, targets: list[PATTarget], points: _PointSource, level: str):
        costs = self.costs(class_logits, mask_logits, targets, points, level)
        # one host copy for the whole batch: scipy needs the costs on the host, and a copy per image would wait for
        # the device once per image
        host_costs = torch.cat([cost.flatten() for cost in costs]).cpu().split([cost.numel() for cost in costs])
        matches = []
        for cost, host_cost in zip(costs, host_costs):
            rows, cols = linear_sum_assignment(host_cost.view(cost.shape).numpy())
            matches.append(PATMatch(torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long), cost))
        return matches

    def costs(self, class_logits, mask_logits, targets: list[PATTarget], points: _PointSource, level: str):
        """-> per image the (Q, M) matching cost, on the logits' device."""
        batch, num_queries = mask_logits.shape[:2]
        probs = class_logits.float().softmax(-1)  # (B, Q, N+1)
        # all queries and targets of an image share one point set
        coords = points.draw_per_image(level, "matcher_points", batch, (self.num_points, 2), mask_logits.device)
        grid = 2.0 * coords[:, :, None, :] - 1.0  # (B, P, 1, 2): the queries are the channels of one sample per image
        pred = F.grid_sample(mask_logits, grid.to(mask_logits.dtype), align_corners=False)[..., 0].float()  # (B, Q, P)
        costs = []
        for b, target in enumerate(targets):
            tgt = point_sample(target.masks.to(mask_logits), coords[b].expand(len(target.class_ids), -1, -1)).float()
            costs.append(
                self.cost_mask * pairwise_sigmoid_ce(pred[b], tgt)
                - self.cost_class * probs[b][:, target.class_ids]
                + self.cost_dice * pairwise_dice(pred[b], tgt)
            )
        return costs


def sample_uncertain_points(
    mask_logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_ratio: float, points, level: str
) -> torch.Tensor:
    """(M_B, H, W) logits -> (M_B, P, 2) points: the most uncertain (|logit| smallest) of 3P candidates, plus random
    ones.

    PointRend's importance sampling, with the same draw order: candidates first, then the extra random points.
    """
    num_masks = mask_logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_ratio * num_points)
    candidates = points.draw(level, "oversampled_points", (num_masks, num_candidates, 2), mask_logits.device)
    uncertainty = -point_sample(mask_logits, candidates).abs()
    top = torch.topk(uncertainty, k=num_uncertain, dim=1).indices  # (M_B, importance_ratio * P)
    chosen = torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2))
    extra = points.draw(level, "random_points", (num_masks, num_points - num_uncertain, 2), mask_logits.device)
    return torch.cat([chosen, extra], dim=1)


@dataclass
class _MatchedPairs:
    """The matched (query, target) pairs of a whole batch, M_B of them in image order, as (M_B,) index tensors on the
    device: `image_ids`, `query_ids`, `target_ids` (into the batch's concatenated targets) and `local_target_ids`
    (into the image's targets); `counts`: pairs per image, on the host."""

    image_ids: torch.Tensor
    query_ids: torch.Tensor
    target_ids: torch.Tensor
    local_target_ids: torch.Tensor
    counts: list[int]

    @classmethod
    def from_matches(cls, matches: list[PATMatch], targets: list[PATTarget], device) -> "_MatchedPairs":
        """Built on the host and copied to `device` at once (indexing a device tensor with host indices would copy,
        and wait, once per image and use)."""
        offsets = [0]
        for target in targets[:-1]:
            offsets.append(offsets[-1] + len(target.class_ids))
        rows = [
            torch.stack([torch.full_like(m.query_ids, b), m.query_ids, m.target_ids + offset, m.target_ids])
            for b, (m, offset) in enumerate(zip(matches, offsets))
        ]
        image_ids, query_ids, target_ids, local_ids = torch.cat(rows, dim=1).to(device, non_blocking=True)
        return cls(image_ids, query_ids, target_ids, local_ids, [len(m.query_ids) for m in matches])

    def gather_masks(self, targets: list[PATTarget]) -> torch.Tensor:
        """(M_B, H_img, W_img) target mask of every pair, image by image (no copy of the batch's unmatched masks)."""
        per_image = self.local_target_ids.split(self.counts)
        return torch.cat([t.masks[ids.to(t.masks.device)] for t, ids in zip(targets, per_image)])


class PATSegmentationLoss(nn.Module):
    """SAN's weighted loss over the final and auxiliary levels -> (total, {"loss_ce": ..., "loss_ce_0": ...})."""

    def __init__(self, config: PATConfig):
        super().__init__()
        self.matcher = PATHungarianMatcher(
            config.class_weight, config.mask_weight, config.dice_weight, config.train_num_points
        )
        self.weights = {"loss_ce": config.class_weight, "loss_mask": config.mask_weight, "loss_dice": config.dice_weight}
        self.no_object_weight = config.no_object_weight
        self.num_points = config.train_num_points
        self.oversample_ratio = config.oversample_ratio
        self.importance_ratio = config.importance_sample_ratio

    @staticmethod
    def count_masks(targets: list[PATTarget], device) -> float | torch.Tensor:
        """Total number of target masks, averaged over processes when distributed, at least 1.

        Counted on the host (the targets' lengths are known there); only the distributed average is a tensor (on
        `device`), so that no step waits for the device to read it back."""
        num_masks = float(sum(len(t.class_ids) for t in targets))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            total = torch.tensor([num_masks], device=device)
            torch.distributed.all_reduce(total)
            return (total[0] / torch.distributed.get_world_size()).clamp_min(1.0)
        return max(num_masks, 1.0)

    def classification_loss(self, class_logits: torch.Tensor, targets, matched) -> torch.Tensor:
        """(B, Q, N+1) logits -> CE where matched queries target their class and the rest the void class."""
        num_classes = class_logits.shape[-1] - 1
        target_classes = torch.full(class_logits.shape[:2], num_classes, dtype=torch.long, device=class_logits.device)
        class_ids = torch.cat([t.class_ids for t in targets]).to(class_logits.device)
        target_classes[matched.image_ids, matched.query_ids] = class_ids[matched.target_ids]
        weight = torch.ones(num_classes + 1, device=class_logits.device)
        weight[-1] = self.no_object_weight
        return F.cross_entropy(class_logits.float().transpose(1, 2), target_classes, weight)

    def mask_losses(self, mask_logits, targets, matched, num_masks, points, level):
        """(B, Q, H, W) logits -> (BCE, Dice, points) on importance-sampled points of the matched pairs."""
        pred = mask_logits[matched.image_ids, matched.query_ids]  # (M_B, H, W)
        gt = matched.gather_masks(targets).to(pred)  # (M_B, H_img, W_img)
        with torch.no_grad():
            coords = sample_uncertain_points(
                pred.detach(), self.num_points, self.oversample_ratio, self.importance_ratio, points, level
            )
            gt_points = point_sample(gt, coords)
        pred_points = point_sample(pred, coords)
        return sigmoid_ce_loss(pred_points, gt_points, num_masks), dice_loss(pred_points, gt_points, num_masks), coords

    def level_losses(self, class_logits, mask_logits, targets, num_masks, points, level: str):
        """Unweighted losses of one level, plus its `PATLossLevel` record."""
        matches = self.matcher(class_logits, mask_logits, targets, points, level)
        matched = _MatchedPairs.from_matches(matches, targets, mask_logits.device)
        loss_ce = self.classification_loss(class_logits, targets, matched)
        loss_mask, loss_dice, coords = self.mask_losses(mask_logits, targets, matched, num_masks, points, level)
        return {"loss_ce": loss_ce, "loss_mask": loss_mask, "loss_dice": loss_dice}, PATLossLevel(matches, coords)

    def forward(self, levels, targets: list[PATTarget], sampling_points: dict | None = None, generator=None):
        """`levels`: [(class_logits, mask_logits)] with the final level FIRST, then aux levels 0, 1, ...

        Returns (total weighted loss, weighted terms, unweighted terms, per-level records).
        `sampling_points` = {"final" | "aux0" | ...: {"matcher_points": [(1, P, 2) per image],
        "oversampled_points": (M_B, 3P, 2), "random_points": (M_B, P/4, 2)}} replaces every random draw.
        """
        points = _PointSource(sampling_points, generator)
        num_masks = self.count_masks(targets, levels[0][0].device)
        weighted, unweighted, records = {}, {}, {}
        for i, (class_logits, mask_logits) in enumerate(levels):
            level, suffix = ("final", "") if i == 0 else (f"aux{i - 1}", f"_{i - 1}")
            losses, records[level] = self.level_losses(class_logits, mask_logits, targets, num_masks, points, level)
            for name, value in losses.items():
                unweighted[name + suffix] = value
                weighted[name + suffix] = value * self.weights[name]
        total = sum(weighted.values())
        return total, weighted, unweighted, records


__all__ = [
    "PATHungarianMatcher",
    "PATLossLevel",
    "PATMatch",
    "PATSegmentationLoss",
    "PATTarget",
    "dice_loss",
    "labels_to_targets",
    "pairwise_dice",
    "pairwise_sigmoid_ce",
    "point_sample",
    "sample_uncertain_points",
    "sigmoid_ce_loss",
]
