"""Benchmark evaluation (`modeling_pat/evaluation.py`): batches of very different sizes, on the tiny random SAN."""

from pathlib import Path
from types import SimpleNamespace

import evaluate
import torch
from transformers import TrainingArguments

from modeling_pat.data import SegmentationCollator
from modeling_pat.evaluation import PATSegmentationTrainer, _EvalTask, class_embeddings_for

from conftest import tiny_model


METRIC_DIR = Path(__file__).resolve().parent.parent / "metrics" / "mean_iou"
CLASS_NAMES = ["cat", "sky", "grass"]


def _example(index: int, height: int, width: int) -> dict:
    generator = torch.Generator().manual_seed(index)
    return {
        "pixel_values": torch.randn(3, height, width, generator=generator),
        "image_sizes": torch.tensor([height, width]),
        "original_sizes": torch.tensor([height + 3, width + 5]),  # post-processing resizes back to these
        "semantic_labels": torch.randint(0, len(CLASS_NAMES), (height + 3, width + 5), generator=generator),
        "file_name": f"image{index}",
    }


def _trainer(tmp_path) -> PATSegmentationTrainer:
    model = tiny_model()
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = PATSegmentationTrainer(model=model, args=args, metric=evaluate.load(str(METRIC_DIR)))
    split = SimpleNamespace(num_labels=len(CLASS_NAMES), ignore_index=255)
    trainer._task = _EvalTask(SimpleNamespace(split=split), class_embeddings_for(model, CLASS_NAMES), "eval")
    return trainer


def test_a_very_wide_image_does_not_pad_the_others_and_results_equal_per_image(tmp_path):
    examples = [_example(0, 64, 64), _example(1, 64, 480), _example(2, 64, 64)]
    collator = SegmentationCollator()
    batch = collator(examples)
    assert batch["padding_groups"] == [[0, 2], [1]]
    assert [tuple(p.shape) for p in batch["pixel_values"]] == [(2, 3, 64, 64), (1, 3, 64, 480)]
    trainer = _trainer(tmp_path)
    _, areas, sizes = trainer.prediction_step(trainer.model, batch, prediction_loss_only=False)
    one_by_one = [trainer.prediction_step(trainer.model, collator([e]), False)[1] for e in examples]
    assert torch.equal(areas, torch.cat(one_by_one))  # (3, 4, C) areas, in batch order
    assert sizes.tolist() == [[67, 69], [67, 485], [67, 69]]

