"""The frozen CLIP towers, built with open_clip from the config (the only module that touches open_clip).

* `PATClipTower` owns the open_clip `CLIP` (weights come from a checkpoint, nothing is downloaded) and offers
  the three views SAN needs of it: the visual trunk up to `clip_feature_layers` (features for the side adapter),
  the remaining visual blocks driven by an attention bias (mask recognition), and the text tower.
* `PATOpenVocabClassifier` turns class-name embeddings into the (C+1)-way classifier with a learnable void class.

Two image-tower layouts are supported, each behind a small view class with one interface (embed, blocks, RoPE,
block call, projection): `_OpenAIVisionTower` (open_clip `VisionTransformer`, e.g. `ViT-B-16`) and
`_EvaVisionTower` (open_clip `TimmModel` around timm's `Eva`, e.g. `EVA02-B-16`). The text tower is the CLIP itself
(OpenAI layout) or `clip.text` (custom-text models); `PATClipTower.text_tower` hides the difference.

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
    if "hf_model_name" in clip_config.get("text_cfg", {}) or "multimodal_cfg" in clip_config:
        raise NotImplementedError(
            f"CLIP {config.clip_model_name!r} has a Hugging Face text tower or a multimodal decoder, not supported."
        )
    vision_cfg = dict(clip_config["vision_cfg"])
    if vision_cfg.get("timm_model_name"):
        vision_cfg["timm_model_pretrained"] = False  # never download timm weights; they come from the checkpoint
    # custom_text (EVA02 etc.): open_clip keeps the text tower as `clip.text` instead of on the CLIP itself
    model_class = open_clip.model.CustomTextCLIP if clip_config.get("custom_text") else open_clip.model.CLIP
    return model_class(
        embed_dim=clip_config["embed_dim"],
        vision_cfg=vision_cfg,
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


def build_recognition_row_masks(attn_bias: torch.Tensor, grid, num_heads: int, mask_value: float, method: str):
    """(B, K, Q, H, W) bias -> the two distinct row groups of `build_recognition_attention_mask`, unexpanded:
    SOS rows (B, K, Q, Q+1+L) and the rows of cls and patches (1, 1, 1, Q+1+L), shared by all of them (the fast
    recognition path uses them as they are)."""
    b, k, q = attn_bias.shape[:3]
    if k not in (1, num_heads):
        raise ValueError(f"The attention bias has {k} heads; CLIP has {num_heads} (attn_bias_num_heads must match).")
    pooled = pool_attention_bias(attn_bias, grid, method).flatten(-2)  # (B, K or 1, Q, L)
    pooled = pooled.expand(b, num_heads, -1, -1)
    # each SOS token sees itself, no other SOS token, not cls (a mask built on the device, no in-place diagonal
    # write: ONNX export has no translation for it)
    own = torch.eye(q, q + 1, dtype=torch.bool, device=pooled.device)
    sos = torch.full((q, q + 1), mask_value, device=pooled.device, dtype=pooled.dtype).masked_fill(own, 0.0)
    sos_rows = torch.cat([sos.expand(b, num_heads, q, q + 1), pooled], dim=-1)
    # cls and patch rows: masked from the SOS columns only. The zeros take their size from a slice, not from a size
    # computed from the grid: ONNX export freezes such sizes at the example's grid.
    zeros = torch.zeros_like(sos_rows[:1, :1, :1, q:])  # (1, 1, 1, 1+L)
    other_rows = torch.cat([zeros.new_full((1, 1, 1, q), mask_value), zeros], dim=-1)
    return sos_rows, other_rows


def build_recognition_attention_mask(attn_bias: torch.Tensor, grid, num_heads: int, mask_value: float, method: str):
    """(B, K, Q, H, W) bias -> (B*K, Q+1+L, Q+1+L) additive mask over [SOS (Q); cls (1); patches (L = h*w)].

    Every row is masked from the SOS columns except each SOS token's own; SOS rows are masked from the cls column
    and get the pooled bias on the patch columns; cls and patch rows see what plain CLIP sees. SAN masks with a
    finite constant (-100), not -inf, and parity depends on it. The row index is b*K + k, as in MultiheadAttention.
    """
    sos_rows, other_rows = build_recognition_row_masks(attn_bias, grid, num_heads, mask_value, method)
    b, heads, q, size = sos_rows.shape
    return torch.cat([sos_rows, other_rows.expand(b, heads, size - q, size)], dim=2).reshape(b * heads, size, size)


# -- fast paths (exact: same maths as the plain paths above, other kernels) ------------------------------------------
# Token budget per text-tower call of the truncated path (prompts sorted by length, each chunk cut to its longest).
TEXT_TOKENS_PER_CHUNK = 16384


def is_sdpa_block(block: nn.Module) -> bool:
    """Whether `sdpa_block_forward` can run `block`: open_clip's `ResidualAttentionBlock` (pre-norm, batch-first
    self-attention in a plain `nn.MultiheadAttention`, no extra key/value bias). Other blocks (timm Eva, custom
    attention) keep their own forward, and so do blocks with forward hooks on them or on their attention (hooks
    observe the forward that the SDPA path bypasses, e.g. the parity script's recorders)."""
    attn = getattr(block, "attn", None)
    return (
        type(attn) is nn.MultiheadAttention
        and attn.batch_first
        and attn._qkv_same_embed_dim
        and attn.bias_k is None
        and not attn.add_zero_attn
        and not hasattr(block, "ln_1_kv")
        and all(hasattr(block, name) for name in ("ln_1", "ls_1", "ln_2", "mlp", "ls_2"))
        and not _forward_is_observed(block)
        and not _forward_is_observed(attn)
    )


def _forward_is_observed(module: nn.Module) -> bool:
    """Whether forward hooks (the module's own or global ones) would see `module`'s forward."""
    from torch.nn.modules import module as torch_module

    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or torch_module._global_forward_hooks
        or torch_module._global_forward_pre_hooks
    )


