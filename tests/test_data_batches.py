"""Model inputs (`modeling_pat/apps/data/batches.py`): the training and evaluation datasets, the epoch callback and
the padding collator."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from modeling_pat import PATImageProcessor
from modeling_pat.apps.data import (
    EpochCallback,
    SANTrainAugmentation,
    SegmentationCollator,
    SegmentationEvalDataset,
    SegmentationTrainDataset,
    load_split,
)

import segmentation_layouts as layouts
from segmentation_layouts import ADE_STEMS


@pytest.fixture
def ade_split(tmp_path):
    layouts.make_ade150(tmp_path, ADE_STEMS[:2], ADE_STEMS[2:3], prepared=True)
    return load_split("ade150", "train", data_root=str(tmp_path))


def test_train_dataset_is_a_function_of_seed_epoch_index(ade_split):
    processor = PATImageProcessor()
    augment = SANTrainAugmentation(crop_size=64, short_edges=(64, 96))
    dataset = SegmentationTrainDataset(ade_split, augment, processor, seed=7)
    first = dataset[1]
    assert first["pixel_values"].shape == (3, 64, 64) and first["labels"].dtype == torch.int64
    assert torch.equal(first["pixel_values"], dataset[1]["pixel_values"])
    dataset.set_epoch(1)
    assert not torch.equal(first["pixel_values"], dataset[1]["pixel_values"])
    twin = SegmentationTrainDataset(ade_split, augment, processor, seed=7)
    twin.set_epoch(1)
    assert torch.equal(dataset[1]["labels"], twin[1]["labels"])
    # padding area: normalised 128-grey pixels, ignored labels
    height, width = first["image_sizes"].tolist()
    assert (first["labels"][height:] == 255).all() and (first["labels"][:, width:] == 255).all()
    # the epoch reaches DataLoader workers through shared memory
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=1, persistent_workers=True)
    dataset.set_epoch(3)
    from_worker = next(iter(loader))["pixel_values"][0]
    dataset.set_epoch(0)
    from_worker_epoch0 = next(iter(loader))["pixel_values"][0]
    reference = SegmentationTrainDataset(ade_split, augment, processor, seed=7)
    reference.set_epoch(3)
    assert torch.equal(from_worker, reference[0]["pixel_values"])
    assert torch.equal(from_worker_epoch0, twin.__class__(ade_split, augment, processor, seed=7)[0]["pixel_values"])


def test_train_dataset_builds_the_colour_tables_before_workers_fork(ade_split, monkeypatch):
    """The HSV tables are built when the dataset is made (in the process that will fork the workers), not at a
    worker's first image; without the colour jitter they are not built at all."""
    from modeling_pat.apps.data import augmentation as module

    for name in ("_hue_saturation_of_every_rgb", "_rgb_of_every_hsv"):
        fresh = module._EveryTriple(getattr(module, name).formula, getattr(module, name).first_levels,
                                    getattr(module, name).outputs, getattr(module, name).packed_dtype)
        monkeypatch.setattr(module, name, fresh)
    plain = SANTrainAugmentation(crop_size=64, photometric_distortion=False)
    SegmentationTrainDataset(ade_split, plain, PATImageProcessor())
    assert module._rgb_of_every_hsv._table is None and module._hue_saturation_of_every_rgb._table is None
    SegmentationTrainDataset(ade_split, SANTrainAugmentation(crop_size=64), PATImageProcessor())
    assert module._rgb_of_every_hsv._table.nbytes == 180 * 256 * 256 * 4
    assert module._hue_saturation_of_every_rgb._table.nbytes == 256 * 256 * 256 * 2


def test_epoch_callback_counts_from_the_global_step(ade_split):
    dataset = SegmentationTrainDataset(ade_split, SANTrainAugmentation(crop_size=64), PATImageProcessor())
    callback = EpochCallback(dataset)
    args = SimpleNamespace(gradient_accumulation_steps=2)
    loader = list(range(5))  # 5 batches -> 3 optimiser steps per epoch
    for global_step, epoch in ((0, 0), (3, 1), (7, 2), (9, 3)):
        callback.on_epoch_begin(args, SimpleNamespace(global_step=global_step), None, train_dataloader=loader)
        assert dataset.epoch == epoch


