"""PAT's pyramid resamplers: DySample up-sampling (choice U1) and strided-conv down-sampling (choice D1).

Shape symbols: see `modeling_pat.py`; the maps are (B, C, H_s, W_s) with any channel count C, G offset groups,
`scale` the up-sampling scale and `factor` the down-sampling factor.
DySample (Liu et al., ICCV 2023) is written here from the method description: "lp" style, no dynamic scope.
"""

import torch
import torch.nn.functional as F
from torch import nn


def subpixel_offsets(scale: int, groups: int, device=None) -> torch.Tensor:
    """(1, 2, G*scale*scale, 1, 1) fp32: the fixed ((1 - scale)/2 ... (scale - 1)/2) / scale offsets of the
    scale x scale outputs of one pixel."""
    # channel order (x/y, G, i, j), i = output row and j = output column inside the pixel: the (C, i, j) order that
    # `pixel_shuffle` unpacks; x moves with j, y with i
    steps = (torch.arange(scale, dtype=torch.float32, device=device) - (scale - 1) / 2) / scale  # (s,)
    dx = steps.expand(scale, scale)  # (i, j) -> steps[j]
    dy = steps[:, None].expand(scale, scale)  # (i, j) -> steps[i]
    return torch.stack([dx, dy])[:, None].expand(2, groups, scale, scale).reshape(1, 2, -1, 1, 1)


def pixel_centres(height: int, width: int, device=None) -> torch.Tensor:
    """(1, 2, 1, H, W) fp32: x then y of every input pixel centre, in pixels (edges at integers)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=device) + 0.5,
        torch.arange(width, dtype=torch.float32, device=device) + 0.5,
        indexing="ij",
    )
    return torch.stack([xs, ys])[None, :, None]


class PATOffsetConv2d(nn.Conv2d):
    """1x1 conv predicting DySample offsets; its own class so the model's weight init can start it near zero."""

    def reset_parameters(self) -> None:
        # near-zero offsets: training starts from plain bilinear up-sampling
        nn.init.normal_(self.weight, std=0.001)
        nn.init.zeros_(self.bias)


class PATDySample(nn.Module):
    """(B, C, H_s, W_s) -> (B, C, scale*H_s, scale*W_s): point-sampling up-sampler with learned offsets; C/G channels share one field."""

    # with a zero offset conv this is exactly bilinear `F.interpolate(scale_factor=s, align_corners=False)`

    def __init__(self, in_channels: int, scale: int, groups: int = 4):
        super().__init__()
        if scale < 1:
            raise ValueError(f"DySample scale must be a positive integer, got {scale}.")
        if groups < 1 or in_channels % groups != 0:
            raise ValueError(f"DySample in_channels={in_channels} must be divisible by groups={groups}.")
        self.scale = scale
        self.groups = groups
        self.offset = PATOffsetConv2d(in_channels, 2 * groups * scale**2, kernel_size=1)

    def reset_parameters(self) -> None:
        self.offset.reset_parameters()

    def sampling_grid(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H_s, W_s) -> (B*G, scale*H_s, scale*W_s, 2) fp32 `grid_sample` coordinates in [-1, 1] (x, y)."""
        b, _, h, w = x.shape
        s, g = self.scale, self.groups
        # fp32 coordinates: in bf16 a position near 160 px rounds to the nearest whole pixel
        offset = 0.25 * self.offset(x).float()  # (B, 2*G*s*s, H, W)
        offset = offset.view(b, 2, g * s * s, h, w) + subpixel_offsets(s, g, x.device)
        # (w, h) made on the device: a tensor of host values would be a blocking host-to-device copy per forward
        size = torch.where(torch.arange(2, device=x.device) == 0, float(w), float(h)).view(1, 2, 1, 1, 1)
        coords = 2 * (pixel_centres(h, w, x.device) + offset) / size - 1  # align_corners=False normalisation
        # (B, 2*G*s*s, H, W) -> (B, 2*G, sH, sW): output pixel (s*y + i, s*x + j) takes sub-channel (i, j)
        coords = F.pixel_shuffle(coords.reshape(b, -1, h, w), s)
        # (B, 2, G, sH, sW) -> (B*G, sH, sW, 2)
        return coords.view(b, 2, g, s * h, s * w).permute(0, 2, 3, 4, 1).reshape(b * g, s * h, s * w, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        grid = self.sampling_grid(x)
        # (B, C, H, W) -> (B*G, C/G, H, W): consecutive blocks of C/G channels follow one offset field.
        # Sampled in fp32 (what autocast does for grid_sample anyway), returned in the input dtype.
        groups = x.float().reshape(b * self.groups, c // self.groups, h, w)
        out = F.grid_sample(groups, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out.view(b, c, self.scale * h, self.scale * w).to(x.dtype)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, groups={self.groups}"


class PATConvDownsample(nn.Module):
    """(B, C_in, H_s, W_s) -> (B, C_out, H_s/factor, W_s/factor): Conv2d with kernel = stride = factor, bias, no norm
    or activation (factor 1: a 1x1 conv)."""

    def __init__(self, in_channels: int, out_channels: int, factor: int):
        super().__init__()
        if factor < 1:
            raise ValueError(f"Down-sampling factor must be a positive integer, got {factor}.")
        self.factor = factor
        # factor 1 still gets a learnable 1x1 projection, so every stage has the same structure
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=factor, stride=factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.factor or w % self.factor:
            # a strided conv would silently drop the last rows/columns and misalign the pyramid
            raise ValueError(f"Input grid {h}x{w} is not divisible by the down-sampling factor {self.factor}.")
        return self.conv(x)


def build_upsampler(channels: int, scale: int, groups: int = 4) -> nn.Module:
    """Scale 1 -> `nn.Identity()` (no parameters); otherwise `PATDySample(channels, scale, groups)`."""
    if scale == 1:
        return nn.Identity()
    return PATDySample(channels, scale, groups)
