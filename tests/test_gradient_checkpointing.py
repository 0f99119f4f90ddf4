"""Gradient checkpointing: the side ViT's and the PAT decoder's layers are recomputed in the backward pass, and a
training step gives the same loss and gradients as without (SAN and PAT tiny presets, fixed seeds)."""

import pytest
import torch

from modeling_pat.shared_decoder import PATDecoderLayer
from modeling_pat.side_adapter import PATSideLayer

from conftest import tiny_model


def training_step(model, checkpointing: bool, pixel_values, labels, class_embeddings):
    """Loss and gradients of one step; the loss's random points come from a generator with a fixed seed."""
    if checkpointing:
        model.gradient_checkpointing_enable()
    else:
        model.gradient_checkpointing_disable()
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    out = model(
        pixel_values, class_embeddings=class_embeddings, labels=labels,
        loss_generator=torch.Generator().manual_seed(2),
    )
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), grads


def layer_calls(model) -> dict[type, list[int]]:
    """Counts the MLP calls of the first side and decoder layer: a recomputed layer calls its MLP again. (A pre-hook:
    the recomputation stops as soon as every saved tensor is back, inside the MLP, before a forward hook would run.)"""
    counts = {}
    for kind in (PATSideLayer, PATDecoderLayer):
        layer = next((m for m in model.modules() if isinstance(m, kind)), None)
        if layer is not None:
            counts[kind] = calls = [0]
            layer.mlp.register_forward_pre_hook(lambda *args, calls=calls: calls.__setitem__(0, calls[0] + 1))
    return counts


# transformers 5 renamed the switch `activation_checkpointing_enable`; the old name is what users call
@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_(enable|disable)` is deprecated:FutureWarning")
@pytest.mark.parametrize("preset", ["san-tiny", "pat-tiny"])
def test_checkpointed_training_step_equals_the_plain_one(preset):
    model = tiny_model(preset=preset)
    assert model.supports_gradient_checkpointing
    g = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(2, 3, 128, 160, generator=g)
    labels = torch.randint(0, 3, (2, 128, 160), generator=g)
    embed_dim = model.config.clip_config["embed_dim"]
    class_embeddings = torch.nn.functional.normalize(torch.randn(3, embed_dim, generator=g), dim=-1)
    counts = layer_calls(model)
    loss, grads = training_step(model, False, pixel_values, labels, class_embeddings)
    plain_calls = {kind: calls[0] for kind, calls in counts.items()}
    for calls in counts.values():
        calls[0] = 0
    checkpointed_loss, checkpointed_grads = training_step(model, True, pixel_values, labels, class_embeddings)
    assert all(m.gradient_checkpointing for m in model.modules() if isinstance(m, (PATSideLayer, PATDecoderLayer)))
    # every layer ran once more, in the backward pass
    assert {kind: calls[0] for kind, calls in counts.items()} == {kind: 2 * n for kind, n in plain_calls.items()}
    assert (PATDecoderLayer in counts) == (preset == "pat-tiny")
    torch.testing.assert_close(checkpointed_loss, loss, rtol=0, atol=1e-5)
    assert checkpointed_grads.keys() == grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=0, atol=1e-5, msg=name)
