"""SAN / PAT optimisation recipe: weight-decay groups, the trainable set, the poly schedule through Trainer."""

import pytest
import torch
from transformers import TrainingArguments

from modeling_pat import PATConfig, PATForOpenVocabSegmentation
from modeling_pat.apps.optimization import POLY_LR_SCHEDULER_KWARGS, get_decay_parameter_names, get_parameter_groups
from modeling_pat.apps.training import PATTrainer


@pytest.fixture(scope="module")
def san():
    torch.manual_seed(0)
    return PATForOpenVocabSegmentation(PATConfig.from_preset("san-tiny"))


@pytest.fixture(scope="module")
def pat():
    torch.manual_seed(0)
    return PATForOpenVocabSegmentation(PATConfig.from_preset("pat-tiny"))


def trainable_names(model) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def test_san_weight_decay_groups(san):
    decayed = set(get_decay_parameter_names(san)) & trainable_names(san)
    not_decayed = trainable_names(san) - decayed
    assert not_decayed == {
        "model.clip_tower.clip.visual.positional_embedding",  # positional_embedding
        "model.side_adapter.pos_embed", "model.side_adapter.query_embed", "model.side_adapter.query_pos_embed",
        "classifier.void_embedding",
        *(n for n in trainable_names(san) if ".norm1." in n or ".norm2." in n),  # torch.nn.LayerNorm
    }
    # biases keep weight decay (SAN has no bias exception), and so does the fusion layers' channel LayerNorm
    assert "model.side_adapter.layers.0.attn.qkv.bias" in decayed
    assert "model.side_adapter.fusion_layers.layer_0.norm.weight" in decayed
    assert "model.side_adapter.mask_decoder.bias_scaling.weight" in decayed
    strict = set(get_decay_parameter_names(san, decay_void_embedding=True))
    assert "classifier.void_embedding" in strict  # SAN's own rule for its bg_embed


def test_pat_codebooks_have_no_weight_decay(pat):
    decayed = set(get_decay_parameter_names(pat))
    codebooks = {n for n in trainable_names(pat) if n.endswith("codebook")}
    assert len(codebooks) == 4 and not codebooks & decayed
    assert "model.tokenization.reconstruction_head.norm.weight" in decayed  # channel LN, not nn.LayerNorm


def test_trainer_groups_cover_exactly_the_trainable_set(san, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", learning_rate=1e-4,
                             weight_decay=1e-4, lr_scheduler_type="polynomial",
                             lr_scheduler_kwargs=dict(POLY_LR_SCHEDULER_KWARGS), max_steps=10)
    trainer = PATTrainer(model=san, args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    groups = trainer.optimizer.param_groups
    ids = [id(p) for group in groups for p in group["params"]]
    trainable = {id(p) for p in san.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) and set(ids) == trainable  # frozen CLIP (text tower included) is left out
    assert not any(id(p) in trainable for p in san.model.clip_tower.text_parameters())
    by_decay = {group["weight_decay"]: {id(p) for p in group["params"]} for group in groups}
    assert id(san.classifier.void_embedding) in by_decay[0.0]
    assert id(san.model.side_adapter.layers[0].attn.qkv.bias) in by_decay[1e-4]
    assert isinstance(trainer.optimizer, torch.optim.AdamW) or "AdamW" in type(trainer.optimizer).__name__
    # WarmupPolyLR(power 0.9, no warm-up, ends at 0): lr_t = 1e-4 * (1 - t / 10) ** 0.9
    rates = []
    for _ in range(10):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    expected = [1e-4 * (1 - t / 10) ** 0.9 for t in range(10)]
    assert rates == pytest.approx(expected, rel=1e-9)
    assert trainer.lr_scheduler.get_last_lr()[0] == 0.0


def test_parameter_groups_for_plain_loops(san):
    decay, no_decay = get_parameter_groups(san, weight_decay=1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    count = sum(p.numel() for group in (decay, no_decay) for p in group["params"])
    assert count == sum(p.numel() for p in san.parameters() if p.requires_grad)
