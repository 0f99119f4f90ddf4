"""PATConfig: one configuration for SAN mode and full PAT (switched by `use_pyramid_tokenization`)."""

import functools
import json
import warnings
from pathlib import Path

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


# The 14 "vild" prompt templates SAN ensembles for every class name.
VILD_TEMPLATES = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)


# Keyword arguments that are not PATConfig fields but that config.json files normally carry or PreTrainedConfig
# itself consumes; any other key that ends up as an attribute is a field this version does not know (e.g. a config
# from a newer version). Keys PreTrainedConfig drops (generation parameters such as Trainer's `use_cache`) are silent.
KNOWN_EXTRA_KWARGS = frozenset(
    {
        "model_type", "auto_map", "custom_pipelines", "torch_dtype", "num_labels", "name_or_path",
        "output_attentions", "attn_implementation", "experts_implementation", "per_layer_config",
    }
)


# Named presets (JSON files): `configuration/` of a checkout or editable install, or the copy a wheel installs
# as `modeling_pat/presets/`.
_PACKAGE_DIR = Path(__file__).resolve().parent
PRESETS_DIR = next(
    (d for d in (_PACKAGE_DIR.parent / "configuration", _PACKAGE_DIR / "presets") if d.is_dir()),
    _PACKAGE_DIR.parent / "configuration",
)
# The benchmarks' class-name lists shipped in `configuration/vocabularies/`, by short name.
VOCABULARY_FILES = {
    "coco171": "coco_stuff_171.json",
    "ade150": "ade150.json",
    "ade847": "ade847.json",
    "pc59": "pc59.json",
    "pc459": "pc459.json",
    "voc20": "voc20.json",
}


def load_vocabulary(name: str) -> dict:
    """A shipped vocabulary file (`configuration/vocabularies/`) as a dict (`class_names`, `ignore_index`, ...)."""
    if name not in VOCABULARY_FILES:
        raise ValueError(f"Unknown vocabulary {name!r}; available: {sorted(VOCABULARY_FILES)}.")
    with open(PRESETS_DIR / "vocabularies" / VOCABULARY_FILES[name], encoding="utf-8") as handle:
        return json.load(handle)


@functools.cache
def stuff_class_names() -> frozenset[str]:
    """Lower-cased class names that are "stuff" (sky, grass, wall...) in every shipped vocabulary that marks stuff
    classes (`stuff_class_ids`: ADE-150, COCO-Stuff-171) and has that name; a name that is a thing anywhere (COCO's
    "cabinet" is stuff, ADE's is a thing) is left out. Empty where the vocabulary files are not installed (e.g.
    Hub remote code)."""
    stuff, things = set(), set()
    for name in VOCABULARY_FILES:
        try:
            vocabulary = load_vocabulary(name)
        except OSError:
            continue
        marked = set(vocabulary.get("stuff_class_ids", ()))
        if not marked:
            continue
        for index, class_name in enumerate(vocabulary["class_names"]):
            (stuff if index in marked else things).add(class_name.lower())
    return frozenset(stuff - things)


