"""The EVA02-CLIP image tower (open_clip `TimmModel` around timm's `Eva`) behind `PATClipTower`, on a tiny EVA.

The tiny trunk is timm's `eva02_base_patch16_clip_224` recipe (RoPE, SwiGLU, sub-LN, separate q/k/v, token pooling,
trunk head = CLIP projection) at width 64 / 6 blocks / 4 heads, registered with timm under a test-only name: open_clip
passes no extra kwargs to `timm.create_model`, so an open_clip config can only name a registered timm model.
"""

import copy

import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models import register_model

from modeling_pat import PATConfig, PATForOpenVocabSegmentation
from modeling_pat.clip_tower import PATClipTower, build_recognition_attention_mask

from conftest import tiny_config


TINY_EVA = "pat_test_eva02_tiny_clip"

if not timm.models.is_model(TINY_EVA):

    @register_model
    def pat_test_eva02_tiny_clip(pretrained: bool = False, **kwargs):
        args = {"embed_dim": 64, "depth": 6, "num_heads": 4, **kwargs}
        return timm.create_model("eva02_base_patch16_clip_224", pretrained=pretrained, **args)


TINY_EVA_CLIP = {
    "embed_dim": 8,
    "vision_cfg": {
        "image_size": 224,
        "timm_model_name": TINY_EVA,
        "timm_model_pretrained": False,
        "timm_pool": "token",
        "timm_proj": None,
    },
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 8, "heads": 2, "layers": 2, "mlp_ratio": 4.0},
    "custom_text": True,
}


def eva_config(preset: str = "san-tiny", clip_config=None, **overrides) -> PATConfig:
    """A tiny preset with the tiny EVA02-CLIP instead of the tiny OpenAI CLIP (same width 64, 4 heads, patch 16)."""
    clip_config = copy.deepcopy(TINY_EVA_CLIP if clip_config is None else clip_config)
    return tiny_config(
        preset, clip_model_name="EVA02-tiny-test", clip_config=clip_config, clip_quick_gelu=False, **overrides
    )


@pytest.fixture(scope="module")
def tower() -> PATClipTower:
    torch.manual_seed(0)
    return PATClipTower(eva_config()).eval()


def features_and_bias(tower, num_queries=5, size=(64, 80), seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, *size, generator=generator)
    bias = torch.randn(2, tower.num_heads, num_queries, 2 * size[0] // 16, 2 * size[1] // 16, generator=generator)
    with torch.no_grad():
        return tower.extract_features(images), bias


def test_structure_and_non_square_feature_shapes(tower):
    assert (tower.width, tower.num_heads, tower.patch_size, tower.embed_dim) == (64, 4, 16, 8)
    assert len(tower.feature_blocks) == 4 and len(tower.recognition_blocks) == 2
    features, _ = features_and_bias(tower)
    assert len(features.maps) == 5
    assert all(m.shape == (2, 64, 4, 5) for m in features.maps)  # 64x80 px -> 4x5 grid, trunk built for 224 px
    assert all(c.shape == (2, 64) for c in features.cls_tokens)


def test_full_trunk_equals_open_clip_encode_image_at_the_pretraining_size(tower):
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    vision = tower.vision
    with torch.no_grad():
        x, grid = vision.embed(image)
        x = vision.pre_norm(x)
        rope = vision.rotary_embedding(grid, 1, x.device)
        for block in vision.blocks:
            x = vision.run_block(block, x, rope)
        ours = vision.project(x[:, :1])[:, 0]
        expected = tower.clip.encode_image(image)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)


def test_rope_is_timms_dynamic_size_rope_with_identity_rows_for_extra_prefix_tokens(tower):
    vision = tower.vision
    assert torch.equal(vision.rotary_embedding((14, 14), 1, "cpu"), vision.trunk.rope.get_embed())  # cached 224 px
    dynamic = timm.create_model(TINY_EVA, num_classes=8, global_pool="token", dynamic_img_size=True)
    plain = vision.rotary_embedding((4, 5), 1, "cpu")
    assert torch.equal(plain, dynamic.rope.get_embed(shape=[4, 5]))
    padded = vision.rotary_embedding((4, 5), 3 + 1, "cpu")  # 3 SOS + cls ahead of the patches; the trunk owns cls
    half = plain.shape[1] // 2
    assert padded.shape == (3 + 20, plain.shape[1])
    assert torch.all(padded[:3, :half] == 0) and torch.all(padded[:3, half:] == 1)  # sin 0, cos 1: no rotation
    assert torch.equal(padded[3:], plain)
    # the tower builds it at every call (nothing kept, so nothing made under inference mode can reach training)
    assert torch.equal(tower.rotary_embedding((4, 5), 3 + 1, "cpu"), padded)


