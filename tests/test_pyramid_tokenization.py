"""PAT mode (`use_pyramid_tokenization=True`) on the `pat-tiny` preset: shapes, decoupling, ablation switches."""

import pytest
import torch

from modeling_pat import PATConfig, PATForOpenVocabSegmentation, PATModel

from conftest import tiny_config


def pat_config(**overrides) -> PATConfig:
    return tiny_config("pat-tiny", **overrides)


def build(seed=0, **overrides) -> PATModel:
    torch.manual_seed(seed)
    return PATModel(pat_config(**overrides)).eval()


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 128, 160, generator=torch.Generator().manual_seed(0))


def test_shapes_follow_the_pyramid_for_non_square_input(pixels):
    model = build()
    config = model.config
    with torch.no_grad():
        out = model(pixels, output_auxiliary_logits=True, output_reconstruction=True)
    side = (128 // 16, 160 // 16)
    scales = dict(zip(("early", "mid", "late"), config.pyramid_scales))
    for name, size in zip(("early", "mid", "late"), config.codebook_sizes):
        grid = (side[0] * scales[name], side[1] * scales[name])
        assert out.quantized_features[name].shape == (2, config.code_dim, *grid)
        assert out.codebook_indices[name].shape == (2, *grid)
        assert int(out.codebook_indices[name].max()) < size
        assert out.local_tokens[name].shape == (2, size, config.code_dim)
    assert out.codebook_indices["latent"].shape == (2, *side)
    early = (side[0] * scales["early"], side[1] * scales["early"])
    assert out.masks_queries_logits.shape == (2, config.num_queries, *early)
    assert out.reconstruction.shape == pixels.shape
    (aux,) = out.auxiliary_outputs  # SAN's own head on the last side block (choice M3)
    assert aux["masks_queries_logits"].shape == (2, config.num_queries, *side)
    assert out.attention_bias.shape == (2, config.attn_bias_num_heads, config.num_queries, *side)
    for name in ("early", "mid", "late", "latent"):
        torch.testing.assert_close(out.quantized_features[name].norm(dim=1), torch.ones_like(out.codebook_indices[name], dtype=torch.float))


def test_eval_skips_reconstruction_and_auxiliary_level(pixels):
    with torch.no_grad():
        out = build()(pixels)
    assert out.reconstruction is None and out.auxiliary_outputs is None


def test_pixel_branch_does_not_depend_on_the_global_tokens(pixels):
    model = build()
    with torch.no_grad():
        before = model(pixels)
        model.side_adapter.query_embed.add_(torch.randn_like(model.side_adapter.query_embed))
        after = model(pixels)
    for name in ("early", "mid", "late"):  # the pyramid sees only the image, CLIP and the codebooks
        torch.testing.assert_close(after.quantized_features[name], before.quantized_features[name])
        torch.testing.assert_close(after.codebook_indices[name], before.codebook_indices[name])
    # (the local tokens e_s read the side map z_s, whose patches attend to the queries inside the side ViT, so they
    # may move; within a stage nothing flows from global to local tokens: tests/test_semantic_branch.py)
    assert not torch.allclose(after.masks_queries_logits, before.masks_queries_logits)


SWITCHES = [
    {"use_vmf": False},
    {"pyramid_scales": [4, 4, 4]},
    {"pyramid_scales": [1, 1, 1]},
    {"use_token_mixer": False},
    {"use_pixel_residual": False},
    {"unified_tokens": True},
    {"shared_decoder": False},
    {"decoder_stages": ["early", "late"]},
    {"decoder_stages": ["late"]},
    {"decoder_stages": []},
]


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_each_ablation_switch_changes_the_outputs(switch, pixels):
    with torch.no_grad():
        base = build(seed=0)
        ablated = build(seed=0, **switch)
        # same weights wherever the two models share a parameter name and shape, so the difference is the switch
        shared = {k: v for k, v in base.state_dict().items() if k in ablated.state_dict()
                  and ablated.state_dict()[k].shape == v.shape}
        ablated.load_state_dict(shared, strict=False)
        a = base(pixels, output_reconstruction=True)
        b = ablated(pixels, output_reconstruction=True)
    assert torch.isfinite(b.masks_queries_logits).all() and torch.isfinite(b.reconstruction).all()
    # the masks (segmentation side) or the reconstruction (pixel side) must move, relative to their scale; random
    # tiny weights make some effects small (e.g. the TokenMixers start near zero), so the bar is relative 1e-5
    changes = [relative_change(a.masks_queries_logits, b.masks_queries_logits),
               relative_change(a.reconstruction, b.reconstruction)]
    assert max(changes) > 1e-5, changes


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return ((a - b).abs().max() / a.abs().max()).item()


def test_save_and_reload_keeps_every_pat_weight(tmp_path, pixels):
    torch.manual_seed(0)
    model = PATForOpenVocabSegmentation(pat_config()).eval()
    model.save_pretrained(tmp_path)
    reloaded = PATForOpenVocabSegmentation.from_pretrained(tmp_path).eval()
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels).class_queries_logits, model(pixels).class_queries_logits)


