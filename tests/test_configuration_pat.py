"""PATConfig: presets load, validate and round-trip; bad settings fail at construction with a clear message."""

import dataclasses
import json
import math
import re
import typing

import pytest

from modeling_pat import PATConfig
from modeling_pat.configuration_pat import (
    COUNT_FIELDS,
    OPTIONAL_COUNT_FIELDS,
    PAT_FIELDS,
    POSITIVE_FIELDS,
    PRESETS_DIR,
    VILD_TEMPLATES,
    WEIGHT_FIELDS,
    validate_prompt_templates,
)


PRESETS = sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def test_all_named_presets_exist():
    for name in ("san-clip-vit-b16", "san-clip-vit-l14-336", "pat-clip-vit-b16", "pat-evaclip-vit-b16", "san-tiny"):
        assert name in PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_validates_and_round_trips(tmp_path, name):
    config = PATConfig.from_preset(name)
    config.validate_architecture()
    config.save_pretrained(tmp_path)
    again = PATConfig.from_pretrained(tmp_path)
    assert again.to_diff_dict() == config.to_diff_dict()


def test_pat_fields_are_the_fields_after_the_pat_switch():
    names = [field.name for field in dataclasses.fields(PATConfig)]
    assert list(PAT_FIELDS) == names[names.index("use_pyramid_tokenization") + 1 :]


@pytest.mark.parametrize("name", [p for p in PRESETS if p.startswith("pat-")])
def test_pat_presets_write_every_pat_field_out(name):
    written = json.loads((PRESETS_DIR / f"{name}.json").read_text())
    assert written["use_pyramid_tokenization"] is True
    assert [field for field in PAT_FIELDS if field not in written] == []


def pat_docstring_entries() -> list[str]:
    """The PAT section of PATConfig's docstring, one string per entry (an entry starts at 8 spaces of indent)."""
    doc = PATConfig.__doc__
    lines = doc[doc.index("PAT (read only with `use_pyramid_tokenization`") :].splitlines()
    entries = []
    for line in lines[1:]:
        if line.startswith(" " * 8) and not line.startswith(" " * 9):
            entries.append(line.strip())
        elif line.startswith(" " * 12) and entries:
            entries[-1] += " " + line.strip()
    return entries


def test_every_pat_field_is_documented_with_its_paper_reference_or_choice():
    entries = pat_docstring_entries()
    for field in PAT_FIELDS:
        # the entry that names the field before its description (after the first "): ")
        documented = [e for e in entries if re.search(rf"(^|, | and ){field} \(", e.split("): ", 1)[0])]
        assert len(documented) == 1, field
        assert re.search(r"Paper|paper Eq|Table II|Choice|DECISIONS|register", documented[0]), field


def test_san_presets_carry_the_reference_hyperparameters():
    b16, l14 = PATConfig.from_preset("san-clip-vit-b16"), PATConfig.from_preset("san-clip-vit-l14-336")
    assert (b16.clip_resolution, b16.clip_feature_layers, list(b16.fusion_clip_layers)) == (0.5, 9, [0, 3, 6, 9])
    assert (l14.clip_resolution, l14.clip_feature_layers, list(l14.fusion_clip_layers)) == (0.7, 18, [0, 6, 12, 18])
    assert (b16.attn_bias_num_heads, l14.attn_bias_num_heads) == (12, 16)
    for config in (b16, l14):
        assert list(config.prompt_templates) == list(VILD_TEMPLATES)
        assert config.num_labels == 171 and config.num_queries == 100
        assert list(config.deep_supervision_layers) == [7, 8]