def test_recognition_gives_unit_embeddings_per_query(tower):
    features, bias = features_and_bias(tower)
    with torch.no_grad():
        embeddings = tower.recognize(features, [bias], num_queries=5)
    assert embeddings.shape == (2, 5, 8)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2, 5))


def test_recognition_matches_timms_own_prefix_handling_and_mask_layout(tower):
    """Reference: the same blocks told (timm's way) that Q+1 tokens are prefix tokens, with the patch-only RoPE."""
    q = 5
    features, bias = features_and_bias(tower, num_queries=q)
    captured = {}
    hook = tower.recognition_blocks[0].register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(kwargs), with_kwargs=True
    )
    with torch.no_grad():
        ours = tower.recognize(features, [bias], num_queries=q)
    hook.remove()
    grid = features.maps[-1].shape[-2:]
    mask = build_recognition_attention_mask(bias, grid, tower.num_heads, -100.0, "max")  # (B*K, N, N), row b*K + k
    n = mask.shape[-1]
    assert captured["attn_mask"].shape == (2, tower.num_heads, n, n)
    for b in range(2):
        for k in range(tower.num_heads):
            assert torch.equal(captured["attn_mask"][b, k], mask[b * tower.num_heads + k])

    reference = copy.deepcopy(tower)
    for block in reference.recognition_blocks:
        block.attn.num_prefix_tokens = q + 1
    cls, patches = features.cls_tokens[-1][:, None], features.maps[-1].flatten(2).transpose(1, 2)
    x = torch.cat([cls.expand(-1, q, -1), cls, patches], dim=1)
    rope = reference.vision.rotary_embedding(grid, 1, "cpu")
    with torch.no_grad():
        for block in reference.recognition_blocks:
            x = block(x, rope=rope, attn_mask=mask.view(2, tower.num_heads, n, n))
        expected = F.normalize(reference.vision.project(x[:, :q]), dim=-1)
    torch.testing.assert_close(ours, expected)


def test_attention_bias_steers_only_its_own_sos_token(tower):
    features, bias = features_and_bias(tower, num_queries=3)
    bias = torch.zeros_like(bias)
    blocked = bias.clone()
    blocked[:, :, 0] = -100.0  # SOS 0 may look at no patch
    with torch.no_grad():
        free = tower.recognize(features, [bias], num_queries=3)
        steered = tower.recognize(features, [blocked], num_queries=3)
    assert (free[:, 0] - steered[:, 0]).abs().max() > 1e-3
    torch.testing.assert_close(free[:, 1:], steered[:, 1:])  # SOS tokens do not see each other


def test_cls_and_patch_rows_are_unaffected_by_sos_tokens(tower):
    q = 4
    features, bias = features_and_bias(tower, num_queries=q)
    vision, grid = tower.vision, features.maps[-1].shape[-2:]
    cls, patches = features.cls_tokens[-1][:, None], features.maps[-1].flatten(2).transpose(1, 2)
    mask = build_recognition_attention_mask(bias, grid, tower.num_heads, -100.0, "max")
    with_sos = torch.cat([cls.expand(-1, q, -1), cls, patches], dim=1)
    plain = torch.cat([cls, patches], dim=1)
    rope_sos, rope_plain = vision.rotary_embedding(grid, q + 1, "cpu"), vision.rotary_embedding(grid, 1, "cpu")
    with torch.no_grad():
        for block in tower.recognition_blocks:
            with_sos = block(with_sos, rope=rope_sos, attn_mask=mask.view(*with_sos.shape[:1], -1, *mask.shape[-2:]))
            plain = vision.run_block(block, plain, rope_plain)
    torch.testing.assert_close(with_sos[:, q:], plain)  # only an exp(-100) leak separates them


