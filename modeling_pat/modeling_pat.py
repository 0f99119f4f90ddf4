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
| Q | mask queries: SAN's query / [SOS] tokens, PAT's global tokens (100); Q_k of them kept as segments |
| N | classes of the vocabulary; N + 1 with the learnable void class last |
| T | prompt templates per class name |
| A | attention heads (A_clip = CLIP heads = attention-bias heads, A_side, A_dec) |
| D | CLIP's joint image-text embedding size (512 for ViT-B/16) |
| C_clip, C_side, C_dec | widths: CLIP visual (768), side ViT (240), PAT decoder (256) |
| C_code, C_mask | widths: code vectors (32), SAN's mask embeddings (256) |
| K | codebook size (K_s for codebook s) |
| h x w | CLIP token grid (CLIP input size / CLIP patch size) |
| H x W | side grid (input size / side patch size, 40 x 40 at 640 x 640) |
| H_s x W_s | grid of pyramid stage s: early 4H x 4W, mid 2H x 2W, late and latent H x W (with the default scales) |
| L | tokens of a flattened grid: L = H * W (L_clip = h * w); S = Q + 1 + L_clip a CLIP recognition sequence |
| H_img x W_img | the model input's pixel size (padded); H_out x W_out a requested output size |
| M | ground-truth segments of one image (training targets); M_B matched (query, segment) pairs of a batch |
| P | sampled points (matcher, mask loss, CRF pixels) |
| R | attention windows of r x r tokens (PAT decoder) |
| F | feature layers (perceptual loss) |
| G | offset groups (DySample) |
| C | a generic layer's channels (`layers.py`, `samplers.py`): whichever width its caller gives it |

| paper / SAN code | here |
|---|---|
| side adapter network | `PATSideAdapter` (`side_adapter.py`) |
| fusion layer (`AddFusion`) | `PATFusionLayer` |
| `MLPMaskDecoder` | `PATMaskDecoder` (`mask_decoder.py`) |
| `FeatureExtractor` / `RecWithAttnbiasHead` | `PATClipTower.extract_features` / `.recognize` (`clip_tower.py`) |
| `LearnableBgOvClassifier` | `PATClipTower.encode_class_names` + `PATOpenVocabClassifier` |
| `SetCriterion` + `HungarianMatcher` | `PATSegmentationLoss` + `PATHungarianMatcher` (`segmentation_loss.py`) |
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils.generic import can_return_tuple

