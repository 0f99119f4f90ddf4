"""Loss units: targets from label maps, matcher on hand-made cases, point sampling, each loss term."""

import pytest
import torch
import torch.nn.functional as F

from modeling_pat.segmentation_loss import (
    PATHungarianMatcher,
    PATSegmentationLoss,
    PATTarget,
    _PointSource,
    dice_loss,
    labels_to_targets,
    pairwise_dice,
    pairwise_sigmoid_ce,
    point_sample,
    sample_uncertain_points,
    sigmoid_ce_loss,
)

from conftest import tiny_config


def test_labels_to_targets_drops_ignore_and_sorts_classes():
    labels = torch.tensor([[[3, 3, 255], [0, 0, 3]]])
    (target,) = labels_to_targets(labels, num_classes=4, ignore_index=255)
    assert target.class_ids.tolist() == [0, 3]
    assert target.masks.tolist() == [[[0, 0, 0], [1, 1, 0]], [[1, 1, 0], [0, 0, 1]]]


def test_labels_out_of_vocabulary_raise():
    with pytest.raises(ValueError, match="vocabulary has 2 classes"):
        labels_to_targets(torch.tensor([[[0, 5]]]), num_classes=2, ignore_index=255)


def test_point_sample_is_bilinear_at_pixel_centres():
    maps = torch.arange(12.0).reshape(1, 3, 4)
    centres = torch.tensor([[[0.5 / 4, 0.5 / 3], [3.5 / 4, 2.5 / 3], [2.0 / 4, 1.5 / 3]]])  # (x, y)
    values = point_sample(maps, centres)
    torch.testing.assert_close(values, torch.tensor([[0.0, 11.0, 5.5]]))


def test_pairwise_costs_match_elementwise_losses():
    logits, targets = torch.randn(3, 50), (torch.rand(2, 50) > 0.5).float()
    ce = pairwise_sigmoid_ce(logits, targets)
    dice = pairwise_dice(logits, targets)
    for q in range(3):
        for t in range(2):
            expected_ce = F.binary_cross_entropy_with_logits(logits[q], targets[t])
            torch.testing.assert_close(ce[q, t], expected_ce)
            torch.testing.assert_close(dice[q, t], dice_loss(logits[q : q + 1], targets[t : t + 1], 1.0))


def test_matcher_finds_the_planted_assignment():
    # three targets; query 4 predicts target 0, query 1 target 2, query 2 target 1; the others predict noise
    masks = torch.zeros(3, 8, 8)
    masks[0, :4], masks[1, 4:, :4], masks[2, 4:, 4:] = 1, 1, 1
    target = PATTarget(class_ids=torch.tensor([0, 1, 2]), masks=masks)
    mask_logits = torch.full((1, 5, 8, 8), -8.0)
    class_logits = torch.zeros(1, 5, 4)
    for query, t in ((4, 0), (1, 2), (2, 1)):
        mask_logits[0, query] = masks[t] * 16 - 8
        class_logits[0, query, t] = 10.0
    matcher = PATHungarianMatcher(2.0, 5.0, 5.0, num_points=200)
    (match,) = matcher(class_logits, mask_logits, [target], _PointSource(None, torch.Generator().manual_seed(0)), "final")
    assert dict(zip(match.query_ids.tolist(), match.target_ids.tolist())) == {1: 2, 2: 1, 4: 0}
    assert match.cost.shape == (5, 3)


def test_uncertain_points_keep_the_most_uncertain_candidates_then_add_random_ones():
    logits = torch.linspace(-5, 5, 64).reshape(1, 8, 8)
    candidates, extra = torch.rand(1, 120, 2), torch.rand(1, 10, 2)
    recorded = {"f": {"oversampled_points": candidates, "random_points": extra}}
    points = sample_uncertain_points(logits, 40, 3.0, 0.75, _PointSource(recorded, None), "f")
    assert points.shape == (1, 40, 2)
    uncertainty = point_sample(logits, candidates).abs()[0]
    kept = point_sample(logits, points[:, :30]).abs()[0]
    torch.testing.assert_close(kept.sort().values, uncertainty.sort().values[:30])
    torch.testing.assert_close(points[:, 30:], extra)


def test_recorded_points_replace_random_draws_exactly():
    config = tiny_config(train_num_points=16)
    loss = PATSegmentationLoss(config)
    labels = torch.randint(0, 3, (2, 32, 32))
    targets = labels_to_targets(labels, 3, 255)
    levels = [(torch.randn(2, 12, 4), torch.randn(2, 12, 2, 2))]
    generator = torch.Generator().manual_seed(3)
    total, weighted, _, records = loss(levels, targets, generator=generator)
    # the same draws, recorded, reproduce the same losses
    replay = torch.Generator().manual_seed(3)
    num_masks = sum(len(t.class_ids) for t in targets)
    recorded = {"final": {
        "matcher_points": [torch.rand(1, 16, 2, generator=replay) for _ in range(2)],
        "oversampled_points": torch.rand(num_masks, 48, 2, generator=replay),
        "random_points": torch.rand(num_masks, 4, 2, generator=replay),
    }}
    total2, weighted2, _, _ = loss(levels, targets, sampling_points=recorded)
    torch.testing.assert_close(total, total2)
    assert set(weighted) == {"loss_ce", "loss_mask", "loss_dice"}
    with pytest.raises(ValueError, match="have shape"):
        recorded["final"]["random_points"] = torch.rand(num_masks, 5, 2)
        loss(levels, targets, sampling_points=recorded)


def test_losses_vanish_for_a_perfect_prediction_and_are_weighted_by_config():
    config = tiny_config(train_num_points=256)
    loss = PATSegmentationLoss(config)
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    targets = labels_to_targets(labels, 2, 255)
    mask_logits = torch.full((1, 12, 16, 16), -30.0)
    mask_logits[0, 5] = 30.0  # query 5 covers the whole image ...
    class_logits = torch.tensor([-30.0, -30.0, 30.0]).repeat(1, 12, 1)  # all void ...
    class_logits[0, 5] = torch.tensor([30.0, -30.0, -30.0])  # ... but query 5, which says class 0
    _, weighted, unweighted, records = loss(
        [(class_logits, mask_logits)], targets, generator=torch.Generator().manual_seed(0)
    )
    assert records["final"].matches[0].query_ids.tolist() == [5]
    assert unweighted["loss_ce"] < 1e-6
    # grid_sample pads with zeros, so the sampled *targets* fade at the image border (as in the reference):
    # the mask terms are small for a perfect prediction, not zero; an inverted mask costs far more
    assert unweighted["loss_dice"] < 0.1
    inverted = mask_logits.clone()
    inverted[0, 5] = -30.0
    _, _, unweighted_inverted, _ = loss(
        [(class_logits, inverted)], targets, generator=torch.Generator().manual_seed(0)
    )
    assert unweighted["loss_mask"] * 5 < unweighted_inverted["loss_mask"]
    assert unweighted_inverted["loss_dice"] > 0.9
    for name, weight in (("loss_ce", 2.0), ("loss_mask", 5.0), ("loss_dice", 5.0)):
        torch.testing.assert_close(weighted[name], unweighted[name] * weight)
    assert sigmoid_ce_loss(torch.full((1, 4), 20.0), torch.ones(1, 4), 1.0) < 1e-8
    assert dice_loss(torch.full((1, 4), 20.0), torch.ones(1, 4), 1.0) < 1e-6