def test_defaults_are_san_vit_b16():
    defaults = PATConfig().to_dict()
    preset = PATConfig.from_preset("san-clip-vit-b16").to_dict()
    for key in ("clip_resolution", "side_hidden_size", "num_queries", "fusion_clip_layers", "train_num_points"):
        assert defaults[key] == preset[key]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"side_hidden_size": 50, "side_num_attention_heads": 6}, "multiple of side_num_attention_heads"),
        ({"fusion_clip_layers": [0, 3]}, "same length"),
        ({"fusion_side_layers": [0, 1, 1, 3]}, "duplicates"),
        ({"fusion_clip_layers": [0, 3, 6, 12]}, r"fusion_clip_layers must be CLIP outputs in \[0, clip_feature"),
        ({"deep_supervision_layers": [7]}, "deep_supervision_layers"),
        ({"deep_supervision_layers": [8, 7]}, "deep_supervision_layers"),
        ({"deep_supervision_layers": [0, 8]}, r"deep_supervision_layers must be .* in \[1, side_num_hidden_layers\]"),
        ({"prompt_templates": ["a photo"]}, "prompt_templates"),
        ({"rec_downsample_method": "median"}, "rec_downsample_method"),
        ({"side_image_size": 600}, "side_image_size must be a multiple of side_patch_size=16, got 600"),
        ({"size_divisibility": 8}, "size_divisibility must be a multiple of side_patch_size=16"),
        ({"clip_config": {"vision_cfg": {"layers": 9}}}, r"clip_feature_layers must be below the CLIP depth \(9"),
        ({"importance_sample_ratio": 1.5}, r"importance_sample_ratio must be in \[0, 1\]"),
        ({"oversample_ratio": 0.5}, "oversample_ratio must be a finite number >= 1"),
        ({"rec_mask_value": 0.0}, "rec_mask_value must be a finite negative number"),
        ({"rec_mask_value": -math.inf}, "rec_mask_value must be a finite negative number"),
        ({"decoder_attn_window": 1}, r"decoder_attn_window must be None \(global attention\) or a window side >= 2"),
        ({"text_weights_fingerprint": "abc"}, "text_weights_fingerprint must be None or"),
        ({"text_weights_fingerprint": "float32:" + "G" * 64}, "text_weights_fingerprint must be None or"),
        ({"text_weights_fingerprint": ":" + "a" * 64}, "text_weights_fingerprint must be None or"),
    ],
)
def test_invalid_settings_fail_at_construction(overrides, message):
    with pytest.raises(ValueError, match=message):
        PATConfig(**overrides)


def _numeric_fields() -> list[str]:
    """PATConfig's own fields annotated int or float (alone or with None); bools are switches, lists checked apart."""
    return [
        name for name, annotation in PATConfig.__annotations__.items()
        if {int, float} & set(typing.get_args(annotation) or (annotation,))
    ]


def test_every_numeric_field_has_a_range():
    ranged = set(COUNT_FIELDS + OPTIONAL_COUNT_FIELDS + POSITIVE_FIELDS + WEIGHT_FIELDS)
    ranged |= {"importance_sample_ratio", "oversample_ratio", "rec_mask_value", "decoder_attn_window"}
    unbounded = {"ignore_index"}  # any integer: a label value that is never a class (255, 65535, -1 all in use)
    numeric = set(_numeric_fields())
    assert {"num_queries", "clip_resolution", "latent_codebook_size", "decoder_attn_window"} <= numeric
    assert numeric - ranged - unbounded == set()


@pytest.mark.parametrize("name", COUNT_FIELDS + OPTIONAL_COUNT_FIELDS)
def test_counts_below_their_minimum_are_refused_naming_the_field(name):
    low = 0 if name in OPTIONAL_COUNT_FIELDS else 1
    with pytest.raises(ValueError, match=rf"PATConfig\.{name} must be a whole number >= {low}, got {low - 1}"):
        PATConfig(**{name: low - 1})


@pytest.mark.parametrize("name", POSITIVE_FIELDS + WEIGHT_FIELDS)
@pytest.mark.parametrize("value", [-0.5, math.nan, math.inf])
def test_floats_out_of_range_are_refused_naming_the_field(name, value):
    allowed = "> 0" if name in POSITIVE_FIELDS else ">= 0"
    with pytest.raises(ValueError, match=rf"PATConfig\.{name} must be a finite number {allowed}, got {value}"):
        PATConfig(**{name: value})


