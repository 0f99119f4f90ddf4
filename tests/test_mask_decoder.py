"""SAN's mask decoder: shapes, the attention-bias scaling, the re-associated bias, and the bias of outside queries."""

import torch

from modeling_pat.mask_decoder import PATMaskDecoder

from conftest import tiny_config


def test_mask_decoder_shapes_and_bias_scaling():
    config = tiny_config(attn_bias_num_layers=2)
    decoder = PATMaskDecoder(config)
    queries = torch.randn(2, config.num_queries, config.side_hidden_size)
    side_tokens = torch.randn(2, config.side_hidden_size, 8, 10)
    mask_logits, biases = decoder(queries, side_tokens)
    assert mask_logits.shape == (2, config.num_queries, 8, 10)
    assert len(biases) == 2
    assert all(b.shape == (2, config.attn_bias_num_heads, config.num_queries, 8, 10) for b in biases)
    # the learnable scalar affine is applied elementwise: w * bias + b
    with torch.no_grad():
        decoder.bias_scaling.weight.fill_(2.0)
        decoder.bias_scaling.bias.fill_(0.0)
        doubled = decoder(queries, side_tokens)[1][0]
        decoder.bias_scaling.weight.fill_(1.0)
        single = decoder(queries, side_tokens)[1][0]
    torch.testing.assert_close(doubled, 2 * single)


def test_attention_bias_equals_sans_dot_product_with_the_pixel_embeddings():
    """The re-associated bias, (e W) . h + e . c, equals SAN's e . attn_mlp(side_tokens), values and gradients."""
    torch.manual_seed(0)
    config = tiny_config(attn_bias_num_layers=2)
    decoder = PATMaskDecoder(config)
    with torch.no_grad():
        decoder.bias_scaling.weight.fill_(1.5)
        decoder.bias_scaling.bias.fill_(-0.25)

    def literal(embeddings, side_tokens):  # SAN's MLPMaskDecoder: the full pixel embeddings, then one einsum
        attn = decoder.attn_mlp(side_tokens)
        b, _, h, w = attn.shape
        attn = attn.reshape(b, decoder.num_layers, decoder.num_heads, -1, h, w)
        bias = torch.einsum("bqe,blkehw->blkqhw", embeddings, attn) * 1.5 - 0.25
        return list(bias.unbind(dim=1))

    last = decoder.attn_mlp.layers[-1]
    for batch, with_bias in ((1, True), (3, True), (2, False)):
        if not with_bias:
            last.register_parameter("bias", None)  # the bias-free branch
        embeddings = torch.randn(batch, config.num_queries, config.mask_embed_dim, requires_grad=True)
        side_tokens = torch.randn(batch, config.side_hidden_size, 7, 9, requires_grad=True)
        fast, expected = decoder.attention_bias(embeddings, side_tokens), literal(embeddings, side_tokens)
        for a, b in zip(fast, expected):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        weights = [torch.randn_like(b) for b in expected]
        inputs = [embeddings, side_tokens, last.weight] + ([last.bias] if with_bias else [])
        grads = [torch.autograd.grad(sum((w * b).sum() for w, b in zip(weights, out)), inputs)
                 for out in (fast, expected)]
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_query_attention_bias_is_the_bias_of_the_decoders_own_query_embeddings():
    torch.manual_seed(0)
    config = tiny_config(attn_bias_num_layers=2)
    decoder = PATMaskDecoder(config)
    queries = torch.randn(2, config.num_queries, config.side_hidden_size)
    side_tokens = torch.randn(2, config.side_hidden_size, 8, 10)
    _, expected = decoder(queries, side_tokens)
    for a, b in zip(decoder.query_attention_bias(queries, side_tokens), expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
