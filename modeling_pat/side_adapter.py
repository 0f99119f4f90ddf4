"""SAN's side adapter network: a small ViT with query tokens that fuses frozen-CLIP features and predicts masks.

Shapes: B batch, Q queries, C side width, H x W side grid (input / patch size), L = H*W, K bias heads,
E mask-embedding dim.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_pat import PATConfig


@dataclass
class PATSideOutput:
    """One decoded side level: `queries` (B, Q, C) and `patches` (B, C, H, W), after fusion, before position re-add."""

    queries: torch.Tensor
    patches: torch.Tensor


class PATChannelLayerNorm(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): LayerNorm over the channel dim, written out as SAN does (same rounding)."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # statistics in fp32 (a no-op for fp32 inputs): in fp16 the squares of CLIP's outlier channels overflow,
        # in bf16 the variance loses most of its digits
        dtype, x = x.dtype, x.float()
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return (self.weight[:, None, None].float() * x + self.bias[:, None, None].float()).to(dtype)


class PATFusionProjection(nn.Conv2d):
    """The fusion layer's 1x1 conv; its own class so the model's weight init gives it SAN's Caffe2 Xavier fill."""

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=1)
        nn.init.zeros_(self.bias)


class PATFusionLayer(nn.Module):
    """clip_map (B, C_clip, h, w) -> fusion term f (B, C, H, W) = resize(conv1x1(LN(clip_map))), added to side tokens."""

    def __init__(self, clip_channels: int, side_channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = PATChannelLayerNorm(clip_channels, eps)
        self.proj = PATFusionProjection(clip_channels, side_channels, kernel_size=1)

    def forward(self, clip_map: torch.Tensor, grid) -> torch.Tensor:
        # NCHW-contiguous first (CLIP's maps are transposed token views): a conv on a channels-last input gives a
        # channels-last weight gradient, whose strides differ from the parameter's (DDP then warns and copies)
        y = self.proj(self.norm(clip_map.contiguous()))
        return F.interpolate(y, size=tuple(grid), mode="bilinear", align_corners=False)


class PATSideAttention(nn.Module):
    """(B, N, C) -> (B, N, C) multi-head self-attention with a fused qkv projection (timm layout: q, k, v rows)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, c/heads)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class PATSideMLP(nn.Module):
    """(B, N, C) -> (B, N, C): Linear, GELU (erf), Linear."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class PATSideLayer(nn.Module):
    """(B, N, C) -> (B, N, C): pre-norm ViT block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = PATSideAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = PATSideMLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PATMLP(nn.Module):
    """`num_layers` affine layers (Linear, or 1x1 conv with `conv=True`) with ReLU between them."""

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


class PATMaskDecoder(nn.Module):
    """queries (B, Q, C), patches (B, C, H, W) -> mask logits (B, Q, H, W) and attention biases [(B, K, Q, H, W)]."""

    def __init__(self, config: PATConfig):
        super().__init__()
        dim, hidden, embed, depth = (
            config.side_hidden_size,
            config.mask_mlp_dim,
            config.mask_embed_dim,
            config.mask_mlp_num_layers,
        )
        self.num_heads = config.attn_bias_num_heads
        self.num_layers = config.attn_bias_num_layers
        self.query_mlp = PATMLP(dim, hidden, embed, depth)
        self.pix_mlp = PATMLP(dim, hidden, embed, depth, conv=True)
        self.attn_mlp = PATMLP(dim, hidden, embed * self.num_heads * self.num_layers, depth, conv=True)
        self.bias_scaling = nn.Linear(1, 1) if config.rescale_attn_bias else nn.Identity()

    def attention_bias(self, query_embeddings: torch.Tensor, patches: torch.Tensor) -> list[torch.Tensor]:
        """(B, Q, E) query embeddings, (B, C, H, W) patches -> one (B, K, Q, H, W) bias per recognition layer.

        SAN takes the dot product of each query embedding with attn_mlp's per-(layer, head) pixel embeddings,
        e . (W h + c) with h the last layer's input. Re-associated as (e W) . h + e . c, the (B, layers*K*E, H, W)
        pixel embeddings (3,072 channels for ViT-B/16) are never built; equal up to float rounding. (Measured on 2
        CPU threads at 640x640: 27 -> 11 ms for one image, 61 -> 20 ms for two: the big tensor made batches slow.)
        """
        hidden = self.attn_mlp.features(patches)  # (B, D, H, W)
        last = self.attn_mlp.layers[-1]  # 1x1 conv D -> layers * K * E
        b, d, h, w = hidden.shape
        groups = self.num_layers * self.num_heads
        weight = last.weight.view(groups, -1, d)  # (layers*K, E, D)
        query_weight = torch.einsum("bqe,ned->bnqd", query_embeddings, weight).reshape(b, -1, d)  # (B, n*Q, D)
        if last.bias is None:
            bias = torch.bmm(query_weight, hidden.flatten(2))
        else:
            query_bias = torch.einsum("bqe,ne->bnq", query_embeddings, last.bias.view(groups, -1)).reshape(b, -1, 1)
            bias = torch.baddbmm(query_bias, query_weight, hidden.flatten(2))  # (B, n*Q, H*W)
        bias = bias.view(b, self.num_layers, self.num_heads, -1, h, w)  # (B, layers, K, Q, H, W)
        bias = self.bias_scaling(bias[..., None]).squeeze(-1)  # learnable scalar affine w*x + b
        return list(bias.unbind(dim=1))

    def forward(self, queries: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        query_embeddings = self.query_mlp(queries)
        mask_logits = torch.einsum("bqe,behw->bqhw", query_embeddings, self.pix_mlp(patches))
        return mask_logits, self.attention_bias(query_embeddings, patches)


class PATSideAdapter(nn.Module):
    """(B, 3, H*p, W*p) image + CLIP maps -> one `PATSideOutput` per deep-supervision block."""

    def __init__(self, config: PATConfig, clip_channels: int):
        super().__init__()
        dim, patch = config.side_hidden_size, config.side_patch_size
        self.pos_grid = (config.side_image_size // patch, config.side_image_size // patch)
        self.num_queries = config.num_queries
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.empty(1, self.pos_grid[0] * self.pos_grid[1], dim))
        self.query_embed = nn.Parameter(torch.empty(1, config.num_queries, dim))
        self.query_pos_embed = nn.Parameter(torch.empty(1, config.num_queries, dim))
        self.layers = nn.ModuleList(
            PATSideLayer(dim, config.side_num_attention_heads, config.side_mlp_ratio, config.side_layer_norm_eps)
            for _ in range(config.side_num_hidden_layers)
        )
        # side position -> CLIP output index; modules keyed by side position, as in the SAN checkpoints
        self.fusion_map = dict(zip(config.fusion_side_layers, config.fusion_clip_layers))
        self.fusion_layers = nn.ModuleDict(
            {f"layer_{j}": PATFusionLayer(clip_channels, dim, config.fusion_layer_norm_eps) for j in self.fusion_map}
        )
        self.mask_decoder = PATMaskDecoder(config)
        self.output_layers = tuple(config.deep_supervision_layers)

    def positional_embedding(self, grid) -> torch.Tensor:
        """(1, Q+L, C) positions of [queries; patches], patch part bicubically resized to `grid`.

        Like SAN, the table is resized only when the token *count* differs: a grid with as many tokens but another
        shape (e.g. 20x80 for a 40x40 table) reuses the flattened table unchanged.
        """
        pos = self.pos_embed
        if pos.shape[1] != grid[0] * grid[1]:
            pos = pos.reshape(1, *self.pos_grid, -1).permute(0, 3, 1, 2)  # (1, L0, C) -> (1, C, H0, W0)
            pos = F.interpolate(pos, size=tuple(grid), mode="bicubic", align_corners=False)
            pos = pos.flatten(2).transpose(1, 2)
        # rows of (Q+L, C), not slices of a (1, Q+L, C) cat: the parameters' gradients then come back with the
        # parameters' own strides (a slice's batch stride is Q+L rows, and DDP's buckets compare all strides)
        return torch.cat([self.query_pos_embed[0], pos[0]])[None]

    def fuse(self, position: int, x: torch.Tensor, clip_maps: list[torch.Tensor], grid, fusion_terms: dict):
        """Add CLIP output `fusion_map[position]` to the patch tokens of x (B, Q+L, C); queries are untouched.

        The projected term f (B, C, H, W) is kept in `fusion_terms[position]` (PAT's pixel branch reuses it).
        """
        if position not in self.fusion_map:
            return x
        q = self.num_queries
        fusion = self.fusion_layers[f"layer_{position}"]
        term = fusion(clip_maps[self.fusion_map[position]], grid)
        fusion_terms[position] = term
        return torch.cat([x[:, :q], x[:, q:] + term.flatten(2).transpose(1, 2)], dim=1)

    def forward(
        self,
        pixel_values: torch.Tensor,
        clip_maps: list[torch.Tensor],
        output_layers=None,
        stage_hook=None,
        query_embed: torch.Tensor | None = None,
    ) -> tuple[list[PATSideOutput], list[torch.Tensor], dict[int, torch.Tensor]]:
        """Run the side ViT -> (outputs of `output_layers`, hidden states, fusion terms by side position).

        `output_layers` defaults to all deep-supervision blocks. `stage_hook(position, before, after)` is called after
        every block (with the sequence before and after fusion) and returns the sequence to continue with: PAT's
        semantic branch updates the query tokens there. `query_embed` (1 or B, Q, C) replaces the learned queries.
        """
        output_layers = self.output_layers if output_layers is None else tuple(output_layers)
        patches = self.patch_embed(pixel_values)  # (B, C, H, W)
        b, c, h, w = patches.shape
        pos = self.positional_embedding((h, w))
        queries = self.query_embed[0] if query_embed is None else query_embed  # (Q, C): see `positional_embedding`
        x = torch.cat([queries.expand(b, -1, -1), patches.flatten(2).transpose(1, 2)], dim=1) + pos
        fusion_terms = {}
        x = self.fuse(0, x, clip_maps, (h, w), fusion_terms)
        hidden_states, outputs = [x], []
        for i, layer in enumerate(self.layers, start=1):
            before = layer(x)
            x = self.fuse(i, before, clip_maps, (h, w), fusion_terms)
            if stage_hook is not None:
                x = stage_hook(i, before, x)
            hidden_states.append(x)
            if i in output_layers:
                q = self.num_queries
                patch_map = x[:, q:].transpose(1, 2).reshape(b, c, h, w).contiguous()  # NCHW: see `PATFusionLayer`
                outputs.append(PATSideOutput(x[:, :q], patch_map))
            if i < len(self.layers):
                x = x + pos  # SAN re-adds the positions after every block but the last
        return outputs, hidden_states, fusion_terms


__all__ = [
    "PATChannelLayerNorm",
    "PATFusionProjection",
    "PATFusionLayer",
    "PATMLP",
    "PATMaskDecoder",
    "PATSideAdapter",
    "PATSideAttention",
    "PATSideLayer",
    "PATSideMLP",
    "PATSideOutput",
]
