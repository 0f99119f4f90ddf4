"""open_clip, in one module: building the CLIP from the config, views of its image towers, the fused attention run of
its transformer blocks and its tokenizer. No other module of the package imports open_clip.

* `build_open_clip_model`: the open_clip `CLIP` / `CustomTextCLIP` of a config, random weights, nothing downloaded.
* `OpenAIVisionTower` (open_clip `VisionTransformer`, e.g. `ViT-B-16`) and `EvaVisionTower` (open_clip `TimmModel`
  around timm's `Eva`, e.g. `EVA02-B-16`): one interface over two module layouts (embed, blocks, RoPE, block calls,
  projection); `vision_tower_view` picks one and refuses layouts the recognition head does not model.
* `sdpa_block_forward`: an open_clip `ResidualAttentionBlock` run with `F.scaled_dot_product_attention`, by groups
  of query rows, each with its own additive mask or causal flag (mask recognition and the text tower).
* `clip_tokenizer_from_open_clip` / `tokenize`: open_clip's BPE tokenizer as a transformers `CLIPTokenizer`, and
  open_clip's own tokenisation (the reference the processor reproduces).
* `pretrained_clip_weights` / `load_clip_weights`: open_clip's published CLIP weights (downloaded by open_clip into
  its cache) and loading them into a model's CLIP, for training from CLIP rather than from a converted checkpoint.

Shapes use the package's symbols (see `modeling_pat.py`); here S = Q + 1 + L_clip is a recognition sequence (Q [SOS]
tokens, the class token, the CLIP patches).
"""

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTokenizer

from .configuration_pat import PATConfig


# Only used when a tokenizer does not state a usable `model_max_length`; all CLIP text towers use 77.
DEFAULT_CONTEXT_LENGTH = 77


# -- building ------------------------------------------------------------------------------------------------------
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


def text_tower(clip: nn.Module) -> nn.Module:
    """Owner of `token_embedding`, `positional_embedding`, `transformer`, `ln_final` and `text_projection`: the CLIP
    itself (OpenAI layout) or `clip.text` (custom-text models such as EVA02)."""
    return clip.text if isinstance(clip, open_clip.model.CustomTextCLIP) else clip


def resize_clip_positional_embedding(pos_embed: torch.Tensor, src_grid, dst_grid) -> torch.Tensor:
    """(1 + L0, C_clip) -> (1 + h*w, C_clip): bicubic resize of the grid rows; the class-token row is kept as is."""
    if tuple(src_grid) == tuple(dst_grid):
        return pos_embed
    cls_pos, grid_pos = pos_embed[:1], pos_embed[1:]
    grid_pos = grid_pos.T.reshape(1, -1, *src_grid)  # (L0, C_clip) -> (1, C_clip, h0, w0)
    grid_pos = F.interpolate(grid_pos, size=tuple(dst_grid), mode="bicubic", align_corners=False, antialias=False)
    grid_pos = grid_pos[0].flatten(1).T  # (1, C_clip, h, w) -> (h*w, C_clip)
    return torch.cat([cls_pos, grid_pos], dim=0)


# -- fused attention -------------------------------------------------------------------------------------------------
def check_sdpa_blocks(blocks, where: str) -> None:
    """Refuse blocks `sdpa_block_forward` cannot run: it needs open_clip's `ResidualAttentionBlock` (pre-norm,
    batch-first self-attention in a plain `nn.MultiheadAttention`, no extra key/value bias)."""
    for block in blocks:
        attn = getattr(block, "attn", None)
        if not (
            type(attn) is nn.MultiheadAttention
            and attn.batch_first
            and attn.in_proj_weight is not None  # one packed projection (query, key and value of the same width)
            and attn.bias_k is None
            and not attn.add_zero_attn
            and not hasattr(block, "ln_1_kv")
            and all(hasattr(block, name) for name in ("ln_1", "ls_1", "ln_2", "mlp", "ls_2"))
        ):
            raise NotImplementedError(
                f"The CLIP {where} has a {type(block).__name__} block with {type(attn).__name__} attention; the tower "
                "needs open_clip's ResidualAttentionBlock with a batch-first, packed nn.MultiheadAttention."
            )


