"""The SAN -> PAT converter: full key coverage of the official layouts, strict loading, the CLI, offline errors."""

import ast
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conversion_scripts import convert_san_to_hf as convert
from modeling_pat import PATConfig, PATForOpenVocabSegmentation

from conftest import FIXTURES, GOLDEN


def official_keys(tsv_name):
    rows = (line.split("\t") for line in (FIXTURES / "san_keys" / tsv_name).read_text().splitlines() if line)
    return {key: tuple(ast.literal_eval(shape)) for key, shape in rows}


@pytest.mark.parametrize(
    ("tsv_name", "preset"),
    [("san_state_dict_keys_vit_b16.tsv", "san-clip-vit-b16"), ("san_state_dict_keys_vit_l14.tsv", "san-clip-vit-l14-336")],
)
def test_every_official_key_maps_onto_the_model_with_its_shape(tsv_name, preset):
    keys = official_keys(tsv_name)
    config = PATConfig.from_preset(preset)
    with torch.device("meta"):
        expected = PATForOpenVocabSegmentation(config).state_dict()
    mapped = {}
    for key, shape in keys.items():
        new_key = convert.rename_key(key, config.clip_feature_layers)
        if new_key is None:
            assert key in convert.DROPPED_KEYS
            continue
        assert new_key not in mapped, f"two keys map to {new_key}"
        mapped[new_key] = shape
    assert set(mapped) == set(expected)
    for key, shape in mapped.items():
        assert tuple(expected[key].shape) == shape, key


def test_golden_state_dict_converts_strictly():
    config = convert.resolve_config(str(GOLDEN / "config.json"))
    reference = load_file(str(GOLDEN / "reference_state_dict.safetensors"))
    model = PATForOpenVocabSegmentation(config)
    convert.load_converted_weights(model, convert.convert_state_dict(reference, config))
    torch.testing.assert_close(
        model.model.side_adapter.pos_embed, reference["side_adapter_network.vit_model.pos_embed"].float()
    )
    rec = reference["clip_rec_head.resblocks.1.attn.in_proj_weight"].float()
    block = model.model.clip_tower.visual.transformer.resblocks[config.clip_feature_layers + 1]
    torch.testing.assert_close(block.attn.in_proj_weight, rec)


def test_golden_config_matches_the_tiny_preset():
    from_golden = convert.resolve_config(str(GOLDEN / "config.json")).to_diff_dict()
    preset = PATConfig.from_preset("san-tiny").to_diff_dict()
    for key in ("clip_model_name", "transformers_version"):
        from_golden.pop(key, None), preset.pop(key, None)
    assert from_golden == preset


def test_unknown_missing_and_mismatched_keys_are_refused():
    config = convert.resolve_config(str(GOLDEN / "config.json"))
    reference = load_file(str(GOLDEN / "reference_state_dict.safetensors"))
    with pytest.raises(ValueError, match="no mapping"):
        convert.convert_state_dict({**reference, "some.other.weight": torch.zeros(1)}, config)
    converted = convert.convert_state_dict(reference, config)
    model = PATForOpenVocabSegmentation(config)
    missing = dict(converted)
    missing.pop("classifier.void_embedding")
    with pytest.raises(ValueError, match="missing from the checkpoint"):
        convert.load_converted_weights(model, missing)
    wrong = dict(converted)
    wrong["model.side_adapter.query_embed"] = torch.zeros(1, 3, 48)
    with pytest.raises(ValueError, match="shape mismatches"):
        convert.load_converted_weights(model, wrong)


def test_pth_checkpoints_with_a_model_wrapper_are_read_weights_only(tmp_path):
    reference = load_file(str(GOLDEN / "reference_state_dict.safetensors"))
    torch.save({"model": reference, "iteration": 5}, tmp_path / "ckpt.pth")
    loaded = convert.read_checkpoint(tmp_path / "ckpt.pth")
    assert set(loaded) == set(reference)
    with pytest.raises(FileNotFoundError):
        convert.read_checkpoint(tmp_path / "missing.pth")


def test_cli_converts_saves_and_verifies(tmp_path, capsys):
    out = tmp_path / "converted"
    assert convert.main([
        "--checkpoint_path", str(GOLDEN / "reference_state_dict.safetensors"),
        "--config", str(GOLDEN / "config.json"), "--output_dir", str(out), "--verify",
    ]) == 0
    assert "Looks ok!" in capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "pat" and saved["auto_map"]["AutoModelForSemanticSegmentation"]
    assert (out / "model.safetensors").is_file()


def test_download_fails_with_instructions_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit, match="--checkpoint_path"):
        convert.download_checkpoint("san-clip-vit-b16")
    with pytest.raises(SystemExit, match="no official checkpoint"):
        convert.download_checkpoint("san-tiny")


def test_round_trip_to_reference_names_is_the_identity(tmp_path):
    reference = load_file(str(GOLDEN / "reference_state_dict.safetensors"))
    config = convert.resolve_config(str(GOLDEN / "config.json"))
    converted = convert.convert_state_dict(reference, config)
    back = convert.to_reference_state_dict(converted, config)
    assert set(back) == set(reference) - set(convert.DROPPED_KEYS)
    for key, value in back.items():
        assert torch.equal(value, reference[key].float()), key
    save_file(back, str(tmp_path / "back.safetensors"))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("keep", [0, 100, 0.5])
def test_a_truncated_checkpoint_raises_oserror_naming_it(tmp_path, suffix, keep):
    reference = load_file(str(GOLDEN / "reference_state_dict.safetensors"))
    path = tmp_path / f"ckpt{suffix}"
    if suffix == ".pth":
        torch.save({"model": reference}, path)
    else:
        save_file(reference, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(OSError, match="truncated") as caught:
        convert.read_checkpoint(path)
    assert str(path) in str(caught.value)


def test_a_failed_save_keeps_the_earlier_conversion(tmp_path, monkeypatch):
    out = tmp_path / "converted"
    model = PATForOpenVocabSegmentation(PATConfig.from_preset("san-tiny"))
    convert.save(model, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail_midway(self, save_directory, *args, **kwargs):  # as a full disk would, after part of the weights
        (Path(save_directory) / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PATForOpenVocabSegmentation, "save_pretrained", fail_midway)
    with pytest.raises(OSError, match="No space"):
        convert.save(model, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
