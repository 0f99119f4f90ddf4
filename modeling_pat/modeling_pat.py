"""PAT / SAN models: `PATModel` (image side) and `PATForOpenVocabSegmentation` (+ text classifier and loss).

SAN in one paragraph: a frozen CLIP ViT sees the image at reduced resolution; a small side ViT sees it at full
resolution, adds projected CLIP features at a few depths, and its Q query tokens predict mask proposals plus an
attention bias. The bias steers the last CLIP blocks so that Q [SOS] copies of the class token become one CLIP
embedding per mask, which is classified against CLIP text embeddings of the class names plus a learnable void.

Shape symbols. Every docstring in the package states tensor shapes with these symbols and no others (a letter means
one thing everywhere; channel counts are always subscripted):

| symbol | meaning |
|---|---|
| B | batch size |
| Q | mask queries: SAN's query / [SOS] tokens, PAT's global tokens (100) |
| N | classes of the vocabulary; N + 1 with the learnable void class last |
| T | prompt templates per class name |
| A | attention heads (A_clip = CLIP heads = attention-bias heads, A_side, A_dec) |
| D | CLIP's joint image-text embedding size (512 for ViT-B/16) |
| C_clip, C_side, C_dec, C_code, C_mask | widths: CLIP visual (768), side ViT (240), PAT decoder (256), code vectors (32), mask embeddings (256) |
| K | codebook size (K_s for codebook s) |
| h x w | CLIP token grid (CLIP input size / CLIP patch size) |
| H x W | side grid (input size / side patch size, 40 x 40 at 640 x 640) |
| H_s x W_s | grid of pyramid stage s: early 4H x 4W, mid 2H x 2W, late and latent H x W (with the default scales) |
| L | tokens of a flattened grid: L = H * W (L_clip = h * w) |
| H_img x W_img | the model input's pixel size (padded); H_out x W_out a requested output size |
| M | ground-truth segments of one image (training targets) |
| P | sampled points (matcher, mask loss, CRF pixels) |
| R | attention windows of r x r tokens (PAT decoder) |
| F | feature layers (perceptual loss) |
| G | offset groups (DySample) |

| paper / SAN code | here |
|---|---|
| side adapter network | `PATSideAdapter` (`side_adapter.py`) |
| fusion layer (`AddFusion`) | `PATFusionLayer` |
| `MLPMaskDecoder` | `PATMaskDecoder` (`mask_decoder.py`) |
| `FeatureExtractor` / `RecWithAttnbiasHead` | `PATClipTower.extract_features` / `.recognize` (`clip_tower.py`) |
| `LearnableBgOvClassifier` | `PATClipTower.encode_class_names` + `PATOpenVocabClassifier` |
| `SetCriterion` + `HungarianMatcher` | `PATSegmentationLoss` + `PATHungarianMatcher` (`segmentation_loss.py`) |
"""

import functools
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from .clip_tower import PATClipFeatures, PATClipTower, PATOpenVocabClassifier
from .configuration_pat import PATConfig, validate_prompt_templates
from .constants import PYRAMID_STAGES
from .inference_cache import PATInferenceCache
from .layers import PATChannelLayerNorm
from .pixel_branch import PATPixelBranchOutput
from .pyramid_tokenization import PATPyramidTokenization, PATTokenizationOutput
from .quantizer import PATQuantizerOutput, PATVectorQuantizer, autocast_off
from .samplers import PATOffsetConv2d
from .segmentation_loss import PATSegmentationLoss, labels_to_targets
from .side_adapter import PATFusionProjection, PATSideAdapter, PATSideAdapterOutput, PATSideLevel
from .text_embedding_cache import fingerprint_text_weights, read_text_cache, text_cache_path, update_text_cache
from .tokenization_loss import PATTokenizationLoss, perceptual_feature_network, resolve_perceptual_network
from .weights_files import bad_weights_error, candidate_weights_files


# Classes per text-tower call in `get_class_embeddings` (x the prompt templates): bounds memory for large vocabularies.
TEXT_CHUNK_CLASSES = 64