def sdpa_block_forward(block: nn.Module, x: torch.Tensor, groups) -> torch.Tensor:
    """One `is_sdpa_block` block on (B, S, C) tokens with `F.scaled_dot_product_attention`, as row groups.

    `groups`: ((start, end, attn_mask, is_causal), ...) consecutive query-row ranges from 0, each with its own
    additive mask (broadcastable to (B, heads, end - start, S)) or causal flag; keys and values are always all S
    tokens. Rows past the last group are not computed: the output is (B, R, C), R = the last group's `end` (every
    op after the attention acts per token, so leaving rows out changes no other row). Same maths as the
    block's own forward (`nn.MultiheadAttention` -> SDPA), so the results agree to float rounding.
    """
    attn = block.attn
    batch, length, width = x.shape
    heads = attn.num_heads
    rows = groups[-1][1]
    y = block.ln_1(x)
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    if rows == length:  # one fused projection
        q, k, v = F.linear(y, weight, bias).view(batch, length, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    else:  # queries only for the rows asked for
        q_bias, kv_bias = (None, None) if bias is None else (bias[:width], bias[width:])
        q = F.linear(y[:, :rows], weight[:width], q_bias).view(batch, rows, heads, -1).transpose(1, 2)
        kv = F.linear(y, weight[width:], kv_bias).view(batch, length, 2, heads, -1).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
    dropout = attn.dropout if attn.training else 0.0
    outputs = [
        F.scaled_dot_product_attention(
            q[:, :, start:end], k, v, attn_mask=None if mask is None else mask.to(q.dtype), dropout_p=dropout,
            is_causal=causal,
        )
        for start, end, mask, causal in groups
    ]
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)  # (B, heads, rows, C/heads)
    out = attn.out_proj(out.transpose(1, 2).reshape(batch, rows, width))
    x = x[:, :rows] + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class _OpenAIVisionTower:
    """View of open_clip's `VisionTransformer` (OpenAI layout): `conv1`, `class_embedding`, `positional_embedding`,
    `ln_pre`, `transformer.resblocks` (batch-first blocks taking a float mask (B*K, N, N), row b*K + k), `ln_post`,
    `proj`. Positions are absolute only."""

    def __init__(self, visual: nn.Module):
        self.visual = visual

    @staticmethod
    def matches(visual: nn.Module) -> bool:
        return isinstance(visual, open_clip.transformer.VisionTransformer)

    @staticmethod
    def check(visual: nn.Module) -> None:
        pass

    @property
    def blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks

    @property
    def width(self) -> int:
        return self.visual.transformer.width

    @property
    def num_heads(self) -> int:
        return self.blocks[0].attn.num_heads

    @property
    def patch_size(self) -> int:
        return self.visual.conv1.kernel_size[0]

    @property
    def positional_embedding(self) -> nn.Parameter:
        return self.visual.positional_embedding

    def embed(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) -> (B, 1+h*w, C) tokens [cls; patches] + resized positions (before `ln_pre`), (h, w)."""
        visual = self.visual
        x = visual.conv1(pixel_values)  # (B, C, h, w); the stride-p conv drops a last partial patch
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, L, C)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = resize_clip_positional_embedding(visual.positional_embedding.to(x.dtype), visual.grid_size, grid)
        return x + pos, grid

    def pre_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual.ln_pre(x)

    def rotary_embedding(self, grid, num_prefix_tokens: int, device) -> None:
        return None

    def run_block(self, block: nn.Module, x: torch.Tensor, rope=None, attn_mask=None) -> torch.Tensor:
        return block(x) if attn_mask is None else block(x, attn_mask=attn_mask.to(x.dtype))

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, Q, C) final-block tokens -> (B, Q, D), as CLIP projects its class token."""
        return self.visual.ln_post(tokens) @ self.visual.proj


