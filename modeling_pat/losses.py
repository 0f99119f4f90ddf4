"""SAN's segmentation loss (the Mask2Former criterion): Hungarian matching, void-weighted CE, point-sampled BCE + Dice.

Shapes: B batch, Q queries, N classes (+1 = void last), M matched masks, T targets of one image, P points,
h x w mask-logit grid, H x W label grid. Points are (x, y) in [0, 1) and sampled with grid_sample(2p - 1).

Randomness: the matcher draws one (1, P, 2) point set per image; the mask loss draws (M, 3P, 2) candidates and
(M, P - 0.75P, 2) extra points, in that order, final level first, then the auxiliary levels. Every draw goes through
`_draw`, which uses the given generator, or takes recorded points from `sampling_points` (used by the parity tests).
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from .configuration_pat import PATConfig


@dataclass
class PATTarget:
    """Targets of one image: `class_ids` (T,) int64 and `masks` (T, H, W) float 0/1."""

    class_ids: torch.Tensor
    masks: torch.Tensor


@dataclass
class PATMatch:
    """Hungarian result of one image: `query_ids`, `target_ids` (both (min(Q, T),) int64) and `cost` (Q, T)."""

    query_ids: torch.Tensor
    target_ids: torch.Tensor
    cost: torch.Tensor


@dataclass
class PATLossLevel:
    """Per-level record: matches per image and the mask-loss points (M, P, 2), for inspection and parity checks."""

    matches: list[PATMatch] = field(default_factory=list)
    mask_points: torch.Tensor | None = None


def labels_to_targets(labels: torch.Tensor, num_classes: int, ignore_index: int) -> list[PATTarget]:
    """(B, H, W) semantic label maps -> one `PATTarget` per image (sorted class ids present, one binary mask each)."""
    targets = []
    for label_map in labels:
        class_ids = torch.unique(label_map)
        class_ids = class_ids[class_ids != ignore_index]
        if (class_ids < 0).any() or (class_ids >= num_classes).any():
            raise ValueError(
                f"`labels` holds class ids {class_ids.tolist()} but the vocabulary has {num_classes} classes "
                f"(valid ids 0..{num_classes - 1}, ignore_index={ignore_index})."
            )
        masks = (label_map[None] == class_ids[:, None, None]).float()
        targets.append(PATTarget(class_ids=class_ids.long(), masks=masks))
    return targets


def point_sample(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(M, h, w) maps at (M, P, 2) points in [0, 1) -> (M, P), bilinear, align_corners=False."""
    grid = 2.0 * points[:, :, None, :] - 1.0  # (M, P, 1, 2)
    return F.grid_sample(maps[:, None], grid.to(maps.dtype), align_corners=False)[:, 0, :, 0]


