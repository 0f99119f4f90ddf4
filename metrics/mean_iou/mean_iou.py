"""Mean Intersection-over-Union as an `evaluate` module that works offline: `evaluate.load("metrics/mean_iou")`.

Same `compute()` arguments and output keys as the Hub's `evaluate-metric/mean_iou` (which `evaluate.load("mean_iou")`
fetches from the network):

    compute(predictions, references, num_labels, ignore_index, nan_to_num=None, label_map=None, reduce_labels=False)
    -> {"mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy"}

Absent-class convention (pinned; the Hub's): per class c, over all images together,
    IoU_c = |pred = c and ref = c| / |pred = c or ref = c|   (pixels with ref == ignore_index dropped first)
    Acc_c = |pred = c and ref = c| / |ref = c|
A class absent from both the predictions and the references has IoU 0/0 = NaN and is left out of `mean_iou`
(nanmean). A class predicted somewhere but absent from the references has IoU 0 and *is* counted. `mean_accuracy`
is the nanmean of Acc_c, so it covers the classes present in the references. See README.md for how this relates
to detectron2's `SemSegEvaluator` (SAN, CAT-Seg).

Besides the `evaluate` class, the module exposes plain numpy functions that a large evaluation can call per image
without storing every map (`intersect_and_union`, `metrics_from_areas`, `mean_iou_over_present_classes`).
"""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """\
Mean IoU of semantic segmentation maps: per class, the pixels where prediction and reference agree divided by the
pixels where either has the class, summed over all images; the mean is over the classes that occur in the
predictions or the references (classes absent from both are NaN and skipped). Also reports per-class accuracy, its
mean and the overall pixel accuracy. Pixels whose reference equals `ignore_index` are not counted.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`List[ndarray]`): predicted label maps, one [H, W] integer array per image.
    references (`List[ndarray]`): ground-truth label maps, same sizes as the predictions.
    num_labels (`int`): number of classes; values outside [0, num_labels - 1] are not counted as any class.
    ignore_index (`int`): reference value that is not evaluated (e.g. 255, or 65535 for 16-bit labels).
    nan_to_num (`int`, *optional*): replace NaN values in every output by this number.
    label_map (`dict`, *optional*): old id -> new id, applied to the references first.
    reduce_labels (`bool`, *optional*, defaults to `False`): ADE20K convention on the references: 0 -> 255, every
        other value v -> v - 1 (and 254, i.e. a former 255, -> 255).
Returns:
    `Dict[str, float | ndarray]`:
        mean_iou (`float`): nanmean of the per-class IoU.
        mean_accuracy (`float`): nanmean of the per-class accuracy.
        overall_accuracy (`float`): correctly labelled pixels / evaluated pixels.
        per_category_iou (`ndarray` of shape `(num_labels,)`): IoU per class; NaN where the class is absent from
            both predictions and references.
        per_category_accuracy (`ndarray` of shape `(num_labels,)`): accuracy per class; NaN where the class is
            absent from the references.
Examples:
    >>> import numpy as np
    >>> mean_iou = evaluate.load("metrics/mean_iou")
    >>> predicted = np.array([[2, 7], [9, 2], [3, 6]], dtype=np.uint16)
    >>> ground_truth = np.array([[1, 7], [9, 2], [3, 6]], dtype=np.uint16)
    >>> results = mean_iou.compute(predictions=[predicted], references=[ground_truth], num_labels=10, ignore_index=255)
    >>> print(round(float(results["mean_iou"]), 4))
    0.75
"""

_CITATION = """\
@software{MMSegmentation_Contributors_OpenMMLab_Semantic_Segmentation_2020,
  author = {{MMSegmentation Contributors}},
  license = {Apache-2.0},
  month = {7},
  title = {{OpenMMLab Semantic Segmentation Toolbox and Benchmark}},
  url = {https://github.com/open-mmlab/mmsegmentation},
  year = {2020}
}
"""


def _as_array(label_map) -> np.ndarray:
    """A nested list, numpy array or torch tensor -> int64 numpy array (negative values stay negative)."""
    if hasattr(label_map, "detach"):  # torch tensor, without importing torch
        label_map = label_map.detach().cpu().numpy()
    return np.asarray(label_map).astype(np.int64)


def _class_histogram(values: np.ndarray, num_labels: int) -> np.ndarray:
    """Pixel count per class 0..num_labels-1; values outside that range are not counted (as np.histogram does)."""
    values = values[(values >= 0) & (values < num_labels)]
    return np.bincount(values, minlength=num_labels).astype(np.float64)


