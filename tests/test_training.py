"""PATTrainer's per-term loss logging: terms averaged between two log events, summed on the device meanwhile."""

import torch
from transformers import Trainer, TrainingArguments

from modeling_pat.training import PATTrainer

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
