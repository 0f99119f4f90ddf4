"""PAT's pixel branch (choices P1, P2): the quantised feature pyramid z_q.

Per stage s (early, mid, late at scales of the side grid, by default 4x, 2x, 1x = strides 4, 8, 16):
    x_s = Down(x_{s-1})                  image-derived residual pyramid, x_{-1} = the normalised image
    u_s = Up_s(f_s) + x_s                f_s = SAN's fusion term at the stage's side position (shared, P2)
    z_q,s = vMF-VQ(E_s, u_s)
It reads only the image, frozen-CLIP-derived f_s and its codebooks: nothing flows in from the global tokens, so
it runs on its own (the standalone tokenizer) and its outputs do not change when the semantic branch does.

Shape symbols: see `modeling_pat.py` (fusion terms f_s (B, C_side, H, W), stage maps (B, C_side, H_s, W_s), codes
(B, C_code, H_s, W_s)).
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from .configuration_pat import PATConfig
from .constants import PYRAMID_STAGES
from .quantizer import PATQuantizerOutput, PATVectorQuantizer
from .samplers import PATConvDownsample, build_upsampler


@dataclass
class PATPixelBranchOutput:
    """Per stage name: `quantized` (B, C_code, H_s, W_s) and the full quantizer outputs (indices, loss, usage)."""

    quantized: dict[str, torch.Tensor] = field(default_factory=dict)
    quantizer_outputs: dict[str, PATQuantizerOutput] = field(default_factory=dict)


def stage_strides(config: PATConfig) -> list[int]:
    """Pixel strides of the stages: the side patch size divided by each stage's scale (16 / (4, 2, 1) = 4, 8, 16)."""
    strides = []
    for scale in config.pyramid_scales:
        if config.side_patch_size % scale:
            raise ValueError(f"pyramid scale {scale} does not divide side_patch_size={config.side_patch_size}.")
        strides.append(config.side_patch_size // scale)
    return strides


def build_quantizer(config: PATConfig, in_channels: int, codebook_size: int) -> PATVectorQuantizer:
    """A codebook of `codebook_size` codes with the config's code dim, beta, vMF switch and diversity term."""
    return PATVectorQuantizer(
        in_channels, codebook_size, config.code_dim, config.vq_beta, config.use_vmf,
        config.vq_diversity_weight, config.vq_diversity_temperature,
    )


class PATPixelBranch(nn.Module):
    """(B, 3, H_img, W_img) image + fusion terms [(B, C_side, H, W)] per stage -> quantised pyramid
    (B, C_code, H_s, W_s)."""

    def __init__(self, config: PATConfig):
        super().__init__()
        width, strides = config.side_hidden_size, stage_strides(config)
        self.upsamplers = nn.ModuleList(
            build_upsampler(width, scale, config.dysample_groups) for scale in config.pyramid_scales
        )
        self.downsamplers = None
        if config.use_pixel_residual:
            factors = [strides[0]] + [b // a for a, b in zip(strides[:-1], strides[1:])]
            if any(f < 1 for f in factors) or any(b % a for a, b in zip(strides[:-1], strides[1:])):
                raise ValueError(f"pyramid_scales {list(config.pyramid_scales)} must not increase from early to late.")
            channels = [3] + [width] * len(PYRAMID_STAGES)
            self.downsamplers = nn.ModuleList(
                PATConvDownsample(channels[i], width, factor) for i, factor in enumerate(factors)
            )
        self.quantizers = nn.ModuleList(build_quantizer(config, width, size) for size in config.codebook_sizes)

    def residuals(self, pixel_values: torch.Tensor) -> list[torch.Tensor | None]:
        """The image-derived residual pyramid x_s (choice P1), or Nones without the pixel residual."""
        if self.downsamplers is None:
            return [None] * len(PYRAMID_STAGES)
        x, pyramid = pixel_values, []
        for down in self.downsamplers:
            x = down(x)
            pyramid.append(x)
        return pyramid

    def forward(self, pixel_values: torch.Tensor, fusion_terms: list[torch.Tensor]) -> PATPixelBranchOutput:
        output = PATPixelBranchOutput()
        for name, up, quantizer, term, residual in zip(
            PYRAMID_STAGES, self.upsamplers, self.quantizers, fusion_terms, self.residuals(pixel_values)
        ):
            u = up(term)
            if residual is not None:
                u = u + residual
            result = quantizer(u)
            output.quantized[name] = result.quantized
            output.quantizer_outputs[name] = result
        return output


__all__ = ["PATPixelBranch", "PATPixelBranchOutput", "build_quantizer", "stage_strides"]
