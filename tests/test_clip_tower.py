"""CLIP tower units: positional resize, the recognition attention mask, text encoding, the frozen set."""

import pytest
import torch
import torch.nn.functional as F

from modeling_pat.clip_tower import (
    PATClipTower,
    PATOpenVocabClassifier,
    build_recognition_attention_mask,
    resize_clip_positional_embedding,
)

from conftest import tiny_config, tiny_model
from test_modeling_pat import random_labels


def test_positional_resize_keeps_cls_row_and_is_identity_on_same_grid():
    pos = torch.randn(1 + 14 * 14, 8)
    assert resize_clip_positional_embedding(pos, (14, 14), (14, 14)) is pos
    resized = resize_clip_positional_embedding(pos, (14, 14), (20, 27))
    assert resized.shape == (1 + 20 * 27, 8)
    torch.testing.assert_close(resized[0], pos[0])
    grid = pos[1:].T.reshape(1, 8, 14, 14)
    expected = F.interpolate(grid, size=(20, 27), mode="bicubic", align_corners=False)[0].flatten(1).T
    torch.testing.assert_close(resized[1:], expected)


def test_attention_mask_pattern_with_exact_pooling():
    b, k, q, grid = 2, 3, 4, (2, 2)
    bias = torch.randn(b, k, q, 4, 4)
    mask = build_recognition_attention_mask(bias, grid, num_heads=k, mask_value=-100.0, method="max")
    length = grid[0] * grid[1]
    assert mask.shape == (b * k, q + 1 + length, q + 1 + length)
    pooled = F.max_pool2d(bias.flatten(0, 2)[:, None], 2).reshape(b * k, q, length)  # row index b*K + k
    for row in range(b * k):
        m = mask[row]
        sos_block = m[:q, :q]
        assert torch.all(sos_block.diagonal() == 0)
        assert torch.all(sos_block[~torch.eye(q, dtype=torch.bool)] == -100)
        assert torch.all(m[q:, :q] == -100)  # nobody attends to the SOS tokens
        assert torch.all(m[:q, q] == -100)  # SOS tokens do not attend to cls
        assert torch.all(m[q:, q:] == 0)  # cls and patches behave like plain CLIP
        torch.testing.assert_close(m[:q, q + 1 :], pooled[row])


def test_attention_mask_uneven_adaptive_pooling_and_single_head_broadcast():
    bias = torch.randn(1, 1, 3, 40, 54)
    mask = build_recognition_attention_mask(bias, (32, 43), num_heads=4, mask_value=-100.0, method="max")
    assert mask.shape == (4, 3 + 1 + 32 * 43, 3 + 1 + 32 * 43)
    expected = F.adaptive_max_pool2d(bias[0], (32, 43)).reshape(3, -1)
    for head in range(4):
        torch.testing.assert_close(mask[head, :3, 4:], expected)


def test_tower_freezes_all_but_visual_positional_embedding():
    tower = PATClipTower(tiny_config())
    trainable = [name for name, p in tower.named_parameters() if p.requires_grad]
    assert trainable == ["clip.visual.positional_embedding"]
    tower.train()
    assert tower.visual.training
    assert not any(m.training for m in tower.text_modules())


def test_feature_extraction_shapes_non_square():
    config = tiny_config()
    tower = PATClipTower(config)
    features = tower.extract_features(torch.randn(2, 3, 64, 80))
    assert len(features.maps) == config.clip_feature_layers + 1
    assert features.maps[-1].shape == (2, 64, 4, 5)
    assert features.cls_tokens[0].shape == (2, 64)


def test_recognition_returns_unit_embeddings_per_query():
    config = tiny_config()
    tower = PATClipTower(config).eval()
    features = tower.extract_features(torch.randn(2, 3, 64, 64))
    bias = torch.randn(2, config.attn_bias_num_heads, 5, 8, 8)
    embeddings = tower.recognize(features, [bias], num_queries=5)
    assert embeddings.shape == (2, 5, config.clip_config["embed_dim"])
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2, 5))


def test_text_embedding_ignores_padding_after_end_of_text():
    tower = PATClipTower(tiny_config()).eval()
    ids = tower.tokenize(["a photo of a cat.", "There is a large sofa in the scene."])
    full = tower.encode_text(ids)
    length = int(ids.argmax(-1).max()) + 1  # causal attention: tokens after EOT cannot change it
    torch.testing.assert_close(tower.encode_text(ids[:, :length]), full, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(full.norm(dim=-1), torch.ones(2))


def test_class_embedding_is_renormalised_template_mean():
    tower = PATClipTower(tiny_config()).eval()
    ids = torch.stack([tower.tokenize([f"a photo of a {n}.", f"a large {n}"]) for n in ("cat", "sky", "wall")])
    per_template = tower.encode_text(ids.reshape(-1, ids.shape[-1])).reshape(3, 2, -1)
    expected = F.normalize(per_template.mean(1), dim=-1)
    torch.testing.assert_close(tower.encode_class_names(ids), expected)


def test_classifier_appends_void_last_and_normalises_rows():
    classifier = PATOpenVocabClassifier(4)
    torch.nn.init.normal_(classifier.void_embedding)
    rows = classifier(F.normalize(torch.randn(3, 4), dim=-1))
    assert rows.shape == (4, 4)
    torch.testing.assert_close(rows[-1], F.normalize(classifier.void_embedding[0], dim=-1))
    torch.testing.assert_close(rows.norm(dim=-1), torch.ones(4))


@pytest.mark.parametrize("trainable_layers", [0, 2])
def test_gradient_checkpointing_recomputes_clip_blocks_with_the_same_loss_and_gradients(pixel_values, trainable_layers):
    """`gradient_checkpointing_enable()` reaches the CLIP blocks that run with gradients (the recognition blocks, the
    feature blocks behind the trainable positional embedding / `clip_trainable_layers`): each runs again in the
    backward pass, and the training step is unchanged."""

    def training_step(checkpointing: bool):
        model = tiny_model(clip_trainable_layers=trainable_layers).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        tower, calls = model.model.clip_tower, {"feature": 0, "recognition": 0}
        for kind, block in (("feature", tower.feature_blocks[0]), ("recognition", tower.recognition_blocks[0])):
            block.ln_1.register_forward_hook(lambda *args, kind=kind: calls.__setitem__(kind, calls[kind] + 1))
        out = model(pixel_values, labels=random_labels(pixel_values), loss_generator=torch.Generator().manual_seed(0))
        out.loss.backward()
        grads = {name: param.grad for name, param in model.named_parameters() if param.grad is not None}
        return out.loss, grads, calls

    loss, grads, calls = training_step(False)
    checkpointed_loss, checkpointed_grads, checkpointed_calls = training_step(True)
    assert checkpointed_calls == {kind: 2 * count for kind, count in calls.items()}  # recomputed in the backward
    torch.testing.assert_close(checkpointed_loss, loss, rtol=0, atol=1e-5)
    assert checkpointed_grads.keys() == grads.keys()
    assert any(".visual.transformer.resblocks." in name for name in grads) == (trainable_layers > 0)
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=0, atol=1e-5, msg=name)