@strict
class PATConfig(PreTrainedConfig):
    r"""
    Configuration of SAN (Side Adapter Network) and PAT (its feature-pyramid tokenization extension).

    The defaults describe SAN with CLIP ViT-B/16 (`configuration/san-clip-vit-b16.json`). Named presets live in
    the repository's `configuration/` folder; load one with `PATConfig.from_json_file(path)`.

    CLIP (frozen; built with open_clip from `clip_config`, never downloaded at construction):
        clip_model_name (`str`): open_clip architecture name, used when `clip_config` is None and for provenance.
        clip_config (`dict`, *optional*): open_clip model config (`embed_dim`, `vision_cfg`, `text_cfg`).
        clip_quick_gelu (`bool`): QuickGELU activations, as in the OpenAI weights.
        clip_resolution (`float`): scale factor applied to the padded image before CLIP (0.5 for B/16, 0.7 for L/14).
        clip_feature_layers (`int`): CLIP blocks run to extract features; the remaining blocks form the
            recognition head (SAN's `FEATURE_LAST_LAYER_IDX`).
        clip_trainable_positional_embedding (`bool`): SAN fine-tunes CLIP's visual positional embedding.
        clip_trainable_layers (`int`): the last this many CLIP visual blocks train too (0, SAN: none). The text
            tower always stays frozen.
        clip_lr_multiplier (`float`): learning-rate factor of those blocks' parameters (the optimiser's groups).

    Side adapter (a small plain ViT that sees the full-resolution image):
        side_hidden_size, side_num_hidden_layers, side_num_attention_heads, side_mlp_ratio, side_patch_size,
        side_image_size (size of the positional-embedding grid, in pixels), side_layer_norm_eps.
        num_queries (`int`): query ("global") tokens, one mask proposal each.
        fusion_clip_layers / fusion_side_layers (`list[int]`): CLIP output i (0 = after `ln_pre`, i = after block i)
            is added to the side tokens after side block j (0 = before the first block), pairwise.
        deep_supervision_layers (`list[int]`): side blocks (1-indexed) whose outputs are decoded in training;
            the last one is the final output.

    Mask decoder and attention bias:
        mask_embed_dim, mask_mlp_dim, mask_mlp_num_layers: the three MLPs of the decoder.
        attn_bias_num_heads (`int`): must equal the number of CLIP vision heads.
        attn_bias_num_layers (`int`): distinct biases for the recognition layers (1 = shared by all).
        rescale_attn_bias (`bool`): learnable scalar affine on the bias.
        rec_mask_value (`float`): additive mask constant of the recognition layers (SAN uses -100, not -inf).

    Text classifier:
        prompt_templates (`list[str]`): templates ensembled per class name (`{}` is replaced by the name).

    Input:
        size_divisibility (`int`): the padded input size is a multiple of this.

    Loss (Mask2Former criterion, as SAN):
        class_weight, mask_weight, dice_weight, no_object_weight, train_num_points, oversample_ratio,
        importance_sample_ratio, ignore_index.

    use_pyramid_tokenization (`bool`): False builds exactly SAN; True adds PAT's feature-pyramid tokenization.
    """

    model_type = "pat"

    clip_model_name: str = "ViT-B-16"
    clip_config: dict | None = None
    clip_quick_gelu: bool = True
    clip_resolution: float = 0.5
    clip_feature_layers: int = 9
    clip_trainable_positional_embedding: bool = True
    clip_trainable_layers: int = 0
    clip_lr_multiplier: float = 1.0

    side_hidden_size: int = 240
    side_num_hidden_layers: int = 8
    side_num_attention_heads: int = 6
    side_mlp_ratio: float = 4.0
    side_patch_size: int = 16
    side_image_size: int = 640
    side_layer_norm_eps: float = 1e-6
    num_queries: int = 100
    fusion_clip_layers: list[int] | tuple[int, ...] = (0, 3, 6, 9)
    fusion_side_layers: list[int] | tuple[int, ...] = (0, 1, 2, 3)
    fusion_layer_norm_eps: float = 1e-6
    deep_supervision_layers: list[int] | tuple[int, ...] = (7, 8)

    mask_embed_dim: int = 256
    mask_mlp_dim: int = 256
    mask_mlp_num_layers: int = 3
    attn_bias_num_heads: int = 12
    attn_bias_num_layers: int = 1
    rescale_attn_bias: bool = True
    rec_mask_value: float = -100.0
    rec_downsample_method: str = "max"

    prompt_templates: list[str] | tuple[str, ...] = VILD_TEMPLATES

    size_divisibility: int = 32

    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    train_num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    ignore_index: int = 255

    initializer_range: float = 0.02
    use_pyramid_tokenization: bool = False

    # PAT (architecture.md section 3; every default is the register's choice). Stages: early, mid, late.
    pyramid_side_layers: list[int] | tuple[int, ...] = (1, 2, 3)
    pyramid_scales: list[int] | tuple[int, ...] = (4, 2, 1)
    codebook_sizes: list[int] | tuple[int, ...] = (128, 64, 32)
    latent_codebook_size: int = 256
    code_dim: int = 32
    vq_beta: float = 0.25
    vq_diversity_weight: float = 1.0
    vq_diversity_temperature: float = 0.1
    use_vmf: bool = True
    hsattn_kappa: float = 30.0
    token_mixer_hidden_dim: int = 256
    use_token_mixer: bool = True
    global_attn_num_heads: int = 6
    use_pixel_residual: bool = True
    unified_tokens: bool = False
    dysample_groups: int = 4
    decoder_hidden_size: int = 256
    decoder_num_attention_heads: int = 8
    decoder_mlp_ratio: float = 4.0
    decoder_num_extra_layers: int = 2
    decoder_attn_window: int | None = 16
    decoder_stages: list[str] | tuple[str, ...] = ("early", "mid", "late")
    shared_decoder: bool = True
    spade_hidden_dim: int = 128
    vq_loss_weight: float = 0.1
    use_spatial_alignment: bool = True
    spatial_alignment_weight: float = 0.1
    crf_num_samples: int = 1000
    reconstruction_weight: float = 1.0
    reconstruction_mse_weight: float = 1.0
    reconstruction_l1_weight: float = 0.1
    reconstruction_perceptual_weight: float = 0.1
    perceptual_network: str = "auto"

    def __post_init__(self, **kwargs):
        candidates = [key for key in kwargs if key not in KNOWN_EXTRA_KWARGS and not key.startswith("_")]
        super().__post_init__(**kwargs)
        unknown = sorted(key for key in candidates if key in self.__dict__)  # kept, not consumed or dropped
        if unknown:
            saved_with = f" (saved with transformers {self.transformers_version})" if self.transformers_version else ""
            warnings.warn(
                f"PATConfig: unknown field(s) {unknown}{saved_with}, perhaps from a newer version of modeling_pat; "
                "they are kept as attributes (and saved again) but this version does not use them.",
                UserWarning,
                stacklevel=3,
            )

    def validate_architecture(self):
        """Fail at construction on settings the model cannot build (called by `@strict`)."""
        if self.side_hidden_size % self.side_num_attention_heads != 0:
            raise ValueError(
                f"side_hidden_size ({self.side_hidden_size}) must be a multiple of side_num_attention_heads "
                f"({self.side_num_attention_heads})."
            )
        if len(self.fusion_clip_layers) != len(self.fusion_side_layers):
            raise ValueError("fusion_clip_layers and fusion_side_layers must have the same length (they are pairs).")
        if len(set(self.fusion_side_layers)) != len(self.fusion_side_layers):
            raise ValueError(f"fusion_side_layers has duplicates: {list(self.fusion_side_layers)}.")
        if any(not 0 <= i <= self.clip_feature_layers for i in self.fusion_clip_layers):
            raise ValueError(
                f"fusion_clip_layers {list(self.fusion_clip_layers)} must lie in [0, clip_feature_layers="
                f"{self.clip_feature_layers}]."
            )
        if any(not 0 <= j <= self.side_num_hidden_layers for j in self.fusion_side_layers):
            raise ValueError(
                f"fusion_side_layers {list(self.fusion_side_layers)} must lie in [0, side_num_hidden_layers="
                f"{self.side_num_hidden_layers}]."
            )
        layers = list(self.deep_supervision_layers)
        if not layers or layers != sorted(set(layers)) or layers[-1] != self.side_num_hidden_layers:
            raise ValueError(
                f"deep_supervision_layers {layers} must be increasing and end with the last side block "
                f"({self.side_num_hidden_layers})."
            )
        if self.clip_trainable_layers < 0:
            raise ValueError(f"clip_trainable_layers must be >= 0, got {self.clip_trainable_layers}.")
        if not self.clip_lr_multiplier > 0:
            raise ValueError(f"clip_lr_multiplier must be > 0, got {self.clip_lr_multiplier}.")
        if self.rec_downsample_method not in ("max", "avg", "bilinear", "bicubic", "nearest"):
            raise ValueError(f"Unknown rec_downsample_method {self.rec_downsample_method!r}.")
        if not self.prompt_templates or any("{}" not in t for t in self.prompt_templates):
            raise ValueError("prompt_templates must be a non-empty list of strings that each contain '{}'.")

    @classmethod
    def from_preset(cls, name: str) -> "PATConfig":
        """A named preset from the repository's `configuration/` folder, e.g. `"san-clip-vit-b16"` or `"san-tiny"`."""
        path = PRESETS_DIR / f"{name.removesuffix('.json')}.json"
        if not path.is_file():
            available = sorted(p.stem for p in PRESETS_DIR.glob("*.json")) if PRESETS_DIR.is_dir() else []
            raise ValueError(f"Unknown preset {name!r}; available presets: {available}.")
        return cls.from_json_file(str(path))


__all__ = ["PATConfig", "VILD_TEMPLATES", "stuff_class_names"]
