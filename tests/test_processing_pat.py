"""Tests for PATProcessor: golden token ids, agreement with open_clip's tokenizer, images + text, save/load."""

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoTokenizer, CLIPTokenizer

from modeling_pat.configuration_pat import VILD_TEMPLATES, PATConfig
from modeling_pat.image_processing_pat import PATImageProcessor
from modeling_pat.processing_pat import PATProcessor, clip_tokenizer_from_open_clip, encode_prompts


FIXTURES = Path(__file__).parent / "fixtures"

# Strings that stress open_clip's text cleaning and word splitting (ftfy, HTML, case, Unicode, special tokens).
# fmt: off
EDGE_CASES = [
    "", " ", "  \t\n  ", "CAT", "Traffic Light", "TV Monitor", "café", "Crème Brûlée", "naïve façade", "Straße",
    "İstanbul", "ΟΔΟΣ", "猫", "交通信号灯", "日本語のテキスト", "한국어", "emoji 😀🐱", "x² ½ µ", "Ⅻ Ⓐ 𝐀𝐁𝐂",
    "don't", "IT'S", "O'Brien's", "d'ﬅxs", "rock &amp; roll", "&lt;tag&gt;", "&amp;amp;", "“smart quotes”",
    "‘single’", "ﬁsh ﬂour", "ＦＵＬＬＷＩＤＴＨ Ａ１２３", "mojibake cafÃ©", "e\u0301", "zero\u200bwidth",
    "nbsp\u00a0here", "control\x07char", "under_score", "hy-phen", "a/b", "(paren) [brackets] {braces}",
    "3.14 12345", "!!!", "wow!", "<start_of_text>", "!<end_of_text>", "a<|endoftext|>.", "<|startoftext|>",
    "a" * 300, "word " * 100,
]
# fmt: on


def fixture(*parts: str) -> Path:
    """Path of a fixture file; a missing file fails the test (parity tests must never skip)."""
    path = FIXTURES.joinpath(*parts)
    assert path.is_file(), f"missing test fixture {path} (copy it from ../shared into tests/fixtures/)"
    return path


def read_json(*parts: str):
    return json.loads(fixture(*parts).read_text(encoding="utf-8"))


def vocabulary_names() -> list[str]:
    """Every class name in the fixture vocabularies (ADE-150 short and full names, COCO-Stuff, VOC)."""
    names = []
    for path in sorted((FIXTURES / "data" / "vocab").glob("*.json")):
        for value in json.loads(path.read_text(encoding="utf-8")).values():
            if isinstance(value, list):
                names += [v for v in value if isinstance(v, str)]
    assert len(names) > 300, "tests/fixtures/data/vocab/*.json is missing or incomplete"
    return sorted(set(names))


@pytest.fixture(scope="module")
def processor():
    return PATProcessor.from_open_clip("ViT-B-16")


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    return open_clip.get_tokenizer("ViT-B-16")


@pytest.mark.parity
def test_golden_token_ids(processor):
    golden = load_file(fixture("san_tiny", "inference_io.safetensors"))["text.token_ids"]  # [template, class, 77]
    templates = read_json("san_tiny", "templates.json")["templates"]
    class_names = read_json("san_tiny", "class_names.json")
    assert list(VILD_TEMPLATES) == templates == processor.prompt_templates

    inputs = processor(text=class_names)
    assert inputs["input_ids"].dtype == torch.int64
    assert inputs["input_ids"].shape == (6, 14, 77) == inputs["attention_mask"].shape
    assert torch.equal(inputs["input_ids"].transpose(0, 1), golden.long())
    eot_position = inputs["input_ids"].argmax(dim=-1, keepdim=True)  # EOT (49407) is the largest id
    positions = torch.arange(77)
    assert torch.equal(inputs["attention_mask"], (positions <= eot_position).long())


@pytest.mark.parity
def test_matches_open_clip_tokenizer(open_clip_tokenizer, processor):
    names = vocabulary_names()
    texts = names + EDGE_CASES + [t.format(n) for t in VILD_TEMPLATES[:2] for n in names[::7] + EDGE_CASES]
    input_ids, attention_mask = encode_prompts(processor.tokenizer, texts, 77)
    expected = open_clip_tokenizer(texts)
    mismatched = [t for t, a, b in zip(texts, input_ids, expected, strict=True) if not torch.equal(a, b)]
    assert not mismatched, f"{len(mismatched)} of {len(texts)} strings differ from open_clip, e.g. {mismatched[:5]}"
    assert torch.equal(attention_mask.sum(-1), expected.argmax(-1) + 1)  # ones up to and including EOT


def test_truncation_keeps_end_of_text(processor):
    inputs = processor(text=["very " * 200], prompt_templates=["{}"])
    ids = inputs["input_ids"][0, 0]
    assert ids.shape == (77,) and ids[0] == 49406 and ids[-1] == 49407 and (ids[1:-1] != 49407).all()
    assert inputs["attention_mask"].all()


def test_single_name_and_custom_templates(processor):
    one = processor(text="sky", prompt_templates=["a photo of the {}.", "{}"])
    assert one["input_ids"].shape == (1, 2, 77)
    assert one["input_ids"][0, 1, :3].tolist() == [49406, 2390, 49407]
    assert processor.prompt_templates == list(VILD_TEMPLATES)  # a per-call override does not stick


