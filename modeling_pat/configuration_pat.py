"""PATConfig: one configuration for SAN mode and full PAT (switched by `use_pyramid_tokenization`)."""

import functools
import json
import math
import string
import warnings
from pathlib import Path

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .constants import PYRAMID_STAGES


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


# The allowed range of every numeric PATConfig field, checked when a config is built or loaded (`validate_config`).
# Counts and sizes: whole numbers >= 1 (a zero query, head, layer or codebook count builds an empty module that fails,
# if at all, deep inside the forward pass).
COUNT_FIELDS = (
    "clip_feature_layers", "side_hidden_size", "side_num_hidden_layers", "side_num_attention_heads",
    "side_patch_size", "side_image_size", "num_queries", "mask_embed_dim", "mask_mlp_dim", "mask_mlp_num_layers",
    "attn_bias_num_heads", "attn_bias_num_layers", "size_divisibility", "train_num_points", "latent_codebook_size",
    "code_dim", "token_mixer_hidden_dim", "global_attn_num_heads", "dysample_groups", "decoder_hidden_size",
    "decoder_num_attention_heads", "spade_hidden_dim", "crf_num_samples",
)
# Whole numbers >= 0.
OPTIONAL_COUNT_FIELDS = ("decoder_num_extra_layers", "clip_trainable_layers")
# Finite floats > 0: scales, ratios, epsilons, temperatures, concentrations.
POSITIVE_FIELDS = (
    "clip_resolution", "side_mlp_ratio", "side_layer_norm_eps", "fusion_layer_norm_eps", "decoder_mlp_ratio",
    "vq_diversity_temperature", "hsattn_kappa", "clip_lr_multiplier",
)
# Finite floats >= 0: loss weights (0 switches a term off) and the initialiser's standard deviation.
WEIGHT_FIELDS = (
    "class_weight", "mask_weight", "dice_weight", "no_object_weight", "vq_beta", "vq_diversity_weight",
    "vq_loss_weight", "spatial_alignment_weight", "reconstruction_weight", "reconstruction_mse_weight",
    "reconstruction_l1_weight", "reconstruction_perceptual_weight", "initializer_range",
)
# PAT's fields (read only with `use_pyramid_tokenization`), in declaration order; the PAT presets write every one out.
PAT_FIELDS = (
    "pyramid_side_layers", "pyramid_scales", "codebook_sizes", "latent_codebook_size", "code_dim", "vq_beta",
    "vq_diversity_weight", "vq_diversity_temperature", "use_vmf", "hsattn_kappa", "token_mixer_hidden_dim",
    "use_token_mixer", "global_attn_num_heads", "use_pixel_residual", "unified_tokens", "dysample_groups",
    "decoder_hidden_size", "decoder_num_attention_heads", "decoder_mlp_ratio", "decoder_num_extra_layers",
    "decoder_attn_window", "decoder_stages", "shared_decoder", "spade_hidden_dim", "vq_loss_weight",
    "use_spatial_alignment", "spatial_alignment_weight", "crf_num_samples", "reconstruction_weight",
    "reconstruction_mse_weight", "reconstruction_l1_weight", "reconstruction_perceptual_weight", "perceptual_network",
)
REC_DOWNSAMPLE_METHODS = ("max", "avg", "bilinear", "bicubic", "nearest")
PERCEPTUAL_NETWORKS = ("auto", "vgg", "clip", "none")  # see `tokenization_loss.resolve_perceptual_network`


def validate_prompt_templates(templates, argument: str = "prompt_templates") -> list[str]:
    """One template or a list of them -> a list; each must hold exactly one `{}` (the class name) and format cleanly.

    The one check of templates, used by PATConfig, PATProcessor and the pipeline; errors name `argument`. Other braces
    must be doubled (`{{` / `}}`), as in `str.format`: "a {0}", "a {name}" or "a {} or a {}" would fail, or put the
    name in the wrong place, only when the prompts are built.
    """
    if isinstance(templates, str):
        templates = [templates]
    if not isinstance(templates, list | tuple):
        raise TypeError(f"`{argument}` must be a template string or a list of them, got {type(templates).__name__}.")
    if not templates:
        raise ValueError(f"`{argument}` must contain at least one template, e.g. 'a photo of a {{}}.'.")
    for index, template in enumerate(templates):
        if not isinstance(template, str):
            raise TypeError(f"`{argument}[{index}]` must be a string, got {type(template).__name__} {template!r}.")
        try:
            fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                      if name is not None]
        except ValueError as error:  # a lone "{" or "}"
            raise ValueError(
                f"`{argument}[{index}]` {template!r} does not format: {error}; "
                "write literal braces as '{{' / '}}'."
            ) from error
        if fields != [("", "", None)]:
            raise ValueError(
                f"`{argument}[{index}]` {template!r} must contain exactly one '{{}}' (the class name) and no other "
                f"placeholder, found {len(fields)}: {['{' + name + '}' for name, _, _ in fields]}; write literal "
                "braces as '{{' / '}}'."
            )
    return list(templates)


