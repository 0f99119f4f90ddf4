"""Shared layers: channel LayerNorm, the MLP stack and the one self-attention with an additive bias."""

import pytest
import torch

from modeling_pat.layers import PATChannelLayerNorm, PATGlobalTokenAttention, PATMLP, PATSelfAttention, channel_layer_norm


def test_channel_layer_norm_matches_layer_norm_over_channels():
    norm = PATChannelLayerNorm(6, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 6, 3, 4)
    expected = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (6,), norm.weight, norm.bias, 1e-6)
    torch.testing.assert_close(norm(x), expected.permute(0, 3, 1, 2), atol=1e-5, rtol=1e-5)


def test_channel_layer_norm_keeps_half_precision_finite():
    """CLIP maps have outlier channels in the hundreds: squared in fp16 they overflow; the statistics run in fp32."""
    norm = PATChannelLayerNorm(8)
    x = torch.randn(1, 8, 3, 3)
    x[:, 0] = 400.0  # one outlier channel: its square (1.6e5) is beyond fp16's 65,504
    half = norm.half()(x.half())
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), norm.float()(x), atol=1e-2, rtol=1e-2)


def test_mlp_conv_and_linear_forms_agree():
    linear = PATMLP(5, 7, 3, 3)
    conv = PATMLP(5, 7, 3, 3, conv=True)
    for a, b in zip(linear.layers, conv.layers):
        b.weight.data = a.weight.data[:, :, None, None].clone()
        b.bias.data = a.bias.data.clone()
    x = torch.randn(2, 5, 4, 4)
    torch.testing.assert_close(conv(x), linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), atol=1e-6, rtol=1e-5)


def attention_oracle(attn: PATSelfAttention, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Multi-head attention written out: softmax(q k^T / sqrt(d) + bias) v per head, heads concatenated."""
    b, length, c = x.shape
    heads = attn.num_heads
    q, k, v = attn.qkv(x).split(c, dim=-1)
    q, k, v = (t.reshape(b, length, heads, -1).transpose(1, 2) for t in (q, k, v))  # (B, A, L, C/A)
    logits = q @ k.transpose(-1, -2) / (c // heads) ** 0.5
    if bias is not None:
        logits = logits + bias
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, length, c)
    return attn.proj(out)


def test_self_attention_equals_the_written_out_oracle_with_and_without_bias():
    torch.manual_seed(0)
    attn = PATSelfAttention(24, 3)
    x = torch.randn(2, 10, 24)
    bias = torch.randn(2, 1, 10, 10)
    bias[..., 3] = float("-inf")  # a masked key
    for b in (None, bias):
        torch.testing.assert_close(attn(x, b), attention_oracle(attn, x, b), rtol=1e-5, atol=1e-5)


def test_self_attention_refuses_a_width_not_divisible_by_the_heads():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        PATSelfAttention(10, 3)


@pytest.mark.parametrize("kv_dim", [240, 256])
def test_global_attention_keeps_shape_and_is_residual(kv_dim):
    torch.manual_seed(0)
    layer = PATGlobalTokenAttention(240, kv_dim, num_heads=6)
    tokens, memory = torch.randn(2, 100, 240), torch.randn(2, 40, kv_dim)
    out = layer(tokens, memory)
    assert out.shape == tokens.shape and not torch.allclose(out, tokens)
    with torch.no_grad():
        layer.attn.out_proj.weight.zero_()
        layer.attn.out_proj.bias.zero_()
    assert torch.equal(layer(tokens, memory), tokens)


def test_channel_layer_norm_without_affine_is_the_plain_normalisation():
    x = torch.randn(2, 6, 3, 4) * 5 + 2
    expected = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (6,), eps=1e-6).permute(0, 3, 1, 2)
    out = channel_layer_norm(x, 1e-6)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert out.is_contiguous()  # NCHW kept


def test_feed_forward_is_linear_gelu_linear_with_sans_key_names():
    from modeling_pat.layers import PATFeedForward

    torch.manual_seed(0)
    block = PATFeedForward(8, 32)
    x = torch.randn(2, 5, 8)
    expected = block.fc2.weight @ torch.nn.functional.gelu(block.fc1.weight @ x[..., None] + block.fc1.bias[:, None])
    torch.testing.assert_close(block(x), expected[..., 0] + block.fc2.bias)
    assert sorted(block.state_dict()) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]  # SAN's Mlp keys
