"""Model inputs from a split: the training and evaluation torch datasets, the padding collator and the epoch
callback."""

from dataclasses import dataclass

import numpy as np
import torch
from transformers import TrainerCallback

from ...image_processing_pat import PATImageProcessor, get_padded_size, pad_bottom_right, padding_groups
from .augmentation import SANTrainAugmentation, build_colour_tables
from .splits import SegmentationSplit


def _normalize(image: np.ndarray, processor: PATImageProcessor) -> torch.Tensor:
    """uint8 [H_img, W_img, 3] -> float32 [3, H_img, W_img] normalised exactly as the image processor does (no resize,
    no pad)."""
    # channels first while still uint8: the float arithmetic then runs over contiguous memory, about twice as fast as
    # through the channels-last strides (the same elementwise operations, so the same values)
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    normalised = processor.rescale_and_normalize(
        tensor, processor.do_rescale, processor.rescale_factor, processor.do_normalize,
        processor.image_mean, processor.image_std,
    )
    return normalised[0]


class SegmentationTrainDataset(torch.utils.data.Dataset):
    """Training examples: SAN augmentation, then CLIP normalisation -> {pixel_values, labels, image_sizes}.

    The augmentation of example i in epoch e draws from `numpy.random.default_rng([seed, e, i])`, independent of
    workers, processes and interruptions. The epoch lives in shared memory, so `set_epoch` (called each epoch by
    `EpochCallback`) also reaches persistent DataLoader workers.
    """

    def __init__(self, split: SegmentationSplit, augmentation: SANTrainAugmentation, processor: PATImageProcessor,
                 seed: int = 0):
        if augmentation.ignore_index != split.ignore_index:
            raise ValueError(
                f"augmentation.ignore_index={augmentation.ignore_index} but {split.name} uses {split.ignore_index}."
            )
        self.split = split
        self.augmentation = augmentation
        self.processor = processor
        self.seed = int(seed)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        if augmentation.photometric_distortion:
            build_colour_tables()  # before any worker forks, so that all share the parent's tables

    def __len__(self) -> int:
        return len(self.split)

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def __getitem__(self, index: int) -> dict:
        image, label, _ = self.split.load(index)
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        image, label, (height, width) = self.augmentation(image, label, rng)
        return {
            "pixel_values": _normalize(image, self.processor),
            "labels": torch.from_numpy(np.ascontiguousarray(label)),
            "image_sizes": torch.tensor([height, width], dtype=torch.int64),
        }


class SegmentationEvalDataset(torch.utils.data.Dataset):
    """Evaluation examples with SAN's test-time resize (the processor's shortest edge, 640 by default) ->
    {pixel_values, image_sizes, original_sizes, semantic_labels (at the original size), file_name}."""

    def __init__(self, split: SegmentationSplit, processor: PATImageProcessor):
        self.split = split
        self.processor = processor

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict:
        image, label, stem = self.split.load(index)
        # `load` gives [H_out, W_out, 3] arrays: said explicitly, so that a 3- or 4-pixel-high image is no ambiguous
        # shape.
        inputs = self.processor(images=image, do_pad=False, input_data_format="channels_last", return_tensors="pt")
        return {
            "pixel_values": inputs["pixel_values"][0],
            "image_sizes": inputs["image_sizes"][0],
            "original_sizes": inputs["original_sizes"][0],
            "semantic_labels": torch.from_numpy(label),
            "file_name": stem,
        }


@dataclass
class SegmentationCollator:
    """Pads mixed sizes into one batch: images at the bottom / right with 0 (after normalisation, as detectron2's
    `ImageList.from_tensors`) to a multiple of `size_divisibility`, `labels` (model resolution) and
    `semantic_labels` (original resolution, evaluation) with `ignore_index`. The model builds the per-class binary
    masks from `labels` itself, so none are built here.

    Evaluation batches (examples with `semantic_labels`) whose sizes are too different to pad together
    (`padding_groups`: one very wide image among small ones) are split: `pixel_values` is then a list with one
    padded tensor per group, `padding_groups` the images' batch indices per group, and `semantic_labels` a list of
    unpadded maps; the other keys stay in batch order. Training batches are always one padded tensor."""

    ignore_index: int = 255
    size_divisibility: int = 32

    def __call__(self, examples: list[dict]) -> dict:
        sizes = [tuple(e["pixel_values"].shape[-2:]) for e in examples]
        if "semantic_labels" in examples[0]:
            groups = padding_groups(sizes, self.size_divisibility)
            if len(groups) > 1:
                return self._grouped_eval_batch(examples, groups)
        batch = {}
        padded = get_padded_size(sizes, self.size_divisibility)
        batch["pixel_values"] = self._padded_pixels(examples)
        if "labels" in examples[0]:
            batch["labels"] = torch.stack([pad_bottom_right(e["labels"], padded, self.ignore_index) for e in examples])
        for key in ("image_sizes", "original_sizes"):
            if key in examples[0]:
                batch[key] = torch.stack([torch.as_tensor(e[key], dtype=torch.int64) for e in examples])
        if "image_sizes" not in batch:
            batch["image_sizes"] = torch.tensor(sizes, dtype=torch.int64)
        if "semantic_labels" in examples[0]:
            label_size = get_padded_size([e["semantic_labels"].shape for e in examples], size_divisibility=1)
            batch["semantic_labels"] = torch.stack(
                [pad_bottom_right(e["semantic_labels"], label_size, self.ignore_index) for e in examples]
            )
        if "file_name" in examples[0]:
            batch["file_name"] = [e["file_name"] for e in examples]
        return batch

    def _padded_pixels(self, examples: list[dict]) -> torch.Tensor:
        """(B, 3, Hp, Wp): the examples' images padded with 0 to their largest size, a multiple of the divisibility."""
        padded = get_padded_size([e["pixel_values"].shape[-2:] for e in examples], self.size_divisibility)
        return torch.stack([pad_bottom_right(e["pixel_values"], padded, 0.0) for e in examples])

    def _grouped_eval_batch(self, examples: list[dict], groups: list[list[int]]) -> dict:
        # `image_sizes` first: Trainer counts a batch's examples by the first tensor it finds in it.
        batch = {key: torch.stack([torch.as_tensor(e[key], dtype=torch.int64) for e in examples])
                 for key in ("image_sizes", "original_sizes")}
        batch["padding_groups"] = groups
        batch["pixel_values"] = [self._padded_pixels([examples[i] for i in group]) for group in groups]
        batch["semantic_labels"] = [e["semantic_labels"] for e in examples]
        if "file_name" in examples[0]:
            batch["file_name"] = [e["file_name"] for e in examples]
        return batch


class EpochCallback(TrainerCallback):
    """Tells `SegmentationTrainDataset` the epoch at the start of each one (also after a resume), from the global step
    as Trainer computes it. accelerate's `DataLoaderShard.set_epoch` reaches the sampler but not the dataset when the
    sampler has its own `set_epoch`, hence this callback."""

    def __init__(self, dataset: SegmentationTrainDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        epoch = 0
        if train_dataloader is not None and len(train_dataloader) > 0:
            batches = len(train_dataloader)
            accumulation = args.gradient_accumulation_steps
            steps_per_epoch = max(batches // accumulation + int(batches % accumulation > 0), 1)
            epoch = state.global_step // steps_per_epoch
        self.dataset.set_epoch(epoch)


__all__ = [
    "EpochCallback",
    "SegmentationCollator",
    "SegmentationEvalDataset",
    "SegmentationTrainDataset",
]