def _fail(name: str, allowed: str, value) -> None:
    raise ValueError(f"PATConfig.{name} must be {allowed}, got {value!r}.")


def _check_ranges(config) -> None:
    """Every numeric field within its range (module constants above); bools are not numbers here."""
    for name in COUNT_FIELDS + OPTIONAL_COUNT_FIELDS:
        value, low = getattr(config, name), 0 if name in OPTIONAL_COUNT_FIELDS else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            _fail(name, f"a whole number >= {low}", value)
    for name in POSITIVE_FIELDS + WEIGHT_FIELDS:
        value = getattr(config, name)
        number = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
        if not number or value < 0 or (value == 0 and name in POSITIVE_FIELDS):
            _fail(name, "a finite number > 0" if name in POSITIVE_FIELDS else "a finite number >= 0", value)
    if not 0 <= config.importance_sample_ratio <= 1:
        _fail("importance_sample_ratio", "in [0, 1] (the share of sampled points chosen by uncertainty)",
              config.importance_sample_ratio)
    if not config.oversample_ratio >= 1 or not math.isfinite(config.oversample_ratio):
        _fail("oversample_ratio", "a finite number >= 1 (candidate points per sampled point)", config.oversample_ratio)
    if not -math.inf < config.rec_mask_value < 0:
        _fail("rec_mask_value", "a finite negative number (the additive mask of the recognition layers)",
              config.rec_mask_value)
    window = config.decoder_attn_window
    if window is not None and (isinstance(window, bool) or window < 2):
        _fail("decoder_attn_window", "None (global attention) or a window side >= 2 tokens", window)


def _check_side_adapter(config) -> None:
    """The side ViT, its fusion with CLIP and its deep supervision fit together."""
    if config.side_hidden_size % config.side_num_attention_heads:
        raise ValueError(
            f"PATConfig.side_hidden_size ({config.side_hidden_size}) must be a multiple of side_num_attention_heads "
            f"({config.side_num_attention_heads})."
        )
    if config.side_image_size % config.side_patch_size:
        _fail("side_image_size", f"a multiple of side_patch_size={config.side_patch_size}", config.side_image_size)
    if config.size_divisibility % config.side_patch_size:
        _fail("size_divisibility", f"a multiple of side_patch_size={config.side_patch_size} (padded inputs must "
              "cut into whole side patches)", config.size_divisibility)
    clip_layers = ((config.clip_config or {}).get("vision_cfg") or {}).get("layers")
    if isinstance(clip_layers, int) and not config.clip_feature_layers < clip_layers:
        _fail("clip_feature_layers", f"below the CLIP depth ({clip_layers} blocks; the rest recognise the masks)",
              config.clip_feature_layers)
    if isinstance(clip_layers, int) and config.clip_trainable_layers > clip_layers:
        _fail("clip_trainable_layers", f"at most the CLIP depth ({clip_layers} visual blocks)", config.clip_trainable_layers)
    if len(config.fusion_clip_layers) != len(config.fusion_side_layers):
        raise ValueError(
            f"PATConfig.fusion_clip_layers ({len(config.fusion_clip_layers)} entries) and fusion_side_layers "
            f"({len(config.fusion_side_layers)}) must have the same length (they are pairs)."
        )
    if len(set(config.fusion_side_layers)) != len(config.fusion_side_layers):
        raise ValueError(f"PATConfig.fusion_side_layers has duplicates: {list(config.fusion_side_layers)}.")
    if any(not 0 <= i <= config.clip_feature_layers for i in config.fusion_clip_layers):
        _fail("fusion_clip_layers", f"CLIP outputs in [0, clip_feature_layers={config.clip_feature_layers}]",
              list(config.fusion_clip_layers))
    if any(not 0 <= j <= config.side_num_hidden_layers for j in config.fusion_side_layers):
        _fail("fusion_side_layers", f"side positions in [0, side_num_hidden_layers={config.side_num_hidden_layers}]",
              list(config.fusion_side_layers))
    layers = list(config.deep_supervision_layers)
    if not layers or layers != sorted(set(layers)) or layers[0] < 1 or layers[-1] != config.side_num_hidden_layers:
        _fail("deep_supervision_layers", "increasing side blocks in [1, side_num_hidden_layers] that end with the "
              f"last one ({config.side_num_hidden_layers})", layers)
    if config.rec_downsample_method not in REC_DOWNSAMPLE_METHODS:
        _fail("rec_downsample_method", f"one of {list(REC_DOWNSAMPLE_METHODS)}", config.rec_downsample_method)


