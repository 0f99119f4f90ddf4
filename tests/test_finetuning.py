"""Fine-tuning CLIP: unfrozen last blocks with their own learning rate, LoRA through transformers' adapter API (which
parameters get gradients, by name; feature and recognition paths both adapted; save / load / merge), the trainable
summary and the text-embedding cache key."""

import json

import pytest
import torch
from transformers import TrainingArguments

from modeling_pat import PATForOpenVocabSegmentation
from modeling_pat.apps.finetuning import (
    add_lora,
    configure_clip_training,
    format_trainable_summary,
    lora_target_modules,
    merge_lora,
    parameter_group,
    trainable_parameter_counts,
)
from modeling_pat.apps.optimization import get_parameter_groups
from modeling_pat.apps.training import PATTrainer

import clip_oracles
from conftest import tiny_model
from test_modeling_pat import random_labels


# peft is a test dependency (extra [lora]): a missing peft fails here, it never skips
import peft  # noqa: E402,F401


def pixels(batch=1, seed=1):
    return torch.randn(batch, 3, 128, 160, generator=torch.Generator().manual_seed(seed))


def grad_names(model) -> set[str]:
    """Names of the parameters that receive a gradient from one training loss."""
    model.train()
    x = pixels(2)
    model.zero_grad(set_to_none=True)
    out = model(x, labels=random_labels(x), loss_generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    return {name for name, param in model.named_parameters() if param.grad is not None}


def side_network_names(model) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(("model.side_adapter.", "classifier."))}


CLIP_POS = "model.clip_tower.clip.visual.positional_embedding"
BLOCK = "model.clip_tower.clip.visual.transformer.resblocks.{}."


