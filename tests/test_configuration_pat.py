"""PATConfig: presets load, validate and round-trip; bad settings fail at construction with a clear message."""

import json

import pytest
from huggingface_hub.errors import StrictDataclassClassValidationError

from modeling_pat import PATConfig
from modeling_pat.configuration_pat import PRESETS_DIR, VILD_TEMPLATES


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
        ({"fusion_clip_layers": [0, 3, 6, 12]}, "fusion_clip_layers"),
        ({"deep_supervision_layers": [7]}, "deep_supervision_layers"),
        ({"deep_supervision_layers": [8, 7]}, "deep_supervision_layers"),
        ({"prompt_templates": ["a photo"]}, "prompt_templates"),
        ({"rec_downsample_method": "median"}, "rec_downsample_method"),
    ],
)
def test_invalid_settings_fail_at_construction(overrides, message):
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        PATConfig(**overrides)


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
