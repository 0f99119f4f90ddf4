"""Pyramid resamplers: DySample's zero-offset behaviour, groups, shapes, gradients and init; the strided-conv down-sampler."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modeling_pat.samplers import PATConvDownsample, PATDySample, build_upsampler, subpixel_offsets


def zero_offsets(sampler: PATDySample) -> PATDySample:
    nn.init.zeros_(sampler.offset.weight)
    nn.init.zeros_(sampler.offset.bias)
    return sampler


@pytest.mark.parametrize("scale", [2, 4])
def test_zero_offset_equals_bilinear_interpolation(scale):
    # the fixed sub-pixel grid puts every output sample at its own centre; border padding = interpolate's clamping
    x = torch.randn(2, 8, 5, 7, generator=torch.Generator().manual_seed(0))
    out = zero_offsets(PATDySample(8, scale))(x)
    expected = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_subpixel_offsets_values():
    offsets = subpixel_offsets(scale=4, groups=2)  # (1, 2, G*s*s, 1, 1), channel order (x/y, G, i, j)
    assert offsets.shape == (1, 2, 2 * 16, 1, 1)
    steps = torch.tensor([-1.5, -0.5, 0.5, 1.5]) / 4
    grid = offsets.view(2, 2, 4, 4)
    for group in range(2):
        torch.testing.assert_close(grid[0, group], steps.expand(4, 4))  # x follows the column j
        torch.testing.assert_close(grid[1, group], steps[:, None].expand(4, 4))  # y follows the row i


@pytest.mark.parametrize("scale, groups", [(2, 4), (4, 4), (4, 2), (1, 1)])
def test_output_shapes_non_square(scale, groups):
    sampler = PATDySample(16, scale, groups)
    x = torch.randn(3, 16, 6, 11)
    assert sampler(x).shape == (3, 16, 6 * scale, 11 * scale)
    assert sampler.sampling_grid(x).shape == (3 * groups, 6 * scale, 11 * scale, 2)
    assert sampler.offset.out_channels == 2 * groups * scale**2


def test_offsets_of_one_group_only_move_that_groups_channels():
    torch.manual_seed(0)
    sampler = zero_offsets(PATDySample(8, 2, groups=4))  # 2 channels per group
    x = torch.randn(1, 8, 6, 5)
    reference = sampler(x)
    with torch.no_grad():
        per_axis = sampler.offset.bias.view(2, 4, 4)  # (x/y, G, s*s)
        per_axis[:, 0] = 1.0  # group 0: shift every sample by 0.25 px in x and y
    moved = sampler(x)
    changed = (moved - reference).abs().amax(dim=(0, 2, 3))  # (C,)
    assert (changed[:2] > 1e-3).all()
    assert (changed[2:] == 0).all()


def test_gradient_reaches_offset_conv_and_input():
    torch.manual_seed(0)
    sampler = PATDySample(8, 4)
    x = torch.randn(2, 8, 5, 6, requires_grad=True)
    sampler(x).pow(2).sum().backward()
    assert sampler.offset.weight.grad.abs().sum() > 0
    assert sampler.offset.bias.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


def test_bfloat16_matches_float32():
    torch.manual_seed(0)
    sampler = PATDySample(16, 2)
    x = torch.randn(1, 16, 9, 13)
    out_bf16 = sampler.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out_bf16.dtype == torch.bfloat16
    out_fp32 = sampler.float()(x.to(torch.bfloat16).float())
    torch.testing.assert_close(out_bf16.float(), out_fp32, atol=3e-2, rtol=3e-2)


def test_reset_parameters_std_and_bias():
    torch.manual_seed(0)
    sampler = PATDySample(64, 4)  # offset conv 64 -> 128: 8192 weights
    nn.init.ones_(sampler.offset.weight)
    nn.init.ones_(sampler.offset.bias)
    sampler.reset_parameters()
    assert abs(sampler.offset.weight.std().item() - 0.001) < 1e-4
    assert abs(sampler.offset.weight.mean().item()) < 1e-4
    assert (sampler.offset.bias == 0).all()


def test_registers_no_buffers():
    # meta-device construction in from_pretrained would bring non-persistent buffers back as zeros
    assert list(PATDySample(8, 2).buffers()) == []


def test_channels_must_divide_into_groups():
    with pytest.raises(ValueError, match="divisible by groups"):
        PATDySample(10, 2, groups=4)


def test_build_upsampler():
    assert isinstance(build_upsampler(8, 1), nn.Identity)
    up = build_upsampler(8, 4, groups=2)
    assert isinstance(up, PATDySample) and (up.scale, up.groups) == (4, 2)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_conv_downsample_shapes(factor):
    down = PATConvDownsample(6, 10, factor)
    assert down.conv.kernel_size == (factor, factor) and down.conv.stride == (factor, factor)
    assert down.conv.bias is not None
    assert down(torch.randn(2, 6, 8, 12)).shape == (2, 10, 8 // factor, 12 // factor)


def test_conv_downsample_rejects_indivisible_grid():
    with pytest.raises(ValueError, match="not divisible"):
        PATConvDownsample(6, 6, 4)(torch.randn(1, 6, 8, 10))
