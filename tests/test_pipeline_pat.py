"""Tests for PATImageSegmentationPipeline: candidate labels, batches of mixed sizes, text-embedding reuse, and the
stock behaviour for other models (a tiny random Segformer) after the "image-segmentation" task is replaced."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor, pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines import base as pipelines_base
from transformers.pipelines.image_segmentation import ImageSegmentationPipeline

from modeling_pat import PATConfig, PATForOpenVocabSegmentation, PATProcessor
from modeling_pat.apps.pipeline import (
    PATImageSegmentationPipeline,
    collate_open_vocab_batch,
    normalize_candidate_labels,
    register_pipeline,
)


register_pipeline()  # what `import modeling_pat` does once the package registers the pipeline

FIXTURES = Path(__file__).parent / "fixtures"
CAT = FIXTURES / "samples" / "chelsea.png"  # 451 x 300
STREET = FIXTURES / "data" / "images" / "cocostuff_000000001503.jpg"  # 320 x 240


def fixture_image(path: Path) -> Path:
    assert path.is_file(), f"missing test fixture {path}"
    return path


@pytest.fixture(scope="module")
def pat_folder(tmp_path_factory) -> Path:
    """A saved tiny random SAN + processor (short side 96 px to keep the tests fast)."""
    folder = tmp_path_factory.mktemp("pat_tiny")
    torch.manual_seed(0)
    model = PATForOpenVocabSegmentation(PATConfig.from_preset("san-tiny")).eval()
    model.save_pretrained(folder)
    PATProcessor.from_config(model.config, size={"shortest_edge": 96, "longest_edge": 384}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def segmenter(pat_folder):
    return pipeline("image-segmentation", model=str(pat_folder))


def assert_valid_annotation(annotation, image_path: Path, allowed_labels):
    size = Image.open(image_path).size
    assert len(annotation) >= 1
    labels = [entry["label"] for entry in annotation]
    assert len(set(labels)) == len(labels)
    assert set(labels) <= set(allowed_labels)
    covered = np.zeros(size[::-1], dtype=bool)
    for entry in annotation:
        assert entry.keys() == {"score", "label", "mask"} and entry["score"] is None  # the stock semantic entry
        mask = entry["mask"]
        assert mask.mode == "L" and mask.size == size
        pixels = np.asarray(mask)
        assert set(np.unique(pixels)) <= {0, 255}
        assert not (covered & (pixels == 255)).any()  # a semantic map: masks do not overlap
        covered |= pixels == 255
    assert covered.all()  # ... and cover the image


def masks_equal(a, b) -> bool:
    return [e["label"] for e in a] == [e["label"] for e in b] and all(
        np.array_equal(np.asarray(x["mask"]), np.asarray(y["mask"])) for x, y in zip(a, b)
    )


# -- registration --------------------------------------------------------------------------------------------------
def test_registration_replaces_the_task_and_is_idempotent():
    entry = PIPELINE_REGISTRY.supported_tasks["image-segmentation"]
    assert entry["impl"] is PATImageSegmentationPipeline
    register_pipeline()
    assert PIPELINE_REGISTRY.supported_tasks["image-segmentation"] is entry
    expected_classes = ["AutoModelForImageSegmentation", "AutoModelForSemanticSegmentation"]
    assert [cls.__name__ for cls in entry["pt"]] == expected_classes
    assert entry["default"]["model"][0] == "facebook/detr-resnet-50-panoptic" and entry["type"] == "multimodal"
    assert "_registered_impl" not in PATImageSegmentationPipeline.__dict__


def test_pat_is_not_reported_as_unsupported(pat_folder, monkeypatch):
    errors = []
    monkeypatch.setattr(pipelines_base.logger, "error", lambda message, *a, **k: errors.append(message))
    pipe = pipeline("image-segmentation", model=str(pat_folder))
    assert isinstance(pipe, PATImageSegmentationPipeline) and pipe.is_open_vocabulary
    assert not [e for e in errors if "not supported" in e]


# -- SAN/PAT -------------------------------------------------------------------------------------------------------
def test_candidate_labels_as_list_and_as_comma_string(segmenter):
    image = fixture_image(CAT)
    as_list = segmenter(str(image), candidate_labels=["cat", "sofa", "blanket"])
    as_string = segmenter(str(image), candidate_labels=" cat, sofa ,blanket,")
    assert_valid_annotation(as_list, image, ["cat", "sofa", "blanket"])
    assert masks_equal(as_list, as_string)


def test_without_labels_uses_id2label(segmenter):
    image = fixture_image(CAT)
    annotation = segmenter(Image.open(image))
    assert_valid_annotation(annotation, image, segmenter.model.config.id2label.values())
    explicit = segmenter(Image.open(image), candidate_labels=list(segmenter.model.config.id2label.values()))
    assert masks_equal(annotation, explicit)


def test_per_image_labels_in_a_batch_of_different_sizes(segmenter):
    images = [str(fixture_image(CAT)), str(fixture_image(STREET))]
    labels = [["cat", "sofa"], ["car", "road", "person", "tree"]]
    batched = segmenter(images, candidate_labels=labels, batch_size=2)
    assert len(batched) == 2
    for annotation, image, names in zip(batched, images, labels):
        assert_valid_annotation(annotation, Path(image), names)
    # The same, one image at a time and as {"image", "candidate_labels"} inputs.
    singles = segmenter([{"image": image, "candidate_labels": names} for image, names in zip(images, labels)])
    for annotation, image, names in zip(singles, images, labels):
        assert_valid_annotation(annotation, Path(image), names)
    # A None entry: that image uses config.id2label, batched with an image that has its own labels.
    mixed = segmenter(images, candidate_labels=[None, labels[1]], batch_size=2)
    assert_valid_annotation(mixed[0], Path(images[0]), segmenter.model.config.id2label.values())
    assert_valid_annotation(mixed[1], Path(images[1]), labels[1])


def test_batch_of_mixed_vocabularies_equals_one_call_per_vocabulary(segmenter):
    """Same image twice (same padding) with two vocabularies in one batch: slicing the union logits per image
    must give exactly what each vocabulary gives alone."""
    image = Image.open(fixture_image(STREET))
    labels = [["car", "road", "sky"], ["person", "building"]]
    batched = segmenter([image, image], candidate_labels=labels, batch_size=2)
    for annotation, names in zip(batched, labels):
        alone = segmenter(image, candidate_labels=names)
        assert masks_equal(annotation, alone)


def test_semantic_entries_are_the_stock_ones_from_the_label_map_alone(segmenter, monkeypatch):
    """Semantic entries carry `score` None, as the stock pipeline's do, so post-processing is asked for the label
    map only: never the (C, H, W) scores, which would also turn off its CPU class pruning."""
    requests = []
    post_process = segmenter.image_processor.post_process_semantic_segmentation

    def recording(outputs, *args, **kwargs):
        requests.append(kwargs.get("return_segmentation_scores", args[1] if len(args) > 1 else False))
        return post_process(outputs, *args, **kwargs)

    monkeypatch.setattr(segmenter.image_processor, "post_process_semantic_segmentation", recording)
    names = ["cat", "sofa", "blanket"]
    images = [str(fixture_image(CAT)), str(fixture_image(STREET))]
    for annotation, image in zip(segmenter(images, candidate_labels=names, batch_size=2), images):
        assert_valid_annotation(annotation, Path(image), names)
    assert requests == [False, False]
    # The entries are exactly the processor's label map, one per class present, in class order (as stock).
    inputs = segmenter.image_processor(images=[Image.open(images[0])], return_tensors="pt")
    with torch.no_grad():
        outputs = segmenter.model(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"],
                                  class_embeddings=segmenter.model.get_class_embeddings(class_names=names))
    label_map = post_process(outputs, target_sizes=inputs["original_sizes"].tolist())[0].numpy()
    annotation = segmenter(images[0], candidate_labels=names)
    assert [e["label"] for e in annotation] == [names[i] for i in np.unique(label_map)]
    for entry in annotation:
        assert np.array_equal(np.asarray(entry["mask"]) == 255, label_map == names.index(entry["label"]))


def test_sliding_window_hands_postprocess_the_label_map_only(segmenter, monkeypatch):
    """With sliding windows the averaged (C, H, W) scores decide the label map inside `_forward`; only the (H, W)
    map travels through un-batching to `postprocess`."""
    seen = []
    postprocess = segmenter.postprocess

    def recording(model_outputs, **kwargs):
        seen.append({k: v for k, v in model_outputs.items() if k not in ("target_size", "vocabulary")})
        return postprocess(model_outputs, **kwargs)

    monkeypatch.setattr(segmenter, "postprocess", recording)
    for batch_size in (1, 2):
        seen.clear()
        images = [str(fixture_image(CAT))] * batch_size
        for annotation in segmenter(images, candidate_labels=["cat", "sofa"], sliding_window=True,
                                    batch_size=batch_size):
            assert_valid_annotation(annotation, CAT, ["cat", "sofa"])
        assert len(seen) == batch_size
        for fields in seen:
            assert list(fields) == ["segmentation"]
            (label_map,) = fields["segmentation"]  # one image: a list entry, or un-batched (1, H, W)
            assert tuple(label_map.shape[-2:]) == (300, 451) and label_map.numel() == 300 * 451


def test_prompt_templates_change_the_embeddings(segmenter):
    image = fixture_image(CAT)
    names = ["cat", "sofa", "blanket", "wall"]
    default = segmenter(str(image), candidate_labels=names)
    custom = segmenter(str(image), candidate_labels=names, prompt_templates="a blurry photo of {}")
    assert_valid_annotation(custom, image, names)
    # Default templates are the config's, so passing them explicitly changes nothing.
    same = segmenter(str(image), candidate_labels=names, prompt_templates=segmenter.model.config.prompt_templates)
    assert masks_equal(default, same)
    with pytest.raises(ValueError, match="prompt_templates"):
        segmenter(str(image), candidate_labels=names, prompt_templates=["no placeholder"])
    with pytest.raises(ValueError, match=r"`prompt_templates\[0\]` 'a \{\} by a \{\}' must contain exactly one"):
        segmenter(str(image), candidate_labels=names, prompt_templates=["a {} by a {}"])
    with pytest.raises(ValueError, match=r"`prompt_templates\[0\]` 'a \{\} \{' does not format"):
        segmenter([{"image": str(image), "prompt_templates": ["a {} {"]}], candidate_labels=names)


def test_an_empty_image_list_gives_an_empty_result(segmenter):
    assert segmenter([], candidate_labels=["cat", "sofa"]) == []
    assert segmenter([], candidate_labels=["cat", "sofa"], batch_size=4) == []
    assert segmenter(images=[]) == []
    # the arguments are still checked without images
    with pytest.raises(ValueError, match="`candidate_labels` names the same class twice"):
        segmenter([], candidate_labels=["cat", "Cat"])
    with pytest.raises(ValueError, match="prompt_templates"):
        segmenter([], candidate_labels=["cat"], prompt_templates=["no placeholder"])


def test_explicit_pipeline_class(pat_folder, segmenter):
    pipe = pipeline("image-segmentation", model=str(pat_folder), pipeline_class=PATImageSegmentationPipeline)
    image = str(fixture_image(CAT))
    names = ["cat", "sofa"]
    assert masks_equal(pipe(image, candidate_labels=names), segmenter(image, candidate_labels=names))


def test_text_tower_runs_once_per_vocabulary(pat_folder):
    pipe = pipeline("image-segmentation", model=str(pat_folder))
    tower = pipe.model.model.clip_tower
    calls = []
    original = tower.encode_text

    def counting_encode_text(input_ids):
        calls.append(input_ids.shape[0])
        return original(input_ids)

    tower.encode_text = counting_encode_text
    images = [str(fixture_image(CAT)), str(fixture_image(STREET))]
    pipe(images, candidate_labels=["cat", "car"])
    pipe(images[0], candidate_labels="cat, car")
    pipe(images, candidate_labels=["cat", "car"], batch_size=2)
    assert len(calls) == 1  # one vocabulary, three calls, four images
    pipe(images, candidate_labels=["cat", "car"], prompt_templates=["a photo of a {}."])
    pipe(images, candidate_labels=["cat", "car"], prompt_templates=["a photo of a {}."])
    assert len(calls) == 2  # a new template set is a new vocabulary, computed once
    pipe(images[0])
    pipe(images[1])
    assert len(calls) == 3  # the id2label vocabulary
    with torch.no_grad():  # an in-place edit of a text weight, announced as documented: the embeddings are stale
        pipe.model.model.clip_tower.clip.ln_final.weight.mul_(1.5)
    pipe.model.clear_inference_caches()
    pipe(images[0], candidate_labels=["cat", "car"])
    assert len(calls) == 4


def test_custom_template_vocabularies_are_tokenised_once_per_device(pat_folder, monkeypatch):
    """Tokenising costs more than a tiny model's forward: the ids of a custom-template vocabulary are kept in the
    model's inference cache, and dropped with it when the model moves."""
    pipe = pipeline("image-segmentation", model=str(pat_folder))
    tokenised = []
    original = pipe.model.prompt_input_ids
    monkeypatch.setattr(pipe.model, "prompt_input_ids", lambda *args: tokenised.append(1) or original(*args))
    image, templates = str(fixture_image(CAT)), ["a photo of a {}."]
    pipe(image, candidate_labels=["cat", "car"], prompt_templates=templates)
    pipe(image, candidate_labels=["cat", "car"], prompt_templates=templates)
    assert len(tokenised) == 1
    pipe.model.to("cpu")
    pipe(image, candidate_labels=["cat", "car"], prompt_templates=templates)
    assert len(tokenised) == 2


