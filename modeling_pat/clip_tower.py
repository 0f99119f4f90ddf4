"""The frozen CLIP towers, built with open_clip from the config (the only module that touches open_clip).

* `PATClipTower` owns the open_clip `CLIP` (weights come from a checkpoint, nothing is downloaded) and offers
  the three views SAN needs of it: the visual trunk up to `clip_feature_layers` (features for the side adapter),
  the remaining visual blocks driven by an attention bias (mask recognition), and the text tower.
* `PATOpenVocabClassifier` turns class-name embeddings into the (C+1)-way classifier with a learnable void class.

Shapes: B batch, Q queries, K CLIP heads, C CLIP width, D embedding dim, h x w CLIP grid, N classes, T templates.
"""

from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from .configuration_pat import PATConfig


@dataclass
class PATClipFeatures:
    """Visual trunk outputs: `maps[i]` (B, C, h, w) and `cls_tokens[i]` (B, C) for i = 0 (after ln_pre) .. L."""

    maps: list[torch.Tensor]
    cls_tokens: list[torch.Tensor]


def build_open_clip_model(config: PATConfig) -> nn.Module:
    """Build the open_clip CLIP of `config` with random weights (no download): `clip_config` wins over the name."""
    clip_config = config.clip_config
    if clip_config is None:
        clip_config = open_clip.get_model_config(config.clip_model_name)
        if clip_config is None:
            raise ValueError(
                f"open_clip has no architecture named {config.clip_model_name!r}; set `clip_config` to an open_clip "
                "model config dict (embed_dim, vision_cfg, text_cfg) instead."
            )
    clip_config = dict(clip_config)
    if "custom_text" in clip_config or "hf_model_name" in clip_config.get("text_cfg", {}):
        raise NotImplementedError(f"CLIP {config.clip_model_name!r} uses a custom text tower, not supported yet.")
    return open_clip.model.CLIP(
        embed_dim=clip_config["embed_dim"],
        vision_cfg=clip_config["vision_cfg"],
        text_cfg=clip_config["text_cfg"],
        quick_gelu=config.clip_quick_gelu,
    )


def resize_clip_positional_embedding(pos_embed: torch.Tensor, src_grid, dst_grid) -> torch.Tensor:
    """(1 + h0*w0, C) -> (1 + h*w, C): bicubic resize of the grid rows; the class-token row is kept as is."""
    if tuple(src_grid) == tuple(dst_grid):
        return pos_embed
    cls_pos, grid_pos = pos_embed[:1], pos_embed[1:]
    grid_pos = grid_pos.T.reshape(1, -1, *src_grid)  # (L0, C) -> (1, C, h0, w0)
    grid_pos = F.interpolate(grid_pos, size=tuple(dst_grid), mode="bicubic", align_corners=False, antialias=False)
    grid_pos = grid_pos[0].flatten(1).T  # (1, C, h, w) -> (h*w, C)
    return torch.cat([cls_pos, grid_pos], dim=0)


def pool_attention_bias(attn_bias: torch.Tensor, grid, method: str) -> torch.Tensor:
    """(B, K, Q, H, W) -> (B, K, Q, h, w): bring the side-grid bias to the CLIP grid (SAN: adaptive max-pool)."""
    b, k, q, _, _ = attn_bias.shape
    x = attn_bias.flatten(1, 2)
    if method == "max":
        x = F.adaptive_max_pool2d(x, output_size=tuple(grid))
    elif method == "avg":
        x = F.adaptive_avg_pool2d(x, output_size=tuple(grid))
    else:
        x = F.interpolate(x, size=tuple(grid), mode=method, align_corners=False if method != "nearest" else None)
    return x.reshape(b, k, q, *grid)


def build_recognition_attention_mask(attn_bias: torch.Tensor, grid, num_heads: int, mask_value: float, method: str):
    """(B, K, Q, H, W) bias -> (B*K, Q+1+L, Q+1+L) additive mask over [SOS (Q); cls (1); patches (L = h*w)].

    Every row is masked from the SOS columns except each SOS token's own; SOS rows are masked from the cls column
    and get the pooled bias on the patch columns; cls and patch rows see what plain CLIP sees. SAN masks with a
    finite constant (-100), not -inf, and parity depends on it. The row index is b*K + k, as in MultiheadAttention.
    """
    b, k, q = attn_bias.shape[:3]
    if k not in (1, num_heads):
        raise ValueError(f"The attention bias has {k} heads; CLIP has {num_heads} (attn_bias_num_heads must match).")
    pooled = pool_attention_bias(attn_bias, grid, method).expand(b, num_heads, -1, -1, -1)
    pooled = pooled.reshape(b * num_heads, q, -1)  # (B*K, Q, L)
    length = pooled.shape[-1]
    size = q + 1 + length
    mask = pooled.new_zeros(size, size)
    mask[:, :q] = mask_value
    mask[torch.arange(q), torch.arange(q)] = 0.0
    mask[:q, q] = mask_value
    mask = mask.expand(b * num_heads, size, size).clone()
    mask[:, :q, q + 1 :] = pooled
    return mask


