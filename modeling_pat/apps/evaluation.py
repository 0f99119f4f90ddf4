"""Benchmark evaluation with `Trainer`: SAN's protocol, mean IoU per benchmark, a Table-I-style summary.

`PATSegmentationTrainer` is `PATTrainer` (per-term loss logging, SAN weight-decay groups) whose evaluation follows
SAN / detectron2: each image is segmented with the evaluated dataset's own vocabulary (text embeddings computed once
per dataset), in fp32, at SAN's test-time resize; the prediction is brought back to the ground truth's own size
(masks: bilinear to the padded input, crop, bilinear to the original size, then `semantic_map`)
and compared with the untouched ground truth under that dataset's ignore value (255, or 65535 for the 16-bit
PC-459 / ADE-847 labels). Only per-image class areas (intersection, union, prediction, label) leave each process:
Trainer gathers them across processes (`gather_for_metrics`, duplicates of the last uneven batch dropped), and
their sums give the metrics through the `metrics/mean_iou` evaluate module's own functions.
"""

import functools
import json
import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic_files import write_text_atomic
from ..image_processing_pat import semantic_map
from .data import SegmentationEvalDataset
from .model_card import write_model_card
from .training import PATTrainer
from .visualization import save_label_map


def metric_functions(metric) -> dict:
    """The plain functions of a loaded `metrics/mean_iou` module (`evaluate.load(path)` returns the Metric object;
    its module holds `intersect_and_union`, `metrics_from_areas`, `mean_iou_over_present_classes`)."""
    module = sys.modules[type(metric).__module__]
    names = ("intersect_and_union", "metrics_from_areas", "mean_iou_over_present_classes")
    missing = [name for name in names if not hasattr(module, name)]
    if missing:
        raise TypeError(f"{module.__name__} is not the repository's metrics/mean_iou module (missing {missing}).")
    return {name: getattr(module, name) for name in names}


@torch.no_grad()
def class_embeddings_for(model, class_names: list[str]) -> torch.Tensor:
    """(N, D) fp32 unit text embeddings of `class_names` with the model's prompt templates (one cached vocabulary;
    the model encodes it in chunks of classes)."""
    with torch.autocast(device_type=model.device.type, enabled=False):
        return model.get_class_embeddings(class_names=list(class_names)).float()


@dataclass
class _EvalTask:
    dataset: SegmentationEvalDataset
    class_embeddings: torch.Tensor
    prefix: str
    predictions_dir: Path | None = None