def test_label_and_subtask_errors(segmenter):
    image = str(fixture_image(CAT))
    with pytest.raises(ValueError, match="Per-image"):
        segmenter(image, candidate_labels=[["cat"], ["dog"]])
    with pytest.raises(ValueError, match="at least one"):
        segmenter(image, candidate_labels=" , ")
    with pytest.raises(ValueError, match="not supported"):
        segmenter(image, candidate_labels=["cat"], subtask="depth")
    # duplicates are an error, as in PATProcessor and the CLI (tests/test_bad_inputs.py), never silently dropped
    with pytest.raises(ValueError, match="names the same class twice"):
        normalize_candidate_labels(["cat", "dog", "cat"])


def test_collate_pads_images_at_the_bottom_right():
    items = [
        {"pixel_values": torch.ones(1, 3, 64, 96), "image_sizes": torch.tensor([[60, 90]]), "target_size": [(6, 9)]},
        {"pixel_values": torch.ones(1, 3, 96, 32), "image_sizes": torch.tensor([[96, 32]]), "target_size": [(9, 3)]},
    ]
    batch = collate_open_vocab_batch(items)
    assert batch["pixel_values"].shape == (2, 3, 96, 96)
    assert batch["pixel_values"][0, :, 64:].abs().sum() == 0 and batch["pixel_values"][1, :, :, 32:].abs().sum() == 0
    assert batch["pixel_values"][0, :, :64, :96].eq(1).all()
    assert batch["image_sizes"].tolist() == [[60, 90], [96, 32]]
    assert batch["target_size"] == [[(6, 9)], [(9, 3)]]