@dataclass
class PATModelOutput(ModelOutput):
    r"""
    masks_queries_logits (`torch.FloatTensor` of shape `(batch_size, num_queries, height, width)`):
        Mask-proposal logits of the final level on the side grid (stride `side_patch_size`).
    mask_embeddings (`torch.FloatTensor` of shape `(batch_size, num_queries, embed_dim)`):
        Unit CLIP embedding of each proposal (the recognition head's [SOS] tokens).
    attention_bias (`torch.FloatTensor` of shape `(batch_size, num_heads, num_queries, height, width)`):
        Attention bias of the final level (the first one when `attn_bias_num_layers > 1`).
    query_embeddings (`torch.FloatTensor` of shape `(batch_size, num_queries, side_hidden_size)`):
        Query tokens of the final side level.
    side_tokens (`torch.FloatTensor` of shape `(batch_size, side_hidden_size, height, width)`):
        Side tokens (the side ViT's patch tokens) of the final side level, as a map. (`pixel_embeddings` is a
        read-only alias kept for scripts written against earlier versions.)
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
        `(batch_size, decoder_hidden_size, h_s, w_s)`.
    reconstruction (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`, *optional*, PAT mode):
        The image rebuilt from the tokens, in the normalised input space (training, or `output_reconstruction`).
    quantized_features / codebook_indices (`dict[str, torch.Tensor]`, *optional*, PAT mode):
        Per codebook (`early`, `mid`, `late`, `latent`): the straight-through quantised maps `(batch_size, code_dim,
        h_s, w_s)` and the code indices `(batch_size, h_s, w_s)`.
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
        """The earlier name of `side_tokens`."""
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
        Mask-proposal logits on the side grid.
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


class PATPreTrainedModel(PreTrainedModel):
    """Weight initialisation and the attributes transformers reads; no forward."""

    config: PATConfig  # transformers reads `config_class` from this annotation
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    # blocks kept whole by `device_map` sharding and wrapped as units by FSDP (open_clip's CLIP block, timm's EVA block)
    _no_split_modules = ["PATSideLayer", "PATDecoderLayer", "ResidualAttentionBlock", "EvaBlock"]
    # side ViT and PAT decoder layers are `GradientCheckpointingLayer`s, and the CLIP tower checkpoints the blocks it
    # runs with gradients: `gradient_checkpointing_enable()` recomputes them in the backward pass
    supports_gradient_checkpointing = True
    # CLIP's temperature stays fp32 when loaded in bf16 / fp16: ln 100 in bf16 is 4.59375, a 1% hotter softmax
    _keep_in_fp32_modules_strict = ["logit_scale"]
    # The loss is normalised by the number of target masks, not by tokens: Trainer must not rescale it.
    accepts_loss_kwargs = False
    # Every attention runs `F.scaled_dot_product_attention`: "sdpa" is the one implementation (the default), and
    # `get_correct_attn_implementation` refuses any other rather than pretend to switch.
    _supports_sdpa = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, then the config's frozen set again (loading builds the parameters anew,
        all trainable, which would otherwise train the whole CLIP, text tower included). A truncated or corrupt
        weights file raises an OSError naming the file and what is wrong with it (safetensors itself only says
        "Error while deserializing header")."""
        from safetensors import SafetensorError

        try:
            loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as error:
            files = candidate_weights_files(
                pretrained_model_name_or_path, kwargs.get("subfolder") or "", kwargs.get("cache_dir"),
                kwargs.get("revision"),
            )
            bad = bad_weights_error(files) or OSError(
                f"A weights file of {pretrained_model_name_or_path} is unusable (truncated or corrupt): {error}"
            )
            raise bad from error
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True gives a tuple
        for module in model.modules():
            if isinstance(module, PATClipTower):
                module.freeze(model.config.clip_trainable_positional_embedding, model.config.clip_trainable_layers)
        return loaded

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """transformers' resolution (None -> "sdpa"), then a ValueError for anything but "sdpa": no module of the
        model has another attention code path, so "eager" or a flash kernel would be a name only."""
        resolved = super().get_correct_attn_implementation(requested_attention, is_init_check)
        if resolved != "sdpa":
            raise ValueError(
                f'attn_implementation="{resolved}" is not supported: every attention of the model (CLIP, side ViT, '
                'decoder) runs torch\'s scaled_dot_product_attention; use attn_implementation="sdpa" (the default).'
            )
        return resolved

    def post_init(self):
        self._keep_open_clip_init()
        super().post_init()
        self.attach_inference_cache(PATInferenceCache())

    def _keep_open_clip_init(self) -> None:
        """Mark CLIP's modules initialised: open_clip gave them its own init (per tensor: OpenAI's text-tower stds,
        `width ** -0.5` embeddings, torch defaults elsewhere) when it built them, and transformers' generic rule must
        not replace it. Built on the meta device (from_pretrained), nothing was initialised: CLIP tensors missing from
        a checkpoint then get the generic rule."""
        for tower in self.modules():
            if isinstance(tower, PATClipTower):
                for module in tower.clip.modules():
                    if not any(param.is_meta for param in module.parameters(recurse=False)):
                        module._is_hf_initialized = True  # transformers' "already initialised" flag

    def attach_inference_cache(self, cache: PATInferenceCache) -> None:
        """Give `cache` to this model and every sub-module that declares an `inference_cache` attribute (an outer
        model's call replaces an inner model's cache, so one object serves the whole model)."""
        for module in self.modules():
            if module is self or hasattr(module, "inference_cache"):
                module.inference_cache = cache

    def clear_inference_caches(self) -> None:
        """Drop every value derived from the weights (see `inference_cache.py`). Called on loading weights, on a
        move or dtype change and on a train/eval switch; call it after editing weights in place."""
        cache = getattr(self, "inference_cache", None)
        if cache is not None:
            cache.clear()

    # A mode switch or a move leaves the weights' values as they were: only the cache goes (the base method, not an
    # override that also forgets values keyed on the weights' bytes, such as the text weights' fingerprint).
    def train(self, mode: bool = True):
        if mode != self.training:
            PATPreTrainedModel.clear_inference_caches(self)
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):
        result = super()._apply(fn, recurse)
        PATPreTrainedModel.clear_inference_caches(self)  # `.to`, `.half`, ...: cached tensors are on the old device
        return result

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.clear_inference_caches()
        return result

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The random init of a fresh model (real weights come from a checkpoint), per module:

        * CLIP (open_clip's model): open_clip's own init, kept (`_keep_open_clip_init`).
        * Linear, Conv2d, ConvTranspose2d (side ViT, mask decoder, every PAT layer, the quantizers' projections):
          weight N(0, `initializer_range`), bias 0; timm's ViT init, which SAN's side ViT uses.
        * LayerNorm, `PATChannelLayerNorm`: weight 1, bias 0.
        * nn.MultiheadAttention: torch's own (Xavier-uniform input projections, zero biases).
        * `PATSideAdapter` position, query and query-position embeddings: N(0, `initializer_range`).
        * `PATFusionProjection` (SAN's fusion 1x1 conv): SAN's Caffe2 Xavier fill, Kaiming-uniform with a = 1, bias 0.
        * `PATOffsetConv2d` (DySample offsets, choice U1): N(0, 0.001), bias 0, so offsets start near the fixed grid.
        * `PATVectorQuantizer.codebook` (choice V2): N(0, 1), uniform directions once normalised.
        * `PATOpenVocabClassifier.void_embedding`: N(0, 1 / D), a unit-scale random direction.
        """
        # Modules with their own init are handled before the generic rule: transformers initialises children first
        # and never re-initialises a tensor, so a parent cannot override a child conv's generic init afterwards.
        if isinstance(module, (PATFusionProjection, PATOffsetConv2d)):
            module.reset_parameters()  # SAN's Caffe2 Xavier fill; DySample offsets near zero
            return
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, PATSideAdapter):
            for param in (module.pos_embed, module.query_embed, module.query_pos_embed):
                init.normal_(param, std=std)
        elif isinstance(module, PATChannelLayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, PATOpenVocabClassifier):
            init.normal_(module.void_embedding, std=module.void_embedding.shape[1] ** -0.5)
        elif isinstance(module, PATVectorQuantizer):
            init.normal_(module.codebook)  # choice V2: N(0, 1), uniform directions once normalised


class PATModel(PATPreTrainedModel):
    """Image side of SAN/PAT: `pixel_values` -> mask proposals, their CLIP embeddings and the attention bias."""

    def __init__(self, config: PATConfig):
        super().__init__(config)
        self.clip_tower = PATClipTower(config)
        if self.clip_tower.num_heads != config.attn_bias_num_heads:
            raise ValueError(
                f"attn_bias_num_heads={config.attn_bias_num_heads} must equal the CLIP heads ({self.clip_tower.num_heads})."
            )
        self.side_adapter = PATSideAdapter(config, clip_channels=self.clip_tower.width)
        # PAT's additions; absent in SAN mode, which is then exactly SAN
        self.tokenization = PATPyramidTokenization(config) if config.use_pyramid_tokenization else None
        self.post_init()

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype images enter in: the side adapter's patch embedding (CLIP's is the same; `model.dtype` may be
        CLIP's fp32 `logit_scale` in a half-precision model)."""
        return self.side_adapter.patch_embed.weight.dtype

    def clip_input(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3, floor(sH), floor(sW)): SAN's asymmetric input, resized by scale factor (not size)."""
        scale = self.config.clip_resolution
        if scale == 1.0:
            return pixel_values
        return F.interpolate(pixel_values, scale_factor=scale, mode="bilinear", align_corners=False)

    def decode_level(self, level: PATSideLevel, clip_features: PATClipFeatures) -> PATDecodedLevel:
        """One side level -> mask logits (B, Q, H, W), attention biases and unit mask embeddings (B, Q, D)."""
        mask_logits, attn_biases = self.side_adapter.mask_decoder(level.queries, level.side_tokens)
        mask_embeddings = self.clip_tower.recognize(clip_features, attn_biases, self.config.num_queries)
        return PATDecodedLevel(mask_logits, mask_embeddings, attn_biases[0])

    def decode_pat(
        self, tokens: PATTokenizationOutput, level: PATSideLevel, clip_features: PATClipFeatures
    ) -> PATDecodedLevel:
        """PAT's final level (choice M2): decoder masks, recognised under SAN's bias built from the final tokens."""
        attn_biases = self.side_adapter.mask_decoder.query_attention_bias(tokens.global_tokens, level.side_tokens)
        mask_embeddings = self.clip_tower.recognize(clip_features, attn_biases, self.config.num_queries)
        return PATDecodedLevel(tokens.masks_queries_logits, mask_embeddings, attn_biases[0])

    def run_side_adapter(
        self, pixel_values: torch.Tensor, clip_features: PATClipFeatures, levels
    ) -> PATSideAdapterOutput:
        """The side ViT; in PAT mode, the semantic branch updates its query tokens after each pyramid block.

        The side ViT runs in steps up to each pyramid block (`PATSideAdapter.run`); the semantic branch then reads
        that block's side tokens before fusion and its query tokens, and its global tokens replace the queries.
        """
        side, tokenization = self.side_adapter, self.tokenization
        if tokenization is None:
            return side(pixel_values, clip_features.maps, output_layers=levels)
        state = side.start(pixel_values, clip_features.maps, levels, query_embed=tokenization.query_embed())
        local_tokens = state.output.local_tokens
        for stage, position in tokenization.stage_positions.items():
            side_tokens = side.run(state, position)  # (B, L, C_side), before fusion
            side.set_queries(state, tokenization.semantic_stage(stage, side_tokens, side.queries(state), local_tokens))
        return side.finish(state)

    def encode_tokens(self, pixel_values: torch.Tensor) -> tuple[PATPixelBranchOutput, PATQuantizerOutput]:
        """PAT only: the image's codes without the decoder or heads -> (pyramid quantizer outputs, latent ones)."""
        if self.tokenization is None:
            raise ValueError("Tokens exist only in PAT mode (config.use_pyramid_tokenization=True).")
        pixel_values = prepare_pixel_values(pixel_values, self.config.size_divisibility, self.input_dtype)
        clip_features = self.clip_tower.extract_features(self.clip_input(pixel_values))
        side = self.run_side_adapter(pixel_values, clip_features, self.side_adapter.output_layers[-1:])
        return self.tokenization.encode(pixel_values, side.fusion_terms, side.levels[-1].side_tokens)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_auxiliary_logits: bool | None = None,
        output_hidden_states: bool | None = None,
        output_reconstruction: bool | None = None,
        **kwargs,
    ) -> PATModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            Normalised images, padded to a multiple of `config.size_divisibility` (see `PATImageProcessor`); checked
            and cast to the model's dtype by `prepare_pixel_values`.
        output_auxiliary_logits (`bool`, *optional*):
            Decode the deep-supervision levels before the final one too (default: in training mode only).
        output_reconstruction (`bool`, *optional*):
            PAT mode: also reconstruct the image (default: in training mode only).
        """
        pixel_values = prepare_pixel_values(pixel_values, self.config.size_divisibility, self.input_dtype)
        output_auxiliary_logits = self.training if output_auxiliary_logits is None else output_auxiliary_logits
        output_reconstruction = self.training if output_reconstruction is None else output_reconstruction
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        pat = self.tokenization is not None
        # 1. frozen CLIP trunk on the down-scaled image
        clip_features = self.clip_tower.extract_features(self.clip_input(pixel_values))
        # 2. side adapter on the full-resolution image, fusing CLIP features (+ PAT's semantic branch)
        all_levels = self.side_adapter.output_layers
        levels = all_levels[-1:] if pat or not output_auxiliary_logits else all_levels  # PAT: block 8 only (M3)
        side = self.run_side_adapter(pixel_values, clip_features, levels)
        last = side.levels[-1]
        # 3. masks + attention bias per level, and CLIP recognition of each mask under that bias
        tokens = None
        if pat:  # pixel branch, latent VQ, shared decoder; SAN's own head on block 8 is the auxiliary level
            tokens = self.tokenization(
                pixel_values, side.fusion_terms, last.queries, last.side_tokens, side.local_tokens,
                reconstruct=output_reconstruction, output_hidden_states=output_hidden_states,
            )
            auxiliary = [self.decode_level(last, clip_features)] if output_auxiliary_logits else []
            final = self.decode_pat(tokens, last, clip_features)
        else:
            decoded = [self.decode_level(level, clip_features) for level in side.levels]
            final, auxiliary = decoded[-1], decoded[:-1]
        return PATModelOutput(
            masks_queries_logits=final.masks_queries_logits,
            mask_embeddings=final.mask_embeddings,
            attention_bias=final.attention_bias,
            query_embeddings=last.queries,
            side_tokens=last.side_tokens,
            auxiliary_outputs=auxiliary if output_auxiliary_logits else None,
            clip_hidden_states=_clip_hidden_states(clip_features) if output_hidden_states else None,
            side_hidden_states=tuple(side.hidden_states) if output_hidden_states else None,
            **(_tokenization_fields(tokens) if pat else {}),
        )


def _clip_hidden_states(clip_features: PATClipFeatures) -> tuple[torch.Tensor, ...]:
    """CLIP trunk outputs as (B, 1 + L_clip, C_clip) sequences [class token; CLIP tokens]."""
    return tuple(
        torch.cat([cls[:, None], fmap.flatten(2).transpose(1, 2)], dim=1)
        for fmap, cls in zip(clip_features.maps, clip_features.cls_tokens)
    )


def _tokenization_fields(tokens: PATTokenizationOutput) -> dict[str, Any]:
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


def prepare_pixel_values(pixel_values: torch.Tensor, size_divisibility: int, dtype: torch.dtype) -> torch.Tensor:
    """Checked images in the model's dtype: clear errors instead of a shape or dtype error deep inside a conv.

    Shape and dtype are checked everywhere; a float tensor of another dtype (fp64 from numpy, fp32 into a bf16
    model) is cast to `dtype`, as the pipeline and the CLI do; integer images are refused (they are not normalised).
    The finiteness check reads the values, so it runs on CPU tensors only: on an accelerator it would make every
    forward wait for the device. Images that reach the model through the processor, the pipeline or the CLI were
    checked on the host there.
    """
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}.")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        raise ValueError(
            f"`pixel_values` must have shape (batch_size, 3, height, width), got {tuple(pixel_values.shape)}; "
            "use PATImageProcessor to prepare images."
        )
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"`pixel_values` must be a float tensor of normalised images (the model runs in {dtype}), got "
            f"{pixel_values.dtype}; use PATImageProcessor to prepare images."
        )
    height, width = pixel_values.shape[-2:]
    if height == 0 or width == 0 or height % size_divisibility or width % size_divisibility:
        raise ValueError(
            f"`pixel_values` height and width ({height}, {width}) must be positive multiples of size_divisibility="
            f"{size_divisibility}; pad them (PATImageProcessor does)."
        )
    if _is_host_tensor(pixel_values) and not bool(torch.isfinite(pixel_values).all()):
        raise ValueError("`pixel_values` contains NaN or infinite values; check the images and their preprocessing.")
    return pixel_values.to(dtype)


def _check_class_embeddings(class_embeddings: torch.Tensor, embed_dim: int) -> None:
    """(N, D) float embeddings with N >= 1 and D = CLIP's embedding dim; finite when on the CPU (see
    `prepare_pixel_values`). Any float dtype is accepted: the classifier casts them to fp32."""
    if not isinstance(class_embeddings, torch.Tensor):
        raise TypeError(f"`class_embeddings` must be a torch.Tensor, got {type(class_embeddings).__name__}.")
    if not class_embeddings.is_floating_point():
        raise TypeError(
            f"`class_embeddings` must be a float tensor (the classifier runs in {torch.float32}), got "
            f"{class_embeddings.dtype}; compute them with `model.get_class_embeddings`."
        )
    if class_embeddings.ndim != 2 or class_embeddings.shape[0] == 0 or class_embeddings.shape[1] != embed_dim:
        raise ValueError(
            f"`class_embeddings` must have shape (num_classes >= 1, {embed_dim}), got {tuple(class_embeddings.shape)}; "
            "compute them with `model.get_class_embeddings`."
        )
    if _is_host_tensor(class_embeddings) and not bool(torch.isfinite(class_embeddings).all()):
        bad = (~torch.isfinite(class_embeddings).all(dim=1)).nonzero().flatten().tolist()
        raise ValueError(
            f"`class_embeddings` contains NaN or infinite values (rows {bad[:10]}{' ...' if len(bad) > 10 else ''}); "
            "compute them with `model.get_class_embeddings`."
        )


def _check_input_ids(input_ids: torch.Tensor, vocab_size: int, context_length: int) -> None:
    """(N, T, context length) integer token ids, at most CLIP's context long; ids within the vocabulary when on the
    CPU (an id outside it is an IndexError deep in the embedding on the CPU, a device-side assert on a GPU)."""
    if (
        not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 3 or 0 in input_ids.shape
        or input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool
    ):
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(
            "`input_ids` must be integer token ids of shape (num_classes, num_templates, seq_len), each at least 1, "
            f"got {getattr(input_ids, 'dtype', '')} {shape}; use PATProcessor(text=[...])."
        )
    if input_ids.shape[-1] > context_length:
        raise ValueError(
            f"`input_ids` are {input_ids.shape[-1]} tokens long; CLIP's text context holds {context_length}."
        )
    if _is_host_tensor(input_ids):
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"`input_ids` must lie in [0, {vocab_size - 1}] (CLIP's vocabulary), got values in [{low}, {high}]."
            )


def _input_ids_key(input_ids: torch.Tensor) -> tuple:
    """Text-cache key of a vocabulary given as ids: on the host their shape and a hash of their bytes; on an
    accelerator the shape and device only, the ids being compared on the device on a hit (`_same_input_ids`): hashing
    them would copy the whole (N, T, context length) array to the host at every training step."""
    if _ids_on_host(input_ids):
        return ("ids", tuple(input_ids.shape), hash(input_ids.detach().numpy().tobytes()))
    return ("device ids", tuple(input_ids.shape), str(input_ids.device), input_ids.dtype)


def _ids_on_host(input_ids: torch.Tensor) -> bool:
    return input_ids.device.type == "cpu"


def _same_input_ids(kept: torch.Tensor | None, input_ids: torch.Tensor | None) -> bool:
    """Whether a cache entry holds these ids: always for host keys (their hash is in the key), else compared on the
    device (one boolean read back instead of the ids)."""
    return kept is None or torch.equal(kept, input_ids)


def _is_host_tensor(tensor: torch.Tensor) -> bool:
    """Whether a value check is free of device synchronisation (and of graph breaks while torch.compile traces)."""
    return tensor.device.type == "cpu" and not torch.compiler.is_compiling()


def _valid_pixel_mask(pixel_values: torch.Tensor, image_sizes: torch.Tensor | None) -> torch.Tensor:
    """(B, 1, H_img, W_img) float mask of the real (unpadded) pixels of each image; all ones without `image_sizes`."""
    batch, _, height, width = pixel_values.shape
    if image_sizes is None:
        return pixel_values.new_ones(batch, 1, height, width)
    # compared on the device: reading the sizes back would make every training step wait for it
    sizes = image_sizes.to(pixel_values.device)
    rows = torch.arange(height, device=pixel_values.device)[None, :, None] < sizes[:, 0, None, None]
    cols = torch.arange(width, device=pixel_values.device)[None, None, :] < sizes[:, 1, None, None]
    return (rows & cols)[:, None].to(pixel_values.dtype)


def _refuse_attention_weights(output_attentions: bool | None, config: PATConfig) -> None:
    """A ValueError for `output_attentions=True` (or the config's): SDPA, the only attention, returns no weights."""
    if output_attentions or (output_attentions is None and getattr(config, "output_attentions", False)):
        raise ValueError(
            "output_attentions=True is not supported: the model's attention runs torch's "
            "scaled_dot_product_attention (attn_implementation='sdpa'), which does not return attention weights."
        )


def _check_labels(labels: torch.Tensor, pixel_values: torch.Tensor) -> None:
    """Label maps must be (B, H, W) integer maps at the padded input size (the image processor pads them)."""
    expected = (pixel_values.shape[0], *pixel_values.shape[-2:])
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != expected:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"`labels` must be a tensor of shape (batch_size, height, width) = {expected}, got {shape}.")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"`labels` must hold integer class ids (torch.long), got {labels.dtype}.")