from .class_embeddings import PATClassEmbeddingsMixin
from .clip_tower import PATClipFeatures, PATClipTower, PATOpenVocabClassifier
from .configuration_pat import PATConfig
from .constants import PYRAMID_STAGES
from .inference_cache import PATInferenceCache
from .layers import PATChannelLayerNorm
from .model_inputs import (
    check_class_embeddings,
    check_labels,
    check_sizes,
    prepare_pixel_values,
    refuse_attention_weights,
    valid_pixel_mask,
)
from .model_outputs import (
    PATDecodedLevel,
    PATForOpenVocabSegmentationOutput,
    PATModelOutput,
    clip_hidden_states,
    tokenization_fields,
)
from .pixel_branch import PATPixelBranchOutput
from .pyramid_tokenization import PATPyramidTokenization, PATTokenizationOutput
from .quantizer import PATQuantizerOutput, PATVectorQuantizer, autocast_off
from .samplers import PATOffsetConv2d
from .segmentation_loss import PATSegmentationLoss, labels_to_targets
from .side_adapter import PATFusionProjection, PATSideAdapter, PATSideAdapterOutput, PATSideLevel
from .tokenization_loss import PATTokenizationLoss, perceptual_feature_network, resolve_perceptual_network
from .weights_files import bad_weights_error, candidate_weights_files


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
    # Checkpoint keys renamed since models were first saved, read under their new names by `from_pretrained`: the
    # PAT decoder's feed-forward was an nn.Sequential (mlp.0 / mlp.2) before it became `PATFeedForward`.
    renamed_keys = {
        r"(tokenization\.(?:pixel_)?decoder\..+\.mlp)\.0\.": r"\1.fc1.",
        r"(tokenization\.(?:pixel_)?decoder\..+\.mlp)\.2\.": r"\1.fc2.",
    }

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, then the config's frozen set again (loading builds the parameters anew,
        all trainable, which would otherwise train the whole CLIP, text tower included). A truncated or corrupt
        weights file raises an OSError naming the file and what is wrong with it (safetensors itself only says
        "Error while deserializing header"). Keys of earlier versions load under their new names (`renamed_keys`,
        after any `key_mapping` the caller gives)."""
        from safetensors import SafetensorError

        kwargs["key_mapping"] = {**(kwargs.get("key_mapping") or {}), **cls.renamed_keys}
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
        """Drop every value derived from the weights (see `inference_cache.py`). Called on loading weights; call it
        after editing weights in place. (A subclass may also forget values keyed on the weights' bytes here.)"""
        self._drop_inference_cache()

    def _drop_inference_cache(self) -> None:
        """Empty the inference cache only: what a mode switch or a move needs, since the weights' values stay."""
        cache = getattr(self, "inference_cache", None)
        if cache is not None:
            cache.clear()

    def train(self, mode: bool = True):
        if mode != self.training:
            self._drop_inference_cache()
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):
        result = super()._apply(fn, recurse)
        self._drop_inference_cache()  # `.to`, `.half`, ...: cached tensors are on the old device or dtype
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
        mask_logits, attn_biases = self.side_adapter.decode_masks(level)
        mask_embeddings = self.clip_tower.recognize(clip_features, attn_biases, self.config.num_queries)
        return PATDecodedLevel(mask_logits, mask_embeddings, attn_biases[0])

    def decode_pat(
        self, tokens: PATTokenizationOutput, level: PATSideLevel, clip_features: PATClipFeatures
    ) -> PATDecodedLevel:
        """PAT's final level (choice M2): decoder masks, recognised under SAN's bias built from the final tokens."""
        attn_biases = self.side_adapter.attention_bias(tokens.global_tokens, level.side_tokens)
        mask_embeddings = self.clip_tower.recognize(clip_features, attn_biases, self.config.num_queries)
        return PATDecodedLevel(tokens.masks_queries_logits, mask_embeddings, attn_biases[0])

    def run_side_adapter(
        self, pixel_values: torch.Tensor, clip_features: PATClipFeatures, levels
    ) -> tuple[PATSideAdapterOutput, dict[str, torch.Tensor]]:
        """The side ViT; in PAT mode, the semantic branch updates its query tokens after each pyramid block.

        The side ViT runs in steps up to each pyramid block (`PATSideAdapter.run`); the semantic branch then reads
        that block's side tokens before fusion and its query tokens, and its global tokens replace the queries.
        Returns the side ViT's output and PAT's local tokens e_s (B, K_s, C_code) by stage name ({} in SAN mode).
        """
        side, tokenization = self.side_adapter, self.tokenization
        if tokenization is None:
            return side(pixel_values, clip_features.maps, output_layers=levels), {}
        state = side.start(pixel_values, clip_features.maps, levels, query_embed=tokenization.query_embed())
        local_tokens, previous = {}, None
        for stage, position in tokenization.stage_positions.items():
            side_tokens = side.run(state, position)  # (B, L, C_side), before fusion
            previous, global_tokens = tokenization.semantic_stage(stage, side_tokens, side.queries(state), previous)
            local_tokens[stage] = previous
            side.set_queries(state, global_tokens)
        return side.finish(state), local_tokens

    def encode_tokens(self, pixel_values: torch.Tensor) -> tuple[PATPixelBranchOutput, PATQuantizerOutput]:
        """PAT only: the image's codes without the decoder or heads -> (pyramid quantizer outputs, latent ones)."""
        if self.tokenization is None:
            raise ValueError("Tokens exist only in PAT mode (config.use_pyramid_tokenization=True).")
        pixel_values = prepare_pixel_values(pixel_values, self.config.size_divisibility, self.input_dtype)
        clip_features = self.clip_tower.extract_features(self.clip_input(pixel_values))
        side, _ = self.run_side_adapter(pixel_values, clip_features, self.side_adapter.output_layers[-1:])
        return self.tokenization.encode(pixel_values, side.fusion_terms, side.levels[-1].side_tokens)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_auxiliary_logits: bool | None = None,
        output_hidden_states: bool | None = None,
        output_reconstruction: bool | None = None,
        output_attentions: bool | None = None,
        image_sizes: torch.Tensor | None = None,
        original_sizes: torch.Tensor | None = None,
    ) -> PATModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            Normalised images, padded to a multiple of `config.size_divisibility` (see `PATImageProcessor`); checked
            and cast to the model's dtype by `prepare_pixel_values`.
        output_auxiliary_logits (`bool`, *optional*):
            Decode the deep-supervision levels before the final one too (default: in training mode only).
        output_reconstruction (`bool`, *optional*):
            PAT mode: also reconstruct the image (default: in training mode only).
        output_hidden_states (`bool`, *optional*):
            Fill `clip_hidden_states`, `side_hidden_states` and, in PAT mode, `decoder_hidden_states` (default:
            `config.output_hidden_states`).
        output_attentions (`bool`, *optional*):
            Not supported (SDPA returns no weights): True is a ValueError.
        image_sizes / original_sizes (`torch.LongTensor` of shape `(batch_size, 2)`, *optional*):
            What the image processor returns beside `pixel_values`, accepted (shape-checked) so that
            `model(**image_processor(images))` works; the image-side model does no post-processing with them.

        Other keyword arguments are a TypeError (`return_dict` is taken by `can_return_tuple`).
        """
        refuse_attention_weights(output_attentions, self.config)
        pixel_values = prepare_pixel_values(pixel_values, self.config.size_divisibility, self.input_dtype)
        for name, sizes in (("image_sizes", image_sizes), ("original_sizes", original_sizes)):
            check_sizes(sizes, name, pixel_values.shape[0])
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
        side, local_tokens = self.run_side_adapter(pixel_values, clip_features, levels)
        last = side.levels[-1]
        # 3. masks + attention bias per level, and CLIP recognition of each mask under that bias
        tokens = None
        if pat:  # pixel branch, latent VQ, shared decoder; SAN's own head on block 8 is the auxiliary level
            tokens = self.tokenization(
                pixel_values, side.fusion_terms, last.queries, last.side_tokens, local_tokens,
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
            clip_hidden_states=clip_hidden_states(clip_features) if output_hidden_states else None,
            side_hidden_states=tuple(side.hidden_states) if output_hidden_states else None,
            **(tokenization_fields(tokens) if pat else {}),
        )


class PATForOpenVocabSegmentation(PATClassEmbeddingsMixin, PATPreTrainedModel):
    """SAN/PAT with the open-vocabulary classifier: class logits over any class names (+ void) and the loss."""

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
        output_auxiliary_logits (`bool`, *optional*):
            Return `auxiliary_logits`, the deep-supervision levels before the final one (default: in training mode
            or when `labels` are given).
        output_hidden_states (`bool`, *optional*):
            Fill `clip_hidden_states`, `side_hidden_states` and, in PAT mode, `decoder_hidden_states` (default:
            `config.output_hidden_states`).
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
        refuse_attention_weights(output_attentions, self.config)
        if sum(x is not None for x in (input_ids, class_embeddings)) > 1:
            raise ValueError("Pass at most one of `input_ids` and `class_embeddings`.")
        if class_embeddings is not None:
            check_class_embeddings(class_embeddings, self.classifier.void_embedding.shape[-1])
        else:
            class_embeddings = self.get_class_embeddings(input_ids=input_ids)
        text_embeddings = self.classifier(class_embeddings)
        want_aux = output_auxiliary_logits if output_auxiliary_logits is not None else (self.training or labels is not None)
        outputs = self.model(
            pixel_values, output_auxiliary_logits=want_aux, output_hidden_states=output_hidden_states,
            output_reconstruction=want_aux, return_dict=True,
        )
        for name, sizes in (("image_sizes", image_sizes), ("original_sizes", original_sizes)):
            check_sizes(sizes, name, pixel_values.shape[0])  # after the model: `pixel_values` is known good there
        class_logits = self.classify(outputs.mask_embeddings, text_embeddings)
        auxiliary = [
            {"class_queries_logits": self.classify(aux["mask_embeddings"], text_embeddings),
             "masks_queries_logits": aux["masks_queries_logits"]}
            for aux in outputs.auxiliary_outputs or []
        ]
        loss, loss_dict, loss_details = None, None, None
        if labels is not None:
            check_labels(labels, pixel_values)
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
        image, valid = pixel_values, valid_pixel_mask(pixel_values, image_sizes)
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