class _EvaVisionTower:
    """View of open_clip's `TimmModel` around timm's `Eva` (EVA/EVA02-CLIP, e.g. `EVA02-B-16`).

    Layout: `trunk.patch_embed.proj` conv, `trunk.cls_token`, absolute `trunk.pos_embed` with a cls row first, axial
    RoPE (`trunk.rope`) rotating only the tokens after the trunk's prefix (its cls token), `norm_pre`, blocks
    `block(x, rope=..., attn_mask=...)` with an additive float mask broadcast as SDPA's (B, heads, N, N), `norm`,
    cls-token pooling, `fc_norm`, the trunk's `head` (the CLIP projection when `timm_proj` is null) and the adapter's
    own `head` (empty for EVA02-CLIP). The stem is run here, not through `PatchEmbed`, so any grid works although the
    trunk is built for 224 px; the RoPE table is computed for the actual grid as timm's `dynamic_img_size` does.
    """

    def __init__(self, visual: nn.Module):
        self.visual = visual
        self.trunk = visual.trunk

    @staticmethod
    def matches(visual: nn.Module) -> bool:
        from timm.models.eva import Eva

        return isinstance(visual, open_clip.timm_model.TimmModel) and isinstance(visual.trunk, Eva)

    @staticmethod
    def check(visual: nn.Module) -> None:
        """Refuse Eva variants whose token layout or pooling the recognition head does not model."""
        from timm.layers import RotaryEmbeddingCat

        trunk, problems = visual.trunk, []
        if trunk.cls_token is None or trunk.reg_token is not None or trunk.no_embed_class:
            problems.append("exactly one class token, with its own row in pos_embed")
        if trunk.pos_embed is None:
            problems.append("an absolute positional embedding")
        rope = trunk.rope
        if rope is not None and (type(rope) is not RotaryEmbeddingCat or trunk.rope_mixed or rope.aug_active):
            problems.append("plain axial RoPE ('cat', no coordinate augmentation)")
        if trunk.global_pool != "token" or trunk.attn_pool is not None or hasattr(visual.head, "pool"):
            problems.append("class-token pooling (timm_pool: token)")
        if trunk.patch_drop is not None:
            problems.append("no patch dropout")
        if problems:
            raise NotImplementedError(f"This timm Eva tower is not supported; the CLIP tower needs {', '.join(problems)}.")

    @property
    def blocks(self) -> nn.ModuleList:
        return self.trunk.blocks

    @property
    def width(self) -> int:
        return self.trunk.embed_dim

    @property
    def num_heads(self) -> int:
        return self.blocks[0].attn.num_heads

    @property
    def patch_size(self) -> int:
        return self.trunk.patch_embed.patch_size[0]

    @property
    def positional_embedding(self) -> nn.Parameter:
        return self.trunk.pos_embed

    def embed(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) -> (B, 1+h*w, C) tokens [cls; patches] + resized positions (before `norm_pre`), (h, w)."""
        trunk = self.trunk
        x = trunk.patch_embed.proj(pixel_values)  # (B, C, h, w); bypasses PatchEmbed's fixed 224 px check
        grid = tuple(x.shape[-2:])
        x = trunk.patch_embed.norm(x.flatten(2).transpose(1, 2))  # (B, C, h, w) -> (B, L, C)
        cls = trunk.cls_token.to(x.dtype).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        # SAN's resize (bicubic, no antialias, cls row kept), applied to EVA's absolute positions as to OpenAI's
        pos = resize_clip_positional_embedding(trunk.pos_embed[0].to(x.dtype), trunk.patch_embed.grid_size, grid)
        return trunk.pos_drop(x + pos), grid

    def pre_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk.norm_pre(x)

    def rotary_embedding(self, grid, num_prefix_tokens: int, device) -> torch.Tensor | None:
        """RoPE table ((num_prefix_tokens - trunk prefix) + h*w, 2*head_dim) as [sin | cos], for the tokens after the
        trunk's own prefix. Prefix tokens are not rotated: the extra ones (SAN's SOS copies of cls) get the identity
        rotation (sin 0, cos 1), which is exact. Built from the rope's settings, not its buffers: non-persistent
        buffers are not restored when transformers loads a checkpoint onto a meta-built model."""
        from timm.layers import build_rotary_pos_embed

        rope = self.trunk.rope
        if rope is None:
            return None
        sin, cos = build_rotary_pos_embed(
            list(grid),
            dim=rope.dim,
            max_res=rope.max_res,
            temperature=float(rope.temperature),
            linear_bands=rope.linear_bands,
            in_pixels=rope.in_pixels,
            ref_feat_shape=rope.ref_feat_shape,
            grid_offset=rope.grid_offset,
            grid_indexing=rope.grid_indexing,
            rotate_half=rope.rotate_half,
            grid_type=rope.grid_type,
            normalize_coords=rope.normalize_coords,
        )  # on the CPU in float32, as timm builds its cached table
        extra = num_prefix_tokens - self.trunk.num_prefix_tokens
        sin = torch.cat([sin.new_zeros(extra, sin.shape[1]), sin])
        cos = torch.cat([cos.new_ones(extra, cos.shape[1]), cos])
        return torch.cat([sin, cos], dim=-1).to(device)

    def run_block(self, block: nn.Module, x: torch.Tensor, rope=None, attn_mask=None) -> torch.Tensor:
        if attn_mask is not None:  # (B*K, N, N), row b*K + k -> (B, K, N, N)
            attn_mask = attn_mask.view(x.shape[0], -1, *attn_mask.shape[-2:]).to(x.dtype)
        return block(x, rope=rope, attn_mask=attn_mask)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, Q, C) final-block tokens -> (B, Q, D), as open_clip's TimmModel projects the pooled class token."""
        trunk = self.trunk
        x = trunk.fc_norm(trunk.norm(tokens))  # both norms act per token, so pooling first changes nothing
        return self.visual.head(trunk.head(trunk.head_drop(x)))


