"""The model's output dataclasses (`PATModelOutput`, `PATDecodedLevel`, `PATForOpenVocabSegmentationOutput`) and the
helpers that fill their optional fields. Shapes in the symbols of `modeling_pat.py`'s table."""

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import ModelOutput

from .clip_tower import PATClipFeatures
from .pyramid_tokenization import PATTokenizationOutput


@dataclass
class PATModelOutput(ModelOutput):
    r"""
    masks_queries_logits (`torch.FloatTensor` of shape `(batch_size, num_queries, height, width)`):
        Mask-proposal logits of the final level: on the side grid H x W (stride `side_patch_size`) in SAN mode, on
        the early stage's grid H_s x W_s (stride 4 with the default scales) in PAT mode.
    mask_embeddings (`torch.FloatTensor` of shape `(batch_size, num_queries, embed_dim)`):
        Unit CLIP embedding of each proposal (the recognition head's [SOS] tokens).
    attention_bias (`torch.FloatTensor` of shape `(batch_size, num_heads, num_queries, height, width)`):
        Attention bias of the final level (the first one when `attn_bias_num_layers > 1`).
    query_embeddings (`torch.FloatTensor` of shape `(batch_size, num_queries, side_hidden_size)`):
        Query tokens of the final side level.
    side_tokens (`torch.FloatTensor` of shape `(batch_size, side_hidden_size, height, width)`):
        Side tokens (the side ViT's patch tokens) of the final side level, as a map. (`pixel_embeddings`, the
        earlier name, still reads it with a FutureWarning.)
    auxiliary_outputs (`list[PATDecodedLevel]`):
        Deep-supervision levels before the final one (training, or `output_auxiliary_logits=True`), each with
        `masks_queries_logits`, `mask_embeddings` and `attention_bias` (a `ModelOutput`, so also a dict).
    clip_hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
        CLIP trunk outputs 0..`clip_feature_layers`, each `(batch_size, 1 + clip_tokens, clip_width)`.
    side_hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
        Side ViT sequences [queries; side tokens] after the embedding and after each block (after fusion and, in PAT
        mode, the semantic branch's query update), each `(batch_size, num_queries + height * width,
        side_hidden_size)`.
    decoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*, PAT mode, returned with `output_hidden_states=True`):
        The shared decoder's map after each kept stage (late, mid, early) and each extra layer, each
        `(batch_size, decoder_hidden_size, H_s, W_s)`.
    reconstruction (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`, *optional*, PAT mode):
        The image rebuilt from the tokens, in the normalised input space (training, or `output_reconstruction`).
    quantized_features / codebook_indices (`dict[str, torch.Tensor]`, *optional*, PAT mode):
        Per codebook (`early`, `mid`, `late`, `latent`): the straight-through quantised maps `(batch_size, code_dim,
        H_s, W_s)` and the code indices `(batch_size, H_s, W_s)`.
    codebook_losses / codebook_perplexity / codebook_usage (`dict[str, torch.FloatTensor]`, *optional*, PAT mode):
        Per codebook: the VQ loss (codebook + commitment), the perplexity of the code usage in the batch and the
        fraction of codes used.
    local_tokens (`dict[str, torch.FloatTensor]`, *optional*, PAT mode):
        The semantic branch's local tokens per pyramid stage, `(batch_size, codebook_size, code_dim)`.
    """

    masks_queries_logits: torch.FloatTensor | None = None
    mask_embeddings: torch.FloatTensor | None = None
    attention_bias: torch.FloatTensor | None = None
    query_embeddings: torch.FloatTensor | None = None
    side_tokens: torch.FloatTensor | None = None
    auxiliary_outputs: list[dict[str, torch.Tensor]] | None = None
    clip_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    side_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    reconstruction: torch.FloatTensor | None = None
    quantized_features: dict[str, torch.Tensor] | None = None
    codebook_indices: dict[str, torch.Tensor] | None = None
    codebook_losses: dict[str, torch.Tensor] | None = None
    codebook_perplexity: dict[str, torch.Tensor] | None = None
    codebook_usage: dict[str, torch.Tensor] | None = None
    local_tokens: dict[str, torch.Tensor] | None = None

    @property
    def pixel_embeddings(self) -> torch.FloatTensor | None:
        """Deprecated: the earlier name of `side_tokens` (one name per tensor), kept for old scripts; warns."""
        warnings.warn(
            "`PATModelOutput.pixel_embeddings` is deprecated and will be removed; use `side_tokens`.",
            FutureWarning,
            stacklevel=2,
        )
        return self.side_tokens


@dataclass
class PATDecodedLevel(ModelOutput):
    r"""
    One decoded level: SAN's mask decoder (or PAT's final masks) and CLIP's recognition under the attention bias.

    masks_queries_logits (`torch.FloatTensor` of shape `(batch_size, num_queries, height, width)`):
        Mask-proposal logits (B, Q, H, W) on the side grid (SAN) or (B, Q, H_early, W_early) (PAT's final level).
    mask_embeddings (`torch.FloatTensor` of shape `(batch_size, num_queries, embed_dim)`):
        Unit CLIP embedding (B, Q, D) of each proposal.
    attention_bias (`torch.FloatTensor` of shape `(batch_size, num_heads, num_queries, height, width)`):
        The first recognition layer's attention bias (B, A_clip, Q, H, W).
    """

    masks_queries_logits: torch.FloatTensor | None = None
    mask_embeddings: torch.FloatTensor | None = None
    attention_bias: torch.FloatTensor | None = None