def _check_pyramid(config) -> None:
    """PAT only: one stage index, scale and codebook per pyramid stage, each consistent with the side adapter."""
    stages = len(PYRAMID_STAGES)
    for name in ("pyramid_side_layers", "pyramid_scales", "codebook_sizes"):
        values = list(getattr(config, name))
        if len(values) != stages or any(isinstance(v, bool) or v < 1 for v in values):
            _fail(name, f"{stages} whole numbers >= 1, one per stage {list(PYRAMID_STAGES)}", values)
    positions = list(config.pyramid_side_layers)
    fused = sorted(j for j in config.fusion_side_layers if j >= 1)
    if positions != sorted(set(positions)) or not set(positions) <= set(fused):
        _fail("pyramid_side_layers", f"increasing side blocks that receive CLIP features (fusion_side_layers >= 1: "
              f"{fused})", positions)
    scales = list(config.pyramid_scales)
    if any(config.side_patch_size % s for s in scales) or any(a % b for a, b in zip(scales, scales[1:])):
        allowed = f"scales that divide side_patch_size={config.side_patch_size}, each a multiple of the next"
        _fail("pyramid_scales", allowed, scales)
    unknown = [s for s in config.decoder_stages if s not in PYRAMID_STAGES]
    if unknown or len(set(config.decoder_stages)) != len(config.decoder_stages):
        _fail("decoder_stages", f"distinct names from {list(PYRAMID_STAGES)}", list(config.decoder_stages))
    for width, heads in (("decoder_hidden_size", "decoder_num_attention_heads"),
                         ("side_hidden_size", "global_attn_num_heads")):
        if getattr(config, width) % getattr(config, heads):
            _fail(heads, f"a divisor of {width}={getattr(config, width)}", getattr(config, heads))
    for width in ("decoder_hidden_size", "side_hidden_size"):  # DySample splits the channels into groups
        if getattr(config, width) % config.dysample_groups:
            _fail("dysample_groups", f"a divisor of {width}={getattr(config, width)}", config.dysample_groups)
    if config.perceptual_network not in PERCEPTUAL_NETWORKS:
        _fail("perceptual_network", f"one of {list(PERCEPTUAL_NETWORKS)}", config.perceptual_network)