def _vision_tower_view(visual: nn.Module) -> type:
    for view in (_OpenAIVisionTower, _EvaVisionTower):
        if view.matches(visual):
            view.check(visual)
            return view
    raise NotImplementedError(
        f"Unsupported CLIP image tower {type(visual).__name__}: the CLIP tower handles open_clip's VisionTransformer "
        "(OpenAI layout) and timm Eva towers (EVA02-CLIP)."
    )


class PATClipTower(nn.Module):
    """Frozen open_clip CLIP: visual features, biased mask recognition and text embeddings."""

    def __init__(self, config: PATConfig):
        super().__init__()
        self.clip = build_open_clip_model(config)
        self._vision_view = _vision_tower_view(self.clip.visual)  # a class: no state beyond `clip`
        if not isinstance(self.text_tower.text_projection, nn.Parameter):
            raise NotImplementedError("The CLIP text tower must end in a bias-free projection matrix (proj_bias off).")
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
    def vision(self) -> "_OpenAIVisionTower | _EvaVisionTower":
        """The image tower behind one interface, whatever its module layout."""
        return self._vision_view(self.clip.visual)

    @property
    def text_tower(self) -> nn.Module:
        """Owner of `token_embedding`, `positional_embedding`, `transformer`, `ln_final` and `text_projection`: the
        CLIP itself (OpenAI layout) or `clip.text` (custom-text models such as EVA02)."""
        return self.clip.text if isinstance(self.clip, open_clip.model.CustomTextCLIP) else self.clip

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
        """The image tower's RoPE table (EVA; None for OpenAI towers), kept per (grid, prefix, device).

        It depends on nothing learned, and a forward needs two (features: cls prefix; recognition: SOS + cls).
        Built outside inference mode, so a table first made under `torch.inference_mode()` can serve training.
        """
        if torch.compiler.is_compiling():
            return self.vision.rotary_embedding(grid, num_prefix_tokens, device)
        key = (tuple(grid), num_prefix_tokens, torch.device(device))
        tables = self.__dict__.setdefault("_rotary_tables", {})
        if key not in tables:
            if len(tables) >= 8:  # a few image sizes at a time (e.g. sliding windows and the last partial window)
                tables.pop(next(iter(tables)))
            with torch.inference_mode(False), torch.no_grad():
                tables[key] = self.vision.rotary_embedding(grid, num_prefix_tokens, device)
        return tables[key]

    def extract_features(self, pixel_values: torch.Tensor) -> PATClipFeatures:
        """(B, 3, H, W) CLIP input -> outputs 0..L of the first `clip_feature_layers` blocks (maps + cls tokens)."""
        vision = self.vision
        x, grid = vision.embed(pixel_values)
        x = vision.pre_norm(x)
        rope = self.rotary_embedding(grid, 1, x.device)  # EVA: RoPE for this grid; OpenAI: None
        tokens = [x]
        for block in self.feature_blocks:
            x = vision.run_block(block, x, rope)
            tokens.append(x)
        maps = [t[:, 1:].transpose(1, 2).reshape(t.shape[0], t.shape[-1], *grid) for t in tokens]
        return PATClipFeatures(maps=maps, cls_tokens=[t[:, 0] for t in tokens])

    def recognize(
        self, features: PATClipFeatures, attn_biases: list[torch.Tensor], num_queries: int, fast: bool = True
    ) -> torch.Tensor:
        """Run the deeper CLIP blocks with Q [SOS] tokens steered by the bias -> (B, Q, D) unit mask embeddings.

        `attn_biases`: one (B, K, Q, H, W) bias shared by every recognition block, or one per block.
        `fast` (OpenAI-layout towers): the same maths through `_recognize_sdpa`; False runs the plain path.
        """
        feature_map, cls_token = features.maps[-1], features.cls_tokens[-1]
        grid = feature_map.shape[-2:]
        blocks = self.recognition_blocks
        if len(attn_biases) not in (1, len(blocks)):
            raise ValueError(f"Got {len(attn_biases)} attention biases for {len(blocks)} recognition blocks.")
        if fast and self._vision_view is _OpenAIVisionTower and all(is_sdpa_block(block) for block in blocks):
            return self._recognize_sdpa(feature_map, cls_token, attn_biases, num_queries)
        masks = [
            build_recognition_attention_mask(bias, grid, self.num_heads, self.mask_value, self.downsample_method)
            for bias in attn_biases
        ]
        masks = masks * len(blocks) if len(masks) == 1 else masks
        patches = feature_map.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, L, C)
        sos = cls_token[:, None].expand(-1, num_queries, -1)
        x = torch.cat([sos, cls_token[:, None], patches], dim=1)  # (B, Q+1+L, C)
        vision = self.vision
        rope = self.rotary_embedding(grid, num_queries + 1, x.device)  # SOS and cls are prefix tokens: unrotated
        for block, mask in zip(blocks, masks):
            x = vision.run_block(block, x, rope, attn_mask=mask)
        return F.normalize(vision.project(x[:, :num_queries]), dim=-1)

    def _recognize_sdpa(self, feature_map, cls_token, attn_biases, num_queries: int) -> torch.Tensor:
        """`recognize` with `F.scaled_dot_product_attention` and two savings that keep the outputs: the additive
        mask is never expanded to (B*K, S, S) (SOS rows get (B, K, Q, S); cls and patch rows share one (1, 1, 1, S)
        row), and the last block computes only the Q SOS rows, the only ones read afterwards."""
        q, blocks = num_queries, self.recognition_blocks
        masks = [
            build_recognition_row_masks(bias, feature_map.shape[-2:], self.num_heads, self.mask_value,
                                        self.downsample_method)
            for bias in attn_biases
        ]
        masks = masks * len(blocks) if len(masks) == 1 else masks
        patches = feature_map.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, L, C)
        x = torch.cat([cls_token[:, None].expand(-1, q, -1), cls_token[:, None], patches], dim=1)  # (B, Q+1+L, C)
        for i, (block, (sos_rows, other_rows)) in enumerate(zip(blocks, masks)):
            groups = [(0, q, sos_rows, False)]
            if i < len(blocks) - 1:
                groups.append((q, x.shape[1], other_rows, False))
            x = sdpa_block_forward(block, x, groups)
        return F.normalize(self.vision.project(x[:, :q]), dim=-1)

    # -- text ------------------------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Strings -> (N, 77) int64 ids exactly as open_clip tokenises them (zero padding, EOT kept on truncation)."""
        return open_clip.tokenize(texts, context_length=self.context_length)

    def encode_text(self, input_ids: torch.Tensor, truncate: bool = True) -> torch.Tensor:
        """(N, L) token ids -> (N, D) unit text embeddings: causal text transformer, EOT token (argmax id), projection.

        `truncate` (default) gives the same embeddings for less work (`_encode_text_truncated`); False runs every
        prompt over the whole context with the blocks' own forward (the plain path).
        """
        text = self.text_tower
        if truncate and input_ids.shape[0] and all(is_sdpa_block(block) for block in text.transformer.resblocks):
            return self._encode_text_truncated(input_ids)
        length = input_ids.shape[-1]
        x = text.token_embedding(input_ids) + text.positional_embedding[:length]
        causal = torch.full((length, length), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
        for block in text.transformer.resblocks:
            x = block(x, attn_mask=causal)
        x = text.ln_final(x)
        eot = x[torch.arange(x.shape[0], device=x.device), input_ids.argmax(dim=-1)]
        return F.normalize(eot @ text.text_projection, dim=-1)

    def _encode_text_truncated(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`encode_text` on each prompt's first `argmax + 1` tokens only (exact: the tower is causal, so the EOT
        output depends on no later token, and every op but attention acts per token). Prompts are sorted by that
        length and run in chunks of at most `TEXT_TOKENS_PER_CHUNK` tokens, each cut to its longest prompt, through
        SDPA's causal kernel; the final LayerNorm and projection see the EOT rows only."""
        text = self.text_tower
        lengths = input_ids.argmax(dim=-1) + 1  # (N,) EOT position + 1
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
            eot = x[torch.arange(len(index), device=x.device), lengths[index] - 1]  # (n, C)
            embeddings.append(text.ln_final(eot) @ text.text_projection)
            start = end
        result = torch.cat(embeddings)[torch.argsort(order)]  # back to the input order
        return F.normalize(result, dim=-1)

    def encode_class_names(self, input_ids: torch.Tensor, truncate: bool = True) -> torch.Tensor:
        """(N, T, L) ids of N classes x T templates -> (N, D): mean of the unit template embeddings, re-normalised.
        All N x T prompts go through the tower together (`encode_text`, `truncate` as there)."""
        num_classes, num_templates, length = input_ids.shape
        flat = input_ids.reshape(-1, length)
        embeddings = self.encode_text(flat, truncate=truncate).reshape(num_classes, num_templates, -1)
        return F.normalize(embeddings.mean(dim=1), dim=-1)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale


class PATOpenVocabClassifier(nn.Module):
    """(N, D) class embeddings -> (N+1, D) unit classifier rows: the classes, then the learnable void class last.

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
