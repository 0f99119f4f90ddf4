"""`run_semantic_segmentation.py` with the CLIP fine-tuning flags: a short LoRA run on the fixture photos lowers the
loss, prints the trainable set, and leaves a merged model plus the adapter."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modeling_pat import PATForOpenVocabSegmentation

from test_run_semantic_segmentation import log_entries, run_args, runner, workspace  # noqa: F401 (fixture)


def test_lora_run_lowers_the_loss_and_saves_merged_model_and_adapter(workspace, tmp_path, capsys):  # noqa: F811
    output = tmp_path / "lora"
    assert runner.main(run_args(
        workspace, output, "--do_train", "--max_steps", "16", "--per_device_train_batch_size", "2",
        "--learning_rate", "2e-3", "--logging_steps", "4", "--save_strategy", "no", "--seed", "0",
        "--lora_rank", "4", "--lora_target", "all", "--clip_trainable_layers", "1", "--clip_lr_multiplier", "0.5",
    )) == 0
    printed = capsys.readouterr().out
    assert "Trainable parameters:" in printed
    for group in ("side network", "CLIP positional embedding", "CLIP blocks", "LoRA"):
        line = next(line for line in printed.splitlines() if line.strip().startswith(group))
        assert int(line.split()[-3].replace(",", "")) > 0, line  # every chosen group trains

    losses = [entry["loss"] for entry in log_entries(output, "loss_ce")]
    print("losses", losses)
    assert np.mean(losses[-2:]) < losses[0], losses

    # OUTPUT: the merged model, a plain checkpoint; OUTPUT/lora_adapter: the adapter
    assert (output / "model.safetensors").is_file() and not (output / "adapter_config.json").exists()
    config = json.loads((output / "config.json").read_text())
    assert config["clip_trainable_layers"] == 1 and config["clip_lr_multiplier"] == 0.5
    adapter = json.loads((output / "lora_adapter" / "adapter_config.json").read_text())
    adapted = load_file(str(output / "lora_adapter" / "adapter_model.safetensors"))
    assert adapter["r"] == 4 and all("lora_" in key for key in adapted)
    assert any(".side_adapter." in key for key in adapted) and any(".visual." in key for key in adapted)
    merged = PATForOpenVocabSegmentation.from_pretrained(output)
    assert not any("lora_" in name for name in merged.state_dict())
    start = PATForOpenVocabSegmentation.from_pretrained(workspace / "start")
    key = "model.clip_tower.clip.visual.transformer.resblocks.0.mlp.c_fc.weight"  # frozen base + trained LoRA
    assert not torch.equal(merged.state_dict()[key], start.state_dict()[key])
    key = "model.clip_tower.clip.transformer.resblocks.0.mlp.c_fc.weight"  # the text tower: untouched
    assert torch.equal(merged.state_dict()[key], start.state_dict()[key])


def test_lora_flags_are_checked(workspace, tmp_path, monkeypatch):  # noqa: F811
    # a resume that would really happen is refused (LoRA checkpoints hold the adapter only); `last` with no complete
    # checkpoint is a fresh start, so it is not
    monkeypatch.setattr(runner, "resume_point", lambda args: str(tmp_path / "x" / "checkpoint-1"))
    with pytest.raises(runner.SetupError, match="resume_from_checkpoint"):
        runner.main(run_args(workspace, tmp_path / "x", "--do_train", "--max_steps", "1", "--lora_rank", "2",
                             "--resume_from_checkpoint", "last"))
    monkeypatch.undo()
    with pytest.raises(SystemExit):
        runner.main(run_args(workspace, tmp_path / "y", "--do_train", "--lora_rank", "2", "--lora_target", "text"))
