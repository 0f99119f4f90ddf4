"""Tests for instance and panoptic post-processing (`modeling_pat.mask_segments` through PATImageProcessor):
hand-made proposals with known answers, and the tiny model's outputs on the golden images."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conversion_scripts import convert_san_to_hf as convert

from modeling_pat import PATForOpenVocabSegmentation, PATProcessor
from modeling_pat.configuration_pat import load_vocabulary
from modeling_pat.image_processing_pat import PATImageProcessor


FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "san_tiny"
SEGMENT_KEYS = {"id", "label_id", "score", "was_fused", "area", "query_index"}


def proposals(class_logits, masks, image_size=None, padded_size=None):
    """Outputs of a batch of one from (Q, C+1) class logits and (Q, h, w) bool masks (logits +-8)."""
    mask_logits = torch.where(torch.as_tensor(masks), 8.0, -8.0)
    outputs = {"class_queries_logits": torch.as_tensor(class_logits, dtype=torch.float32)[None],
               "masks_queries_logits": mask_logits[None]}
    if image_size is not None:
        outputs["image_sizes"] = torch.tensor([image_size])
        outputs["padded_sizes"] = torch.tensor([padded_size])
    return SimpleNamespace(**outputs)


def boxes(size, *regions):
    """(len(regions), H, W) bool masks, each True on rows r0:r1, columns c0:c1."""
    masks = torch.zeros(len(regions), *size, dtype=torch.bool)
    for k, (r0, r1, c0, c1) in enumerate(regions):
        masks[k, r0:r1, c0:c1] = True
    return masks


def assert_consistent(result, size):
    """The documented format: ids in the map are exactly those listed, areas match, scores in [0, 1] sorted."""
    segmentation, segments = result["segmentation"], result["segments_info"]
    assert segmentation.shape == size and segmentation.dtype == torch.int64
    assert all(set(s) == SEGMENT_KEYS for s in segments)
    ids = [s["id"] for s in segments]
    assert ids == list(range(1, len(segments) + 1))
    assert set(segmentation.unique().tolist()) - {0} == set(ids)
    for segment in segments:
        assert segment["area"] == int((segmentation == segment["id"]).sum()) > 0
    scores = [s["score"] for s in segments]
    assert all(0.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True)


# -- hand-made proposals ----------------------------------------------------------------------------------------------
def test_instance_scores_are_class_probability_times_mask_quality():
    masks = boxes((8, 8), (0, 4, 0, 4), (4, 8, 4, 8), (0, 8, 0, 8))
    class_logits = [[4.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 6.0]]  # the third query is void
    result = PATImageProcessor().post_process_instance_segmentation(proposals(class_logits, masks), threshold=0.3)[0]
    assert_consistent(result, (8, 8))
    probs = torch.tensor(class_logits).softmax(-1)
    quality = torch.sigmoid(torch.tensor(8.0))  # every pixel of each binary mask has probability sigmoid(8)
    assert [(s["query_index"], s["label_id"]) for s in result["segments_info"]] == [(0, 0), (1, 1)]
    assert result["segments_info"][0]["score"] == pytest.approx(float(probs[0, 0] * quality), abs=1e-6)
    assert result["segments_info"][1]["score"] == pytest.approx(float(probs[1, 1] * quality), abs=1e-6)
    assert torch.equal(result["segmentation"] == 1, masks[0]) and torch.equal(result["segmentation"] == 2, masks[1])


def test_instance_threshold_overlap_and_binary_maps():
    # query 1 repeats most of query 0 (a duplicate); query 2 overlaps query 0 a little
    masks = boxes((8, 8), (0, 4, 0, 4), (0, 4, 0, 3), (2, 8, 2, 8))
    class_logits = [[5.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.5, 0.0]]
    processor = PATImageProcessor()
    result = processor.post_process_instance_segmentation(proposals(class_logits, masks), threshold=0.5)[0]
    assert_consistent(result, (8, 8))
    assert [s["query_index"] for s in result["segments_info"]] == [0, 2]  # the duplicate is gone
    binary = processor.post_process_instance_segmentation(
        proposals(class_logits, masks), threshold=0.5, return_binary_maps=True
    )[0]
    assert binary["segmentation"].dtype == torch.bool and torch.equal(binary["segmentation"], masks[[0, 2]])
    assert binary["segments_info"] == result["segments_info"]
    # scores: about 0.986 (query 0) and 0.978 (query 2); 0.98 keeps the first, 0.999 neither
    strict = processor.post_process_instance_segmentation(proposals(class_logits, masks), threshold=0.98)[0]
    assert [s["query_index"] for s in strict["segments_info"]] == [0]
    empty = processor.post_process_instance_segmentation(
        proposals(class_logits, masks), threshold=0.999, return_binary_maps=True
    )[0]
    assert empty["segments_info"] == [] and empty["segmentation"].shape == (0, 8, 8)
    # a lenient overlap rule keeps the duplicate's visible column
    lenient = processor.post_process_instance_segmentation(
        proposals(class_logits, masks), threshold=0.5, overlap_mask_area_threshold=0.0
    )[0]
    assert [s["query_index"] for s in lenient["segments_info"]] == [0, 2]  # query 1 has no pixel left at all


def test_panoptic_fuses_stuff_classes_and_drops_void():
    # two "sky" (class 0) proposals, one "car" (class 1), one void proposal
    masks = boxes((8, 8), (0, 2, 0, 8), (2, 4, 0, 8), (4, 8, 0, 4), (4, 8, 4, 8))
    class_logits = [[6.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, 6.0]]
    processor = PATImageProcessor()
    apart = processor.post_process_panoptic_segmentation(proposals(class_logits, masks), threshold=0.5)[0]
    assert_consistent(apart, (8, 8))
    assert [s["label_id"] for s in apart["segments_info"]] == [0, 1, 0]
    assert not any(s["was_fused"] for s in apart["segments_info"])
    assert (apart["segmentation"][4:, 4:] == 0).all()  # the void query's pixels belong to no segment
    fused = processor.post_process_panoptic_segmentation(
        proposals(class_logits, masks), threshold=0.5, label_ids_to_fuse={0}
    )[0]
    assert_consistent(fused, (8, 8))
    assert [(s["label_id"], s["was_fused"]) for s in fused["segments_info"]] == [(0, True), (1, False)]
    assert torch.equal(fused["segmentation"] == 1, masks[0] | masks[1])
    assert fused["segments_info"][0]["score"] == apart["segments_info"][0]["score"]  # the better member's


def test_target_sizes_and_padding_crop():
    # a 4 x 6 image padded to 8 x 8: the padding (rows 4.., columns 6..) must not reach the output
    masks = boxes((8, 8), (0, 4, 0, 3), (0, 4, 3, 6), (0, 8, 6, 8))
    class_logits = [[7.0, 0.0, 0.0], [0.0, 6.0, 0.0], [6.0, 0.0, 0.0]]
    outputs = proposals(class_logits, masks, image_size=(4, 6), padded_size=(8, 8))
    processor = PATImageProcessor()
    for method in (processor.post_process_instance_segmentation, processor.post_process_panoptic_segmentation):
        result = method(outputs, threshold=0.5, target_sizes=[(40, 60)])[0]
        assert_consistent(result, (40, 60))
        assert [s["query_index"] for s in result["segments_info"]] == [0, 1]  # query 2 lies in the padding
        assert (result["segmentation"][:, :30] == 1).all() and (result["segmentation"][:, 30:] == 2).all()
        assert method(outputs, threshold=0.5)[0]["segmentation"].shape == (4, 6)  # no target: the image size


def test_bad_outputs_and_target_sizes_are_errors():
    processor = PATImageProcessor()
    with pytest.raises(ValueError, match="class_queries_logits"):
        processor.post_process_instance_segmentation({"masks_queries_logits": torch.zeros(1, 2, 4, 4)})
    outputs = proposals([[1.0, 0.0]], boxes((4, 4), (0, 2, 0, 2)))
    with pytest.raises(ValueError, match="target_sizes"):
        processor.post_process_panoptic_segmentation(outputs, target_sizes=[(4, 4), (4, 4)])


# -- the tiny model on the golden images ------------------------------------------------------------------------------
def golden_model() -> PATForOpenVocabSegmentation:
    """The tiny SAN with the golden reference weights (random, but not the degenerate fresh initialisation)."""
    config = convert.resolve_config(str(GOLDEN / "config.json"))
    model = PATForOpenVocabSegmentation(config)
    reference = load_file(str(GOLDEN / "reference_state_dict.safetensors"))
    convert.load_converted_weights(model, convert.convert_state_dict(reference, config))
    return model.eval()


@pytest.fixture(scope="module")
def golden_outputs():
    model = golden_model()
    processor = PATProcessor.from_config(model.config)
    images = [Image.open(GOLDEN / f"image_{i}.png").convert("RGB") for i in range(2)]
    names = json.loads((GOLDEN / "class_names.json").read_text())
    inputs = processor(images=images, text=names, return_tensors="pt", do_resize=False)  # already model inputs
    with torch.no_grad():
        outputs = model(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                        attention_mask=inputs["attention_mask"], image_sizes=inputs["image_sizes"])
    # random weights favour void: lower its logit so that every query is a candidate segment
    outputs.class_queries_logits[..., -1] -= 20.0
    return processor.image_processor, outputs, [tuple(s) for s in inputs["original_sizes"].tolist()], len(names)


def test_golden_instance_and_panoptic_format(golden_outputs):
    processor, outputs, sizes, num_classes = golden_outputs
    # random proposals overlap a lot: keep every segment that has pixels left
    lenient = {"threshold": 0.0, "overlap_mask_area_threshold": 0.0, "target_sizes": sizes}
    instance = processor.post_process_instance_segmentation(outputs, **lenient)
    panoptic = processor.post_process_panoptic_segmentation(
        outputs, label_ids_to_fuse=set(range(num_classes)), **lenient
    )
    for results in (instance, panoptic):
        assert len(results) == 2
        for result, size in zip(results, sizes):
            assert_consistent(result, size)
            assert result["segments_info"]
            assert all(0 <= s["label_id"] < num_classes for s in result["segments_info"])
    for result in panoptic:  # every class fused: one segment per class
        labels = [s["label_id"] for s in result["segments_info"]]
        assert len(labels) == len(set(labels)) and all(s["was_fused"] for s in result["segments_info"])


def test_vocabularies_mark_stuff_classes():
    ade = load_vocabulary("ade150")
    coco = load_vocabulary("coco171")
    for vocabulary, num_stuff in ((ade, 50), (coco, 91)):
        stuff = vocabulary["stuff_class_ids"]
        assert len(stuff) == num_stuff and stuff == sorted(set(stuff))
        assert all(0 <= i < len(vocabulary["class_names"]) for i in stuff)
    assert ade["class_names"].index("sky") in ade["stuff_class_ids"]
    assert ade["class_names"].index("person") not in ade["stuff_class_ids"]
    assert coco["class_names"].index("grass") in coco["stuff_class_ids"]
    assert coco["class_names"].index("dog") not in coco["stuff_class_ids"]


def test_processor_delegates_to_its_image_processor(golden_outputs):
    image_processor, outputs, sizes, _ = golden_outputs
    processor = PATProcessor.from_config(golden_model().config)
    ours = processor.post_process_instance_segmentation(outputs, threshold=0.0, target_sizes=sizes)
    theirs = image_processor.post_process_instance_segmentation(outputs, threshold=0.0, target_sizes=sizes)
    assert [r["segments_info"] for r in ours] == [r["segments_info"] for r in theirs]
    assert processor.post_process_panoptic_segmentation(outputs, threshold=0.0)[0]["segmentation"].shape == (128, 128)
