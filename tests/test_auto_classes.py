"""Auto classes resolve PAT from a saved folder (with the package imported), and as Hub-style remote code."""

import json
import subprocess
import sys

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForSemanticSegmentation,
    AutoProcessor,
    AutoTokenizer,
)

from modeling_pat import (
    PATConfig,
    PATForOpenVocabSegmentation,
    PATImageProcessor,
    PATModel,
    PATProcessor,
    register_for_auto_classes,
)

from conftest import tiny_model


def save_tiny(folder):
    model = tiny_model()
    model.save_pretrained(folder)
    PATProcessor.from_config(model.config).save_pretrained(folder)
    return model


def test_auto_classes_resolve_a_saved_folder(tmp_path):
    model = save_tiny(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), PATConfig)
    assert isinstance(AutoModelForSemanticSegmentation.from_pretrained(tmp_path), PATForOpenVocabSegmentation)
    base = AutoModel.from_pretrained(tmp_path)  # the image-side model out of a full checkpoint
    assert isinstance(base, PATModel)
    torch.testing.assert_close(base.side_adapter.pos_embed, model.model.side_adapter.pos_embed)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), PATImageProcessor)
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(processor, PATProcessor)
    assert AutoTokenizer.from_pretrained(tmp_path).model_max_length == 77
    assert list(processor.prompt_templates) == list(model.config.prompt_templates)


def test_remote_code_folder_loads_without_the_package(tmp_path):
    register_for_auto_classes()
    model = save_tiny(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSemanticSegmentation"].endswith("PATForOpenVocabSegmentation")
    assert (tmp_path / "modeling_pat.py").is_file() and (tmp_path / "clip_tower.py").is_file()
    pixel_values = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    torch.save(pixel_values, tmp_path / "input.pt")
    with torch.no_grad():
        expected = model(pixel_values).class_queries_logits
    script = f"""
import sys, torch
from transformers import AutoModelForSemanticSegmentation, AutoProcessor
model = AutoModelForSemanticSegmentation.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
AutoProcessor.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
assert "modeling_pat" not in sys.modules, "the installed package must not be used"
with torch.no_grad():
    out = model(torch.load({str(tmp_path / "input.pt")!r})).class_queries_logits
torch.save(out, {str(tmp_path / "output.pt")!r})
print(type(model).__module__)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "transformers_modules" in result.stdout
    torch.testing.assert_close(torch.load(tmp_path / "output.pt"), expected)