def sdpa_block_forward(block: nn.Module, x: torch.Tensor, groups) -> torch.Tensor:
    """One open_clip `ResidualAttentionBlock` on (B, S, C_clip) tokens with `F.scaled_dot_product_attention`, by row
    groups.

    `groups`: ((start, end, attn_mask, is_causal), ...) consecutive query-row ranges from 0, each with its own
    additive mask (broadcastable to (B, A, end - start, S)) or causal flag; keys and values are always all S tokens.
    Rows past the last group are not computed: the output is (B, rows, C_clip), rows = the last group's `end` (every
    op after the attention acts per token, so leaving rows out changes no other row). Same maths as the block's own
    forward (`nn.MultiheadAttention`), to float rounding. The block's `forward` is not called, so forward hooks
    registered on the block or on its attention module do not run (hooks on its norms, MLP and output projection do).
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
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)  # (B, A, rows, C_clip / A)
    out = attn.out_proj(out.transpose(1, 2).reshape(batch, rows, width))
    x = x[:, :rows] + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def full_recognition_mask(sos_rows: torch.Tensor, other_rows: torch.Tensor) -> torch.Tensor:
    """The two row groups of a recognition mask -> the whole (B, A_clip, S, S) additive mask: SOS rows (B, A_clip,
    Q, S) on top, then the (1, 1, 1, S) row shared by the class token and every patch."""
    batch, heads, num_queries, size = sos_rows.shape
    return torch.cat([sos_rows, other_rows.expand(batch, heads, size - num_queries, size)], dim=2)


class OpenAIVisionTower:
    """View of open_clip's `VisionTransformer` (OpenAI layout): `conv1`, `class_embedding`, `positional_embedding`,
    `ln_pre`, `transformer.resblocks` (batch-first `ResidualAttentionBlock`s; recognition runs them through
    `sdpa_block_forward`), `ln_post`, `proj`. Positions are absolute only."""

    def __init__(self, visual: nn.Module):
        self.visual = visual

    @staticmethod
    def matches(visual: nn.Module) -> bool:
        return isinstance(visual, open_clip.transformer.VisionTransformer)

    @staticmethod
    def check(visual: nn.Module) -> None:
        check_sdpa_blocks(visual.transformer.resblocks, "image tower")

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
        """(B, 3, H_img, W_img) -> (B, 1 + L_clip, C_clip) tokens [cls; patches] + resized positions (before
        `ln_pre`), and (h, w)."""
        visual = self.visual
        x = visual.conv1(pixel_values)  # (B, C_clip, h, w); the stride-p conv drops a last partial patch
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)  # (B, C_clip, h, w) -> (B, L_clip, C_clip)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = resize_clip_positional_embedding(visual.positional_embedding.to(x.dtype), visual.grid_size, grid)
        return x + pos, grid

    def pre_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual.ln_pre(x)

    def rotary_embedding(self, grid, num_prefix_tokens: int, device) -> None:
        return None

    def run_block(self, block: nn.Module, x: torch.Tensor, rope=None) -> torch.Tensor:
        """A feature block: (B, 1 + L_clip, C_clip) -> same, the block's own forward."""
        return block(x)

    def run_recognition_block(self, block: nn.Module, x: torch.Tensor, rope, masks, last: bool) -> torch.Tensor:
        """A recognition block on (B, S, C_clip) through SDPA, without expanding the mask: the Q SOS rows get their
        (B, A_clip, Q, S) rows, the others share one (1, 1, 1, S) row. The last block computes the SOS rows only,
        the only ones read afterwards: (B, Q, C_clip)."""
        sos_rows, other_rows = masks
        num_queries = sos_rows.shape[2]
        groups = [(0, num_queries, sos_rows, False)]
        if not last:
            groups.append((num_queries, x.shape[1], other_rows, False))
        return sdpa_block_forward(block, x, groups)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, Q, C_clip) final-block tokens -> (B, Q, D), as CLIP projects its class token."""
        return self.visual.ln_post(tokens) @ self.visual.proj


class EvaVisionTower:
    """View of open_clip's `TimmModel` around timm's `Eva` (EVA/EVA02-CLIP, e.g. `EVA02-B-16`).

    Layout: `trunk.patch_embed.proj` conv, `trunk.cls_token`, absolute `trunk.pos_embed` with a cls row first, axial
    RoPE (`trunk.rope`) rotating only the tokens after the trunk's prefix (its cls token), `norm_pre`, blocks
    `block(x, rope=..., attn_mask=...)` with an additive float mask broadcast as SDPA's (B, A_clip, S, S), `norm`,
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
            raise NotImplementedError(
                f"This timm Eva tower is not supported; the CLIP tower needs {', '.join(problems)}."
            )

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
        """(B, 3, H_img, W_img) -> (B, 1 + L_clip, C_clip) tokens [cls; patches] + resized positions (before
        `norm_pre`), and (h, w)."""
        trunk = self.trunk
        x = trunk.patch_embed.proj(pixel_values)  # (B, C_clip, h, w); bypasses PatchEmbed's fixed 224 px check
        grid = tuple(x.shape[-2:])
        x = trunk.patch_embed.norm(x.flatten(2).transpose(1, 2))  # (B, C_clip, h, w) -> (B, L_clip, C_clip)
        cls = trunk.cls_token.to(x.dtype).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        # SAN's resize (bicubic, no antialias, cls row kept), applied to EVA's absolute positions as to OpenAI's
        pos = resize_clip_positional_embedding(trunk.pos_embed[0].to(x.dtype), trunk.patch_embed.grid_size, grid)
        return trunk.pos_drop(x + pos), grid

    def pre_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk.norm_pre(x)

    def rotary_embedding(self, grid, num_prefix_tokens: int, device) -> torch.Tensor | None:
        """RoPE table ((num_prefix_tokens - trunk prefix) + L_clip, 2 C_clip / A_clip) as [sin | cos], for the tokens
        after the trunk's own prefix. Prefix tokens are not rotated: the extra ones (SAN's SOS copies of cls) get the
        identity rotation (sin 0, cos 1), which is exact. Built from the rope's settings, not its buffers:
        non-persistent buffers are not restored when transformers loads a checkpoint onto a meta-built model."""
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

    def run_block(self, block: nn.Module, x: torch.Tensor, rope=None) -> torch.Tensor:
        """A feature block: (B, 1 + L_clip, C_clip) -> same."""
        return block(x, rope=rope)

    def run_recognition_block(self, block: nn.Module, x: torch.Tensor, rope, masks, last: bool) -> torch.Tensor:
        """A recognition block on (B, S, C_clip) with the whole (B, A_clip, S, S) mask (timm's Eva block takes an
        additive mask broadcast as SDPA's and has no row-group form)."""
        return block(x, rope=rope, attn_mask=full_recognition_mask(*masks).to(x.dtype))

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, Q, C_clip) final-block tokens -> (B, Q, D), as open_clip's TimmModel projects the pooled class token."""
        trunk = self.trunk
        x = trunk.fc_norm(trunk.norm(tokens))  # both norms act per token, so pooling first changes nothing
        return self.visual.head(trunk.head(trunk.head_drop(x)))


