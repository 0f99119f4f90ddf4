"""The batched criterion (one host copy per level, batch-wide indexing, one matcher draw per batch) against a plain
per-image reference of SAN's criterion: the same losses and gradients, and the same random stream on the CPU."""

import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from modeling_pat.segmentation_loss import (
    PATSegmentationLoss,
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


NUM_CLASSES, QUERIES, POINTS = 5, 12, 64


def reference_targets(labels, ignore_index=255):
    """One image at a time, as Mask2Former builds them: torch.unique per label map."""
    targets = []
    for label_map in labels:
        ids = torch.unique(label_map)
        ids = ids[ids != ignore_index]
        targets.append((ids, (label_map[None] == ids[:, None, None]).float()))
    return targets


def reference_level(class_logits, mask_logits, targets, recorded, num_masks, config):
    """SAN's criterion for one level, image by image: matcher, CE, point-sampled BCE + Dice."""
    matches = []
    with torch.no_grad():
        probs = class_logits.softmax(-1)
        for b, (ids, masks) in enumerate(targets):
            coords = recorded["matcher_points"][b][0]
            pred = point_sample(mask_logits[b], coords.expand(QUERIES, -1, -1))
            tgt = point_sample(masks, coords.expand(len(ids), -1, -1))
            cost = 5.0 * pairwise_sigmoid_ce(pred, tgt) - 2.0 * probs[b][:, ids] + 5.0 * pairwise_dice(pred, tgt)
            matches.append([torch.as_tensor(x) for x in linear_sum_assignment(cost.numpy())])
    target_classes = torch.full(class_logits.shape[:2], NUM_CLASSES, dtype=torch.long)
    for b, (rows, cols) in enumerate(matches):
        target_classes[b, rows] = targets[b][0][cols]
    weight = torch.ones(NUM_CLASSES + 1)
    weight[-1] = config.no_object_weight
    loss_ce = F.cross_entropy(class_logits.transpose(1, 2), target_classes, weight)
    pred = torch.cat([mask_logits[b, rows] for b, (rows, _) in enumerate(matches)])
    gt = torch.cat([targets[b][1][cols] for b, (_, cols) in enumerate(matches)])
    source = _PointSource({"final": recorded}, None)
    with torch.no_grad():
        coords = sample_uncertain_points(pred.detach(), POINTS, 3.0, 0.75, source, "final")
        gt_points = point_sample(gt, coords)
    pred_points = point_sample(pred, coords)
    loss_mask = sigmoid_ce_loss(pred_points, gt_points, num_masks)
    loss_dice = dice_loss(pred_points, gt_points, num_masks)
    return 2.0 * loss_ce + 5.0 * loss_mask + 5.0 * loss_dice, matches


def batch_with_points(seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (3, 4, 4), generator=generator).repeat_interleave(8, 1)
    labels = labels.repeat_interleave(8, 2)
    labels[0, :, :10] = 255
    labels[2] = 255  # an image without targets
    labels[2, :8, :8] = 4
    class_logits = torch.randn(3, QUERIES, NUM_CLASSES + 1, generator=generator, requires_grad=True)
    mask_logits = torch.randn(3, QUERIES, 8, 8, generator=generator, requires_grad=True)
    num_masks = sum(len(ids) for ids, _ in reference_targets(labels))
    recorded = {
        "matcher_points": [torch.rand(1, POINTS, 2, generator=generator) for _ in range(3)],
        "oversampled_points": torch.rand(num_masks, 3 * POINTS, 2, generator=generator),
        "random_points": torch.rand(num_masks, POINTS // 4, 2, generator=generator),
    }
    return labels, class_logits, mask_logits, recorded, num_masks


def test_targets_equal_per_image_unique():
    labels = batch_with_points()[0]
    for target, (ids, masks) in zip(labels_to_targets(labels, NUM_CLASSES, 255), reference_targets(labels)):
        assert target.class_ids.dtype == torch.long
        assert torch.equal(target.class_ids, ids)
        assert torch.equal(target.masks, masks)


def test_batched_criterion_equals_the_per_image_reference_in_loss_and_gradients():
    config = tiny_config(train_num_points=POINTS, num_queries=QUERIES)
    labels, class_logits, mask_logits, recorded, num_masks = batch_with_points()
    expected, expected_matches = reference_level(
        class_logits, mask_logits, reference_targets(labels), recorded, float(num_masks), config
    )
    expected_grads = torch.autograd.grad(expected, (class_logits, mask_logits))
    criterion = PATSegmentationLoss(config)
    total, _, _, records = criterion(
        [(class_logits, mask_logits)], labels_to_targets(labels, NUM_CLASSES, 255), {"final": recorded}
    )
    grads = torch.autograd.grad(total, (class_logits, mask_logits))
    torch.testing.assert_close(total, expected, atol=1e-6, rtol=0)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=0)
    for match, (rows, cols) in zip(records["final"].matches, expected_matches):
        assert torch.equal(match.query_ids, rows) and torch.equal(match.target_ids, cols)


def test_one_matcher_draw_per_batch_is_the_per_image_stream_on_the_cpu():
    # a seeded CPU run draws the numbers it drew when the matcher drew one point set per image
    config = tiny_config(train_num_points=POINTS, num_queries=QUERIES)
    labels, class_logits, mask_logits, _, num_masks = batch_with_points(1)
    replay = torch.Generator().manual_seed(7)
    recorded = {
        "matcher_points": [torch.rand(1, POINTS, 2, generator=replay) for _ in range(3)],
        "oversampled_points": torch.rand(num_masks, 3 * POINTS, 2, generator=replay),
        "random_points": torch.rand(num_masks, POINTS // 4, 2, generator=replay),
    }
    criterion = PATSegmentationLoss(config)
    targets = labels_to_targets(labels, NUM_CLASSES, 255)
    drawn, _, _, records = criterion([(class_logits, mask_logits)], targets, generator=torch.Generator().manual_seed(7))
    replayed, _, _, replay_records = criterion([(class_logits, mask_logits)], targets, {"final": recorded})
    assert torch.equal(drawn, replayed)
    assert torch.equal(records["final"].mask_points, replay_records["final"].mask_points)


def test_points_without_a_generator_are_drawn_on_the_device_they_are_used_on(monkeypatch):
    devices = []
    real_rand = torch.rand

    def recording_rand(*shape, generator=None, device=None):
        devices.append(torch.device(device))
        return real_rand(*shape, generator=generator, device="cpu")

    monkeypatch.setattr(torch, "rand", recording_rand)
    _PointSource(None, None).draw("final", "random_points", (2, 3, 2), torch.device("meta"))
    _PointSource(None, torch.Generator()).draw("final", "random_points", (2, 3, 2), torch.device("meta"))
    assert devices == [torch.device("meta"), torch.device("cpu")]  # a generator keeps its own device


def test_pat_pixel_draws_without_a_generator_happen_on_the_features_device(monkeypatch):
    from modeling_pat.tokenization_loss import sample_pixel_indices

    devices = []
    real_randint = torch.randint

    def recording_randint(low, high, size, generator=None, device=None):
        devices.append(torch.device(device))
        return real_randint(low, high, size, generator=generator, device="cpu")

    monkeypatch.setattr(torch, "randint", recording_randint)
    sample_pixel_indices(64, 10, None, torch.device("meta"))
    sample_pixel_indices(64, 10, torch.Generator(), torch.device("meta"))
    assert devices == [torch.device("meta"), torch.device("cpu")]


def test_valid_pixel_mask_is_built_without_reading_the_sizes_back(monkeypatch):
    from modeling_pat.model_inputs import valid_pixel_mask

    pixel_values = torch.zeros(3, 3, 8, 12)
    sizes = torch.tensor([[8, 12], [5, 7], [1, 12]])
    expected = torch.zeros(3, 1, 8, 12)
    for b, (height, width) in enumerate(sizes.tolist()):
        expected[b, :, :height, :width] = 1.0

    def no_host_read(self):
        raise AssertionError("image sizes read back to the host")

    monkeypatch.setattr(torch.Tensor, "tolist", no_host_read)
    assert torch.equal(valid_pixel_mask(pixel_values, sizes), expected)
    assert torch.equal(valid_pixel_mask(pixel_values, None), torch.ones(3, 1, 8, 12))


def test_device_input_ids_hit_the_text_cache_without_a_host_copy(monkeypatch):
    # ids on an accelerator (simulated: the host check says no) are compared on the device, never copied to the host
    import modeling_pat.class_embeddings as modeling
    from conftest import tiny_model

    model = tiny_model()
    ids = model.prompt_input_ids(["cat", "dog"])
    monkeypatch.setattr(modeling, "ids_on_host", lambda input_ids: False)
    encoded = []
    real_encode = model._encode_class_names
    monkeypatch.setattr(model, "_encode_class_names", lambda input_ids: encoded.append(1) or real_encode(input_ids))

    def no_host_copy(self, *args, **kwargs):
        raise AssertionError("input_ids copied to the host")

    first = model.get_class_embeddings(input_ids=ids)
    monkeypatch.setattr(torch.Tensor, "numpy", no_host_copy)
    monkeypatch.setattr(torch.Tensor, "cpu", no_host_copy)
    assert model.get_class_embeddings(input_ids=ids.clone()) is first  # same content, new tensor: a cache hit
    other = model.get_class_embeddings(input_ids=ids.flip(0))  # same shape, other vocabulary: encoded again
    assert len(encoded) == 2
    torch.testing.assert_close(other, first.flip(0))


@pytest.mark.parametrize("preset", ["san-tiny", "pat-tiny"])
def test_training_forward_makes_no_blocking_copy_of_host_values(monkeypatch, preset):
    # on an accelerator, torch.tensor(values, device=...) / new_tensor is a copy that waits for the device: none in a
    # training step (copies of host values go with non_blocking=True, fills happen on the device)
    from conftest import tiny_model

    model = tiny_model(preset=preset).train()
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 3, (2, 64, 64))
    model(pixel_values=pixel_values, labels=labels)  # the vocabulary's text embeddings are cached from here on
    blocking = []

    def recording(make):
        def wrapped(*args, **kwargs):
            if kwargs.get("device") is not None:
                blocking.append(args)
            return make(*args, **kwargs)

        return wrapped

    real_new_tensor = torch.Tensor.new_tensor
    for name in ("tensor", "as_tensor"):
        monkeypatch.setattr(torch, name, recording(getattr(torch, name)))
    monkeypatch.setattr(torch.Tensor, "new_tensor", lambda self, *a, **k: blocking.append(a) or real_new_tensor(self, *a, **k))
    outputs = model(pixel_values=pixel_values, labels=labels, image_sizes=torch.tensor([[64, 64], [48, 60]]))
    assert blocking == []
    assert outputs.padded_sizes.tolist() == [[64, 64], [64, 64]]
