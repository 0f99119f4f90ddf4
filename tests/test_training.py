"""PATTrainer's per-term loss logging: terms averaged between two log events, summed on the device meanwhile."""

import json
import logging

import pytest
import torch
from safetensors.torch import save_file
from transformers import Trainer, TrainingArguments

from modeling_pat.apps.training import PATTrainer, checkpoint_problem, last_complete_checkpoint

from conftest import tiny_model


def test_loss_terms_are_averaged_between_log_events(tmp_path, monkeypatch):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=4)
    trainer = PATTrainer(model=tiny_model(), args=args)
    logged = []
    monkeypatch.setattr(Trainer, "log", lambda self, logs, start_time=None: logged.append(dict(logs)))
    steps = [
        {"loss_dict": {"loss_ce": torch.tensor(1.0), "loss_mask": torch.tensor(4.0, requires_grad=True)},
         "codebook_perplexity": {"latent": 3.0}},
        {"loss_dict": {"loss_ce": torch.tensor(3.0), "loss_mask": torch.tensor(2.0)},
         "codebook_perplexity": {"latent": 5.0}},
    ]
    for outputs in steps:
        trainer._accumulate(outputs)
    assert all(not isinstance(v, torch.Tensor) or not v.requires_grad for v in trainer._term_sums.values())
    trainer.log({"loss": 5.0})
    trainer.log({"eval_loss": 1.0})  # not a training log event: nothing added
    trainer._accumulate({"loss_dict": {"loss_ce": torch.tensor(7.0)}})
    trainer.log({"loss": 7.0})
    assert logged == [
        {"loss": 5.0, "loss_ce": 2.0, "loss_mask": 3.0, "perplexity_latent": 4.0},
        {"eval_loss": 1.0},
        {"loss": 7.0, "loss_ce": 7.0},  # the sums were cleared by the first log event
    ]


# -- resuming skips incomplete checkpoints -----------------------------------------------------------------------------
def _checkpoint(folder, step: int):
    """A folder with what Trainer writes: weights, optimizer, scheduler, RNG state, then trainer_state.json."""
    folder.mkdir(parents=True)
    save_file({"weight": torch.arange(1000, dtype=torch.float32)}, folder / "model.safetensors")
    torch.save({"state": {0: {"exp_avg": torch.ones(1000)}}}, folder / "optimizer.pt")
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    torch.save({"python": 1}, folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return folder


def _truncate(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damage, problem", [
    (lambda f: (f / "trainer_state.json").unlink(), "no trainer_state.json"),
    (lambda f: _truncate(f / "trainer_state.json"), "trainer_state.json is unreadable"),
    (lambda f: _truncate(f / "model.safetensors"), "model.safetensors: truncated"),
    (lambda f: _truncate(f / "model.safetensors", keep=0.001), "model.safetensors: truncated"),
    (lambda f: (f / "model.safetensors").unlink(), "no model weights file"),
    (lambda f: _truncate(f / "optimizer.pt"), "optimizer.pt: truncated or not a torch checkpoint"),
    (lambda f: _truncate(f / "rng_state.pth", keep=0.9), "rng_state.pth: truncated"),
    (lambda f: (f / "trainer_state.json").write_text('{"global_step": 4}'), "not the state of this step"),
])
def test_last_complete_checkpoint_skips_incomplete_ones_with_a_warning(tmp_path, caplog, damage, problem):
    _checkpoint(tmp_path / "checkpoint-4", 4)
    newest = _checkpoint(tmp_path / "checkpoint-12", 12)
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint name: ignored
    assert last_complete_checkpoint(tmp_path) == str(newest) and checkpoint_problem(newest) is None
    damage(newest)
    assert problem in checkpoint_problem(newest)
    with caplog.at_level(logging.WARNING, logger="modeling_pat.apps.training"):
        assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert "checkpoint-12" in caplog.text and problem in caplog.text


def test_no_complete_checkpoint_is_none(tmp_path):
    assert last_complete_checkpoint(tmp_path / "absent") is None
    (_checkpoint(tmp_path / "checkpoint-2", 2) / "trainer_state.json").unlink()
    assert last_complete_checkpoint(tmp_path) is None