def vision_tower_view(visual: nn.Module) -> type:
    """The view class of an open_clip image tower, after checking that the recognition head can model it."""
    for view in (OpenAIVisionTower, EvaVisionTower):
        if view.matches(visual):
            view.check(visual)
            return view
    raise NotImplementedError(
        f"Unsupported CLIP image tower {type(visual).__name__}: the CLIP tower handles open_clip's VisionTransformer "
        "(OpenAI layout) and timm Eva towers (EVA02-CLIP)."
    )


# -- text ------------------------------------------------------------------------------------------------------------
def tokenize(texts: list[str], context_length: int) -> torch.Tensor:
    """Strings -> (len(texts), context_length) int64 ids exactly as open_clip tokenises them (zero padding, the
    end-of-text token kept when a prompt is cut to fit)."""
    return open_clip.tokenize(texts, context_length=context_length)


def is_open_clip_architecture(name: str) -> bool:
    """Whether open_clip has a model config of this name (custom towers, e.g. the tiny test presets, do not)."""
    return open_clip.get_model_config(name) is not None


def clip_tokenizer_from_open_clip(
    model_name: str | None = "ViT-B-16", context_length: int | None = None
) -> CLIPTokenizer:
    """A transformers CLIPTokenizer with open_clip's vocabulary, merges, special tokens and context length; offline.

    `model_name` is an open_clip architecture name; None gives open_clip's default CLIP BPE tokenizer (the one every
    OpenAI-style CLIP uses), for towers built from a custom config.
    """
    if model_name is None:
        reference = open_clip.tokenizer.SimpleTokenizer(context_length=context_length or DEFAULT_CONTEXT_LENGTH)
    elif not is_open_clip_architecture(model_name):
        raise ValueError(f"open_clip has no model named {model_name!r} (see open_clip.list_models()).")
    else:
        reference = open_clip.get_tokenizer(model_name, context_length=context_length)
    if not isinstance(reference, open_clip.tokenizer.SimpleTokenizer):
        raise NotImplementedError(
            f"open_clip model {model_name!r} uses {type(reference).__name__}; only the CLIP BPE SimpleTokenizer "
            "is supported."
        )
    if getattr(reference, "reduction_fn", None) is not None or reference.clean_fn.__name__ != "_clean_lower":
        raise NotImplementedError(f"open_clip model {model_name!r} uses non-default text cleaning or token reduction.")
    merges = [pair for pair, _ in sorted(reference.bpe_ranks.items(), key=lambda item: item[1])]
    sot_token = reference.decoder[reference.sot_token_id]
    eot_token = reference.decoder[reference.eot_token_id]
    # pad_token is only what the tokenizer pads with when called on its own; PATProcessor pads with id 0 like open_clip
    # (id 0 is the byte "!", which cannot be made a special token without changing how "!" is tokenised).
    return CLIPTokenizer(
        vocab=dict(reference.encoder),
        merges=merges,
        bos_token=sot_token,
        eos_token=eot_token,
        unk_token=eot_token,
        pad_token=eot_token,
        model_max_length=reference.context_length,
    )