# -- other models: exactly the stock pipeline ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def segformer_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("segformer_tiny")
    config = SegformerConfig(
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=16,
        num_labels=4,
        id2label={0: "road", 1: "car", 2: "sky", 3: "tree"},
        label2id={"road": 0, "car": 1, "sky": 2, "tree": 3},
    )
    torch.manual_seed(0)
    SegformerForSemanticSegmentation(config).eval().save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def test_other_models_behave_as_the_stock_pipeline(segformer_folder, tmp_path):
    image = Image.open(fixture_image(STREET))
    pipe = pipeline("image-segmentation", model=str(segformer_folder))
    stock = pipeline("image-segmentation", model=str(segformer_folder), pipeline_class=ImageSegmentationPipeline)
    assert isinstance(pipe, PATImageSegmentationPipeline) and not pipe.is_open_vocabulary
    ours, expected = pipe(image), stock(image)
    assert masks_equal(ours, expected) and all(e["score"] is None for e in ours)
    assert masks_equal(pipe(image, candidate_labels=["car"]), expected)  # ignored, as the stock pipeline does
    batch = [image, Image.open(fixture_image(CAT))]
    for a, b in zip(pipe(batch, batch_size=2), stock(batch, batch_size=2)):
        assert masks_equal(a, b)

    # Saving the pipeline writes no `custom_pipelines`, so the folder reloads without trust_remote_code.
    pipe.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "custom_pipelines" not in config
    assert not list(tmp_path.glob("*.py"))
    reloaded = pipeline("image-segmentation", model=str(tmp_path))
    assert masks_equal(reloaded(image), expected)


