"""Shared decoder units: sin-cos PE, (shifted) window attention, SPADE, heads, and the top-down decoder's shapes."""

import pytest
import torch
import torch.nn.functional as F

from modeling_pat import PATConfig
from modeling_pat.inference_cache import PATInferenceCache
from modeling_pat.shared_decoder import (
    PATDecoderAttention,
    PATDecoderLayer,
    PATMaskHead,
    PATReconstructionHead,
    PATSharedDecoder,
    PATSpade,
    attention_plan,
    sincos_position_embedding_2d,
    window_region_mask,
)


DIM, HEADS, QUERIES, CODE, SIDE = 32, 4, 6, 8, 48


def small_config(**overrides) -> PATConfig:
    """Decoder width 32 / 4 heads / window 4, side width 48 (6 cross-attention heads), 6 queries, 8-d codes."""
    sizes = dict(
        use_pyramid_tokenization=True,
        side_hidden_size=SIDE,
        num_queries=QUERIES,
        code_dim=CODE,
        decoder_hidden_size=DIM,
        decoder_num_attention_heads=HEADS,
        decoder_mlp_ratio=2.0,
        decoder_attn_window=4,
        spade_hidden_dim=16,
        mask_embed_dim=DIM,
        mask_mlp_dim=DIM,
    )
    return PATConfig(**{**sizes, **overrides})


def decoder_inputs(config: PATConfig, grid=(8, 10), batch=2):
    """z_latent on the side grid, z_q per stage at its scale, and global tokens."""
    g = torch.Generator().manual_seed(0)
    scales = dict(zip(("early", "mid", "late"), config.pyramid_scales))
    quantized = {s: torch.randn(batch, CODE, grid[0] * k, grid[1] * k, generator=g) for s, k in scales.items()}
    latent = torch.randn(batch, CODE, *grid, generator=g)
    tokens = torch.randn(batch, QUERIES, SIDE, generator=g)
    return latent, quantized, tokens