def _check_sizes(sizes: torch.Tensor | None, name: str, batch_size: int) -> None:
    """`image_sizes` / `original_sizes`: integer (batch_size, 2) rows of (height, width), as the processor gives."""
    if sizes is None:
        return
    if not isinstance(sizes, torch.Tensor) or sizes.is_floating_point() or tuple(sizes.shape) != (batch_size, 2):
        found = f"{sizes.dtype} {tuple(sizes.shape)}" if isinstance(sizes, torch.Tensor) else type(sizes).__name__
        raise ValueError(
            f"`{name}` must be an integer tensor of shape (batch_size, 2) = ({batch_size}, 2), got {found}."
        )


class PATForOpenVocabSegmentation(PATPreTrainedModel):
    """SAN/PAT with the open-vocabulary classifier: class logits over any class names (+ void) and the loss."""

    # Folder of the optional on-disk text-embedding cache (`get_class_embeddings`); None: memory only.
    text_embedding_cache_dir: str | os.PathLike | None = None

    def __init__(self, config: PATConfig):
        super().__init__(config)
        self.model = PATModel(config)
        self.classifier = PATOpenVocabClassifier(self.model.clip_tower.embed_dim)
        self.criterion = PATSegmentationLoss(config)
        self.tokenization_loss = None
        if config.use_pyramid_tokenization:
            # resolved once, here, and kept in the config (saved with the model): the loss never depends on the cache
            config.perceptual_network = resolve_perceptual_network(config.perceptual_network)
            network = perceptual_feature_network(config.perceptual_network, self.model)
            self.tokenization_loss = PATTokenizationLoss(config, perceptual_network=network)
        # (dtypes of the text parameters, sha256 of their bytes): `text_weights_fingerprint`, kept with the model
        self._text_fingerprint: tuple[tuple[torch.dtype, ...], str] | None = None
        self.post_init()

    # -- text side -------------------------------------------------------------------------------------------------
    def prompt_input_ids(self, class_names: list[str], templates=None) -> torch.Tensor:
        """Class names -> (N, T, 77) ids of every name in every template (`config.prompt_templates` by default)."""
        templates = list(self.config.prompt_templates) if templates is None else validate_prompt_templates(templates)
        prompts = [template.format(name) for name in class_names for template in templates]
        ids = self.model.clip_tower.tokenize(prompts).reshape(len(class_names), len(templates), -1)
        full = (ids[..., -1] != 0).any(dim=1)  # the last position holds a token only when the prompt was cut to fit
        if bool(full.any()):
            names = [n if len(n) <= 40 else n[:37] + "..." for n, f in zip(class_names, full.tolist()) if f]
            warnings.warn(
                f"Class name(s) {names[:3]}{' ...' if len(names) > 3 else ''} fill CLIP's {ids.shape[-1]}-token "
                "context in a prompt template and were truncated (their end is ignored); shorten them.",
                UserWarning,
                stacklevel=2,
            )
        return ids.to(self.device)

    def get_class_embeddings(
        self, input_ids: torch.Tensor | None = None, class_names: list[str] | None = None, cache_dir=None
    ):
        """(N, T, context length) ids or N class names (default: `config.id2label`) -> (N, D) unit class embeddings,
        cached.

        Cached in memory per vocabulary in the model's inference cache (`inference_cache.py`: dropped when weights
        are loaded, the model moves or switches mode, or `clear_inference_caches()` is called after an in-place edit;
        bypassed while a text parameter is trainable). Class names are also cached on disk when `cache_dir` (default:
        `self.text_embedding_cache_dir`) is set: one row per name in a file keyed by the text weights
        (`text_weights_fingerprint`), the prompt templates and the cache format, so another process starts without
        running the text tower, and a weight or template change misses. Only names not on disk are encoded.
        Thread-safe: concurrent callers wait, so a vocabulary asked for by several threads is encoded once.
        """
        if input_ids is None:
            class_names = class_names if class_names is not None else self.default_class_names()
            if len(class_names) == 0:
                raise ValueError(
                    "No class names: pass `class_names`, `input_ids` (PATProcessor(text=[...])) or `class_embeddings`, "
                    "or give the model a default vocabulary in `config.id2label`."
                )
            key = ("names", tuple(class_names), tuple(self.config.prompt_templates))
        else:
            tower = self.model.clip_tower
            _check_input_ids(input_ids, tower.text_tower.token_embedding.num_embeddings, tower.context_length)
            key = _input_ids_key(input_ids)
        compute = functools.partial(self._compute_class_embeddings, input_ids, class_names, cache_dir)
        if self._text_tower_trainable():  # its weights may change at every step, unseen by the cache
            return compute()[1]
        _, embeddings = self.inference_cache.get(
            "text_embeddings", key, compute, valid=lambda entry: _same_input_ids(entry[0], input_ids)
        )
        return embeddings

    def _compute_class_embeddings(self, input_ids, class_names, cache_dir) -> tuple[torch.Tensor | None, torch.Tensor]:
        """A text-cache entry: (the ids when they are on an accelerator, to be compared there at the next lookup
        since their key has no content; else None, (N, D) embeddings), from the disk cache or the text tower."""
        cache_dir = self.text_embedding_cache_dir if cache_dir is None else cache_dir
        if input_ids is None and cache_dir is not None:
            embeddings = self._disk_cached_class_embeddings(list(class_names), cache_dir)
        else:
            ids = self.prompt_input_ids(class_names) if input_ids is None else input_ids
            embeddings = self._encode_class_names(ids)
        kept_ids = None if input_ids is None or _ids_on_host(input_ids) else input_ids.detach().clone()
        return kept_ids, embeddings

    def _text_tower_trainable(self) -> bool:
        return any(param.requires_grad for param in self.model.clip_tower.text_parameters())

    def _encode_class_names(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(N, T, context length) ids -> (N, D) through the text tower, in chunks of classes.

        Always in the weights' dtype, autocast off: the result is cached per vocabulary (and on disk), so embeddings
        made under a training step's autocast must not be what a later full-precision evaluation gets.
        """
        # in chunks of classes: 1,000 names x 14 templates at once would need GBs of activations
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            chunks = input_ids.to(self.device).split(TEXT_CHUNK_CLASSES)
            return torch.cat([self.model.clip_tower.encode_class_names(chunk) for chunk in chunks])

    def text_weights_fingerprint(self) -> str:
        """sha256 of the text tower's weights (`fingerprint_text_weights`): the text embeddings' key on disk.

        Computed once and kept with the model: a model from `from_pretrained` starts with the fingerprint its config
        carries (`save_pretrained` stores it), so a new process does not hash the tower. Hashed again after
        `load_state_dict`, after `clear_inference_caches()` (call it when editing weights in place), after a dtype
        change, and at every call while a text parameter is trainable. A move to another device keeps it."""
        params = self.model.clip_tower.text_parameters()
        dtypes = tuple(param.dtype for param in params)
        if any(param.requires_grad for param in params):
            return fingerprint_text_weights(params)
        if self._text_fingerprint is None or self._text_fingerprint[0] != dtypes:
            self._text_fingerprint = (dtypes, fingerprint_text_weights(params))
        return self._text_fingerprint[1]

    def clear_inference_caches(self) -> None:
        """`PATPreTrainedModel.clear_inference_caches`, and the text weights' fingerprint is hashed again at its next
        use: call this after editing weights in place (nothing else can see such an edit)."""
        super().clear_inference_caches()
        self._text_fingerprint = None

    def _text_parameter_names(self) -> list[str]:
        """State-dict names of `text_parameters()`, in that order (the order the fingerprint hashes them in)."""
        names = {id(param): name for name, param in self.named_parameters(remove_duplicate=False)}
        return [names[id(param)] for param in self.model.clip_tower.text_parameters()]

    def _saved_text_fingerprint(self, state_dict: dict | None) -> str | None:
        """`config.text_weights_fingerprint` ("<dtype>:<sha256>") of the text weights about to be saved: the
        memoised fingerprint of the model's own weights, or a hash of `state_dict`'s when one is passed. None when
        those weights are missing or not of one dtype (nothing is then stored and a loader hashes them)."""
        if state_dict is None:
            tensors = self.model.clip_tower.text_parameters()
        else:
            tensors = [state_dict.get(name) for name in self._text_parameter_names()]
            if any(not isinstance(t, torch.Tensor) for t in tensors):
                return None
        dtypes = {t.dtype for t in tensors}
        if len(dtypes) != 1 or any(t.device.type == "meta" for t in tensors):
            return None
        digest = self.text_weights_fingerprint() if state_dict is None else fingerprint_text_weights(tensors)
        return f"{str(dtypes.pop()).removeprefix('torch.')}:{digest}"

    def save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
        """`PreTrainedModel.save_pretrained`, with the text weights' fingerprint in the saved config
        (`config.text_weights_fingerprint`), so a process that loads the model reads it instead of hashing."""
        self.config.text_weights_fingerprint = self._saved_text_fingerprint(state_dict)
        return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, output_loading_info=False, **kwargs):
        """`PATPreTrainedModel.from_pretrained`; the config's text-weights fingerprint becomes the model's for the
        weights just loaded, unless a text weight was missing from the files or loaded in another dtype."""
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        model._adopt_saved_text_fingerprint(info)
        return (model, info) if output_loading_info else model

    def _adopt_saved_text_fingerprint(self, loading_info: dict) -> None:
        saved = self.config.text_weights_fingerprint
        if saved is None:
            return
        dtype, _, digest = saved.partition(":")
        names = set(self._text_parameter_names())
        mismatched = {key for key, *_ in loading_info.get("mismatched_keys", ())}
        not_loaded = set(loading_info.get("missing_keys", ())) | mismatched
        params = self.model.clip_tower.text_parameters()
        if names & not_loaded or any(str(p.dtype).removeprefix("torch.") != dtype for p in params):
            return
        self._text_fingerprint = (tuple(param.dtype for param in params), digest)

    def _disk_cached_class_embeddings(self, class_names: list[str], cache_dir) -> torch.Tensor:
        """(N, D) embeddings of `class_names` from the on-disk cache; names not there are encoded and added."""
        templates = tuple(self.config.prompt_templates)
        fingerprint = self.text_weights_fingerprint()
        path = text_cache_path(cache_dir, fingerprint, templates)
        rows = read_text_cache(path, fingerprint, templates)  # {} (with a warning) when the file is not trustworthy
        missing = [name for name in dict.fromkeys(class_names) if name not in rows]
        if missing:
            encoded = dict(zip(missing, self._encode_class_names(self.prompt_input_ids(missing)).to("cpu")))
            rows.update(encoded)
            update_text_cache(path, encoded, fingerprint, templates)  # merged under a lock; a warning if unwritable
        dtype = self.model.clip_tower.text_tower.text_projection.dtype
        return torch.stack([rows[name] for name in class_names]).to(self.device, dtype)

    def default_class_names(self) -> list[str]:
        id2label = self.config.id2label or {}
        return [id2label[i] for i in sorted(id2label, key=int)]

    def classify(self, mask_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, Q, D) mask embeddings, (N+1, D) classifier rows -> (B, Q, N+1) logits = exp(logit_scale) * cosine.

        In fp32 whatever the model's dtype or autocast (cheap: Q x N): logits near 100 x cosine rounded to bf16 would
        move in steps of 0.125-0.25, several percent in the softmax's probability ratios.
        """
        with autocast_off(mask_embeddings.device.type):
            scale = self.model.clip_tower.logit_scale.float().exp()
            return torch.einsum("bqd,nd->bqn", mask_embeddings.float(), scale * text_embeddings.float())

    # -- forward ---------------------------------------------------------------------------------------------------
    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        class_embeddings: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        original_sizes: torch.Tensor | None = None,
        output_auxiliary_logits: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        loss_sampling_points: dict | None = None,
        loss_generator: torch.Generator | None = None,
    ) -> PATForOpenVocabSegmentationOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            Normalised, padded images (`PATImageProcessor`). Another float dtype is cast to the model's; integer
            images are a TypeError. NaN / inf are a ValueError when the tensor is on the CPU (on an accelerator the
            check would synchronise every forward; the processor, pipeline and CLI check images on the host).
        input_ids (`torch.LongTensor` of shape `(num_classes, num_templates, seq_len)`, *optional*):
            Class-name prompts from `PATProcessor(text=[...])`. One vocabulary for the whole batch.
        attention_mask (`torch.LongTensor`, *optional*):
            What `PATProcessor(text=[...])` returns beside `input_ids`, accepted so that `model(**inputs)` works; not
            used: CLIP's causal text tower pools the end-of-text token and needs no mask.
        class_embeddings (`torch.FloatTensor` of shape `(num_classes, embed_dim)`, *optional*):
            Precomputed unit class embeddings (`get_class_embeddings`); skips the text tower. Any float dtype (the
            classification runs in fp32); checked for NaN / inf like `pixel_values`.
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            Semantic label maps at the size of `pixel_values`, `config.ignore_index` where unlabelled.
        image_sizes / original_sizes (`torch.LongTensor` of shape `(batch_size, 2)`, *optional*):
            From the image processor; `image_sizes` is carried to the output for post-processing, `original_sizes`
            is accepted (and its shape checked) so that `model(**processor(...))` works: post-processing takes the
            output sizes as `target_sizes`.
        loss_sampling_points (`dict`, *optional*):
            Recorded random points that replace the loss's random draws (see `PATSegmentationLoss.forward`).
        loss_generator (`torch.Generator`, *optional*):
            Generator for the loss's random point draws.
        output_attentions (`bool`, *optional*):
            Not supported: every attention runs `F.scaled_dot_product_attention`, which returns no weights; True is
            a ValueError (as is `config.output_attentions`).

        Other keyword arguments are a TypeError (`return_dict` is taken by `can_return_tuple`). With neither
        `input_ids` nor `class_embeddings`, the vocabulary is `config.id2label`.
        """
        _refuse_attention_weights(output_attentions, self.config)
        if sum(x is not None for x in (input_ids, class_embeddings)) > 1:
            raise ValueError("Pass at most one of `input_ids` and `class_embeddings`.")
        if class_embeddings is not None:
            _check_class_embeddings(class_embeddings, self.classifier.void_embedding.shape[-1])
        else:
            class_embeddings = self.get_class_embeddings(input_ids=input_ids)
        text_embeddings = self.classifier(class_embeddings)
        want_aux = output_auxiliary_logits if output_auxiliary_logits is not None else (self.training or labels is not None)
        outputs = self.model(
            pixel_values, output_auxiliary_logits=want_aux, output_hidden_states=output_hidden_states,
            output_reconstruction=want_aux, return_dict=True,
        )
        for name, sizes in (("image_sizes", image_sizes), ("original_sizes", original_sizes)):
            _check_sizes(sizes, name, pixel_values.shape[0])  # after the model: `pixel_values` is known good there
        class_logits = self.classify(outputs.mask_embeddings, text_embeddings)
        auxiliary = [
            {"class_queries_logits": self.classify(aux["mask_embeddings"], text_embeddings),
             "masks_queries_logits": aux["masks_queries_logits"]}
            for aux in outputs.auxiliary_outputs or []
        ]
        loss, loss_dict, loss_details = None, None, None
        if labels is not None:
            _check_labels(labels, pixel_values)
            loss, loss_dict = self.compute_loss(
                class_logits, outputs.masks_queries_logits, auxiliary, labels, loss_sampling_points, loss_generator
            )
            if self.tokenization_loss is not None:
                tokenization_total, loss_details = self.compute_tokenization_loss(
                    pixel_values, outputs, image_sizes, loss_generator
                )
                loss = loss + tokenization_total
                loss_dict.update({k: loss_details.pop(k) for k in PATTokenizationLoss.GROUP_KEYS if k in loss_details})
        batch, _, height, width = pixel_values.shape
        # sizes are shapes, known on the host. At inference they stay there, so post-processing reads them without
        # waiting for the device; in training and evaluation (labels) they go with the other outputs, which Trainer
        # gathers across devices (filled there, not copied: no wait either)
        on_device = self.training or labels is not None
        padded = torch.full((batch, 2), height, dtype=torch.long, device=pixel_values.device if on_device else "cpu")
        padded[:, 1] = width
        return PATForOpenVocabSegmentationOutput(
            loss=loss,
            class_queries_logits=class_logits,
            masks_queries_logits=outputs.masks_queries_logits,
            auxiliary_logits=auxiliary or None,
            loss_dict=loss_dict,
            loss_details=loss_details,
            reconstruction=outputs.reconstruction,
            codebook_perplexity=outputs.codebook_perplexity,
            text_embeddings=text_embeddings,
            mask_embeddings=outputs.mask_embeddings,
            image_sizes=image_sizes if image_sizes is not None else padded.clone(),
            padded_sizes=padded.clone(),
            clip_hidden_states=outputs.clip_hidden_states,
            side_hidden_states=outputs.side_hidden_states,
            decoder_hidden_states=outputs.decoder_hidden_states,
        )

    def compute_tokenization_loss(self, pixel_values, outputs: PATModelOutput, image_sizes=None, generator=None):
        """PAT's VQ, spatial-alignment and reconstruction losses (weighted) -> (total, weighted terms)."""
        image, valid = pixel_values, _valid_pixel_mask(pixel_values, image_sizes)
        reconstruction = outputs.reconstruction
        if reconstruction is not None and reconstruction.shape[-2:] != image.shape[-2:]:
            # coarser pyramids (e.g. scales 1, 1, 1) reconstruct at a lower resolution: compare at that size
            image = F.adaptive_avg_pool2d(image, reconstruction.shape[-2:])
            valid = F.adaptive_avg_pool2d(valid, reconstruction.shape[-2:]) > 0.5
        pyramid = {name: outputs.quantized_features[name] for name in PYRAMID_STAGES}
        return self.tokenization_loss(
            image, pyramid, outputs.codebook_losses, reconstruction, valid_mask=valid, generator=generator
        )

    def compute_loss(self, class_logits, mask_logits, auxiliary, labels, sampling_points=None, generator=None):
        """SAN's weighted loss of the final level and every auxiliary level -> (total, weighted terms)."""
        targets = labels_to_targets(labels, class_logits.shape[-1] - 1, self.config.ignore_index)
        levels = [(class_logits, mask_logits)] + [
            (aux["class_queries_logits"], aux["masks_queries_logits"]) for aux in auxiliary
        ]
        total, weighted, _, _ = self.criterion(levels, targets, sampling_points, generator)
        return total, weighted


__all__ = [
    "PATForOpenVocabSegmentation",
    "PATForOpenVocabSegmentationOutput",
    "PATModel",
    "PATModelOutput",
    "PATPreTrainedModel",
]