def test_dtype_and_device_are_honoured(pat_folder):
    """`pipeline(..., dtype=, device=)`: the model is loaded in that dtype on that device and the images reach it in
    that dtype, in the normal and the sliding-window path (CUDA is exercised by the same code, with device="cuda")."""
    segmenter = pipeline("image-segmentation", model=str(pat_folder), dtype=torch.bfloat16, device="cpu")
    assert segmenter.model.dtype == torch.bfloat16 and segmenter.dtype == torch.bfloat16
    assert segmenter.device == torch.device("cpu") and segmenter.model.device == torch.device("cpu")
    seen = []
    hook = segmenter.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["pixel_values"].dtype), with_kwargs=True
    )
    try:
        for options in ({}, {"sliding_window": True}):
            annotation = segmenter(str(fixture_image(CAT)), candidate_labels=["cat", "sofa"], **options)
            assert_valid_annotation(annotation, CAT, ["cat", "sofa"])
    finally:
        hook.remove()
    assert len(seen) >= 2 and set(seen) == {torch.bfloat16}


def test_a_truncated_weights_file_is_named(tmp_path, pat_folder):
    import shutil

    folder = Path(shutil.copytree(pat_folder, tmp_path / "model"))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    # transformers' pipeline() turns every loader's OSError into one ValueError; the cause stays in its text
    with pytest.raises((OSError, ValueError), match="model.safetensors is unusable: truncated"):
        pipeline("image-segmentation", model=str(folder))