@pytest.mark.parametrize("name", POSITIVE_FIELDS)
def test_positive_floats_refuse_zero(name):
    with pytest.raises(ValueError, match=rf"PATConfig\.{name} must be a finite number > 0, got 0"):
        PATConfig(**{name: 0.0})


def test_zero_weights_are_allowed():
    config = PATConfig(**{name: 0.0 for name in WEIGHT_FIELDS}, decoder_num_extra_layers=0, decoder_attn_window=None)
    assert config.class_weight == 0.0 and config.decoder_attn_window is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pyramid_side_layers": [1, 2]}, r"pyramid_side_layers must be 3 whole numbers >= 1, one per stage"),
        ({"codebook_sizes": [128, 0, 32]}, r"codebook_sizes must be 3 whole numbers >= 1, one per stage"),
        ({"pyramid_scales": [4, 2]}, r"pyramid_scales must be 3 whole numbers"),
        ({"pyramid_side_layers": [1, 2, 9]}, r"pyramid_side_layers must be increasing side blocks that receive CLIP"),
        ({"pyramid_side_layers": [2, 1, 3]}, r"pyramid_side_layers must be increasing"),
        ({"pyramid_side_layers": [1, 2, 5]}, r"fusion_side_layers >= 1: \[1, 2, 3\]\), got \[1, 2, 5\]"),
        ({"pyramid_scales": [3, 2, 1]}, r"pyramid_scales must be scales that divide side_patch_size=16"),
        ({"pyramid_scales": [1, 2, 4]}, r"pyramid_scales must be .* each a multiple of the next"),
        ({"decoder_stages": ["early", "middle"]}, r"decoder_stages must be distinct names from \['early', 'mid'"),
        ({"decoder_stages": ["early", "early"]}, r"decoder_stages must be distinct"),
        ({"decoder_num_attention_heads": 7}, r"decoder_num_attention_heads must be a divisor of decoder_hidden_size"),
        ({"global_attn_num_heads": 7}, r"global_attn_num_heads must be a divisor of side_hidden_size=240"),
        ({"dysample_groups": 7}, r"dysample_groups must be a divisor of decoder_hidden_size=256"),
        ({"perceptual_network": "resnet"}, r"perceptual_network must be one of \['auto', 'vgg', 'clip', 'none'\]"),
    ],
)
def test_pyramid_settings_fail_at_construction(overrides, message):
    with pytest.raises(ValueError, match=message):
        PATConfig(use_pyramid_tokenization=True, **overrides)


def test_pyramid_fields_do_not_constrain_a_san_config():
    """SAN ignores the pyramid fields: a two-block SAN side adapter is fine although (1, 2, 3) lists block 3."""
    config = PATConfig(side_num_hidden_layers=2, deep_supervision_layers=[2], fusion_side_layers=[0, 1, 2],
                       fusion_clip_layers=[0, 3, 6])
    assert list(config.pyramid_side_layers) == [1, 2, 3]
    with pytest.raises(ValueError, match="pyramid_side_layers"):
        PATConfig(**{**config.to_diff_dict(), "use_pyramid_tokenization": True})


@pytest.mark.parametrize(
    ("templates", "message"),
    [
        (["a photo of a {} and a {}."], r"exactly one '\{\}' .* found 2"),
        (["a photo of a {0}."], r"exactly one '\{\}' .* found 1: \['\{0\}'\]"),
        (["a photo of a {name}."], r"found 1: \['\{name\}'\]"),
        (["a photo of a {{}}."], r"found 0"),
        (["a photo of a {}", "a { photo"], r"prompt_templates\[1\]` 'a \{ photo' does not format"),
        (["a photo of a {}}"], r"does not format"),
        ([], r"must contain at least one template"),
    ],
)
def test_prompt_templates_hold_exactly_one_placeholder(templates, message):
    with pytest.raises(ValueError, match=message):
        PATConfig(prompt_templates=templates)
    with pytest.raises(ValueError, match=message):
        validate_prompt_templates(templates)


