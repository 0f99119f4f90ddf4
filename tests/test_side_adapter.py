"""Side adapter units: shapes from the config, SAN's positional quirks, fusion and the mask decoder."""

import torch

from modeling_pat.side_adapter import PATChannelLayerNorm, PATFusionLayer, PATMaskDecoder, PATMLP, PATSideAdapter

from conftest import tiny_config


def clip_maps(config, grid=(4, 5), batch=2):
    width = config.clip_config["vision_cfg"]["width"]
    return [torch.randn(batch, width, *grid) for _ in range(config.clip_feature_layers + 1)]


def test_outputs_shapes_follow_config_for_non_square_input():
    config = tiny_config()
    torch.manual_seed(0)
    adapter = PATSideAdapter(config, clip_channels=64)
    for p in (adapter.pos_embed, adapter.query_embed, adapter.query_pos_embed):
        torch.nn.init.normal_(p, std=0.02)
    pixels = torch.randn(2, 3, 128, 160)
    outputs, hidden, terms = adapter(pixels, clip_maps(config))
    assert sorted(terms) == sorted(config.fusion_side_layers)
    grid = (128 // config.side_patch_size, 160 // config.side_patch_size)
    assert len(outputs) == len(config.deep_supervision_layers)
    for out in outputs:
        assert out.queries.shape == (2, config.num_queries, config.side_hidden_size)
        assert out.patches.shape == (2, config.side_hidden_size, *grid)
    assert len(hidden) == config.side_num_hidden_layers + 1
    # the outputs are the hidden states of the supervision blocks (after fusion, before the position re-add)
    last = hidden[config.deep_supervision_layers[-1]]
    torch.testing.assert_close(outputs[-1].queries, last[:, : config.num_queries])


def test_positional_table_resized_only_when_token_count_differs():
    config = tiny_config()  # 8x8 table
    adapter = PATSideAdapter(config, clip_channels=64)
    torch.nn.init.normal_(adapter.pos_embed)
    torch.nn.init.normal_(adapter.query_pos_embed)
    same_count = adapter.positional_embedding((4, 16))  # 64 tokens, other shape: SAN reuses the table as is
    torch.testing.assert_close(same_count[:, config.num_queries :], adapter.pos_embed)
    resized = adapter.positional_embedding((8, 10))
    assert resized.shape == (1, config.num_queries + 80, config.side_hidden_size)
    torch.testing.assert_close(resized[:, : config.num_queries], adapter.query_pos_embed)


def test_fusion_touches_patch_tokens_only():
    config = tiny_config()
    adapter = PATSideAdapter(config, clip_channels=64)
    x = torch.randn(2, config.num_queries + 64, config.side_hidden_size)
    terms = {}
    fused = adapter.fuse(0, x, clip_maps(config, grid=(4, 4)), (8, 8), terms)
    torch.testing.assert_close(fused[:, : config.num_queries], x[:, : config.num_queries])
    torch.testing.assert_close(fused[:, config.num_queries :] - x[:, config.num_queries :], terms[0].flatten(2).transpose(1, 2))
    unfused_position = max(config.fusion_side_layers) + 1
    assert adapter.fuse(unfused_position, x, clip_maps(config), (8, 8), terms) is x
    assert list(terms) == [0]


def test_fusion_layer_projects_then_resizes_bilinearly():
    layer = PATFusionLayer(16, 8)
    clip_map = torch.randn(1, 16, 3, 3)
    term = layer(clip_map, (6, 6))
    assert term.shape == (1, 8, 6, 6)
    expected = torch.nn.functional.interpolate(layer.proj(layer.norm(clip_map)), size=(6, 6), mode="bilinear")
    torch.testing.assert_close(term, expected)


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


def test_mask_decoder_shapes_and_bias_scaling():
    config = tiny_config(attn_bias_num_layers=2)
    decoder = PATMaskDecoder(config)
    queries = torch.randn(2, config.num_queries, config.side_hidden_size)
    patches = torch.randn(2, config.side_hidden_size, 8, 10)
    mask_logits, biases = decoder(queries, patches)
    assert mask_logits.shape == (2, config.num_queries, 8, 10)
    assert len(biases) == 2
    assert all(b.shape == (2, config.attn_bias_num_heads, config.num_queries, 8, 10) for b in biases)
    # the learnable scalar affine is applied elementwise: w * bias + b
    with torch.no_grad():
        decoder.bias_scaling.weight.fill_(2.0)
        decoder.bias_scaling.bias.fill_(0.0)
        doubled = decoder(queries, patches)[1][0]
        decoder.bias_scaling.weight.fill_(1.0)
        single = decoder(queries, patches)[1][0]
    torch.testing.assert_close(doubled, 2 * single)


def test_attention_bias_equals_sans_dot_product_with_the_pixel_embeddings():
    """The re-associated bias, (e W) . h + e . c, equals SAN's e . attn_mlp(patches), values and gradients."""
    torch.manual_seed(0)
    config = tiny_config(attn_bias_num_layers=2)
    decoder = PATMaskDecoder(config)
    with torch.no_grad():
        decoder.bias_scaling.weight.fill_(1.5)
        decoder.bias_scaling.bias.fill_(-0.25)

    def literal(embeddings, patches):  # SAN's MLPMaskDecoder: the full pixel embeddings, then one einsum
        attn = decoder.attn_mlp(patches)
        b, _, h, w = attn.shape
        attn = attn.reshape(b, decoder.num_layers, decoder.num_heads, -1, h, w)
        bias = torch.einsum("bqe,blkehw->blkqhw", embeddings, attn) * 1.5 - 0.25
        return list(bias.unbind(dim=1))

    last = decoder.attn_mlp.layers[-1]
    for batch, with_bias in ((1, True), (3, True), (2, False)):
        if not with_bias:
            last.register_parameter("bias", None)  # the bias-free branch
        embeddings = torch.randn(batch, config.num_queries, config.mask_embed_dim, requires_grad=True)
        patches = torch.randn(batch, config.side_hidden_size, 7, 9, requires_grad=True)
        fast, expected = decoder.attention_bias(embeddings, patches), literal(embeddings, patches)
        for a, b in zip(fast, expected):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        weights = [torch.randn_like(b) for b in expected]
        inputs = [embeddings, patches, last.weight] + ([last.bias] if with_bias else [])
        grads = [torch.autograd.grad(sum((w * b).sum() for w, b in zip(weights, out)), inputs)
                 for out in (fast, expected)]
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