def intersect_and_union(pred_label, label, num_labels, ignore_index, label_map=None, reduce_labels=False):
    """One image -> (area_intersect, area_union, area_pred_label, area_label), each float64 of shape (num_labels,)."""
    pred_label = _as_array(pred_label)
    label = _as_array(label)
    if pred_label.shape != label.shape:
        raise ValueError(f"Prediction of shape {pred_label.shape} and reference of shape {label.shape} differ.")
    if label_map is not None:  # in place and in dict order, as the Hub module (so {1: 2, 2: 3} sends 1 to 3)
        for old_id, new_id in label_map.items():
            label[label == int(old_id)] = int(new_id)
    if reduce_labels:
        label[label == 0] = 255
        label = label - 1
        label[label == 254] = 255
    valid = label != ignore_index
    pred_label = pred_label[valid]
    label = label[valid]
    area_intersect = _class_histogram(pred_label[pred_label == label], num_labels)
    area_pred_label = _class_histogram(pred_label, num_labels)
    area_label = _class_histogram(label, num_labels)
    area_union = area_pred_label + area_label - area_intersect
    return area_intersect, area_union, area_pred_label, area_label


def total_intersect_and_union(results, gt_seg_maps, num_labels, ignore_index, label_map=None, reduce_labels=False):
    """Sum of `intersect_and_union` over image pairs -> four float64 arrays of shape (num_labels,)."""
    if len(results) != len(gt_seg_maps):
        raise ValueError(f"Got {len(results)} predictions but {len(gt_seg_maps)} references.")
    totals = np.zeros((4, num_labels), dtype=np.float64)
    for result, gt_seg_map in zip(results, gt_seg_maps):
        totals += np.stack(
            intersect_and_union(result, gt_seg_map, num_labels, ignore_index, label_map, reduce_labels)
        )
    return totals[0], totals[1], totals[2], totals[3]


def metrics_from_areas(
    total_area_intersect, total_area_union, total_area_pred_label, total_area_label, nan_to_num=None
) -> dict:
    """Summed per-class areas -> the five outputs of `compute()` (the absent-class convention lives here)."""
    total_area_intersect = np.asarray(total_area_intersect, dtype=np.float64)
    total_area_union = np.asarray(total_area_union, dtype=np.float64)
    total_area_label = np.asarray(total_area_label, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 -> NaN is the convention, not an accident
        iou = total_area_intersect / total_area_union
        accuracy = total_area_intersect / total_area_label
        overall_accuracy = total_area_intersect.sum() / total_area_label.sum()
    metrics = {
        "mean_iou": _nanmean(iou),
        "mean_accuracy": _nanmean(accuracy),
        "overall_accuracy": float(overall_accuracy),
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
    }
    if nan_to_num is not None:
        metrics = {name: np.nan_to_num(value, nan=nan_to_num) for name, value in metrics.items()}
    return metrics


def mean_iou_over_present_classes(total_area_intersect, total_area_union, total_area_label) -> float:
    """detectron2 `SemSegEvaluator` after commit f3c1bc1 (2022-07-06) and CAT-Seg's convention: the mean over the
    classes that have reference pixels only (classes predicted but absent from the references are left out)."""
    total_area_label = np.asarray(total_area_label, dtype=np.float64)
    present = total_area_label > 0
    if not present.any():
        return float("nan")
    intersect = np.asarray(total_area_intersect, dtype=np.float64)[present]
    union = np.asarray(total_area_union, dtype=np.float64)[present]
    return float(np.mean(intersect / union))


def _nanmean(values: np.ndarray) -> float:
    """np.nanmean without the all-NaN RuntimeWarning (returns NaN then)."""
    finite = ~np.isnan(values)
    return float(values[finite].mean()) if finite.any() else float("nan")


def mean_iou(results, gt_seg_maps, num_labels, ignore_index, nan_to_num=None, label_map=None, reduce_labels=False):
    """The Hub module's function: lists of maps -> the five outputs of `compute()`."""
    areas = total_intersect_and_union(results, gt_seg_maps, num_labels, ignore_index, label_map, reduce_labels)
    return metrics_from_areas(*areas, nan_to_num=nan_to_num)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    # uint16, as the Hub module: 16-bit labels (ADE-847, PC-459, ignore 65535) fit
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
                }
            ),
            reference_urls=["https://github.com/open-mmlab/mmsegmentation/blob/main/mmseg/evaluation/metrics/iou_metric.py"],
        )

    def _compute(
        self,
        predictions,
        references,
        num_labels: int,
        ignore_index: int,
        nan_to_num: int | None = None,
        label_map: dict[int, int] | None = None,
        reduce_labels: bool = False,
    ):
        return mean_iou(
            results=predictions,
            gt_seg_maps=references,
            num_labels=num_labels,
            ignore_index=ignore_index,
            nan_to_num=nan_to_num,
            label_map=label_map,
            reduce_labels=reduce_labels,
        )