class PATClipTower(nn.Module):
    """Frozen open_clip CLIP: visual features, biased mask recognition and text embeddings."""

    def __init__(self, config: PATConfig):
        super().__init__()
        self.clip = build_open_clip_model(config)
        self.num_feature_layers = config.clip_feature_layers
        self.mask_value = config.rec_mask_value
        self.downsample_method = config.rec_downsample_method
        self.context_length = self.clip.context_length
        self.freeze(config.clip_trainable_positional_embedding)

    # -- structure -------------------------------------------------------------------------------------------------
    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def feature_blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks[: self.num_feature_layers]

    @property
    def recognition_blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks[self.num_feature_layers :]

    @property
    def width(self) -> int:
        return self.visual.transformer.width

    @property
    def num_heads(self) -> int:
        return self.visual.transformer.resblocks[0].attn.num_heads

    @property
    def embed_dim(self) -> int:
        return self.clip.text_projection.shape[1]

    @property
    def patch_size(self) -> int:
        return self.visual.conv1.kernel_size[0]

    def text_modules(self) -> list[nn.Module]:
        """The modules of the text tower (open_clip keeps them on the CLIP object itself)."""
        return [self.clip.token_embedding, self.clip.transformer, self.clip.ln_final]

    def text_parameters(self) -> list[nn.Parameter]:
        params = [p for m in self.text_modules() for p in m.parameters()]
        return params + [self.clip.positional_embedding, self.clip.text_projection]

    def freeze(self, trainable_positional_embedding: bool = True) -> None:
        """CLIP is frozen, except (as in SAN) the visual positional embedding, which SAN fine-tunes."""
        for param in self.clip.parameters():
            param.requires_grad = False
        self.visual.positional_embedding.requires_grad = trainable_positional_embedding

    def train(self, mode: bool = True):
        """The text tower always stays in eval mode (SAN never trains it)."""
        super().train(mode)
        for module in self.text_modules():
            module.eval()
        return self

    # -- visual ----------------------------------------------------------------------------------------------------
    def embed_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) -> (B, 1+h*w, C) tokens [cls; patches] + resized positions, before ln_pre."""
        visual = self.visual
        x = visual.conv1(pixel_values)  # (B, C, h, w); the stride-p conv drops a last partial patch
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, L, C)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = resize_clip_positional_embedding(visual.positional_embedding.to(x.dtype), visual.grid_size, grid)
        return x + pos, grid

    def extract_features(self, pixel_values: torch.Tensor) -> PATClipFeatures:
        """(B, 3, H, W) CLIP input -> outputs 0..L of the first `clip_feature_layers` blocks (maps + cls tokens)."""
        x, grid = self.embed_image(pixel_values)
        x = self.visual.ln_pre(x)
        tokens = [x]
        for block in self.feature_blocks:
            x = block(x)
            tokens.append(x)
        maps = [t[:, 1:].transpose(1, 2).reshape(t.shape[0], t.shape[-1], *grid) for t in tokens]
        return PATClipFeatures(maps=maps, cls_tokens=[t[:, 0] for t in tokens])

    def recognize(self, features: PATClipFeatures, attn_biases: list[torch.Tensor], num_queries: int) -> torch.Tensor:
        """Run the deeper CLIP blocks with Q [SOS] tokens steered by the bias -> (B, Q, D) unit mask embeddings.

        `attn_biases`: one (B, K, Q, H, W) bias shared by every recognition block, or one per block.
        """
        feature_map, cls_token = features.maps[-1], features.cls_tokens[-1]
        grid = feature_map.shape[-2:]
        blocks = self.recognition_blocks
        if len(attn_biases) not in (1, len(blocks)):
            raise ValueError(f"Got {len(attn_biases)} attention biases for {len(blocks)} recognition blocks.")
        masks = [
            build_recognition_attention_mask(bias, grid, self.num_heads, self.mask_value, self.downsample_method)
            for bias in attn_biases
        ]
        masks = masks * len(blocks) if len(masks) == 1 else masks
        patches = feature_map.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, L, C)
        sos = cls_token[:, None].expand(-1, num_queries, -1)
        x = torch.cat([sos, cls_token[:, None], patches], dim=1)  # (B, Q+1+L, C)
        for block, mask in zip(blocks, masks):
            x = block(x, attn_mask=mask.to(x.dtype))
        sos = self.visual.ln_post(x[:, :num_queries]) @ self.visual.proj
        return F.normalize(sos, dim=-1)

    # -- text ------------------------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Strings -> (N, 77) int64 ids exactly as open_clip tokenises them (zero padding, EOT kept on truncation)."""
        return open_clip.tokenize(texts, context_length=self.context_length)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(N, L) token ids -> (N, D) unit text embeddings: causal text transformer, EOT token (argmax id), projection."""
        clip = self.clip
        length = input_ids.shape[-1]
        x = clip.token_embedding(input_ids) + clip.positional_embedding[:length]
        causal = torch.full((length, length), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
        for block in clip.transformer.resblocks:
            x = block(x, attn_mask=causal)
        x = clip.ln_final(x)
        eot = x[torch.arange(x.shape[0], device=x.device), input_ids.argmax(dim=-1)]
        return F.normalize(eot @ clip.text_projection, dim=-1)

    def encode_class_names(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(N, T, L) ids of N classes x T templates -> (N, D): mean of the unit template embeddings, re-normalised."""
        num_classes, num_templates, length = input_ids.shape
        embeddings = self.encode_text(input_ids.reshape(-1, length)).reshape(num_classes, num_templates, -1)
        return F.normalize(embeddings.mean(dim=1), dim=-1)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale


class PATOpenVocabClassifier(nn.Module):
    """(N, D) class embeddings -> (N+1, D) unit classifier rows: the classes, then the learnable void class last."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.void_embedding = nn.Parameter(torch.empty(1, embed_dim))

    def forward(self, class_embeddings: torch.Tensor) -> torch.Tensor:
        # The void row joins *before* the normalisation, so only its direction matters (as in SAN).
        rows = torch.cat([class_embeddings, self.void_embedding.to(class_embeddings.dtype)], dim=0)
        return F.normalize(rows, dim=-1)


__all__ = [
    "PATClipFeatures",
    "PATClipTower",
    "PATOpenVocabClassifier",
    "build_open_clip_model",
    "build_recognition_attention_mask",
    "resize_clip_positional_embedding",
]
