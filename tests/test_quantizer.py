"""Vector quantiser invariants (architecture §5.4 Q5): sphere, cosine argmax, straight-through, loss, round trip."""

import pytest
import torch
from torch import nn

from modeling_pat.quantizer import PATVectorQuantizer, code_statistics


def make_quantizer(codebook_size: int = 16, code_dim: int = 8, **kwargs) -> PATVectorQuantizer:
    """12 input channels; K = 16, D = 8 unless given."""
    torch.manual_seed(0)
    return PATVectorQuantizer(12, codebook_size, code_dim, **kwargs)


def features(*shape, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_output_shapes_non_square():
    quantizer = make_quantizer()
    out = quantizer(features(2, 12, 5, 7))
    assert out.quantized.shape == out.encoded.shape == (2, 8, 5, 7)
    assert out.indices.shape == (2, 5, 7) and out.indices.dtype == torch.int64
    for scalar in (out.loss, out.perplexity, out.usage):
        assert scalar.shape == ()


def test_codes_and_encoded_on_unit_sphere():
    quantizer = make_quantizer()
    out = quantizer(features(2, 12, 4, 4))
    ones = torch.ones(1)
    torch.testing.assert_close(quantizer.normalized_codebook().norm(dim=-1), ones.expand(16))
    torch.testing.assert_close(out.encoded.norm(dim=1), ones.expand(2, 4, 4))
    torch.testing.assert_close(out.quantized.norm(dim=1), ones.expand(2, 4, 4))


def test_assignment_is_cosine_argmax_brute_force():
    quantizer = make_quantizer()
    x = features(1, 12, 3, 4)
    out = quantizer(x)
    projected = quantizer.proj(x)[0]  # (D, H, W), before normalisation
    for i in range(3):
        for j in range(4):
            cosines = [torch.cosine_similarity(projected[:, i, j], code, dim=0) for code in quantizer.codebook]
            assert out.indices[0, i, j].item() == int(torch.stack(cosines).argmax())


def test_straight_through_gradient_is_identity_to_encoded():
    quantizer = make_quantizer()
    out = quantizer(features(2, 12, 3, 5))
    out.encoded.retain_grad()
    weight = features(*out.quantized.shape, seed=2)
    (weight * out.quantized).sum().backward()
    torch.testing.assert_close(out.encoded.grad, weight)


def test_loss_gradients_reach_proj_and_codebook():
    quantizer = make_quantizer()
    out = quantizer(features(2, 12, 3, 5))
    out.loss.backward()
    assert quantizer.proj.weight.grad.abs().sum() > 0  # commitment term
    assert quantizer.codebook.grad.abs().sum() > 0  # codebook term
    used = torch.zeros(16, dtype=torch.bool)
    used[out.indices.unique()] = True
    assert (quantizer.codebook.grad[~used] == 0).all()  # only chosen codes move


def test_loss_is_one_plus_beta_times_two_minus_two_cos():
    beta = 0.25
    quantizer = make_quantizer(beta=beta)
    out = quantizer(features(2, 12, 4, 3))
    chosen = quantizer.lookup(out.indices)
    cosine = (out.encoded * chosen).sum(dim=1)  # (B, H, W)
    expected = (1 + beta) * (2 - 2 * cosine).mean()
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)
    assert out.loss >= 0


def test_eval_quantized_equals_lookup():
    quantizer = make_quantizer().eval()
    out = quantizer(features(2, 12, 5, 6))
    assert torch.equal(out.quantized, quantizer.lookup(out.indices))


def test_euclidean_variant_is_unnormalised_argmin():
    quantizer = make_quantizer(use_vmf=False)
    x = features(2, 12, 3, 4)
    out = quantizer(x)
    projected = quantizer.proj(x)
    torch.testing.assert_close(out.encoded, projected)  # no normalisation
    torch.testing.assert_close(quantizer.normalized_codebook(), quantizer.codebook)
    vectors = projected.permute(0, 2, 3, 1).reshape(-1, 8)  # (B, D, H, W) -> (M, D)
    expected = torch.cdist(vectors, quantizer.codebook).argmin(-1).view(2, 3, 4)
    assert torch.equal(out.indices, expected)
    chosen = quantizer.lookup(out.indices)
    squared = (out.encoded - chosen).pow(2).sum(dim=1).mean()
    torch.testing.assert_close(out.loss, 1.25 * squared)


def test_statistics_ranges():
    quantizer = make_quantizer()
    out = quantizer(features(4, 12, 8, 8))
    assert 1 <= out.perplexity.item() <= 16 + 1e-4
    assert 1 / 16 <= out.usage.item() <= 1
    # every position equal -> a single code: perplexity 1, usage 1/K
    same = quantizer(features(1, 12, 1, 1).expand(2, 12, 5, 5))
    assert same.indices.unique().numel() == 1
    torch.testing.assert_close(same.perplexity, torch.tensor(1.0))
    torch.testing.assert_close(same.usage, torch.tensor(1 / 16))


def test_code_statistics_uniform_histogram():
    perplexity, usage = code_statistics(torch.arange(8).repeat(3), codebook_size=16)
    torch.testing.assert_close(perplexity, torch.tensor(8.0))
    torch.testing.assert_close(usage, torch.tensor(0.5))


def test_reset_parameters_and_no_buffers():
    quantizer = make_quantizer(codebook_size=256, code_dim=32)
    nn.init.zeros_(quantizer.codebook)
    quantizer.reset_parameters()
    assert abs(quantizer.codebook.std().item() - 1) < 0.05  # choice V2: N(0, 1)
    assert abs(quantizer.codebook.mean().item()) < 0.05
    assert list(quantizer.buffers()) == []


def test_bfloat16_forward():
    quantizer = make_quantizer().to(torch.bfloat16)
    out = quantizer(features(1, 12, 4, 4).to(torch.bfloat16))
    assert out.quantized.dtype == torch.bfloat16 and torch.isfinite(out.loss)


def test_assignment_runs_in_fp32_under_autocast_and_in_bfloat16():
    """The nearest code is chosen in fp32: autocast or bf16 storage must not flip near-equal codes."""
    quantizer = make_quantizer(codebook_size=256)
    encoded = torch.nn.functional.normalize(features(4096, 8), dim=-1).to(torch.bfloat16)  # bf16-representable values
    expected = quantizer.assign(encoded.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(quantizer.assign(encoded.float()), expected, rtol=0, atol=0)
    torch.testing.assert_close(quantizer.assign(encoded), expected, rtol=0, atol=0)


def test_rejects_empty_codebook():
    with pytest.raises(ValueError):
        PATVectorQuantizer(4, 0)