def test_templates_with_literal_braces_and_single_strings_are_accepted():
    assert validate_prompt_templates("a {} with {{braces}}") == ["a {} with {{braces}}"]
    assert PATConfig(prompt_templates=["a {} with {{braces}}"]).prompt_templates == ["a {} with {{braces}}"]
    with pytest.raises(TypeError, match=r"`prompt_templates\[0\]` must be a string, got int"):
        validate_prompt_templates([3])


def test_bad_config_json_fails_in_from_pretrained_naming_the_field(tmp_path):
    PATConfig.from_preset("san-tiny").save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "num_queries": 0}))
    with pytest.raises(ValueError, match=r"PATConfig\.num_queries must be a whole number >= 1, got 0"):
        PATConfig.from_pretrained(tmp_path)


def test_every_loader_reports_the_bad_field(tmp_path):
    """The model class, the Auto classes and the pipeline all build the config first: the same ValueError."""
    from transformers import AutoConfig, AutoModelForSemanticSegmentation, pipeline

    from modeling_pat import PATForOpenVocabSegmentation

    config = PATConfig.from_preset("pat-tiny")
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "codebook_sizes": [16, 0, 8]}))
    message = r"PATConfig\.codebook_sizes must be 3 whole numbers >= 1, one per stage .* got \[16, 0, 8\]"
    for load in (
        lambda: PATForOpenVocabSegmentation.from_pretrained(tmp_path),
        lambda: AutoConfig.from_pretrained(tmp_path),
        lambda: AutoModelForSemanticSegmentation.from_pretrained(tmp_path),
        lambda: pipeline("image-segmentation", model=str(tmp_path)),
    ):
        with pytest.raises(ValueError, match=message):
            load()


def test_keyword_overrides_of_from_pretrained_are_validated(tmp_path):
    """transformers sets `from_pretrained(..., key=value)` overrides after construction: checked again."""
    PATConfig.from_preset("san-tiny").save_pretrained(tmp_path)
    assert PATConfig.from_pretrained(tmp_path, num_queries=5).num_queries == 5
    with pytest.raises(ValueError, match=r"PATConfig\.side_num_attention_heads must be a whole number >= 1"):
        PATConfig.from_pretrained(tmp_path, side_num_attention_heads=0)
    config, unused = PATConfig.from_pretrained(tmp_path, return_unused_kwargs=True, not_a_field=1)
    assert config.num_queries == 12 and unused == {"not_a_field": 1}


def test_a_setting_changed_after_construction_is_caught_by_validate_and_save(tmp_path):
    config = PATConfig.from_preset("san-tiny")
    config.num_queries = 0
    with pytest.raises(Exception, match="num_queries"):
        config.validate()
    with pytest.raises(Exception, match="num_queries"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_wrong_field_type_is_rejected():
    with pytest.raises(Exception, match="num_queries"):
        PATConfig(num_queries="many")


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ValueError, match="san-tiny"):
        PATConfig.from_preset("no-such-preset")


def test_preset_files_are_plain_json_configs():
    for name in PRESETS:
        data = json.loads((PRESETS_DIR / f"{name}.json").read_text())
        assert data["model_type"] == "pat"


def test_clip_trainable_layers_above_the_clip_depth_is_refused_naming_the_field():
    config = PATConfig.from_preset("san-tiny").to_dict()
    depth = config["clip_config"]["vision_cfg"]["layers"]
    config["clip_trainable_layers"] = depth + 1
    with pytest.raises(ValueError, match=r"clip_trainable_layers must be at most the CLIP depth"):
        PATConfig.from_dict(config)