def test_eval_dataset_uses_san_test_resize_and_keeps_ground_truth(ade_split):
    dataset = SegmentationEvalDataset(ade_split, PATImageProcessor())  # shortest edge 640, long edge <= 2560
    example = dataset[0]
    original = tuple(example["original_sizes"].tolist())
    assert tuple(example["semantic_labels"].shape) == original
    height, width = example["image_sizes"].tolist()
    assert min(height, width) == 640 and tuple(example["pixel_values"].shape[-2:]) == (height, width)
    assert abs(max(height, width) / 640 - max(original) / min(original)) < 0.01


def test_eval_dataset_reads_a_three_pixel_high_image_channels_last(recwarn):
    image = np.random.default_rng(0).integers(0, 256, size=(3, 40, 3), dtype=np.uint8)  # (3, 40, 3): both layouts fit
    split = SimpleNamespace(load=lambda index: (image, np.zeros((3, 40), np.int64), "strip"))
    example = SegmentationEvalDataset(split, PATImageProcessor(do_resize=False))[0]
    assert example["original_sizes"].tolist() == [3, 40]
    assert not [w for w in recwarn if "channels first or last" in str(w.message)]  # the layout is said, not guessed


def _eval_example(height: int, width: int) -> dict:
    return {"pixel_values": torch.ones(3, height, width), "image_sizes": torch.tensor([height, width]),
            "original_sizes": torch.tensor([height, width]), "semantic_labels": torch.zeros(height, width).long(),
            "file_name": f"{height}x{width}"}


def test_collator_groups_an_eval_batch_that_one_wide_image_would_pad():
    examples = [_eval_example(64, 64), _eval_example(64, 480), _eval_example(60, 50)]
    batch = SegmentationCollator()(examples)
    assert next(iter(batch)) == "image_sizes"  # Trainer counts examples by the first tensor
    assert batch["padding_groups"] == [[0, 2], [1]]
    assert [tuple(p.shape) for p in batch["pixel_values"]] == [(2, 3, 64, 64), (1, 3, 64, 480)]
    assert [tuple(label.shape) for label in batch["semantic_labels"]] == [(64, 64), (64, 480), (60, 50)]
    assert batch["file_name"] == ["64x64", "64x480", "60x50"] and batch["image_sizes"][1].tolist() == [64, 480]
    similar = SegmentationCollator()([_eval_example(64, 64), _eval_example(64, 96)])
    assert "padding_groups" not in similar and tuple(similar["pixel_values"].shape) == (2, 3, 64, 96)
    train = SegmentationCollator()([{"pixel_values": torch.zeros(3, 64, width)} for width in (64, 480)])
    assert tuple(train["pixel_values"].shape) == (2, 3, 64, 480)  # training batches stay one tensor


def test_collator_pads_mixed_sizes():
    examples = [
        {"pixel_values": torch.ones(3, 40, 70), "image_sizes": torch.tensor([40, 70]),
         "original_sizes": torch.tensor([80, 140]), "semantic_labels": torch.zeros(80, 140, dtype=torch.long),
         "file_name": "a"},
        {"pixel_values": torch.ones(3, 64, 33), "image_sizes": torch.tensor([64, 33]),
         "original_sizes": torch.tensor([64, 33]), "semantic_labels": torch.ones(64, 33, dtype=torch.long),
         "file_name": "b"},
    ]
    batch = SegmentationCollator(ignore_index=65535, size_divisibility=32)(examples)
    assert batch["pixel_values"].shape == (2, 3, 64, 96)
    assert batch["pixel_values"][0, :, 40:].abs().sum() == 0 and batch["pixel_values"][1, :, :, 33:].abs().sum() == 0
    assert batch["semantic_labels"].shape == (2, 80, 140)
    assert (batch["semantic_labels"][1, 64:] == 65535).all() and (batch["semantic_labels"][1, :64, :33] == 1).all()
    assert batch["image_sizes"].tolist() == [[40, 70], [64, 33]] and batch["file_name"] == ["a", "b"]
    train = SegmentationCollator()([{"pixel_values": torch.zeros(3, 50, 50), "labels": torch.zeros(50, 50).long()}])
    assert train["labels"].shape == (1, 64, 64) and (train["labels"][0, 50:] == 255).all()
    assert train["image_sizes"].tolist() == [[50, 50]]