def masked_reference(attn: PATDecoderAttention, x: torch.Tensor) -> torch.Tensor:
    """Global attention restricted by an explicit same-window mask, built from window ids, not from padding.

    q and k see the sin-cos PE added to their inputs, written out as DETR does (not through the module's cache).
    """
    b, h, w, c = x.shape
    tokens = x.reshape(b, h * w, c)
    pos = sincos_position_embedding_2d(h, w, c, None, x.dtype)
    qk = F.linear(tokens + pos, attn.qkv.weight[: 2 * c], attn.qkv.bias[: 2 * c])
    qkv = torch.cat([qk, F.linear(tokens, attn.qkv.weight[2 * c :], attn.qkv.bias[2 * c :])], dim=-1)
    window = attn.window or max(h, w)  # None: global attention, one window
    offset = window // 2 if attn.shift else 0
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ids = (((rows + offset) // window) * 1000 + (cols + offset) // window).flatten()
    q, k, v = qkv.view(b, h * w, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=ids[:, None] == ids[None, :])
    out = attn.proj(out.transpose(1, 2).reshape(b, h * w, c))
    return out.view(b, h, w, c)


def test_sincos_embedding_is_fixed_and_distinct_per_position():
    pe = sincos_position_embedding_2d(6, 9, 16, None, torch.float32)
    assert pe.shape == (54, 16)
    torch.testing.assert_close(pe, sincos_position_embedding_2d(6, 9, 16, None, torch.float32), rtol=0, atol=0)
    distances = torch.cdist(pe, pe) + torch.eye(54) * 1e3
    assert distances.min() > 1e-2
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_position_embedding_2d(4, 4, 18, None, None)


@pytest.mark.parametrize("grid", [(8, 8), (6, 7)])
def test_window_covering_the_map_equals_global_attention(grid):
    torch.manual_seed(0)
    global_attn = PATDecoderAttention(DIM, HEADS, window=None)
    window_attn = PATDecoderAttention(DIM, HEADS, window=8)
    window_attn.load_state_dict(global_attn.state_dict())
    x = torch.randn(2, *grid, DIM)
    torch.testing.assert_close(window_attn(x), global_attn(x))


@pytest.mark.parametrize("window", [4, 3, 5])  # odd windows: the shifted regions start at -shift mod w
@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("grid", [(8, 8), (8, 10), (9, 13), (3, 12)])
def test_window_attention_matches_explicitly_masked_global_attention(grid, shift, window):
    torch.manual_seed(0)
    attn = PATDecoderAttention(DIM, HEADS, window=window, shift=shift)
    x = torch.randn(2, *grid, DIM)
    torch.testing.assert_close(attn(x), masked_reference(attn, x), rtol=1e-5, atol=1e-5)


def cached_attention(window, shift) -> PATDecoderAttention:
    """An attention layer holding its own inference cache, as a model's `post_init` hands it one."""
    torch.manual_seed(0)
    attn = PATDecoderAttention(DIM, HEADS, window=window, shift=shift)
    attn.inference_cache = PATInferenceCache()
    return attn


def position_entries(attn) -> list:
    return [key for key in attn.inference_cache._entries if key.startswith("shared_decoder.position_term")]


@pytest.mark.parametrize("window", [None, 4])
def test_position_term_is_cached_at_inference_only_and_cleared_after_weight_edits(window):
    attn = cached_attention(window, window is not None).eval()
    x = torch.randn(2, 9, 13, DIM)
    with torch.no_grad():
        first = attn(x)
        assert len(position_entries(attn)) == 1
        kept = len(attn.inference_cache)
        torch.testing.assert_close(attn(x), first, rtol=0, atol=0)
        assert len(attn.inference_cache) == kept  # same grid: reused, nothing added
        attn.qkv.weight.mul_(1.5)  # edited in place: the documented rule is to clear the caches
        attn.inference_cache.clear()
        torch.testing.assert_close(attn(x), masked_reference(attn, x), rtol=1e-5, atol=1e-5)
    attn.inference_cache.clear()
    attn.train()
    with torch.no_grad():
        attn(x)
    assert len(attn.inference_cache) == 0  # training mode neither reads nor fills the cache
    attn.eval()
    attn(x)  # eval mode under autograd with trainable weights: recomputed, not cached
    assert len(attn.inference_cache) == 0
    # under autograd the term is recomputed, so the q/k weights get the position term's gradient
    attn.zero_grad()
    attn(x).sum().backward()
    expected = attn.qkv.weight.grad.clone()
    attn.zero_grad()
    masked_reference(attn, x).sum().backward()
    torch.testing.assert_close(attn.qkv.weight.grad, expected, rtol=1e-4, atol=1e-5)


def test_attention_of_a_module_built_in_inference_mode():
    with torch.inference_mode():
        attn = PATDecoderAttention(DIM, HEADS, window=4, shift=True).eval()
        attn.inference_cache = PATInferenceCache()
        x = torch.randn(1, 9, 13, DIM)
        torch.testing.assert_close(attn(x), masked_reference(attn, x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(attn(x), masked_reference(attn, x), rtol=1e-5, atol=1e-5)  # from the cache


def test_region_bias_is_cached_per_grid_at_inference():
    attn = cached_attention(4, True).eval()
    x = torch.randn(2, 9, 13, DIM)
    with torch.inference_mode():
        first = attn(x)
        bias = attn.region_bias(9, 13, 2, x.device, x.dtype)
        assert bias.shape == (12, 1, 16, 16)  # 9 x 13 padded to 12 x 16: 3 x 4 windows of 4 x 4
        assert torch.equal(bias.isinf(), ~window_region_mask(9, 13, 4, 2)[:, None])
        assert attn.region_bias(9, 13, 2, x.device, x.dtype) is bias  # same grid: reused
        torch.testing.assert_close(attn(x), first, rtol=0, atol=0)
        assert attn.region_bias(8, 8, 2, x.device, x.dtype) is not bias  # another grid: its own entry
    attn.train()
    out = attn(x)  # training: the bias is built for the call (autograd may save it)
    out.sum().backward()
    torch.testing.assert_close(out, masked_reference(attn, x), rtol=1e-5, atol=1e-5)


def test_a_models_decoder_attention_uses_the_models_cache():
    from conftest import tiny_model

    model = tiny_model(preset="pat-tiny")
    layers = [m for m in model.modules() if isinstance(m, PATDecoderAttention)]
    assert layers and all(m.inference_cache is model.inference_cache for m in layers)
    with torch.no_grad():
        model.model(torch.randn(1, 3, 128, 160))
    assert any(key.startswith("shared_decoder.position_term") for key in model.inference_cache._entries)


@pytest.mark.parametrize(
    "shift, inside, outside",
    [(False, (6, 6), (3, 3)), (True, (3, 3), (6, 6))],  # query (5, 5): window rows/cols 4..7, shifted 2..5
)
def test_token_output_depends_only_on_its_window(shift, inside, outside):
    torch.manual_seed(0)
    attn = PATDecoderAttention(DIM, HEADS, window=4, shift=shift)
    x = torch.randn(1, 12, 12, DIM)
    base = attn(x)[:, 5, 5]
    for (i, j), changes in ((outside, False), (inside, True)):
        perturbed = x.clone()
        perturbed[:, i, j] += 10.0
        out = attn(perturbed)[:, 5, 5]
        assert not torch.allclose(out, base, atol=1e-6) if changes else torch.equal(out, base)


def test_shifted_windows_do_not_wrap_around_the_border():
    torch.manual_seed(0)
    attn = PATDecoderAttention(DIM, HEADS, window=4, shift=True)
    x = torch.randn(1, 12, 12, DIM)
    base = attn(x)[:, 0, 0]  # top-left shifted window is pixels 0..1 only
    perturbed = x.clone()
    perturbed[:, 11, 11] += 10.0  # the cyclic roll puts this corner in the same window: the mask must hide it
    torch.testing.assert_close(attn(perturbed)[:, 0, 0], base, rtol=0, atol=0)


def test_window_region_mask_regions():
    assert window_region_mask(8, 8, 4, 0) is None  # plain windows on a divisible map: one region each
    mask = window_region_mask(8, 8, 4, 2)  # shifted: 3 x 3 regions of sizes 2, 4, 2 per axis in 2 x 2 windows
    assert mask.shape == (4, 16, 16)
    assert mask[0].all()  # the first rolled window is the interior region (rows / columns 2..5)
    assert sorted(int(n) for n in mask[3].sum(-1).unique()) == [4]  # the wrapped corner window: four 2 x 2 regions
    padded = window_region_mask(5, 6, 4, 0)  # plain windows, padded to 8 x 8: padding sees padding only
    assert padded.shape == (4, 16, 16) and padded[0].all() and not padded[3, 0, 5]


def test_decoder_layer_keeps_shape_and_has_gradients():
    layer = PATDecoderLayer(DIM, HEADS, 2.0, window=4, shift=True)
    y = torch.randn(2, DIM, 9, 13, requires_grad=True)
    out = layer(y)
    assert out.shape == y.shape
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in layer.parameters())  # padded map: no NaN


def test_spade_with_zero_modulation_is_the_affine_free_norm():
    spade = PATSpade(DIM, CODE, 16)
    for conv in (spade.gamma, spade.beta):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    y = torch.randn(2, DIM, 8, 10) * 3 + 1
    expected = F.layer_norm(y.permute(0, 2, 3, 1), (DIM,), eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(spade(y, torch.randn(2, CODE, 8, 10)), expected)


def test_spade_depends_on_the_condition_and_resizes_it_nearest():
    torch.manual_seed(0)
    spade = PATSpade(DIM, CODE, 16)
    y, z = torch.randn(2, DIM, 8, 10), torch.randn(2, CODE, 4, 5)
    out = spade(y, z)
    assert out.shape == y.shape
    assert not torch.allclose(out, spade(y, torch.randn_like(z)))
    upsampled = z.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(out, spade(y, upsampled), rtol=0, atol=0)


def test_reconstruction_head_upsamples_by_four():
    head = PATReconstructionHead(DIM, DIM // 2)
    assert head(torch.randn(2, DIM, 8, 10)).shape == (2, 3, 32, 40)


def test_mask_head_shape():
    head = PATMaskHead(small_config())
    masks = head(torch.randn(2, QUERIES, SIDE), torch.randn(2, DIM, 16, 20))
    assert masks.shape == (2, QUERIES, 16, 20)


def test_attention_plan_windows_above_side_grid_with_alternating_shift():
    assert attention_plan([1, 2, 4, 4, 4], 16) == [(None, False), (16, False), (16, True), (16, False), (16, True)]
    assert attention_plan([1, 2, 4], None) == [(None, False)] * 3


def test_decoder_shapes_non_square():
    config = small_config()
    decoder = PATSharedDecoder(config)
    latent, quantized, tokens = decoder_inputs(config)
    out = decoder(latent, quantized, tokens, output_hidden_states=True)
    assert out.pixel_features.shape == (2, DIM, 32, 40)
    assert out.global_tokens.shape == (2, QUERIES, SIDE)
    assert not torch.allclose(out.global_tokens, tokens)
    # the kept stages (late, mid, early), then the extra layers
    assert [f.shape[-2:] for f in out.hidden_states] == [(8, 10), (16, 20), (32, 40)] + [(32, 40)] * 2
    torch.testing.assert_close(out.hidden_states[-1], out.pixel_features, rtol=0, atol=0)
    assert decoder(latent, quantized, tokens).hidden_states is None
    windows = [(m.attn.window, m.attn.shift) for m in decoder.modules() if isinstance(m, PATDecoderLayer)]
    assert windows == [(None, False), (4, False), (4, True), (4, False), (4, True)]
    out.pixel_features.square().mean().backward()  # the loss ignores the tokens, so skip cross-attention grads
    assert all(p.grad is not None for n, p in decoder.named_parameters() if "cross_attn" not in n)


def test_decoder_without_global_tokens():
    config = small_config()
    decoder = PATSharedDecoder(config, decode_global_tokens=False)
    assert not any("cross_attn" in name for name, _ in decoder.named_parameters())
    latent, quantized, _ = decoder_inputs(config)
    out = decoder(latent, quantized, None)
    assert out.pixel_features.shape == (2, DIM, 32, 40) and out.global_tokens is None


@pytest.mark.parametrize(
    "stages", [("early", "mid"), ("early", "late"), ("mid", "late"), ("early",), ("mid",), ("late",), ()]
)
def test_dropping_decoder_stages_keeps_the_output_resolution(stages):
    config = small_config(decoder_stages=stages)
    decoder = PATSharedDecoder(config)
    assert list(decoder.stages) == [s for s in ("late", "mid", "early") if s in stages]
    latent, quantized, tokens = decoder_inputs(config)
    out = decoder(latent, {s: quantized[s] for s in stages}, tokens)
    assert out.pixel_features.shape == (2, DIM, 32, 40)
    assert out.global_tokens.shape == (2, QUERIES, SIDE)


@pytest.mark.parametrize("scales, size", [((1, 1, 1), (8, 10)), ((4, 4, 4), (32, 40))])
def test_decoder_with_flat_pyramids(scales, size):
    config = small_config(pyramid_scales=scales)
    latent, quantized, tokens = decoder_inputs(config)
    out = PATSharedDecoder(config)(latent, quantized, tokens, output_hidden_states=True)
    assert out.pixel_features.shape == (2, DIM, *size)
    assert all(f.shape[-2:] == size for f in out.hidden_states)


def test_decoder_rejects_unknown_stages_and_non_dividing_scales():
    with pytest.raises(ValueError, match="decoder_stages"):
        PATSharedDecoder(small_config(decoder_stages=("early", "top")))
    with pytest.raises(ValueError, match="divide"):
        PATSharedDecoder(small_config(pyramid_scales=(3, 2, 1)))
