"""SAN's side adapter network: a small ViT with query tokens that fuses frozen-CLIP features (shape symbols: see
`modeling_pat.py`).

The side tokens are the ViT's patch tokens: a (B, L, C_side) sequence inside the ViT, a (B, C_side, H, W) map in its
outputs. The ViT runs in steps (`start`, `run`, `finish`) so that an orchestrator can act between blocks: PAT's
semantic branch rewrites the query tokens after each pyramid block (`PATModel.run_side_adapter`); SAN calls
`forward`, which runs every block at once.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration_pat import PATConfig
from .layers import PATChannelLayerNorm, PATFeedForward, PATSelfAttention
from .mask_decoder import PATMaskDecoder


@dataclass
class PATSideLevel:
    """One decoded side level: `queries` (B, Q, C_side) and `side_tokens` (B, C_side, H, W), after fusion, before the
    positions are re-added."""

    queries: torch.Tensor
    side_tokens: torch.Tensor


@dataclass
class PATSideAdapterOutput:
    """What the side ViT hands on.

    levels: one `PATSideLevel` per requested deep-supervision block, in depth order.
    hidden_states: the sequence [queries; side tokens] (B, Q + L, C_side) after the embedding and after each block
        (after fusion and PAT's query update, before the position re-add).
    fusion_terms: the projected CLIP term f (B, C_side, H, W) added at each fused side position (PAT's pixel branch
        quantises them).
    """

    levels: list[PATSideLevel]
    hidden_states: list[torch.Tensor]
    fusion_terms: dict[int, torch.Tensor]


@dataclass
class PATSideState:
    """The side ViT between two `PATSideAdapter.run` calls: sequence `x` (B, Q + L, C_side) after block `position`
    (0: the embedding) and its fusion, the grid (H, W), the positions and the outputs gathered so far."""

    x: torch.Tensor
    grid: tuple[int, int]
    positions: torch.Tensor
    clip_maps: list[torch.Tensor]
    output_layers: tuple[int, ...]
    output: PATSideAdapterOutput
    position: int = 0


class PATFusionProjection(nn.Conv2d):
    """The fusion layer's 1x1 conv; its own class so the model's weight init gives it SAN's Caffe2 Xavier fill."""

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=1)
        nn.init.zeros_(self.bias)