def perturb_lora(model, seed=0):
    """LoRA's B starts at zero (the adapter is a no-op); give every adapter weight a random value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))


@torch.no_grad()
def outputs_of(model):
    model.eval()
    out = model(pixels(), class_embeddings=model.get_class_embeddings(class_names=["cat", "dog", "sky"]))
    return out.class_queries_logits, out.masks_queries_logits


# -- clip_trainable_layers --------------------------------------------------------------------------------------------
def test_unfrozen_blocks_get_gradients_and_nothing_else_changes():
    model = tiny_model(clip_trainable_layers=3)  # 6 blocks: block 3 is a feature block, 4 and 5 recognition blocks
    expected = side_network_names(model) | {CLIP_POS}
    expected |= {n for n, _ in model.named_parameters() if any(n.startswith(BLOCK.format(i)) for i in (3, 4, 5))}
    assert grad_names(model) == expected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    # the default is SAN's: no block trains
    assert grad_names(tiny_model()) == side_network_names(tiny_model()) | {CLIP_POS}
    with pytest.raises(ValueError, match="visual blocks"):
        configure_clip_training(tiny_model(), trainable_layers=7)


def test_clip_blocks_get_their_learning_rate_and_san_weight_decay(tmp_path):
    model = tiny_model(clip_trainable_layers=2, clip_lr_multiplier=0.1)
    groups = get_parameter_groups(model, weight_decay=1e-4, learning_rate=1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    by_setting = {(round(g["lr"], 9), g["weight_decay"]): {names[id(p)] for p in g["params"]} for g in groups}
    clip_slow = by_setting[(1e-4, 1e-4)] | by_setting[(1e-4, 0.0)]
    assert clip_slow == {n for n in names.values() if n.startswith((BLOCK.format(4), BLOCK.format(5)))}
    assert BLOCK.format(5) + "ln_1.weight" in by_setting[(1e-4, 0.0)]  # norms: no decay, as in SAN
    assert BLOCK.format(5) + "mlp.c_fc.bias" in by_setting[(1e-4, 1e-4)]
    assert CLIP_POS in by_setting[(1e-3, 0.0)]
    # Trainer: the same split, on top of its own groups
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", learning_rate=1e-3,
                             weight_decay=1e-4)
    optimizer = PATTrainer(model=model, args=args).create_optimizer()
    trainer_groups = {(round(g["lr"], 9), g["weight_decay"]): {names[id(p)] for p in g["params"]}
                      for g in optimizer.param_groups}
    assert {k: v for k, v in trainer_groups.items() if v} == {k: v for k, v in by_setting.items() if v}


# -- LoRA -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["clip", "side", "all"])
def test_lora_gradients_reach_exactly_the_chosen_parameters(target):
    model = tiny_model()
    before = {n for n, p in model.named_parameters() if p.requires_grad}
    targets = lora_target_modules(model, target)
    add_lora(model, rank=2, target=target)
    lora = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert len(lora) == 2 * len(targets) and all(any(n.startswith(t + ".") for t in targets) for n in lora)
    adapted_bases = {f"{t}.base_layer.{kind}" for t in targets for kind in ("weight", "bias")}
    kept = {n for n, _ in model.named_parameters() if n.replace(".base_layer.", ".") in before} - adapted_bases
    assert grad_names(model) == lora | kept
    assert not any("clip_tower" in n and "visual" not in n for n in grad_names(model))  # the text tower: never
    clip_blocks = {t for t in targets if ".visual." in t}
    assert bool(clip_blocks) == (target != "side") and all(t.endswith(("mlp.c_fc", "mlp.c_proj")) for t in clip_blocks)


def test_lora_on_clip_changes_features_and_recognition():
    model = tiny_model()
    add_lora(model, rank=2, target="clip")
    perturb_lora(model)
    tower, x = model.model.clip_tower, pixels()
    with torch.no_grad():
        adapted = tower.extract_features(x)
        biases = [torch.randn(1, tower.num_heads, 4, 8, 10, generator=torch.Generator().manual_seed(2))]
        recognised = {True: tower.recognize(adapted, biases, 4),
                      False: clip_oracles.recognize(tower, adapted, biases, 4)}
        model.disable_adapters()
        plain = tower.extract_features(x)
        plain_recognised = tower.recognize(adapted, biases, 4)
        model.enable_adapters()
    assert not torch.allclose(adapted.maps[-1], plain.maps[-1], atol=1e-4)  # the feature layers
    assert not torch.allclose(recognised[True], plain_recognised, atol=1e-4)  # the recognition layers
    torch.testing.assert_close(recognised[True], recognised[False], atol=1e-5, rtol=1e-5)  # the oracle agrees


def test_adapter_save_load_and_merge(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "base")
    add_lora(model, rank=4, target="all")
    perturb_lora(model)
    expected = outputs_of(model)
    model.save_pretrained(tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files and "model.safetensors" not in files
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 4

    reloaded = PATForOpenVocabSegmentation.from_pretrained(tmp_path / "base")
    reloaded.load_adapter(str(tmp_path / "adapter"))
    for ours, theirs in zip(outputs_of(reloaded), expected):
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)

    merge_lora(model)
    assert not any("lora_" in n for n, _ in model.state_dict().items())
    for ours, theirs in zip(outputs_of(model), expected):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path / "merged")  # a plain checkpoint again
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    for ours, theirs in zip(outputs_of(PATForOpenVocabSegmentation.from_pretrained(tmp_path / "merged")), expected):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


# -- the trainable set and the text cache -----------------------------------------------------------------------------
def test_trainable_summary_counts_each_group():
    model = tiny_model(preset="pat-tiny", clip_trainable_layers=1)
    add_lora(model, rank=2, target="clip")
    counts = trainable_parameter_counts(model)
    by_hand = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            by_hand[parameter_group(name)] = by_hand.get(parameter_group(name), 0) + param.numel()
    assert {group: n for group, (n, _) in counts.items() if n} == by_hand
    assert all(counts[g][0] > 0 for g in ("side network", "PAT modules", "CLIP positional embedding", "CLIP blocks",
                                          "LoRA"))
    assert counts["other"] == (0, 0)
    summary = format_trainable_summary(model)
    assert f"{counts['LoRA'][0]:,}" in summary and "CLIP blocks" in summary and "total" in summary


def test_text_cache_key_follows_the_text_tower():
    model = tiny_model()
    names = ["cat", "dog"]
    first = model.get_class_embeddings(class_names=names)
    fingerprint = model.text_weights_fingerprint()
    # LoRA on the visual side (and unfrozen visual blocks) leaves the key and the cache alone
    configure_clip_training(model, trainable_layers=2)
    add_lora(model, rank=2, target="all")
    perturb_lora(model)
    assert model.text_weights_fingerprint() == fingerprint and model.get_class_embeddings(class_names=names) is first
    # an adapter on the text tower is part of the key: the embeddings are recomputed, and differ
    text_layer = "model.clip_tower.clip.transformer.resblocks.0.mlp.c_fc"
    model.add_adapter(peft.LoraConfig(r=2, target_modules=[text_layer]), adapter_name="text")
    model.set_adapter(["default", "text"])
    perturb_lora(model, seed=3)
    # (its LoRA weights train: the key is hashed at every call and the in-memory cache is bypassed)
    assert model.text_weights_fingerprint() != fingerprint
    adapted = model.get_class_embeddings(class_names=names)
    assert not torch.allclose(adapted, first, atol=1e-4)
    # merged into the text weights in place (frozen again): hashed anew, and the embeddings stay the adapted ones
    merge_lora(model)
    assert model.text_weights_fingerprint() != fingerprint
    torch.testing.assert_close(model.get_class_embeddings(class_names=names), adapted, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layers", [0, 2])
def test_from_pretrained_keeps_the_frozen_set(tmp_path, layers):
    model = tiny_model(clip_trainable_layers=layers)
    model.save_pretrained(tmp_path)
    loaded = PATForOpenVocabSegmentation.from_pretrained(tmp_path)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == trainable
    assert not any("clip_tower" in n and ".visual." not in n for n in trainable)  # the text tower stays frozen