def pairwise_sigmoid_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(Q, P) logits, (T, P) targets -> (Q, T) mean BCE-with-logits over the points."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    cost = torch.einsum("qp,tp->qt", pos, targets) + torch.einsum("qp,tp->qt", neg, 1 - targets)
    return cost / logits.shape[1]


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(Q, P) logits, (T, P) targets -> (Q, T) Dice loss with +1 smoothing."""
    probs = logits.sigmoid()
    numerator = 2 * torch.einsum("qp,tp->qt", probs, targets)
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """(M, P) logits and targets -> scalar: sum over masks of the mean BCE over points, / num_masks."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """(M, P) logits and targets -> scalar: sum over masks of 1 - (2|x.t| + 1) / (|x| + |t| + 1), / num_masks."""
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


class _PointSource:
    """Hands out the random points of one loss pass: fresh draws from `generator`, or recorded ones."""

    def __init__(self, recorded: dict | None, generator: torch.Generator | None):
        self.recorded = recorded
        self.generator = generator

    def draw(self, level: str, key: str, shape, device, index: int | None = None) -> torch.Tensor:
        if self.recorded is not None:
            try:
                points = self.recorded[level][key]
            except KeyError as error:
                raise KeyError(f"`loss_sampling_points` has no entry [{level!r}][{key!r}].") from error
            points = points[index] if index is not None else points
            if tuple(points.shape) != tuple(shape):
                raise ValueError(f"Recorded points [{level!r}][{key!r}] have shape {tuple(points.shape)}, need {shape}.")
            return points.to(device)
        generator_device = self.generator.device if self.generator is not None else "cpu"
        return torch.rand(*shape, generator=self.generator, device=generator_device).to(device)


class PATHungarianMatcher(nn.Module):
    """class logits (B, Q, N+1) and mask logits (B, Q, h, w) vs targets -> one `PATMatch` per image."""

    def __init__(self, cost_class: float, cost_mask: float, cost_dice: float, num_points: int):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("At least one matching cost must be non-zero.")
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def forward(self, class_logits, mask_logits, targets: list[PATTarget], points: _PointSource, level: str):
        matches = []
        for b, target in enumerate(targets):
            probs = class_logits[b].float().softmax(-1)
            # all queries and targets of an image share one point set
            coords = points.draw(level, "matcher_points", (1, self.num_points, 2), mask_logits.device, index=b)[0]
            pred = point_sample(mask_logits[b], coords.expand(mask_logits.shape[1], -1, -1)).float()
            tgt = point_sample(target.masks.to(mask_logits), coords.expand(len(target.class_ids), -1, -1)).float()
            cost = (
                self.cost_mask * pairwise_sigmoid_ce(pred, tgt)
                - self.cost_class * probs[:, target.class_ids]
                + self.cost_dice * pairwise_dice(pred, tgt)
            )
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            matches.append(PATMatch(torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long), cost))
        return matches


def sample_uncertain_points(
    mask_logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_ratio: float, points, level: str
) -> torch.Tensor:
    """(M, h, w) logits -> (M, P, 2) points: the most uncertain (|logit| smallest) of 3P candidates, plus random ones.

    PointRend's importance sampling, with the same draw order: candidates first, then the extra random points.
    """
    num_masks = mask_logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_ratio * num_points)
    candidates = points.draw(level, "oversampled_points", (num_masks, num_candidates, 2), mask_logits.device)
    uncertainty = -point_sample(mask_logits, candidates).abs()
    top = torch.topk(uncertainty, k=num_uncertain, dim=1).indices  # (M, P_uncertain)
    chosen = torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2))
    extra = points.draw(level, "random_points", (num_masks, num_points - num_uncertain, 2), mask_logits.device)
    return torch.cat([chosen, extra], dim=1)


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
    def count_masks(targets: list[PATTarget], device) -> float:
        """Total number of target masks, averaged over processes when distributed, at least 1."""
        num_masks = torch.tensor([float(sum(len(t.class_ids) for t in targets))], device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(num_masks)
            num_masks = num_masks / torch.distributed.get_world_size()
        return max(num_masks.item(), 1.0)

    def classification_loss(self, class_logits: torch.Tensor, targets, matches) -> torch.Tensor:
        """(B, Q, N+1) logits -> CE where matched queries target their class and the rest the void class."""
        num_classes = class_logits.shape[-1] - 1
        target_classes = torch.full(class_logits.shape[:2], num_classes, dtype=torch.long, device=class_logits.device)
        for b, (target, match) in enumerate(zip(targets, matches)):
            target_classes[b, match.query_ids] = target.class_ids[match.target_ids].to(class_logits.device)
        weight = torch.ones(num_classes + 1, device=class_logits.device)
        weight[-1] = self.no_object_weight
        return F.cross_entropy(class_logits.float().transpose(1, 2), target_classes, weight)

    def mask_losses(self, mask_logits, targets, matches, num_masks, points, level):
        """(B, Q, h, w) logits -> (BCE, Dice, points) on importance-sampled points of the matched pairs."""
        pred = torch.cat([mask_logits[b, m.query_ids] for b, m in enumerate(matches)])  # (M, h, w)
        gt = torch.cat([t.masks[m.target_ids] for t, m in zip(targets, matches)]).to(pred)  # (M, H, W)
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
        loss_ce = self.classification_loss(class_logits, targets, matches)
        loss_mask, loss_dice, coords = self.mask_losses(mask_logits, targets, matches, num_masks, points, level)
        return {"loss_ce": loss_ce, "loss_mask": loss_mask, "loss_dice": loss_dice}, PATLossLevel(matches, coords)

    def forward(self, levels, targets: list[PATTarget], sampling_points: dict | None = None, generator=None):
        """`levels`: [(class_logits, mask_logits)] with the final level FIRST, then aux levels 0, 1, ...

        Returns (total weighted loss, weighted terms, unweighted terms, per-level records).
        `sampling_points` = {"final" | "aux0" | ...: {"matcher_points": [(1, P, 2) per image],
        "oversampled_points": (M, 3P, 2), "random_points": (M, P/4, 2)}} replaces every random draw.
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