class PATSegmentationTrainer(PATTrainer):
    """`PATTrainer` + SAN-protocol mean IoU on `SegmentationEvalDataset`s (one or a dict of them).

    Args (besides Trainer's):
        metric: `evaluate.load("metrics/mean_iou")`; its functions compute the areas and the final numbers.
        predictions_dir: where `predict()` writes one label PNG per image (`<dir>/<prefix>/<file_name>.png`).

    After `evaluate()` / `predict()`, `self.segmentation_results[prefix]` holds the per-class IoU / accuracy of that
    dataset next to the scalars that Trainer logs (`<prefix>_mean_iou`, `<prefix>_mean_iou_gt_classes`,
    `<prefix>_mean_accuracy`, `<prefix>_overall_accuracy`, `<prefix>_num_images`).
    """

    def __init__(self, *args, metric=None, predictions_dir=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.metric_fns = metric_functions(metric) if metric is not None else None
        self.predictions_dir = Path(predictions_dir) if predictions_dir else None
        self.segmentation_results: dict[str, dict] = {}
        self._task: _EvalTask | None = None
        self._plain_compute_metrics = self.compute_metrics

    # -- entry points ------------------------------------------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, str) and isinstance(self.eval_dataset, dict):  # Trainer's loop over a dict passes names
            dataset = self.eval_dataset[dataset]
        if isinstance(dataset, SegmentationEvalDataset):
            with self._segmentation_task(dataset, metric_key_prefix):
                return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test"):
        if isinstance(test_dataset, SegmentationEvalDataset):
            save_dir = self.predictions_dir / metric_key_prefix if self.predictions_dir is not None else None
            with self._segmentation_task(test_dataset, metric_key_prefix, save_dir):
                return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    @contextmanager
    def _segmentation_task(self, dataset: SegmentationEvalDataset, prefix: str, predictions_dir=None):
        if self.metric_fns is None:
            raise ValueError("PATSegmentationTrainer needs `metric=evaluate.load('metrics/mean_iou')` to evaluate.")
        model = self.accelerator.unwrap_model(self.model)
        embeddings = class_embeddings_for(model, dataset.split.class_names)
        if predictions_dir is not None and self.args.should_save:
            predictions_dir.mkdir(parents=True, exist_ok=True)
        self._task = _EvalTask(dataset, embeddings, prefix, predictions_dir)
        self.compute_metrics = self._compute_segmentation_metrics
        try:
            yield
        finally:
            self._task = None
            self.compute_metrics = self._plain_compute_metrics

    # -- one batch -----------------------------------------------------------------------------------------------------
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        task = self._task
        if task is None:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        split = task.dataset.split
        inputs = self._prepare_inputs(inputs)
        if self.is_fsdp_enabled:  # FSDP's own forward gathers the shards; precision follows its policy
            forward, dtype = model, torch.float32
        else:
            # The class's forward, not the instance attribute: accelerate wraps the latter in autocast under
            # --bf16 / --fp16, and SAN evaluates in fp32 (a model cast by --bf16_full_eval keeps its dtype).
            module = self.accelerator.unwrap_model(model)
            forward, dtype = functools.partial(type(module).forward, module), next(module.parameters()).dtype
        original_sizes = inputs["original_sizes"].tolist()
        # A batch of very different sizes comes as groups, each padded to its own size (`SegmentationCollator`).
        groups = inputs.get("padding_groups") or [list(range(len(original_sizes)))]
        pixel_groups = inputs["pixel_values"] if "padding_groups" in inputs else [inputs["pixel_values"]]
        maps = [None] * len(original_sizes)
        for group, pixel_values in zip(groups, pixel_groups, strict=True):
            group_maps = self._segment(forward, dtype, pixel_values, inputs["image_sizes"][group],
                                       [original_sizes[i] for i in group], task.class_embeddings)
            for index, label_map in zip(group, group_maps, strict=True):
                maps[index] = label_map
        intersect_and_union = self.metric_fns["intersect_and_union"]
        areas = []
        for label_map, reference, (height, width) in zip(maps, inputs["semantic_labels"], original_sizes):
            prediction = label_map.cpu().numpy()
            areas.append(np.stack(intersect_and_union(
                prediction, reference[:height, :width].cpu().numpy(), split.num_labels, split.ignore_index
            )))
            if task.predictions_dir is not None:
                name = inputs["file_name"][len(areas) - 1]
                path = task.predictions_dir / f"{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                save_label_map(prediction, split.num_labels, path)
        areas = torch.from_numpy(np.stack(areas).round().astype(np.int64)).to(inputs["original_sizes"].device)
        return None, areas, inputs["original_sizes"]

    @staticmethod
    def _segment(forward, dtype, pixel_values, image_sizes, original_sizes, class_embeddings) -> list[torch.Tensor]:
        """One padded batch -> its label maps at the original sizes, in fp32 as SAN evaluates."""
        with torch.no_grad(), torch.autocast(device_type=pixel_values.device.type, enabled=False):
            outputs = forward(
                pixel_values=pixel_values.to(dtype),
                image_sizes=image_sizes,
                class_embeddings=class_embeddings.to(pixel_values.device),  # classified in fp32
                return_dict=True,
            )
        padded_size = tuple(pixel_values.shape[-2:])
        return [  # the processor's post-processing: band by band, never the full [classes, H, W] scores
            semantic_map(class_logits, mask_logits, padded_size=padded_size, image_size=image_size,
                         output_size=output_size)["segmentation"]
            for class_logits, mask_logits, image_size, output_size in zip(
                outputs.class_queries_logits, outputs.masks_queries_logits, image_sizes.tolist(), original_sizes)
        ]

    def _compute_segmentation_metrics(self, eval_prediction) -> dict:
        """Summed per-image areas (images, 4, N) of all processes -> scalars for Trainer; per-class arrays kept aside."""
        task = self._task
        fns = self.metric_fns
        areas = np.asarray(eval_prediction.predictions).reshape(-1, 4, task.dataset.split.num_labels)
        totals = areas.astype(np.float64).sum(axis=0)
        results = fns["metrics_from_areas"](*totals)
        gt_classes = fns["mean_iou_over_present_classes"](totals[0], totals[1], totals[3])
        split = task.dataset.split
        self.segmentation_results[task.prefix] = {
            "dataset": split.name,
            "display_name": split.display_name,
            "dataset_type": split.dataset_type,
            "split": split.split,
            "num_images": int(areas.shape[0]),
            "num_classes": split.num_labels,
            "ignore_index": split.ignore_index,
            "mean_iou": float(results["mean_iou"]),
            "mean_iou_gt_classes": gt_classes,
            "mean_accuracy": float(results["mean_accuracy"]),
            "overall_accuracy": float(results["overall_accuracy"]),
            "per_category_iou": {n: _finite_or_none(v) for n, v in zip(split.class_names, results["per_category_iou"])},
            "per_category_accuracy": {
                n: _finite_or_none(v) for n, v in zip(split.class_names, results["per_category_accuracy"])
            },
        }
        return {
            "mean_iou": float(results["mean_iou"]),
            "mean_iou_gt_classes": gt_classes,
            "mean_accuracy": float(results["mean_accuracy"]),
            "overall_accuracy": float(results["overall_accuracy"]),
            "num_images": int(areas.shape[0]),
        }

    # -- model card ------------------------------------------------------------------------------------------------------
    def create_model_card(self, *args, **kwargs):
        """The package's card (`model_card.write_model_card`) with the benchmark results, instead of Trainer's."""
        if not self.is_world_process_zero():
            return
        output_dir = Path(self.args.output_dir)
        if (output_dir / "config.json").is_file():
            write_model_card(
                output_dir,
                eval_results=model_card_eval_results(self.segmentation_results.values()),
                training_summary=getattr(self, "training_summary", None),
                model_name=kwargs.get("model_name"),
            )


def _finite_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


# -- tables ----------------------------------------------------------------------------------------------------------------
TABLE_ORDER = ("voc20", "pc59", "ade150", "pc459", "ade847", "coco171")
SHORT_NAMES = {"voc20": "VOC-20", "pc59": "PC-59", "ade150": "A-150", "pc459": "PC-459", "ade847": "A-847",
               "coco171": "COCO-171"}


def _ordered(results) -> list[dict]:
    results = list(results)
    rank = {name: i for i, name in enumerate(TABLE_ORDER)}
    return sorted(results, key=lambda r: (rank.get(r["dataset"], len(rank)), r["dataset"], r["split"]))


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def results_markdown(results, model_name: str) -> str:
    """A Table-I-style row (mIoU in %, one column per dataset), then one detailed row per dataset."""
    rows = _ordered(results)
    names = [SHORT_NAMES.get(r["dataset"], r["dataset"]) + ("" if r["split"] == "validation" else f" ({r['split']})")
             for r in rows]
    lines = [
        f"| model | {' | '.join(names)} |",
        "|---" * (len(rows) + 1) + "|",
        f"| {model_name} | {' | '.join(_pct(r['mean_iou']) for r in rows)} |",
        "",
        "mIoU in % (`metrics/mean_iou`: classes absent from both prediction and ground truth are skipped, classes "
        "only predicted count as 0 — detectron2 <= v0.6). `mIoU (GT classes)`: mean over classes present in the "
        "ground truth only (detectron2 after 2022-07-06, CAT-Seg).",
        "",
        "| dataset | split | images | classes | ignore | mIoU | mIoU (GT classes) | mAcc | pAcc |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['display_name']} | {r['split']} | {r['num_images']} | {r['num_classes']} | {r['ignore_index']} | "
            f"{_pct(r['mean_iou'])} | {_pct(r['mean_iou_gt_classes'])} | {_pct(r['mean_accuracy'])} | "
            f"{_pct(r['overall_accuracy'])} |"
        )
    return "\n".join(lines) + "\n"


def write_results_table(results, output_dir, model_name: str) -> tuple[Path, Path]:
    """`eval_results_table.md` and `eval_results_table.json` (with the per-class IoU / accuracy) in `output_dir`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = _ordered(results)
    markdown = output_dir / "eval_results_table.md"
    write_text_atomic(markdown, results_markdown(rows, model_name))  # atomic: a crash keeps the previous table
    table = output_dir / "eval_results_table.json"
    rows_json = [{k: _finite_or_none(v) if isinstance(v, float) else v for k, v in row.items()} for row in rows]
    write_text_atomic(table, json.dumps({"model": model_name, "results": rows_json}, indent=1))
    return markdown, table


def model_card_eval_results(results) -> list[dict]:
    """Rows for `write_model_card(eval_results=...)` (mIoU in %, as the papers report it)."""
    return [
        {"dataset_name": r["display_name"], "dataset_type": r["dataset_type"], "dataset_split": r["split"],
         "mean_iou": round(100 * r["mean_iou"], 2)}
        for r in _ordered(results)
        if r["mean_iou"] is not None and math.isfinite(r["mean_iou"])
    ]


__all__ = [
    "PATSegmentationTrainer",
    "class_embeddings_for",
    "metric_functions",
    "model_card_eval_results",
    "results_markdown",
    "write_results_table",
]
