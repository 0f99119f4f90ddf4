"""The frozen CLIP towers: what SAN needs of the open_clip CLIP (built by `open_clip_backend`, the only module that
touches open_clip), and the open-vocabulary classifier.

* `PATClipTower` owns the open_clip `CLIP` (weights come from a checkpoint, nothing is downloaded) and offers the
  three views SAN needs of it: the visual trunk up to `clip_feature_layers` (features for the side adapter), the
  remaining visual blocks driven by an attention bias (mask recognition), and the text tower.
* `PATOpenVocabClassifier` turns class-name embeddings into the (N+1)-way classifier with a learnable void class.

Both run their attention with `F.scaled_dot_product_attention` (`attn_implementation="sdpa"`, the only one): mask
recognition and the text tower through `open_clip_backend.sdpa_block_forward`, which skips work whose result is never
read (the last recognition block's non-SOS rows; each prompt's tokens after its end-of-text token), the feature
blocks through their own forward. Shapes use the package's symbols (see `modeling_pat.py`); S = Q + 1 + L_clip is a
recognition sequence ([SOS] tokens, the class token, the CLIP patches).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_pat import PATConfig
from .open_clip_backend import (
    build_open_clip_model,
    check_sdpa_blocks,
    full_recognition_mask,
    resize_clip_positional_embedding,
    sdpa_block_forward,
    text_tower,
    tokenize,
    vision_tower_view,
)


@dataclass
class PATClipFeatures:
    """Visual trunk outputs after block i = 0 (ln_pre only) .. clip_feature_layers: `maps[i]` (B, C_clip, h, w) and
    `cls_tokens[i]` (B, C_clip)."""

    maps: list[torch.Tensor]
    cls_tokens: list[torch.Tensor]


def pool_attention_bias(attn_bias: torch.Tensor, grid, method: str) -> torch.Tensor:
    """(B, A_clip, Q, H, W) -> (B, A_clip, Q, h, w): bring the side-grid bias to the CLIP grid (SAN: adaptive
    max-pool)."""
    b, k, q, _, _ = attn_bias.shape
    x = attn_bias.flatten(1, 2)
    if method == "max":
        x = F.adaptive_max_pool2d(x, output_size=tuple(grid))
    elif method == "avg":
        x = F.adaptive_avg_pool2d(x, output_size=tuple(grid))
    else:
        x = F.interpolate(x, size=tuple(grid), mode=method, align_corners=False if method != "nearest" else None)
    return x.reshape(b, k, q, *grid)


def build_recognition_row_masks(attn_bias: torch.Tensor, grid, num_heads: int, mask_value: float, method: str):
    """(B, A_clip or 1, Q, H, W) bias -> the two distinct row groups of the recognition mask, unexpanded: SOS rows
    (B, A_clip, Q, S) and the row of cls and every patch (1, 1, 1, S), shared by all of them.

    Every row is masked from the SOS columns except each SOS token's own; SOS rows are masked from the cls column
    and get the pooled bias on the patch columns; cls and patch rows see what plain CLIP sees. SAN masks with a
    finite constant (-100), not -inf, and parity depends on it."""
    b, k, q = attn_bias.shape[:3]
    if k not in (1, num_heads):
        raise ValueError(f"The attention bias has {k} heads; CLIP has {num_heads} (attn_bias_num_heads must match).")
    pooled = pool_attention_bias(attn_bias, grid, method).flatten(-2)  # (B, A_clip or 1, Q, L_clip)
    pooled = pooled.expand(b, num_heads, -1, -1)
    # each SOS token sees itself, no other SOS token, not cls (a mask built on the device, no in-place diagonal
    # write: ONNX export has no translation for it)
    own = torch.eye(q, q + 1, dtype=torch.bool, device=pooled.device)
    sos = torch.full((q, q + 1), mask_value, device=pooled.device, dtype=pooled.dtype).masked_fill(own, 0.0)
    sos_rows = torch.cat([sos.expand(b, num_heads, q, q + 1), pooled], dim=-1)
    # cls and patch rows: masked from the SOS columns only. The zeros take their size from a slice, not from a size
    # computed from the grid: ONNX export freezes such sizes at the example's grid.
    zeros = torch.zeros_like(sos_rows[:1, :1, :1, q:])  # (1, 1, 1, 1 + L_clip)
    other_rows = torch.cat([zeros.new_full((1, 1, 1, q), mask_value), zeros], dim=-1)
    return sos_rows, other_rows


def build_recognition_attention_mask(attn_bias: torch.Tensor, grid, num_heads: int, mask_value: float, method: str):
    """(B, A_clip, Q, H, W) bias -> (B * A_clip, S, S) additive mask over [SOS (Q); cls (1); patches (L_clip)], row
    b * A_clip + a as `nn.MultiheadAttention` takes it: the whole mask that `build_recognition_row_masks` keeps in
    two row groups (what SAN's recognition head builds; the parity check compares it with SAN's)."""
    mask = full_recognition_mask(*build_recognition_row_masks(attn_bias, grid, num_heads, mask_value, method))
    return mask.flatten(0, 1)


# Token budget per text-tower call (prompts sorted by length, each chunk cut to its longest).
TEXT_TOKENS_PER_CHUNK = 16384


class PATClipTower(nn.Module):
    """Frozen open_clip CLIP: visual features, biased mask recognition and text embeddings.

    Gradient checkpointing (`model.gradient_checkpointing_enable()`, which sets `gradient_checkpointing` and
    `_gradient_checkpointing_func` here) recomputes each visual block in the backward pass instead of keeping its
    activations, whenever the block runs with gradients in training mode: the recognition blocks (the attention bias
    trains through them), and the feature blocks when the positional embedding or `clip_trainable_layers` train.
    """

    def __init__(self, config: PATConfig):
        super().__init__()
        self.clip = build_open_clip_model(config)
        self._vision_view = vision_tower_view(self.clip.visual)  # a class: no state beyond `clip`
        if not isinstance(self.text_tower.text_projection, nn.Parameter):
            raise NotImplementedError("The CLIP text tower must end in a bias-free projection matrix (proj_bias off).")
        check_sdpa_blocks(self.text_tower.transformer.resblocks, "text tower")
        self.gradient_checkpointing = False
        self.num_feature_layers = config.clip_feature_layers
        self.mask_value = config.rec_mask_value
        self.downsample_method = config.rec_downsample_method
        self.context_length = self.clip.context_length
        self.freeze(config.clip_trainable_positional_embedding, config.clip_trainable_layers)

    # -- structure -------------------------------------------------------------------------------------------------
    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def vision(self):
        """`OpenAIVisionTower` or `EvaVisionTower` (`open_clip_backend`) of `clip.visual`."""
        return self._vision_view(self.clip.visual)

    @property
    def text_tower(self) -> nn.Module:
        """Owner of `token_embedding`, `positional_embedding`, `transformer`, `ln_final` and `text_projection`: the
        CLIP itself (OpenAI layout) or `clip.text` (custom-text models such as EVA02)."""
        return text_tower(self.clip)

    @property
    def feature_blocks(self) -> nn.ModuleList:
        return self.vision.blocks[: self.num_feature_layers]

    @property
    def recognition_blocks(self) -> nn.ModuleList:
        return self.vision.blocks[self.num_feature_layers :]

    @property
    def width(self) -> int:
        return self.vision.width

    @property
    def num_heads(self) -> int:
        return self.vision.num_heads

    @property
    def embed_dim(self) -> int:
        return self.text_tower.text_projection.shape[1]

    @property
    def patch_size(self) -> int:
        return self.vision.patch_size

    def text_modules(self) -> list[nn.Module]:
        """The modules of the text tower (on the CLIP object itself, or under `clip.text` for custom-text models)."""
        text = self.text_tower
        return [text.token_embedding, text.transformer, text.ln_final]

    def text_parameters(self) -> list[nn.Parameter]:
        params = [p for m in self.text_modules() for p in m.parameters()]
        return params + [self.text_tower.positional_embedding, self.text_tower.text_projection]

    def freeze(self, trainable_positional_embedding: bool = True, trainable_layers: int = 0) -> None:
        """CLIP is frozen, except (as in SAN) the visual absolute positional embedding, which SAN fine-tunes
        (`visual.positional_embedding`; EVA: `visual.trunk.pos_embed`), and the last `trainable_layers` visual
        blocks (0 in SAN). The text tower is always frozen: cached class embeddings stay valid while training."""
        blocks = self.vision.blocks
        if trainable_layers > len(blocks):
            raise ValueError(f"clip_trainable_layers is {trainable_layers}, but CLIP has {len(blocks)} visual blocks.")
        for param in self.clip.parameters():
            param.requires_grad = False
        self.vision.positional_embedding.requires_grad = trainable_positional_embedding
        for block in blocks[len(blocks) - trainable_layers :]:
            block.requires_grad_(True)

    def trainable_block_parameters(self) -> list[nn.Parameter]:
        """The parameters of the visual blocks that train (`clip_trainable_layers`): their own learning rate."""
        return [p for block in self.vision.blocks for p in block.parameters() if p.requires_grad]

    def train(self, mode: bool = True):
        """The text tower always stays in eval mode (SAN never trains it)."""
        super().train(mode)
        for module in self.text_modules():
            module.eval()
        return self

    # -- visual ----------------------------------------------------------------------------------------------------
    def rotary_embedding(self, grid, num_prefix_tokens: int, device) -> torch.Tensor | None:
        """The image tower's RoPE table for this grid (EVA; None for OpenAI towers). Built at every call, not kept:
        it depends on nothing learned and costs well under 1% of a forward."""
        return self.vision.rotary_embedding(grid, num_prefix_tokens, device)

    def _run_block(self, run, block: nn.Module, x: torch.Tensor, *args) -> torch.Tensor:
        """`run(block, x, *args)`, recomputed in the backward pass when gradient checkpointing is on and gradients
        are being recorded in training mode."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(run, block, x, *args)
        return run(block, x, *args)

    def extract_features(self, pixel_values: torch.Tensor) -> PATClipFeatures:
        """(B, 3, H_img, W_img) CLIP input -> outputs 0..clip_feature_layers of the first blocks (maps + cls tokens)."""
        vision = self.vision
        x, grid = vision.embed(pixel_values)
        x = vision.pre_norm(x)
        rope = self.rotary_embedding(grid, 1, x.device)  # EVA: RoPE for this grid; OpenAI: None
        tokens = [x]
        for block in self.feature_blocks:
            x = self._run_block(vision.run_block, block, x, rope)
            tokens.append(x)
        maps = [t[:, 1:].transpose(1, 2).reshape(t.shape[0], t.shape[-1], *grid) for t in tokens]
        return PATClipFeatures(maps=maps, cls_tokens=[t[:, 0] for t in tokens])

    def recognize(self, features: PATClipFeatures, attn_biases: list[torch.Tensor], num_queries: int) -> torch.Tensor:
        """Run the deeper CLIP blocks with Q [SOS] tokens steered by the bias -> (B, Q, D) unit mask embeddings.

        `attn_biases`: one (B, A_clip, Q, H, W) bias shared by every recognition block, or one per block. The mask
        stays in its two row groups (`build_recognition_row_masks`); OpenAI-layout blocks run through SDPA without
        expanding it and the last one computes only the Q SOS rows, the only ones read afterwards.
        """
        feature_map, cls_token = features.maps[-1], features.cls_tokens[-1]
        grid = feature_map.shape[-2:]
        blocks = self.recognition_blocks
        if len(attn_biases) not in (1, len(blocks)):
            raise ValueError(f"Got {len(attn_biases)} attention biases for {len(blocks)} recognition blocks.")
        masks = [
            build_recognition_row_masks(bias, grid, self.num_heads, self.mask_value, self.downsample_method)
            for bias in attn_biases
        ]
        masks = masks * len(blocks) if len(masks) == 1 else masks
        patches = feature_map.flatten(2).transpose(1, 2)  # (B, C_clip, h, w) -> (B, L_clip, C_clip)
        sos = cls_token[:, None].expand(-1, num_queries, -1)
        x = torch.cat([sos, cls_token[:, None], patches], dim=1)  # (B, S, C_clip)
        vision = self.vision
        rope = self.rotary_embedding(grid, num_queries + 1, x.device)  # SOS and cls are prefix tokens: unrotated
        for i, (block, block_masks) in enumerate(zip(blocks, masks)):
            last = i == len(blocks) - 1
            x = self._run_block(vision.run_recognition_block, block, x, rope, block_masks, last)
        return F.normalize(vision.project(x[:, :num_queries]), dim=-1)

    # -- text ------------------------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Strings -> (len(texts), 77) int64 ids exactly as open_clip tokenises them (zero padding, EOT kept on
        truncation)."""
        return tokenize(texts, self.context_length)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(prompts, context length) token ids -> (prompts, D) unit text embeddings: causal text transformer,
        end-of-text token (the argmax id), projection.

        Each prompt runs on its first `argmax + 1` tokens only (exact: the tower is causal, so the end-of-text output
        depends on no later token, and every op but attention acts per token). Prompts are sorted by that length and
        run in chunks of at most `TEXT_TOKENS_PER_CHUNK` tokens, each cut to its longest prompt, through SDPA's causal
        kernel; the final LayerNorm and projection see the end-of-text rows only.
        """
        text = self.text_tower
        lengths = input_ids.argmax(dim=-1) + 1  # (prompts,) end-of-text position + 1
        order = torch.argsort(lengths, stable=True)
        sorted_lengths = lengths[order].tolist()
        embeddings, start = [], 0
        while start < len(order):
            end = start + 1  # grow the chunk while (prompts x its longest length) fits the budget
            while end < len(order) and (end + 1 - start) * sorted_lengths[end] <= TEXT_TOKENS_PER_CHUNK:
                end += 1
            index, length = order[start:end], sorted_lengths[end - 1]
            x = text.token_embedding(input_ids[index, :length]) + text.positional_embedding[:length]
            for block in text.transformer.resblocks:
                x = sdpa_block_forward(block, x, [(0, length, None, True)])
            eot = x[torch.arange(len(index), device=x.device), lengths[index] - 1]  # (prompts in the chunk, text width)
            embeddings.append(text.ln_final(eot) @ text.text_projection)
            start = end
        if not embeddings:  # no prompts
            return text.text_projection.new_zeros(0, text.text_projection.shape[1])
        result = torch.cat(embeddings)[torch.argsort(order)]  # back to the input order
        return F.normalize(result, dim=-1)

    def encode_class_names(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(N, T, context length) ids of N classes x T templates -> (N, D): mean of the unit template embeddings,
        re-normalised. All N x T prompts go through the tower together (`encode_text`)."""
        num_classes, num_templates, length = input_ids.shape
        flat = input_ids.reshape(-1, length)
        embeddings = self.encode_text(flat).reshape(num_classes, num_templates, -1)
        return F.normalize(embeddings.mean(dim=1), dim=-1)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale


class PATOpenVocabClassifier(nn.Module):
    """(N, D) class embeddings -> (N + 1, D) unit classifier rows: the classes, then the learnable void class last.

    The rows are fp32 on the void embedding's device, whatever the embeddings came as (a bf16 model's cache, a CPU
    tensor given to a GPU model): the classification is a small product, kept in full precision.
    """

    def __init__(self, embed_dim: int):
        super().__init__()
        self.void_embedding = nn.Parameter(torch.empty(1, embed_dim))

    def forward(self, class_embeddings: torch.Tensor) -> torch.Tensor:
        # The void row joins *before* the normalisation, so only its direction matters (as in SAN).
        rows = torch.cat([class_embeddings.to(self.void_embedding.device, torch.float32), self.void_embedding.float()])
        return F.normalize(rows, dim=-1)


__all__ = [
    "PATClipFeatures",
    "PATClipTower",
    "PATOpenVocabClassifier",
    "build_open_clip_model",
    "build_recognition_attention_mask",
    "resize_clip_positional_embedding",
]
