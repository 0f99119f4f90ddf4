"""PAT's shared decoder and heads (choices R1, W1, SP1, TR1, M1, RH1).

Top-down decoding (R1), from the latent codes on the side grid to the early stage's grid:
    y = Conv1x1(z_latent);  e = g_8
    for s in (late, mid, early), the stages kept in `decoder_stages`:
        y = Up_s(y)                       DySample by the ratio of consecutive stage scales (identity for 1)
        y = TransformerLayer_s(y)         pre-norm, 2-D sin-cos PE on q/k (TR1)
        y = SPADE_s(y, z_q,s)             affine-free channel LayerNorm modulated by the stage codes (SP1)
        e = e + CrossAttn_s(LN e, LN y)   the global tokens read the decoded map
    y = Up_final(y)                       identity unless stages were dropped (see below)
    y = TransformerLayer_x(y), decoder_num_extra_layers times
Heads: masks = MLP_q(e) . MLP_p(y) (M1); reconstruction = ConvT(GELU(ConvT(LN y))) at 4x (RH1).

Attention (choice W1): global on the side grid (scale 1, 40x40 = 1,600 tokens at 640 px, cheap), and
non-overlapping `decoder_attn_window` x `decoder_attn_window` windows on every larger map (80x80, 160x160),
with the window grid shifted by half a window in every other windowed layer (mid: plain, early: shifted,
extra 1: plain, extra 2: shifted) so information crosses window borders. The shifted windows are those of the
map padded by window // 2 at the top / left; they are computed as in Swin, by a cyclic roll of the map and a
mask that keeps the regions the roll brings together apart (`window_region_mask`), so nothing attends across the
image border and no window is added. Maps not divisible by the window are zero-padded at the bottom / right and
the padding is masked the same way. A map that fits in one window uses global attention.
`decoder_attn_window=None` is the paper-literal global form.

Dropped stages ("dropping decoder stages" ablation, section 3.16): a dropped stage loses its upsampler, layer,
SPADE and cross-attention. Its upsampling is folded into the next kept stage (e.g. without "mid" the early
stage upsamples by 4), or into a final upsampler when the dropped stages are the last ones, so the output
always lives on the early stage's grid and the heads are unchanged.

Shape symbols: see `modeling_pat.py` (maps (B, C_dec, H_s, W_s), codes (B, C_code, H_s, W_s), global tokens
(B, Q, C_side), R windows of r x r tokens).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration_pat import PATConfig
from .constants import DECODING_ORDER, PYRAMID_STAGES
from .layers import (
    PATChannelLayerNorm,
    PATFeedForward,
    PATGlobalTokenAttention,
    PATMLP,
    PATSelfAttention,
    channel_layer_norm,
)
from .samplers import build_upsampler


def sincos_position_embedding_2d(
    height: int, width: int, dim: int, device=None, dtype=None, temperature: float = 10000.0
) -> torch.Tensor:
    """(H*W, C_dec) fixed 2-D sine-cosine encoding (DETR): first half encodes the row, second half the column.

    Positions are pixel centres normalised to (0, 2*pi), so one image location gets the same code at every stage
    of the top-down decoder. Sines and cosines are concatenated rather than interleaved as in DETR: a fixed
    channel permutation, irrelevant in front of a learned projection.
    """
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos embedding needs a width divisible by 4, got {dim}.")
    quarter = dim // 4
    freqs = temperature ** (-torch.arange(quarter, device=device, dtype=torch.float32) / quarter)  # (C_dec/4,)

    def encode(length: int) -> torch.Tensor:  # (length, C_dec/2)
        positions = (torch.arange(length, device=device, dtype=torch.float32) + 0.5) / length * (2 * math.pi)
        angles = positions[:, None] * freqs
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    rows = encode(height)[:, None].expand(height, width, dim // 2)
    cols = encode(width)[None].expand(height, width, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(height * width, dim).to(dtype)  # (H, W, C_dec) -> (L, C_dec)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H_s, W_s, C_dec), H_s and W_s multiples of r -> (B * R, r * r, C_dec), windows row-major per image."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.transpose(2, 3).reshape(-1, window * window, c)  # (B, H_s/r, W_s/r, r, r, C_dec) -> (B*R, r*r, C_dec)


def window_merge(windows: torch.Tensor, height: int, width: int, window: int) -> torch.Tensor:
    """(B * R, r * r, C_dec) -> (B, H_s, W_s, C_dec), the inverse of `window_partition`."""
    c = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, c)
    return x.transpose(2, 3).reshape(-1, height, width, c)  # (B, H_s/r, r, W_s/r, r, C_dec) -> (B, H_s, W_s, C_dec)


def window_roll(window: int, shift: int) -> int:
    """Rows / columns the map is rolled up-left so that its r x r windows start where the shifted regions start.

    Regions of a map padded by `shift` at the top / left start at rows i with (i + shift) % window == 0, i.e. at
    -shift mod window (= shift for an even window, not for an odd one).
    """
    return -shift % window


def window_grid(x: torch.Tensor, window: int, shift: int) -> torch.Tensor:
    """(B, H_s, W_s, C_dec) -> (B, H', W', C_dec): zero-padded at the bottom / right to multiples of r, then rolled
    up-left by `window_roll(window, shift)`, so that every region of `window_region_mask` lies inside one window."""
    height, width = x.shape[1:3]
    x = F.pad(x, (0, 0, 0, -width % window, 0, -height % window))
    roll = window_roll(window, shift)
    return x.roll((-roll, -roll), dims=(1, 2)) if roll else x


def window_region_mask(height: int, width: int, window: int, shift: int, device=None) -> torch.Tensor | None:
    """(R, r*r, r*r) boolean: query and key lie in one region, in the windows of `window_grid`; None if all do.

    The regions are the windows of the map padded by `shift` at the top / left: rows (i + shift) // r for row i, columns
    likewise, on real pixels only. The cyclic roll puts the bottom / right border regions in one window with the
    top / left ones; the mask keeps them apart, so nothing attends across the image border (Swin's shifted-window
    mask), and it hides the padding from real pixels. Padding tokens attend to padding only (their outputs are
    cropped; no softmax row is empty).
    """
    padded_h, padded_w = height + -height % window, width + -width % window
    if not shift and (padded_h, padded_w) == (height, width):
        return None

    def index(length: int, padded: int) -> torch.Tensor:  # region index along one axis, -1 on padding
        positions = torch.arange(padded, device=device)
        return torch.where(positions < length, (positions + shift) // window, -1)

    rows, cols = index(height, padded_h), index(width, padded_w)
    region = torch.where((rows[:, None] >= 0) & (cols[None] >= 0), rows[:, None] * padded_w + cols[None], -1)
    region = window_grid(region[None, :, :, None], window, shift)
    region = window_partition(region, window)[..., 0]  # (R, r*r)
    return region[:, :, None] == region[:, None, :]


def window_region_bias(height: int, width: int, window: int, shift: int, device=None, dtype=None):
    """(R, 1, r*r, r*r) additive attention mask (0 / -inf) of `window_region_mask`, broadcast over heads; or None.

    Additive rather than boolean: SDPA's CPU kernel is about 40% slower with a boolean mask.
    """
    keep = window_region_mask(height, width, window, shift, device)
    if keep is None:
        return None
    return torch.zeros(keep.shape, device=device, dtype=dtype).masked_fill_(~keep, float("-inf"))[:, None]


class PATDecoderAttention(PATSelfAttention):
    """Multi-head self-attention over a map of tokens, global or in (optionally shifted) non-overlapping windows (TR1).

    The sin-cos PE is added to the inputs of the q and k projections (DETR; v sees none); by linearity this is
    qkv(x) + W_qk pos. That position term depends only on the grid and the weights, so at inference it is kept in the
    model's `PATInferenceCache` (see `position_term`).

    Windows: the per-token projections commute with the window partition, so the C_dec-wide tokens are rolled,
    padded and partitioned once and qkv, attention and the output projection all run on windows (doing it to the
    3C-wide q/k/v instead would move three times the memory). The additive mask of shifted or padded windows is
    kept in the inference cache too (see `region_bias`).

    Shape:
        x: (B, H_s, W_s, C_dec) -> (B, H_s, W_s, C_dec); R windows of r x r tokens
    """

    def __init__(self, dim: int, num_heads: int, window: int | None = None, shift: bool = False):
        super().__init__(dim, num_heads)
        if window is not None and window < 1:
            raise ValueError(f"window must be positive or None, got {window}.")
        self.window, self.shift = window, shift
        self.inference_cache = None  # the model's `PATInferenceCache`, handed over by `post_init`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        if self.window is None or (h <= self.window and w <= self.window):
            qkv = self.with_position(self.qkv(x.reshape(b, h * w, c)), h, w, None)  # (B, L, 3C)
            return self.proj(self.attend(qkv)).view(b, h, w, c)
        size = self.window
        shift = size // 2 if self.shift else 0
        grid = window_grid(x, size, shift)  # (B, H', W', C_dec), H' and W' multiples of r
        qkv = self.with_position(self.qkv(window_partition(grid, size)), h, w, shift)  # (B*R, r*r, 3C)
        bias = self.region_bias(h, w, shift, qkv.device, qkv.dtype)  # (R, 1, r*r, r*r) or None
        if bias is not None and b > 1:
            bias = bias.repeat(b, 1, 1, 1)  # (B*R, 1, r*r, r*r): windows of all images, broadcast over heads
        out = window_merge(self.proj(self.attend(qkv, bias)), *grid.shape[1:3], size)
        roll = window_roll(size, shift)
        if roll:
            out = out.roll((roll, roll), dims=(1, 2))
        return out[:, :h, :w]

    def with_position(self, qkv: torch.Tensor, height: int, width: int, shift: int | None) -> torch.Tensor:
        """Adds W_qk pos to the q and k thirds of (B, L, 3C) or windowed (B*R, r*r, 3C) projections, in place."""
        term = self.position_term(height, width, shift, qkv.device, qkv.dtype)  # (L, 2C) or (R, r*r, 2C)
        c2 = term.shape[-1]
        qkv.unflatten(0, (-1, *term.shape[:-2]))[..., :c2] += term  # in place: saves a pass over the 3C tensor
        return qkv

    def cached(self, name: str, key: tuple, compute):
        """`compute()`, kept in the model's inference cache at inference (eval mode, no gradient through this
        layer's weights, not under `torch.compile`); recomputed every call while training."""
        usable = (
            self.inference_cache is not None
            and not self.training
            and not (torch.is_grad_enabled() and self.qkv.weight.requires_grad)
            and not torch.compiler.is_compiling()
        )
        if not usable:
            return compute()
        return self.inference_cache.get(f"shared_decoder.{name}@{id(self)}", key, compute)

    def position_term(self, height: int, width: int, shift: int | None, device, dtype) -> torch.Tensor:
        """W_qk pos (no bias: qkv adds it): (L, 2C), or (R, r*r, 2C) in the layout of `window_grid` (shift given).

        Cached per grid, layout, device and dtype (the cache's invalidation rule covers the weights). Memory: one
        (L, 2C) term per layer, about 170 MB for pat-clip-vit-b16 at 640x640 in fp32.
        """

        def compute() -> torch.Tensor:
            weight = self.qkv.weight
            c = weight.shape[-1]
            term = F.linear(sincos_position_embedding_2d(height, width, c, device, dtype), weight[: 2 * c])
            if shift is None:
                return term  # (L, 2C)
            grid = window_grid(term.view(1, height, width, 2 * c), self.window, shift)  # zero on padding
            return window_partition(grid, self.window)

        return self.cached("position_term", (height, width, shift, device, dtype), compute)

    def region_bias(self, height: int, width: int, shift: int, device, dtype) -> torch.Tensor | None:
        """`window_region_bias` for this layer's windows, cached per grid, device and dtype. Memory: about 26 MB per
        shifted layer for pat-clip-vit-b16 at 640x640 in fp32."""

        def compute():
            return window_region_bias(height, width, self.window, shift, device, dtype)

        return self.cached("region_bias", (height, width, shift, device, dtype), compute)


class PATDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm transformer layer on a map: y + Attn(LN y), then + MLP(LN y) with GELU (recomputed in the backward
    pass under gradient checkpointing).

    Shape:
        y: (B, C_dec, H_s, W_s) -> (B, C_dec, H_s, W_s)
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window: int | None = None, shift: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = PATDecoderAttention(dim, num_heads, window, shift)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = PATFeedForward(dim, int(dim * mlp_ratio))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        x = y.permute(0, 2, 3, 1).contiguous()  # (B, C_dec, H_s, W_s) -> (B, H_s, W_s, C_dec): tokens
        x = x + self.attn(self.norm1(x))
        # all tokens at once, in inference and training alike. A blocked MLP (blocks of 4,096 tokens) measured on 1
        # CPU thread at 640 x 640 (pat-clip-vit-b16): forward time within the noise, peak 160 MB lower (1,020 -> 855
        # MB over the weights); nothing saved in training, and its loop over the token count fixes the batch and
        # image size in torch.export / dynamic-shape ONNX graphs
        x = x + self.mlp(self.norm2(x))
        # back to standard NCHW memory: the convs and samplers downstream may `view` their inputs
        return x.permute(0, 3, 1, 2).contiguous()


class PATSpade(nn.Module):
    """SPADE (SP1): norm(y) * (1 + gamma(z)) + beta(z), norm = affine-free LayerNorm over channels per pixel.

    A channel LayerNorm rather than SPADE's BatchNorm: per-GPU batches are small and the inputs are transformer
    tokens. The condition is nearest-resized to y's grid when it differs (codes are discrete: no blending).

    Shape:
        y: (B, C_dec, H_s, W_s), condition: (B, C_code, H_s', W_s') on any stage grid -> (B, C_dec, H_s, W_s)
    """

    def __init__(self, channels: int, code_dim: int, hidden_dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.shared = nn.Sequential(nn.Conv2d(code_dim, hidden_dim, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden_dim, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden_dim, channels, 3, padding=1)

    def forward(self, y: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        if condition.shape[-2:] != y.shape[-2:]:
            condition = F.interpolate(condition, size=y.shape[-2:], mode="nearest")
        normalized = channel_layer_norm(y, self.eps)
        hidden = self.shared(condition.to(y.dtype))
        return torch.addcmul(normalized + self.beta(hidden), normalized, self.gamma(hidden))  # norm * (1 + g) + b


@dataclass
class PATDecoderOutput:
    """Output of `PATSharedDecoder`.

    pixel_features: (B, C_dec, H_early, W_early), y_final on the early stage's grid.
    global_tokens: (B, Q, C_side), e_final; None when decoded without.
    hidden_states: y (B, C_dec, H_s, W_s) after each kept stage's SPADE, in decoding order (late, mid, early), then
        after each extra layer; with `output_hidden_states=True` only.
    """

    pixel_features: torch.Tensor
    global_tokens: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class PATDecoderStage(nn.Module):
    """One top-down stage: y <- SPADE(Layer(Up(y)), z_q); e <- e + CrossAttn(LN e, LN y).

    Shape:
        y: (B, C_dec, H_{s+1}, W_{s+1}), quantized: (B, C_code, H_s, W_s), tokens: (B, Q, C_side) or None
        -> (B, C_dec, H_s, W_s), (B, Q, C_side) or None
    """

    def __init__(self, upsampler: nn.Module, layer: nn.Module, spade: nn.Module, cross_attn: nn.Module | None):
        super().__init__()
        self.upsampler, self.layer, self.spade, self.cross_attn = upsampler, layer, spade, cross_attn

    def forward(self, y: torch.Tensor, quantized: torch.Tensor, tokens: torch.Tensor | None):
        y = self.spade(self.layer(self.upsampler(y)), quantized)
        if self.cross_attn is not None and tokens is not None:
            memory = y.flatten(2).transpose(1, 2)  # (B, C_dec, H_s, W_s) -> (B, H_s * W_s, C_dec)
            tokens = self.cross_attn(tokens, memory)
        return y, tokens


def attention_plan(scales: list[int], window: int | None) -> list[tuple[int | None, bool]]:
    """(window, shift) per decoder layer from the layers' scales: windows above the side grid, alternating shift."""
    plan, windowed = [], 0
    for scale in scales:
        if window is None or scale <= 1:
            plan.append((None, False))
        else:
            plan.append((window, windowed % 2 == 1))
            windowed += 1
    return plan


def _upsampler(channels: int, from_scale: int, to_scale: int, groups: int) -> nn.Module:
    """Upsampler from one stage scale to the next (identity for equal scales)."""
    if to_scale % from_scale:
        raise ValueError(
            f"decoder stage scales must each divide the next (late -> early), got {from_scale} -> {to_scale}."
        )
    return build_upsampler(channels, to_scale // from_scale, groups)


class PATSharedDecoder(nn.Module):
    """Top-down shared decoder (R1): latent codes + pyramid codes + global tokens -> stride-4 features and tokens.

    `decode_global_tokens=False` builds it without cross-attentions (a pixel-only decoder, e.g. for the
    "separate decoders" ablation), so no parameter is left without a gradient.

    Shape:
        z_latent: (B, C_code, H, W); quantized[s]: (B, C_code, H_s, W_s); global_tokens: (B, Q, C_side) or None
        -> pixel_features (B, C_dec, H_early, W_early), global_tokens (B, Q, C_side) or None
    """

    def __init__(self, config: PATConfig, decode_global_tokens: bool = True):
        super().__init__()
        unknown = set(config.decoder_stages) - set(PYRAMID_STAGES)
        if unknown:
            raise ValueError(f"decoder_stages must be a subset of {PYRAMID_STAGES}, got unknown {sorted(unknown)}.")
        dim, groups = config.decoder_hidden_size, config.dysample_groups
        scales = dict(zip(PYRAMID_STAGES, config.pyramid_scales))
        kept = [s for s in DECODING_ORDER if s in config.decoder_stages]
        layer_scales = [scales[s] for s in kept] + [scales["early"]] * config.decoder_num_extra_layers
        plan = iter(attention_plan(layer_scales, config.decoder_attn_window))

        def layer() -> PATDecoderLayer:
            return PATDecoderLayer(dim, config.decoder_num_attention_heads, config.decoder_mlp_ratio, *next(plan))

        self.input_proj = nn.Conv2d(config.code_dim, dim, kernel_size=1)
        self.stages = nn.ModuleDict()
        scale = 1  # z_latent lives on the side grid
        for s in kept:
            cross_attn = None
            if decode_global_tokens:
                cross_attn = PATGlobalTokenAttention(config.side_hidden_size, dim, config.global_attn_num_heads)
            spade = PATSpade(dim, config.code_dim, config.spade_hidden_dim)
            self.stages[s] = PATDecoderStage(_upsampler(dim, scale, scales[s], groups), layer(), spade, cross_attn)
            scale = scales[s]
        # dropped trailing stages: their upsampling happens here, so the output stays on the early grid
        self.final_upsampler = _upsampler(dim, scale, scales["early"], groups)
        self.extra_layers = nn.ModuleList(layer() for _ in range(config.decoder_num_extra_layers))

    def forward(
        self,
        z_latent: torch.Tensor,
        quantized: dict[str, torch.Tensor],
        global_tokens: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> PATDecoderOutput:
        y, tokens, hidden_states = self.input_proj(z_latent), global_tokens, []
        for name, stage in self.stages.items():
            y, tokens = stage(y, quantized[name], tokens)
            hidden_states.append(y)
        y = self.final_upsampler(y)
        for layer in self.extra_layers:
            y = layer(y)
            hidden_states.append(y)
        return PATDecoderOutput(y, tokens, tuple(hidden_states) if output_hidden_states else None)


class PATMaskHead(nn.Module):
    """Final masks (M1): einsum of MLP_q(global tokens) and the 1x1-conv MLP_p(pixel features).

    Shape:
        global_tokens: (B, Q, C_side), pixel_features: (B, C_dec, H_early, W_early) -> (B, Q, H_early, W_early)
    """

    def __init__(self, config: PATConfig):
        super().__init__()
        hidden, embed, depth = config.mask_mlp_dim, config.mask_embed_dim, config.mask_mlp_num_layers
        self.query_mlp = PATMLP(config.side_hidden_size, hidden, embed, depth)
        self.pixel_mlp = PATMLP(config.decoder_hidden_size, hidden, embed, depth, conv=True)

    def forward(self, global_tokens: torch.Tensor, pixel_features: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bqc,bchw->bqhw", self.query_mlp(global_tokens), self.pixel_mlp(pixel_features))


class PATReconstructionHead(nn.Module):
    """Image reconstruction (RH1): channel LN, ConvT(C_dec -> hidden, 2, 2), GELU, ConvT(hidden -> 3, 2, 2).

    Predicts the normalised input image (the network's input space).

    Shape:
        pixel_features: (B, C_dec, H_early, W_early) -> (B, 3, 4 H_early, 4 W_early)
    """

    def __init__(self, channels: int = 256, hidden: int = 128, out_channels: int = 3):
        super().__init__()
        self.norm = PATChannelLayerNorm(channels)
        self.up1 = nn.ConvTranspose2d(channels, hidden, kernel_size=2, stride=2)
        self.up2 = nn.ConvTranspose2d(hidden, out_channels, kernel_size=2, stride=2)

    def forward(self, pixel_features: torch.Tensor) -> torch.Tensor:
        return self.up2(F.gelu(self.up1(self.norm(pixel_features))))


__all__ = [
    "PATDecoderAttention",
    "PATDecoderLayer",
    "PATDecoderOutput",
    "PATDecoderStage",
    "PATMaskHead",
    "PATReconstructionHead",
    "PATSharedDecoder",
    "PATSpade",
    "attention_plan",
    "sincos_position_embedding_2d",
    "window_grid",
    "window_merge",
    "window_partition",
    "window_region_bias",
    "window_region_mask",
    "window_roll",
]