def _check_text_weights_fingerprint(value) -> None:
    """None, or "<dtype>:<64 hex digits>" as `save_pretrained` writes it (a hand-edited value would key the wrong
    cache file, so it is refused rather than trusted)."""
    if value is None:
        return
    dtype, _, digest = value.partition(":") if isinstance(value, str) else ("", "", "")
    if not (dtype and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        _fail("text_weights_fingerprint", 'None or "<dtype>:<sha256 hex>" (written by save_pretrained)', value)


def validate_config(config) -> None:
    """Every PATConfig rule, with a ValueError naming the field and its allowed range or values.

    Runs when a config is built (`PATConfig(...)`, `from_dict`, `from_pretrained`, `from_preset`) and again from
    `validate_architecture` (`config.validate()`, `save_pretrained`), so a bad setting never reaches the model. The
    pyramid fields are checked only with `use_pyramid_tokenization` (SAN ignores them).
    """
    _check_ranges(config)
    _check_side_adapter(config)
    validate_prompt_templates(config.prompt_templates, "PATConfig.prompt_templates")
    _check_text_weights_fingerprint(config.text_weights_fingerprint)
    if config.use_pyramid_tokenization:
        _check_pyramid(config)


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
    the repository's `configuration/` folder; load one with `PATConfig.from_json_file(path)`. Every field is checked
    when the config is built or loaded (`validate_config`): a bad setting is a ValueError naming the field and the
    values it allows.

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
        fusion_layer_norm_eps (`float`): epsilon of the LayerNorm that normalises each CLIP map before its fusion
            projection (SAN's `input_proj`).
        deep_supervision_layers (`list[int]`): side blocks (1-indexed) whose outputs are decoded in training;
            the last one is the final output.

    Mask decoder and attention bias:
        mask_embed_dim, mask_mlp_dim, mask_mlp_num_layers: the three MLPs of the decoder.
        attn_bias_num_heads (`int`): must equal the number of CLIP vision heads.
        attn_bias_num_layers (`int`): distinct biases for the recognition layers (1 = shared by all).
        rescale_attn_bias (`bool`): learnable scalar affine on the bias.
        rec_mask_value (`float`): additive mask constant of the recognition layers (SAN uses -100, not -inf).
        rec_downsample_method (`str`): how the side-grid attention bias is pooled to CLIP's grid for recognition,
            one of `REC_DOWNSAMPLE_METHODS` (SAN: "max").

    Text classifier:
        prompt_templates (`list[str]`): templates ensembled per class name, each with exactly one `{}` (replaced by
            the name; `validate_prompt_templates`).

    text_weights_fingerprint (`str`, *optional*): "<dtype>:<sha256>" of the text tower's weights as saved, written by
        `save_pretrained` and trusted by `from_pretrained` for the weights it loads (in that dtype), so the on-disk
        text-embedding cache finds its file without hashing the tower in every new process. None: hash when needed.

    Input:
        size_divisibility (`int`): the padded input size is a multiple of this.

    initializer_range (`float`): standard deviation of the N(0, std) init of a fresh model's linear and conv layers
        and of the side adapter's embeddings (`PATPreTrainedModel._init_weights`; CLIP keeps open_clip's own init).

    Loss (Mask2Former criterion, as SAN):
        class_weight, mask_weight, dice_weight, no_object_weight, train_num_points, oversample_ratio,
        importance_sample_ratio, ignore_index.

    use_pyramid_tokenization (`bool`): False builds exactly SAN; True adds PAT's feature-pyramid tokenization.

    PAT (read only with `use_pyramid_tokenization`; `PAT_FIELDS`). Each field names where it comes from: "paper"
    is PAT (arXiv 2412.14145; a number in parentheses is a section of the project's design notes on the paper),
    "Table II" its ablations, and an id is the choice taken where the paper is silent (the README's register of
    choices: id, question, choice). Stages are early, mid, late (`constants.PYRAMID_STAGES`).
        pyramid_side_layers (`list[int]`, (1, 2, 3)): side blocks after which each stage is read, the last three
            fusion depths. Paper (section 3.0, 3.1).
        pyramid_scales (`list[int]`, (4, 2, 1)): each stage's upsampling of the side grid. Paper (3.0); Table II
            rows (4, 4, 4) / (1, 1, 1); choice S1 (1x is the side grid).
        codebook_sizes (`list[int]`, (128, 64, 32)) and latent_codebook_size (`int`, 256): K per codebook, the
            latent being the side ViT's output. Paper (3.0, 3.8).
        code_dim (`int`, 32): width of every code, C_code. Paper (3.0).
        use_vmf (`bool`, True): vMF-VQ and HSAttn (paper Eq. 2); False is Table II's "No vMF meanshift". Choices
            V1 (l2-normalised lookup), H1.
        vq_beta (`float`, 0.25): commitment weight of the VQ loss. Choice V2 (3.2).
        vq_diversity_weight (`float`, 1.0), vq_diversity_temperature (`float`, 0.1): the codebook-usage term. Choice
            V3 (added; README register).
        hsattn_kappa (`float`, 30): HSAttn's fixed concentration. Choice H1 (3.3, MSMFormer's value).
        token_mixer_hidden_dim (`int`, 256): the TokenMixers' hidden width (paper: "3-layer MLP"). Choice T1 (3.4).
        use_token_mixer (`bool`, True): False is Table II's "no TokenMixer". Choice T1.
        global_attn_num_heads (`int`, 6): heads of the global tokens' cross-attention. Choice G1 (3.7).
        use_pixel_residual (`bool`, True): the pixel residual of paper Eq. 2; False is Table II's row. Choice P1.
        unified_tokens (`bool`, False): Table II's unified pixel/segmentation tokens: the global tokens read from
            the latent codebook through a TokenMixer (README register, "Unified tokens").
        dysample_groups (`int`, 4): DySample's offset groups, G. Choice U1 (3.5; the paper names DySample).
        decoder_hidden_size (`int`, 256): the shared decoder's width, C_dec. Paper (3.0, 3.9).
        decoder_num_attention_heads (`int`, 8), decoder_mlp_ratio (`float`, 4.0): its Transformer layers. Choice
            TR1.
        decoder_num_extra_layers (`int`, 2): Transformer layers after the three stages. Paper (3.0); choice R1.
        decoder_attn_window (`int` or None, 16): window side r of the decoder's attention above the side grid;
            None is the paper-literal global attention. Choice W1.
        decoder_stages (`list[str]`, all three): the stages the decoder keeps; Table II's FPN rows (3.16).
        shared_decoder (`bool`, True): one decoder for pixels and segmentation (paper Eq. 3); False is Table II's
            "separate decoding". Choice R1.
        spade_hidden_dim (`int`, 128): SPADE's hidden width. Choice SP1 (3.9).
        vq_loss_weight (`float`, 0.1): weight of the summed VQ losses. Paper (3.0, 3.12).
        use_spatial_alignment (`bool`, True), spatial_alignment_weight (`float`, 0.1): the CRF + TV term; False is
            Table II's row. Paper weight (3.12); choice SA1 (FeatUp's CRF, inner weights 1:1).
        crf_num_samples (`int`, 1000): pixels the CRF samples per image. Choice SA1 (FeatUp's value).
        reconstruction_weight (`float`, 1.0): weight of the reconstruction group. Paper (3.0, 3.12).
        reconstruction_mse_weight (1.0), reconstruction_l1_weight (0.1), reconstruction_perceptual_weight (0.1)
            (`float`): the group's inner weights (paper: ViT-VQGAN's combination). Choice RL1 (3.12).
        perceptual_network (`str`, "auto"): the perceptual term's features, "vgg" (LPIPS-style VGG16, read from the
            local torch cache), "clip" (the frozen CLIP trunk) or "none". "auto" is resolved once, when a model is
            built (VGG16 when its weights are cached, else CLIP), and the result is stored here and saved. Choice RL1.
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
    text_weights_fingerprint: str | None = None

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

    # PAT (`PAT_FIELDS`, documented above; every default is the paper's value or the register's choice)
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
    decoder_stages: list[str] | tuple[str, ...] = PYRAMID_STAGES
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
        unknown = sorted(key for key in candidates if key in vars(self))  # set as attributes: kept
        if unknown:
            saved_with = f" (saved with transformers {self.transformers_version})" if self.transformers_version else ""
            warnings.warn(
                f"PATConfig: unknown field(s) {unknown}{saved_with}, perhaps from a newer version of modeling_pat; "
                "they are kept as attributes (and saved again) but this version does not use them.",
                UserWarning,
                stacklevel=3,
            )
        # Here rather than only in `validate_architecture`: `@strict` wraps what that raises into its own exception
        # type, and a bad setting should be a ValueError naming the field.
        validate_config(self)

    def validate_architecture(self):
        """Fail on settings the model cannot build (called by `@strict` after construction and by `save_pretrained`;
        `__post_init__` has already run the same `validate_config` so that construction raises a plain ValueError)."""
        validate_config(self)

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """As `PreTrainedConfig.from_dict`, then validated again: keyword overrides are set after construction."""
        loaded = super().from_dict(config_dict, **kwargs)
        validate_config(loaded[0] if isinstance(loaded, tuple) else loaded)
        return loaded

    @classmethod
    def from_preset(cls, name: str) -> "PATConfig":
        """A named preset from the repository's `configuration/` folder, e.g. `"san-clip-vit-b16"` or `"san-tiny"`."""
        path = PRESETS_DIR / f"{name.removesuffix('.json')}.json"
        if not path.is_file():
            available = sorted(p.stem for p in PRESETS_DIR.glob("*.json")) if PRESETS_DIR.is_dir() else []
            raise ValueError(f"Unknown preset {name!r}; available presets: {available}.")
        return cls.from_json_file(str(path))


__all__ = [
    "PAT_FIELDS", "PATConfig", "VILD_TEMPLATES", "stuff_class_names", "validate_config", "validate_prompt_templates",
]
