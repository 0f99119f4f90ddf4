"""Generic layers shared by SAN's and PAT's units: one implementation of each (shape symbols: see `modeling_pat.py`;
C is the width of whichever unit uses the layer: C_clip, C_side or C_dec).

- `channel_layer_norm` / `PATChannelLayerNorm`: LayerNorm over the channels of a (B, C, H, W) map (fusion layers,
  reconstruction head; affine-free in the decoder's SPADE);
- `PATMLP`: a stack of Linear (or 1x1 conv) layers with ReLU between them (mask heads of SAN and PAT);
- `PATSelfAttention`: multi-head self-attention with a fused q/k/v projection and an optional additive bias
  (side ViT; the PAT decoder's global and window attention builds on it).
- `PATGlobalTokenAttention`: pre-norm residual cross-attention of the global tokens to a memory of tokens (semantic
  branch, shared decoder), on `torch.nn.MultiheadAttention` (its parameter names are those of saved checkpoints).
The hypersphere attention of the semantic branch is a different operation (cosine logits, one head, unit outputs).
"""

import torch
import torch.nn.functional as F
from torch import nn


def channel_layer_norm(
    x: torch.Tensor, eps: float, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): LayerNorm over the channel dim, written out as SAN does (same rounding), with
    the affine `weight` * x + `bias` (C,) when given, in x's dtype.

    The statistics run in fp32 (a no-op for fp32 inputs): in fp16 the squares of CLIP's outlier channels overflow,
    in bf16 the variance loses most of its digits. Written over dim 1 rather than as a permuted `F.layer_norm`, so
    the output keeps the input's NCHW memory layout.
    """
    dtype, x = x.dtype, x.float()
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    x = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        x = weight[:, None, None].float() * x + bias[:, None, None].float()
    return x.to(dtype)


class PATChannelLayerNorm(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): `channel_layer_norm` with a learned affine (SAN's fusion layers, PAT's
    reconstruction head)."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_layer_norm(x, self.eps, self.weight, self.bias)


class PATMLP(nn.Module):
    """`num_layers` affine layers (Linear on (..., C_in), or 1x1 conv on (B, C_in, H, W) with `conv=True`) with ReLU
    between them -> (..., C_out) / (B, C_out, H, W)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, conv: bool = False):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        make = (lambda i, o: nn.Conv2d(i, o, kernel_size=1)) if conv else nn.Linear
        self.layers = nn.ModuleList(make(i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[-1](self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's input: all layers but the last, each followed by ReLU."""
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return x


class PATFeedForward(nn.Module):
    """A transformer layer's feed-forward block: (..., C) -> (..., C), Linear to C * ratio, GELU (erf), Linear back.
    Used by the side ViT's layers (SAN's `Mlp`: the names fc1 / fc2 are its checkpoint keys) and the PAT decoder's."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class PATSelfAttention(nn.Module):
    """(B, L, C) -> (B, L, C) multi-head self-attention, fused q/k/v projection in timm's layout (q, k, v rows),
    scaled dot-product attention with an optional additive bias, output projection.

    Subclasses change what the projections see (the PAT decoder adds positions and cuts windows) but attend with
    `attend`, the one attention of the side ViT and the decoder.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a multiple of num_heads ({num_heads}).")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(self.attend(self.qkv(x), bias))

    def attend(self, qkv: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, 3C) fused q/k/v, optional additive bias broadcastable to (B, A, L, L) -> (B, L, C)."""
        b, length, c3 = qkv.shape
        # (B, L, 3C) -> (B, L, 3, A, C/A) -> three (B, A, L, C/A)
        q, k, v = qkv.view(b, length, 3, self.num_heads, -1).transpose(1, 3).unbind(2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return out.transpose(1, 2).reshape(b, length, c3 // 3)  # (B, A, L, C/A) -> (B, L, C)


class PATGlobalTokenAttention(nn.Module):
    """Pre-norm residual cross-attention without FFN (choice G1): tokens + MHA(LN(tokens), LN(memory), LN(memory)).

    The residual keeps the query content across stages; the side ViT's own blocks provide the FFNs. Used by the
    semantic branch (global tokens read the side tokens) and the shared decoder (they read the decoded map).

    Shape:
        tokens: (B, Q, dim); memory: (B, L, kv_dim) -> (B, Q, dim)  (dim = C_side; kv_dim = C_side or C_dec)
    """

    def __init__(self, dim: int, kv_dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim, eps=eps)
        self.norm_kv = nn.LayerNorm(kv_dim, eps=eps)
        self.attn = nn.MultiheadAttention(dim, num_heads, kdim=kv_dim, vdim=kv_dim, batch_first=True)

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        memory = self.norm_kv(memory)
        update, _ = self.attn(self.norm_q(tokens), memory, memory, need_weights=False)
        return tokens + update


__all__ = [
    "PATChannelLayerNorm",
    "PATFeedForward",
    "PATGlobalTokenAttention",
    "PATMLP",
    "PATSelfAttention",
    "channel_layer_norm",
]