def test_trainable_parameters_of_the_pat_preset_are_reported():
    config = PATConfig.from_preset("pat-clip-vit-b16")
    with torch.device("meta"):
        model = PATForOpenVocabSegmentation(config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # SAN's 8.37M plus the PAT modules with the register's choices (architecture.md 3.15 estimates ~17M)
    assert 16_000_000 < trainable < 19_000_000


def test_pat_specific_initialisation():
    torch.manual_seed(0)
    model = PATModel(pat_config())
    offsets = model.tokenization.pixel_branch.upsamplers[0].offset
    assert offsets.weight.std() < 0.003 and torch.all(offsets.bias == 0)  # DySample starts as bilinear
    codebooks = [q.codebook.flatten() for q in (*model.tokenization.pixel_branch.quantizers,
                                                 model.tokenization.latent_quantizer)]
    assert 0.85 < torch.cat(codebooks).std() < 1.15  # choice V2: N(0, 1), pooled (one tiny codebook is too noisy)
    fusion = model.side_adapter.fusion_layers["layer_0"].proj.weight  # SAN's Caffe2 Xavier (uniform) fill
    bound = (3.0 / fusion[0].numel()) ** 0.5
    assert fusion.abs().max() <= bound and fusion.abs().max() > 0.5 * bound


def test_a_san_checkpoint_initialises_the_san_part_of_pat(tmp_path):
    torch.manual_seed(0)
    san = PATForOpenVocabSegmentation(PATConfig.from_preset("san-tiny"))
    san.save_pretrained(tmp_path)
    san_fields, pat_fields = PATConfig.from_preset("san-tiny").to_dict(), pat_config().to_dict()
    pat_only = {k: v for k, v in pat_fields.items() if k in san_fields and san_fields[k] != v}
    assert pat_only["use_pyramid_tokenization"] is True
    pat, info = PATForOpenVocabSegmentation.from_pretrained(tmp_path, output_loading_info=True, **pat_only)
    assert pat.config.use_pyramid_tokenization
    assert info["missing_keys"] and all(k.startswith("model.tokenization.") for k in info["missing_keys"])
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    for name, value in san.state_dict().items():
        assert torch.equal(pat.state_dict()[name], value), name
    assert pat.model.tokenization.pixel_branch.upsamplers[0].offset.weight.std() < 0.003


@pytest.mark.slow
@pytest.mark.parametrize(("height", "width"), [(640, 640), (640, 864)])
def test_full_size_shapes_of_architecture_table_3_14(height, width):
    """The PAT path of `pat-clip-vit-b16` on the side ViT's outputs, at 640x640 and a non-square padded input."""
    from modeling_pat.pyramid_tokenization import PATPyramidTokenization

    config = PATConfig.from_preset("pat-clip-vit-b16")
    torch.manual_seed(0)
    tokenization = PATPyramidTokenization(config).eval()
    h, w = height // 16, width // 16  # side grid 40x40 / 40x54
    terms = {position: torch.randn(1, 240, h, w) for position in config.pyramid_side_layers}
    local, queries = {}, torch.randn(1, 100, 240)
    with torch.no_grad():
        for stage in tokenization.stage_positions:  # the semantic branch as `PATModel.run_side_adapter` calls it
            previous = local[list(local)[-1]] if local else None
            local[stage], queries = tokenization.semantic_stage(stage, torch.randn(1, h * w, 240), queries, previous)
        out = tokenization(torch.randn(1, 3, height, width), terms, queries, torch.randn(1, 240, h, w), local)
    assert {k: tuple(v.shape) for k, v in out.local_tokens.items()} == {
        "early": (1, 128, 32), "mid": (1, 64, 32), "late": (1, 32, 32)}
    assert {k: tuple(v.shape) for k, v in out.pyramid.quantized.items()} == {
        "early": (1, 32, 4 * h, 4 * w), "mid": (1, 32, 2 * h, 2 * w), "late": (1, 32, h, w)}
    assert tuple(out.latent.quantized.shape) == (1, 32, h, w)
    assert tuple(out.global_tokens.shape) == (1, 100, 240)
    assert tuple(out.pixel_features.shape) == (1, 256, 4 * h, 4 * w)
    assert tuple(out.masks_queries_logits.shape) == (1, 100, 4 * h, 4 * w)
    assert tuple(out.reconstruction.shape) == (1, 3, height, width)


@pytest.mark.parametrize("shared_decoder", [True, False])
def test_reconstruction_takes_the_decoder_the_config_names_in_one_place(shared_decoder, pixels, monkeypatch):
    """`reconstruct` decodes with the pixel decoder when there is one, else reuses (or runs) the shared decoder;
    the model's forward and `decode_codes` both go through it and agree."""
    model = build(shared_decoder=shared_decoder)
    tokenization = model.tokenization
    with torch.no_grad():
        out = model(pixels, output_reconstruction=True)
        codes = {**out.codebook_indices}
        decoded = tokenization.decode_codes(codes)
        torch.testing.assert_close(decoded, out.reconstruction, rtol=1e-5, atol=1e-5)
        pyramid = {s: out.quantized_features[s] for s in ("early", "mid", "late")}
        shared = tokenization.decoder(out.quantized_features["latent"], pyramid, None)
        calls = []
        used = tokenization.pixel_decoder if not shared_decoder else tokenization.decoder
        monkeypatch.setattr(used, "forward", lambda *args, **kwargs: calls.append(1) or shared)
        tokenization.reconstruct(out.quantized_features["latent"], pyramid, shared)
    assert calls == ([] if shared_decoder else [1])  # the shared decoder's output is reused, the pixel one decodes