def test_images_text_and_labels(processor):
    stems = ["ade150_ADE_val_00000003", "cocostuff_000000001503"]
    images = [Image.open(fixture("data", "images", f"{stem}.jpg")).convert("RGB") for stem in stems]
    labels = [np.array(Image.open(fixture("data", "labels", f"{stem}.png"))) for stem in stems]
    inputs = processor(images=images, text=["wall", "sky"], segmentation_maps=labels, do_reduce_labels=False)
    assert set(inputs) == {"pixel_values", "image_sizes", "original_sizes", "labels", "input_ids", "attention_mask"}
    assert inputs["pixel_values"].shape == (2, 3, 640, 864) and inputs["labels"].shape == (2, 640, 864)
    assert inputs["input_ids"].shape == (2, 14, 77)
    alone = processor.image_processor(images, segmentation_maps=labels)
    assert torch.equal(inputs["pixel_values"], alone["pixel_values"]) and torch.equal(
        inputs["labels"], alone["labels"]
    )
    only_images = processor(images=images[0], do_resize=False)
    assert set(only_images) == {"pixel_values", "image_sizes", "original_sizes"}
    assert only_images["pixel_values"].shape == (1, 3, 320, 416)


def test_post_process_delegates(processor):
    golden = load_file(fixture("san_tiny", "inference_io.safetensors"))
    outputs = {
        "class_queries_logits": golden["pred.class_logits"],
        "masks_queries_logits": golden["side.mask_logits"],
        "image_sizes": golden["input.image_sizes"],
    }
    maps = processor.post_process_semantic_segmentation(outputs, target_sizes=golden["input.output_sizes"])
    assert all(torch.equal(m, golden[f"pred.label_map.{i}"].long()) for i, m in enumerate(maps))


def test_from_config(processor):
    default = PATProcessor.from_config(PATConfig(), do_resize=False)
    assert default.prompt_templates == list(VILD_TEMPLATES) and default.image_processor.do_resize is False
    assert default.tokenizer.get_vocab() == processor.tokenizer.get_vocab() and default.context_length == 77
    # A tower built from a custom clip_config (name unknown to open_clip) gets the standard CLIP BPE tokenizer.
    custom = PATConfig(
        clip_model_name="my-tiny-clip",
        clip_config={"embed_dim": 8, "text_cfg": {"context_length": 77}},
        prompt_templates=["a photo of a {}."],
        size_divisibility=64,
        ignore_index=65535,
    )
    tiny = PATProcessor.from_config(custom)
    assert tiny.prompt_templates == ["a photo of a {}."]
    assert tiny.image_processor.size_divisibility == 64 and tiny.image_processor.ignore_index == 65535
    golden = load_file(fixture("san_tiny", "inference_io.safetensors"))["text.token_ids"]
    assert torch.equal(tiny(text=read_json("san_tiny", "class_names.json"))["input_ids"][:, 0], golden[0].long())
    with pytest.raises(ValueError, match="no model named"):
        clip_tokenizer_from_open_clip("not-a-clip")


def test_errors(processor):
    with pytest.raises(ValueError, match="images"):
        processor()
    with pytest.raises(TypeError, match="text"):
        processor(text=[1, 2])
    with pytest.raises(ValueError, match="text"):
        processor(text=[])
    with pytest.raises(ValueError, match="prompt_templates"):
        processor(text=["cat"], prompt_templates=["no placeholder"])
    with pytest.raises(ValueError, match="segmentation_maps"):
        processor(text=["cat"], segmentation_maps=np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="prompt_templates"):
        PATProcessor(processor.image_processor, processor.tokenizer, prompt_templates=[])
    with pytest.raises(ValueError, match=r"`images` is empty"):
        processor(images=[], text=["cat"])


@pytest.mark.parametrize(
    ("templates", "message"),
    [
        (["a photo of a {} next to a {}."], r"must contain exactly one '\{\}' .* found 2"),
        (["a photo of {name}."], r"found 1: \['\{name\}'\]"),
        (["a {} photo {"], r"does not format"),
    ],
)
def test_templates_are_checked_as_the_config_checks_them(processor, templates, message):
    """One rule for templates: a call's override, the constructor and PATConfig give the same error."""
    with pytest.raises(ValueError, match=r"`prompt_templates\[0\]` .*" + message):
        processor(text=["cat"], prompt_templates=templates)
    with pytest.raises(ValueError, match=message):
        PATProcessor(processor.image_processor, processor.tokenizer, prompt_templates=templates)
    with pytest.raises(ValueError, match=message):
        PATConfig(prompt_templates=templates)


def test_save_load_round_trip(tmp_path, processor):
    # `import modeling_pat` registers the image processor; repeated here (idempotent) so this file stands alone.
    AutoImageProcessor.register(PATConfig, image_processor_classes={"torchvision": PATImageProcessor}, exist_ok=True)
    templates = ["a photo of a {}.", "There is a {} in the scene."]
    original = PATProcessor(
        PATImageProcessor(size_divisibility=64, do_reduce_labels=True), processor.tokenizer, prompt_templates=templates
    )
    original.save_pretrained(tmp_path)
    assert {"processor_config.json", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in tmp_path.iterdir()}
    assert json.loads((tmp_path / "processor_config.json").read_text())["prompt_templates"] == templates

    loaded = PATProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded.image_processor, PATImageProcessor) and isinstance(loaded.tokenizer, CLIPTokenizer)
    assert loaded.prompt_templates == templates
    assert loaded.image_processor.to_dict() == original.image_processor.to_dict()
    assert loaded.context_length == 77

    photo = Image.open(fixture("samples", "astronaut.png")).convert("RGB")
    names = vocabulary_names()[:40] + [name for name in EDGE_CASES if name.strip()]  # blank class names are refused
    a, b = original(images=photo, text=names), loaded(images=photo, text=names)
    assert all(torch.equal(a[k], b[k]) for k in ("pixel_values", "image_sizes", "input_ids", "attention_mask"))

    # The tokenizer files load on their own, without registering anything.
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(tokenizer, CLIPTokenizer) and tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert tokenizer.bos_token_id == 49406 and tokenizer.eos_token_id == 49407
