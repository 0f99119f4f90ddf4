"""The image-segmentation pipeline's `subtask` for SAN/PAT: semantic by default, instance and panoptic segments with
real scores, thresholds passed on, stuff labels fused in panoptic, clear errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from modeling_pat import PATProcessor
from modeling_pat.configuration_pat import stuff_class_names
from modeling_pat.apps.pipeline import register_pipeline

from test_mask_segments import golden_model


register_pipeline()

CAT = Path(__file__).parent / "fixtures" / "samples" / "chelsea.png"  # 451 x 300
LENIENT = {"threshold": 0.0, "overlap_mask_area_threshold": 0.0}  # random weights: keep every segment


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    """The tiny SAN with the golden reference weights, saved with a processor of short side 96 px (fast)."""
    folder = tmp_path_factory.mktemp("golden_san")
    model = golden_model()
    model.save_pretrained(folder)
    PATProcessor.from_config(model.config, size={"shortest_edge": 96, "longest_edge": 384}).save_pretrained(folder)
    return pipeline("image-segmentation", model=str(folder))


def masks(annotation) -> list[np.ndarray]:
    return [np.asarray(entry["mask"]) for entry in annotation]


def test_semantic_is_the_default(segmenter):
    labels = ["cat", "sky", "grass"]
    default = segmenter(str(CAT), candidate_labels=labels)
    semantic = segmenter(str(CAT), candidate_labels=labels, subtask="semantic")
    assert [e["label"] for e in default] == [e["label"] for e in semantic]
    assert all(np.array_equal(a, b) for a, b in zip(masks(default), masks(semantic)))


@pytest.mark.parametrize("subtask", ["instance", "panoptic"])
def test_segment_subtasks_give_scored_non_overlapping_masks(segmenter, subtask):
    labels = ["cat", "dog", "sofa"]
    annotation = segmenter(str(CAT), candidate_labels=labels, subtask=subtask, **LENIENT)
    assert len(annotation) >= 2
    scores = [entry["score"] for entry in annotation]
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True)
    covered = np.zeros((300, 451), dtype=bool)
    for entry in annotation:
        assert entry["label"] in labels
        assert entry["mask"].mode == "L" and entry["mask"].size == (451, 300)
        pixels = np.asarray(entry["mask"]) == 255
        assert pixels.any() and not (covered & pixels).any()
        covered |= pixels
    # thresholds pass through: the random model is never this confident (nor with the stock default, 0.9)
    assert segmenter(str(CAT), candidate_labels=labels, subtask=subtask, threshold=0.999) == []
    assert segmenter(str(CAT), candidate_labels=labels, subtask=subtask) == []


def test_panoptic_fuses_stuff_labels_instance_does_not(segmenter):
    labels = ["sky", "wall", "cat"]
    assert {"sky", "wall"} <= stuff_class_names() and "cat" not in stuff_class_names()
    instance = segmenter(str(CAT), candidate_labels=labels, subtask="instance", **LENIENT)
    panoptic = segmenter(str(CAT), candidate_labels=labels, subtask="panoptic", **LENIENT)
    instance_labels = [e["label"] for e in instance]
    panoptic_labels = [e["label"] for e in panoptic]
    stuff_in_instance = [label for label in instance_labels if label != "cat"]
    assert len(stuff_in_instance) > len(set(stuff_in_instance))  # several proposals of one stuff class ...
    assert sorted(set(stuff_in_instance)) == sorted(label for label in panoptic_labels if label != "cat")  # ... one
    # the fused segment covers what the stuff proposals claimed
    for label in set(stuff_in_instance):
        fused = np.asarray(panoptic[panoptic_labels.index(label)]["mask"]) == 255
        assert fused.sum() >= max((np.asarray(e["mask"]) == 255).sum() for e in instance if e["label"] == label)


def test_batches_and_errors(segmenter):
    image = Image.open(CAT).convert("RGB")
    batched = segmenter([image, image.resize((200, 150))], candidate_labels=["cat", "sofa"], subtask="instance",
                        batch_size=2, **LENIENT)
    alone = segmenter(image, candidate_labels=["cat", "sofa"], subtask="instance", **LENIENT)
    assert [e["label"] for e in batched[0]] == [e["label"] for e in alone]
    assert batched[1] and batched[1][0]["mask"].size == (200, 150)
    with pytest.raises(ValueError, match="not supported"):
        segmenter(image, candidate_labels=["cat"], subtask="depth")
    with pytest.raises(ValueError, match="sliding-window"):
        segmenter(image, candidate_labels=["cat"], subtask="panoptic", sliding_window=True)
    torch.testing.assert_close(torch.tensor([e["score"] for e in batched[0]]),
                               torch.tensor([e["score"] for e in alone]), atol=1e-4, rtol=0)