@dataclass
class PATForOpenVocabSegmentationOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
        Sum of the weighted loss terms.
    class_queries_logits (`torch.FloatTensor` of shape `(batch_size, num_queries, num_classes + 1)`):
        Scaled cosine similarity of each proposal with each class; the last column is the void class.
    masks_queries_logits (`torch.FloatTensor` of shape `(batch_size, num_queries, height, width)`):
        Mask-proposal logits: the side grid in SAN mode, the early stage's grid in PAT mode (see `PATModelOutput`).
    auxiliary_logits (`list[dict]`, *optional*):
        `class_queries_logits` and `masks_queries_logits` of each deep-supervision level before the final one.
    loss_dict (`dict[str, torch.FloatTensor]`, *optional*):
        The weighted loss terms that sum to `loss`: SAN's `loss_ce`, `loss_mask`, `loss_dice` (and `_0`, `_1`, ... for
        auxiliary levels) and, in PAT mode, the group totals `loss_vq`, `loss_spatial_alignment`,
        `loss_reconstruction`.
    loss_details (`dict[str, torch.FloatTensor]`, *optional*, PAT mode):
        For logging: the PAT groups broken down per codebook / stage / term (`loss_vq_early`, `loss_sa_crf_mid`,
        `loss_rec_mse`, ...), each weighted; they sum to their group, not to `loss`.
    reconstruction (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`, *optional*, PAT mode):
        The image rebuilt from the tokens (normalised input space), when computed.
    codebook_perplexity (`dict[str, torch.FloatTensor]`, *optional*, PAT mode):
        Perplexity of each codebook's usage in the batch (`early`, `mid`, `late`, `latent`).
    text_embeddings (`torch.FloatTensor` of shape `(num_classes + 1, embed_dim)`):
        The unit classifier rows (class names, then void) the logits were computed with.
    mask_embeddings (`torch.FloatTensor` of shape `(batch_size, num_queries, embed_dim)`):
        Unit CLIP embedding of each proposal.
    image_sizes (`torch.LongTensor` of shape `(batch_size, 2)`):
        Unpadded (height, width) of each image inside `pixel_values`, used by post-processing to crop the padding:
        the tensor given to `forward` (keep the processor's CPU tensor for post-processing that never waits for the
        device), or the padded size on the CPU.
    padded_sizes (`torch.LongTensor` of shape `(batch_size, 2)`, on the CPU):
        (height, width) of `pixel_values`, the size the mask logits are upsampled to before cropping.
    clip_hidden_states / side_hidden_states / decoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        With `output_hidden_states=True`: those of `PATModelOutput` (decoder ones in PAT mode only).
    """

    loss: torch.FloatTensor | None = None
    class_queries_logits: torch.FloatTensor | None = None
    masks_queries_logits: torch.FloatTensor | None = None
    auxiliary_logits: list[dict[str, torch.Tensor]] | None = None
    loss_dict: dict[str, torch.Tensor] | None = None
    loss_details: dict[str, torch.Tensor] | None = None
    reconstruction: torch.FloatTensor | None = None
    codebook_perplexity: dict[str, torch.Tensor] | None = None
    text_embeddings: torch.FloatTensor | None = None
    mask_embeddings: torch.FloatTensor | None = None
    image_sizes: torch.LongTensor | None = None
    padded_sizes: torch.LongTensor | None = None
    clip_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    side_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None


def clip_hidden_states(clip_features: PATClipFeatures) -> tuple[torch.Tensor, ...]:
    """CLIP trunk outputs as (B, 1 + L_clip, C_clip) sequences [class token; CLIP tokens]."""
    return tuple(
        torch.cat([cls[:, None], fmap.flatten(2).transpose(1, 2)], dim=1)
        for fmap, cls in zip(clip_features.maps, clip_features.cls_tokens)
    )


def tokenization_fields(tokens: PATTokenizationOutput) -> dict[str, Any]:
    """PAT-only output fields, keyed by codebook name (early, mid, late, latent)."""
    quantizers = tokens.quantizer_outputs()
    return {
        "reconstruction": tokens.reconstruction,
        "quantized_features": {name: out.quantized for name, out in quantizers.items()},
        "codebook_indices": {name: out.indices for name, out in quantizers.items()},
        "codebook_losses": {name: out.loss for name, out in quantizers.items()},
        "codebook_perplexity": {name: out.perplexity for name, out in quantizers.items()},
        "codebook_usage": {name: out.usage for name, out in quantizers.items()},
        "local_tokens": tokens.local_tokens,
        "decoder_hidden_states": tokens.decoder_hidden_states,
    }