class PATFusionLayer(nn.Module):
    """clip_map (B, C_clip, h, w) -> fusion term f (B, C_side, H, W) = resize(conv1x1(LN(clip_map))), added to the side
    tokens."""

    def __init__(self, clip_channels: int, side_channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = PATChannelLayerNorm(clip_channels, eps)
        self.proj = PATFusionProjection(clip_channels, side_channels, kernel_size=1)

    def forward(self, clip_map: torch.Tensor, grid) -> torch.Tensor:
        # NCHW-contiguous first (CLIP's maps are transposed token views): a conv on a channels-last input gives a
        # channels-last weight gradient, whose strides differ from the parameter's (DDP then warns and copies)
        y = self.proj(self.norm(clip_map.contiguous()))
        return F.interpolate(y, size=tuple(grid), mode="bilinear", align_corners=False)


class PATSideLayer(GradientCheckpointingLayer):
    """(B, Q + L, C_side) -> same: pre-norm ViT block (recomputed in the backward pass under gradient checkpointing)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = PATSelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = PATFeedForward(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PATSideAdapter(nn.Module):
    """(B, 3, H_img, W_img) image + CLIP maps [(B, C_clip, h, w)] -> `PATSideAdapterOutput` (one level per
    deep-supervision block, hidden states, fusion terms)."""

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

    def decode_masks(self, level: PATSideLevel) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """SAN's head on one level: mask logits (B, Q, H, W) and the attention biases, one (B, A_clip, Q, H, W) per
        recognition block."""
        return self.mask_decoder(level.queries, level.side_tokens)

    def attention_bias(self, queries: torch.Tensor, side_tokens: torch.Tensor) -> list[torch.Tensor]:
        """The attention biases alone, for queries (B, Q, C_side) that are not a side level's (PAT's final global
        tokens, choice M2) over side tokens (B, C_side, H, W)."""
        return self.mask_decoder.query_attention_bias(queries, side_tokens)

    @property
    def depth(self) -> int:
        return len(self.layers)

    def positional_embedding(self, grid) -> torch.Tensor:
        """(1, Q + L, C_side) positions of [queries; side tokens], the side part bicubically resized to `grid`.

        Like SAN, the table is resized only when the token *count* differs: a grid with as many tokens but another
        shape (e.g. 20x80 for a 40x40 table) reuses the flattened table unchanged.
        """
        pos = self.pos_embed
        if pos.shape[1] != grid[0] * grid[1]:
            pos = pos.reshape(1, *self.pos_grid, -1).permute(0, 3, 1, 2)  # (1, L0, C_side) -> (1, C_side, H0, W0)
            pos = F.interpolate(pos, size=tuple(grid), mode="bicubic", align_corners=False)
            pos = pos.flatten(2).transpose(1, 2)
        # rows of (Q+L, C_side), not slices of a (1, Q+L, C_side) cat: the parameters' gradients then come back with the
        # parameters' own strides (a slice's batch stride is Q+L rows, and DDP's buckets compare all strides)
        return torch.cat([self.query_pos_embed[0], pos[0]])[None]

    def fuse(self, position: int, x: torch.Tensor, clip_maps: list[torch.Tensor], grid):
        """Add CLIP output `fusion_map[position]` to the side tokens of x (B, Q + L, C_side); queries are untouched.

        Returns (the fused sequence, the projected term f (B, C_side, H, W)), or (x, None) at a position without
        fusion. The caller keeps f: PAT's pixel branch reuses it.
        """
        if position not in self.fusion_map:
            return x, None
        q = self.num_queries
        fusion = self.fusion_layers[f"layer_{position}"]
        term = fusion(clip_maps[self.fusion_map[position]], grid)
        return torch.cat([x[:, :q], x[:, q:] + term.flatten(2).transpose(1, 2)], dim=1), term

    def _fuse_into(self, state: "PATSideState", x: torch.Tensor) -> None:
        """Fuse at the state's position: the fused sequence becomes the state's, the term goes to its output."""
        state.x, term = self.fuse(state.position, x, state.clip_maps, state.grid)
        if term is not None:
            state.output.fusion_terms[state.position] = term

    def start(self, pixel_values, clip_maps, output_layers=None, query_embed=None) -> PATSideState:
        """Embed the image and the queries and apply fusion 0 -> the state at position 0.

        `output_layers` defaults to all deep-supervision blocks; `query_embed` (1 or B, Q, C_side) replaces the
        learned queries (PAT's unified-tokens ablation).
        """
        side_tokens = self.patch_embed(pixel_values)  # (B, C_side, H, W)
        b, _, h, w = side_tokens.shape
        positions = self.positional_embedding((h, w))
        queries = self.query_embed[0] if query_embed is None else query_embed  # (Q, C_side): see `positional_embedding`
        x = torch.cat([queries.expand(b, -1, -1), side_tokens.flatten(2).transpose(1, 2)], dim=1) + positions
        output_layers = self.output_layers if output_layers is None else tuple(output_layers)
        # built field by field: torch.compile does not trace dataclass default factories
        output = PATSideAdapterOutput(levels=[], hidden_states=[], fusion_terms={})
        state = PATSideState(x, (h, w), positions, list(clip_maps), output_layers, output)
        self._fuse_into(state, x)
        return state

    def run(self, state: PATSideState, until: int) -> torch.Tensor | None:
        """Run blocks `state.position + 1` .. `until`, each followed by its fusion; the state then holds block
        `until`'s fused sequence, which the caller may still change (`set_queries`) before the next call.

        Returns the side tokens z (B, L, C_side) of block `until` *before* its fusion (PAT's semantic branch reads
        them), or None when no block ran.
        """
        if not state.position <= until <= self.depth:
            raise ValueError(f"side blocks run forward only: at block {state.position}, asked to run to {until}.")
        before = None
        while state.position < until:
            self._record(state)
            state.position += 1
            before = self.layers[state.position - 1](state.x)
            self._fuse_into(state, before)
        return None if before is None else before[:, self.num_queries :]

    def queries(self, state: PATSideState) -> torch.Tensor:
        """The query tokens (B, Q, C_side) of the state's current sequence."""
        return state.x[:, : self.num_queries]

    def set_queries(self, state: PATSideState, queries: torch.Tensor) -> None:
        """Replace the query tokens of the state's current sequence by `queries` (B, Q, C_side)."""
        state.x = torch.cat([queries, state.x[:, self.num_queries :]], dim=1)

    def finish(self, state: PATSideState) -> PATSideAdapterOutput:
        """Run the remaining blocks and return the outputs."""
        self.run(state, self.depth)
        self._record(state)
        return state.output

    def _record(self, state: PATSideState) -> None:
        """Keep the current position's sequence (hidden state, level if requested), then re-add the positions as SAN
        does after every block but the last (and not after the embedding, which already has them)."""
        x, output = state.x, state.output
        output.hidden_states.append(x)
        if state.position in state.output_layers:
            b, c = x.shape[0], x.shape[-1]
            side_map = x[:, self.num_queries :].transpose(1, 2).reshape(b, c, *state.grid).contiguous()  # NCHW
            output.levels.append(PATSideLevel(x[:, : self.num_queries], side_map))
        if 1 <= state.position < self.depth:
            state.x = x + state.positions

    def forward(self, pixel_values, clip_maps, output_layers=None, query_embed=None) -> PATSideAdapterOutput:
        """All blocks in one go (SAN); see `start` for the arguments."""
        return self.finish(self.start(pixel_values, clip_maps, output_layers, query_embed))


__all__ = [
    "PATFusionLayer",
    "PATFusionProjection",
    "PATSideAdapter",
    "PATSideAdapterOutput",
    "PATSideLayer",
    "PATSideLevel",
    "PATSideState",
]