# -- extreme shapes: one very wide image does not pad the batch --------------------------------------------------------
def test_very_wide_image_gets_its_own_forward_pass_with_per_image_results(segmenter, monkeypatch):
    cat = Image.open(fixture_image(CAT)).convert("RGB")
    wide = Image.open(fixture_image(STREET)).convert("RGB").resize((1200, 40))  # resized to 13 x 384
    images = [cat, wide, cat.transpose(Image.FLIP_LEFT_RIGHT), cat.rotate(180)]
    labels = ["cat", "sofa", "road", "car"]
    shapes = []
    forward = segmenter.model.forward
    def recording(pixel_values, **kwargs):
        shapes.append(tuple(pixel_values.shape))
        return forward(pixel_values, **kwargs)

    monkeypatch.setattr(segmenter.model, "forward", recording)
    batched = segmenter(images, candidate_labels=labels, batch_size=4)
    # the three 96 x 144 images together (padded to 96 x 160), the wide one alone (32 x 384), not 4 x 96 x 384
    assert sorted(shapes) == [(1, 3, 32, 384), (3, 3, 96, 160)]
    shapes.clear()
    singles = [segmenter(image, candidate_labels=labels) for image in images]
    assert len(shapes) == 4
    for grouped, single in zip(batched, singles, strict=True):
        assert masks_equal(grouped, single)


def test_images_are_preprocessed_on_the_models_device(pat_folder, monkeypatch):
    """The image processor gets the model's device (uploads uint8, resizes and normalises there); not in DataLoader
    workers, which must not touch a GPU."""
    segmenter = pipeline("image-segmentation", model=str(pat_folder), device="cpu")
    processor = segmenter.image_processor
    devices = []
    preprocess = processor.preprocess

    def spy(*args, **kwargs):
        devices.append(kwargs.get("device"))
        return preprocess(*args, **kwargs)

    monkeypatch.setattr(processor, "preprocess", spy)
    expected = segmenter(str(fixture_image(CAT)), candidate_labels=["cat", "sofa"])
    assert devices == [torch.device("cpu")]
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())  # as inside a loader worker
    assert masks_equal(segmenter(str(fixture_image(CAT)), candidate_labels=["cat", "sofa"]), expected)
    assert devices == [torch.device("cpu"), None]