# -- pretrained CLIP weights ---------------------------------------------------------------------------------------
def pretrained_clip_weights(name: str, tag: str, clip_config: dict | None = None) -> str:
    """The local file of open_clip's pretrained weights `tag` of architecture `name`, downloaded (and cached) by
    open_clip when missing. ValueError when the config's CLIP is not `name`'s architecture or `tag` does not exist;
    OSError (naming the cause) when the file cannot be fetched, e.g. offline."""
    known = open_clip.get_model_config(name)
    if known is None or (clip_config is not None and dict(clip_config) != dict(known)):
        raise ValueError(f"the config's CLIP is not open_clip's {name!r} architecture.")
    pretrained_cfg = open_clip.pretrained.get_pretrained_cfg(name, tag)
    if not pretrained_cfg:
        raise ValueError(
            f"open_clip has no pretrained weights {tag!r} for {name!r} "
            f"(available: {open_clip.list_pretrained_tags_by_model(name)})."
        )
    try:
        return open_clip.pretrained.download_pretrained(pretrained_cfg, cache_dir=None)
    except Exception as error:  # network, hub and file errors come in many types: one OSError naming the cause
        raise OSError(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from error


def load_clip_weights(clip: nn.Module, path: str) -> None:
    """Load an open_clip checkpoint file (.bin, .pt or .safetensors) into the open_clip model `clip`, strictly."""
    open_clip.load_checkpoint(clip, path)


__all__ = [
    "DEFAULT_CONTEXT_LENGTH",
    "EvaVisionTower",
    "OpenAIVisionTower",
    "build_open_clip_model",
    "check_sdpa_blocks",
    "clip_tokenizer_from_open_clip",
    "full_recognition_mask",
    "is_open_clip_architecture",
    "load_clip_weights",
    "pretrained_clip_weights",
    "resize_clip_positional_embedding",
    "sdpa_block_forward",
    "text_tower",
    "tokenize",
    "vision_tower_view",
]
