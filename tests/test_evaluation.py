"""Benchmark evaluation (`modeling_pat/apps/evaluation.py`): batches of very different sizes, on the tiny random SAN."""

from pathlib import Path
from types import SimpleNamespace

import evaluate
import numpy as np
import torch
from transformers import TrainingArguments

from modeling_pat import PATForOpenVocabSegmentation, PATImageProcessor
from modeling_pat.apps.data import SegmentationCollator, SegmentationEvalDataset
from modeling_pat.apps.evaluation import PATSegmentationTrainer, _EvalTask, class_embeddings_for

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


def _trainer(tmp_path, **arguments) -> PATSegmentationTrainer:
    model = tiny_model()
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, **arguments)
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



class _Split:
    """A stand-in `SegmentationSplit`: three RGB photos, one of them a very wide strip, with random class labels."""

    name, display_name, dataset_type, split = "toy", "Toy", "toy", "validation"
    class_names, num_labels, ignore_index = CLASS_NAMES, len(CLASS_NAMES), 255
    shapes = ((64, 64), (64, 480), (60, 50))

    def __len__(self):
        return len(self.shapes)

    def load(self, index: int):
        rng = np.random.default_rng(index)
        height, width = self.shapes[index]
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        return image, rng.integers(0, self.num_labels, size=(height, width)), f"image{index}"


def test_trainer_evaluate_with_grouped_batches_equals_one_image_per_batch(tmp_path, monkeypatch):
    """The whole Trainer loop (device placement, counting, gathering) over a batch split into padding groups."""
    dataset = SegmentationEvalDataset(_Split(), PATImageProcessor(do_resize=False))
    forward, seen = PATForOpenVocabSegmentation.forward, []

    def recording_forward(self, pixel_values=None, **kwargs):
        seen.append(tuple(pixel_values.shape))
        return forward(self, pixel_values=pixel_values, **kwargs)

    monkeypatch.setattr(PATForOpenVocabSegmentation, "forward", recording_forward)
    results = {}
    for batch_size in (3, 1):
        trainer = _trainer(tmp_path, per_device_eval_batch_size=batch_size, remove_unused_columns=False)
        trainer.data_collator = SegmentationCollator()
        metrics = trainer.evaluate(dataset)
        results[batch_size] = trainer.segmentation_results["eval"]
        assert metrics["eval_num_images"] == 3
    assert seen[:2] == [(2, 3, 64, 64), (1, 3, 64, 480)]  # the batch of 3: the strip padded no other image
    assert results[3] == results[1]
