"""The offline mean-IoU evaluate module (`metrics/mean_iou`): Hub arguments / outputs, hand-computed IoUs, the
absent-class convention, the ignore index, and how it relates to detectron2's SemSegEvaluator before / after 2022."""

import importlib.util
from pathlib import Path

import evaluate
import numpy as np
import pytest


METRIC_DIR = Path(__file__).resolve().parent.parent / "metrics" / "mean_iou"
OUTPUT_KEYS = {"mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy"}


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(str(METRIC_DIR))


@pytest.fixture(scope="module")
def functions():
    spec = importlib.util.spec_from_file_location("mean_iou_module", METRIC_DIR / "mean_iou.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hub_readme_oracle(metric):
    """The three small maps of the Hub module's README (num_labels=10, ignore_index=255)."""
    predicted = [np.array([[1, 2], [3, 4], [5, 255]]), np.array([[2, 7], [9, 2], [3, 6]]),
                 np.array([[2, 2, 3], [8, 2, 4], [3, 255, 2]])]
    actual = [np.array([[0, 3], [5, 4], [6, 255]]), np.array([[1, 7], [9, 2], [3, 6]]),
              np.array([[1, 2, 2], [8, 2, 1], [3, 255, 1]])]
    results = metric.compute(predictions=predicted, references=actual, num_labels=10, ignore_index=255,
                             reduce_labels=False)
    assert set(results) == OUTPUT_KEYS
    assert results["mean_iou"] == pytest.approx(0.4775, abs=1e-6)
    assert results["mean_accuracy"] == pytest.approx(0.591667, abs=1e-6)
    assert results["overall_accuracy"] == pytest.approx(0.526316, abs=1e-6)
    np.testing.assert_allclose(results["per_category_iou"], [0, 0, 0.375, 0.4, 0.5, 0, 0.5, 1, 1, 1])
    np.testing.assert_allclose(results["per_category_accuracy"], [0, 0, 0.75, 2 / 3, 1, 0, 0.5, 1, 1, 1])


def test_absent_classes_and_ignore_by_hand(metric, functions):
    """Pixels (row-major): (p0, r0), (p4, r1), (p1, r1), (p3, r=ignore).
    class 0: I 1, U 1 -> 1.0; class 1: I 1, pred 1, ref 2 -> U 2 -> 0.5; class 4: only predicted -> IoU 0 (counted);
    class 3: predicted only on an ignored pixel -> absent -> NaN; class 2: absent from both -> NaN."""
    prediction = np.array([[0, 4], [1, 3]])
    reference = np.array([[0, 1], [1, 255]])
    results = metric.compute(predictions=[prediction], references=[reference], num_labels=5, ignore_index=255)
    iou = results["per_category_iou"]
    assert iou[0] == 1.0 and iou[1] == 0.5 and iou[4] == 0.0
    assert np.isnan(iou[2]) and np.isnan(iou[3])
    assert results["mean_iou"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    accuracy = results["per_category_accuracy"]
    assert accuracy[0] == 1.0 and accuracy[1] == 0.5 and np.isnan(accuracy[4])
    assert results["mean_accuracy"] == pytest.approx(0.75)
    assert results["overall_accuracy"] == pytest.approx(2 / 3)
    # detectron2 after 2022-07-06 / CAT-Seg: only classes with ground-truth pixels enter the mean
    areas = functions.total_intersect_and_union([prediction], [reference], 5, 255)
    assert functions.mean_iou_over_present_classes(areas[0], areas[1], areas[3]) == pytest.approx(0.75)
    # nan_to_num replaces the NaNs of every output
    filled = metric.compute(predictions=[prediction], references=[reference], num_labels=5, ignore_index=255,
                            nan_to_num=-1)
    assert filled["per_category_iou"][2] == -1 and filled["per_category_accuracy"][4] == -1


def test_sums_over_images_not_mean_of_images(metric):
    """IoU is pooled over all images: class 0 has I = 1 + 3, U = 2 + 4 -> 4/6 (a per-image mean would give 0.625)."""
    predictions = [np.array([[0, 0]]), np.array([[0, 0, 0, 1]])]
    references = [np.array([[0, 1]]), np.array([[0, 0, 0, 0]])]
    results = metric.compute(predictions=predictions, references=references, num_labels=2, ignore_index=255)
    assert results["per_category_iou"][0] == pytest.approx(4 / 6)
    assert results["per_category_iou"][1] == pytest.approx(0.0)


def test_sixteen_bit_ignore_and_out_of_range(metric):
    """ADE-847 / PC-459 store 16-bit labels with ignore 65535; values >= num_labels count as no class."""
    prediction = np.array([[846, 0], [5, 900]], dtype=np.uint16)
    reference = np.array([[846, 65535], [5, 5]], dtype=np.uint16)
    results = metric.compute(predictions=[prediction], references=[reference], num_labels=847, ignore_index=65535)
    iou = results["per_category_iou"]
    assert iou[846] == 1.0 and iou[5] == 0.5  # the 900 prediction is no class: class 5 has I 1, U 2
    assert np.isnan(iou[0])  # predicted only where the reference is ignored
    assert results["mean_iou"] == pytest.approx(0.75)
    assert results["overall_accuracy"] == pytest.approx(2 / 3)


def test_reduce_labels_and_label_map(metric):
    """reduce_labels: ADE20K's 0 (other) -> 255 and v -> v - 1; label_map maps reference ids first (as the Hub)."""
    prediction = np.array([[0, 1, 2]])
    reduced = metric.compute(predictions=[prediction], references=[np.array([[1, 0, 3]])], num_labels=3,
                             ignore_index=255, reduce_labels=True)
    assert reduced["per_category_iou"][0] == 1.0 and reduced["per_category_iou"][2] == 1.0
    assert np.isnan(reduced["per_category_iou"][1])
    mapped = metric.compute(predictions=[prediction], references=[np.array([[7, 1, 8]])], num_labels=3,
                            ignore_index=255, label_map={7: 0, 8: 2})
    np.testing.assert_allclose(mapped["per_category_iou"], [1.0, 1.0, 1.0])


def _detectron2_mean_iou(predictions, references, num_classes, ignore, fixed: bool) -> float:
    """detectron2 SemSegEvaluator's formulas: `fixed=False` as in v0.6, `fixed=True` after commit f3c1bc1."""
    conf = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for pred, gt in zip(predictions, references):
        gt = gt.astype(np.int64).copy()
        gt[gt == ignore] = num_classes
        conf += np.bincount((num_classes + 1) * pred.reshape(-1) + gt.reshape(-1),
                            minlength=conf.size).reshape(conf.shape)
    tp = conf.diagonal()[:-1].astype(float)
    pos_gt = conf[:-1, :-1].sum(axis=0).astype(float)
    pos_pred = conf[:-1, :-1].sum(axis=1).astype(float)
    union = pos_gt + pos_pred - tp
    acc_valid = pos_gt > 0
    iou = np.full(num_classes, np.nan)
    if fixed:
        valid = acc_valid & (union > 0)
        iou[valid] = tp[valid] / union[valid]
        return float(iou[valid].sum() / valid.sum())
    iou[acc_valid] = tp[acc_valid] / union[acc_valid]
    return float(iou[acc_valid].sum() / ((pos_gt + pos_pred) > 0).sum())


def test_conventions_match_detectron2_versions(metric, functions):
    """The module equals detectron2 <= v0.6; `mean_iou_over_present_classes` equals detectron2 after 2022-07-06."""
    rng = np.random.default_rng(0)
    predictions = [rng.integers(0, 12, size=(9, 7)) for _ in range(4)]
    references = [np.where(rng.random((9, 7)) < 0.1, 255, rng.integers(0, 6, size=(9, 7))) for _ in range(4)]
    results = metric.compute(predictions=predictions, references=references, num_labels=12, ignore_index=255)
    assert results["mean_iou"] == pytest.approx(_detectron2_mean_iou(predictions, references, 12, 255, fixed=False))
    areas = functions.total_intersect_and_union(predictions, references, 12, 255)
    gt_only = functions.mean_iou_over_present_classes(areas[0], areas[1], areas[3])
    assert gt_only == pytest.approx(_detectron2_mean_iou(predictions, references, 12, 255, fixed=True))
    assert gt_only > results["mean_iou"]  # classes 6..11 are only predicted: they pull the Hub / v0.6 mean down


def test_per_image_areas_give_compute(metric, functions):
    """The streaming route (per-image areas, summed, metrics_from_areas) equals compute() on the whole lists."""
    rng = np.random.default_rng(1)
    predictions = [rng.integers(0, 5, size=(6, 8)) for _ in range(3)]
    references = [np.where(rng.random((6, 8)) < 0.2, 255, rng.integers(0, 5, size=(6, 8))) for _ in range(3)]
    whole = metric.compute(predictions=predictions, references=references, num_labels=5, ignore_index=255)
    totals = sum(np.stack(functions.intersect_and_union(p, r, 5, 255)) for p, r in zip(predictions, references))
    streamed = functions.metrics_from_areas(*totals)
    for key in OUTPUT_KEYS:
        np.testing.assert_allclose(streamed[key], whole[key])
    # and both equal a brute-force per-class count
    valid = [r != 255 for r in references]
    for c in range(5):
        inter = sum(int(((p == c) & (r == c) & v).sum()) for p, r, v in zip(predictions, references, valid))
        union = sum(int((((p == c) | (r == c)) & v).sum()) for p, r, v in zip(predictions, references, valid))
        assert whole["per_category_iou"][c] == pytest.approx(inter / union)