def test_frozen_policy_and_text_tower_location():
    torch.manual_seed(0)
    tower = PATClipTower(eva_config())
    trainable = [name for name, p in tower.named_parameters() if p.requires_grad]
    assert trainable == ["clip.visual.trunk.pos_embed"]
    assert tower.text_tower is tower.clip.text
    assert {id(p) for p in tower.text_parameters()} == {id(p) for p in tower.clip.text.parameters()}
    tower.train()
    assert tower.visual.training
    assert not any(m.training for text_module in tower.text_modules() for m in text_module.modules())
    features = tower.extract_features(torch.randn(1, 3, 64, 64))
    tower.recognize(features, [torch.randn(1, 4, 5, 8, 8)], num_queries=5).sum().backward()
    assert tower.vision.positional_embedding.grad is not None
    assert all(p.grad is None for name, p in tower.named_parameters() if name != "clip.visual.trunk.pos_embed")


def test_text_encoding_matches_open_clip(tower):
    ids = tower.tokenize(["a photo of a cat.", "There is a large sofa in the scene."])
    with torch.no_grad():
        ours = tower.encode_text(ids)
        expected = tower.clip.encode_text(ids, normalize=True)
        classes = tower.encode_class_names(ids[:, None])
    assert ours.shape == (2, 8)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(classes, ours)


def test_unsupported_eva_pooling_is_refused():
    clip_config = copy.deepcopy(TINY_EVA_CLIP)
    clip_config["vision_cfg"]["timm_pool"] = "avg"
    with pytest.raises(NotImplementedError, match="class-token pooling"):
        PATClipTower(eva_config(clip_config=clip_config))


def test_full_preset_builds_on_meta_with_open_clip_keys_and_paper_sized_trainable_count():
    config = PATConfig.from_preset("pat-evaclip-vit-b16")
    assert config.use_pyramid_tokenization and config.attn_bias_num_heads == 12
    with torch.device("meta"):
        model = PATForOpenVocabSegmentation(config)
        reference_config = open_clip.get_model_config("EVA02-B-16")
        reference_config.pop("custom_text")
        reference = open_clip.model.CustomTextCLIP(**reference_config)
    tower = model.model.clip_tower
    assert (tower.width, tower.num_heads, tower.patch_size, tower.embed_dim) == (768, 12, 16, 512)
    prefix = "model.clip_tower.clip."
    ours = {k[len(prefix) :]: v.shape for k, v in model.state_dict().items() if k.startswith(prefix)}
    assert ours == {k: v.shape for k, v in reference.state_dict().items()}  # an open_clip EVA02-B-16 checkpoint fits
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("model.clip_tower.")]
    assert trainable == ["model.clip_tower.clip.visual.trunk.pos_embed"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 17_337_025  # as pat-clip-vit-b16


@pytest.mark.parametrize("preset", ["san-tiny", "pat-tiny"])
def test_tiny_san_and_pat_models_run_with_the_eva_tower(preset):
    torch.manual_seed(0)
    model = PATForOpenVocabSegmentation(eva_config(preset)).eval()
    pixel_values = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(1))
    classes, queries = 6, model.config.num_queries
    class_embeddings = F.normalize(torch.randn(classes, 8), dim=-1)  # the text tower has its own test
    with torch.no_grad():
        outputs = model(pixel_values, class_embeddings=class_embeddings, output_hidden_states=True)
    assert outputs.class_queries_logits.shape == (1, queries, classes + 1)
    assert torch.isfinite(outputs.class_queries_logits).all()
    torch.testing.assert_close(outputs.mask_embeddings.norm(dim=-1), torch.ones(1, queries))
    side = (128 // 16, 160 // 16)
    expected_masks = side if preset == "san-tiny" else (4 * side[0], 4 * side[1])
    assert outputs.masks_queries_logits.shape[-2:] == expected_masks


def test_save_and_reload_keeps_outputs(tmp_path):
    """Loading builds the model on the meta device: the RoPE must not depend on timm's non-persistent buffers."""
    torch.manual_seed(0)
    model = PATForOpenVocabSegmentation(eva_config()).eval()
    model.save_pretrained(tmp_path)
    reloaded = PATForOpenVocabSegmentation.from_pretrained(tmp_path).eval()
    pixel_values = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    class_embeddings = F.normalize(torch.randn(6, 8), dim=-1)
    with torch.no_grad():
        expected = model(pixel_values, class_embeddings=class_embeddings).class_queries_logits
        torch.testing.assert_close(reloaded(pixel_values, class_embeddings=class_embeddings).class_queries_logits, expected)
