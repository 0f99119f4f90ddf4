"""Official SAN checkpoints (MendelXu/SAN key layout) -> this package's model: key renaming, strict loading, checks.

Application code: the model modules never import it. `conversion_scripts/convert_san_to_hf.py` is its command line
and `modeling_pat.apps.pretrained` runs it once per official checkpoint to fill the converted-model cache.
"""

import json
import re
from pathlib import Path

import torch

from ..configuration_pat import PATConfig
from ..modeling_pat import PATForOpenVocabSegmentation
from ..processing_pat import PATProcessor
from ..weights_files import bad_weights_error, torch_load_weights


# Bumped whenever a change here would change a converted folder: the converted-model cache is keyed on it.
CONVERTER_VERSION = 1

# Reference buffers that are rebuilt from the config instead of converted.
DROPPED_KEYS = ("criterion.empty_weight", "ov_classifier.attn_mask")

# (reference regex, our name) pairs, tried in order; `{rec}` is filled with the recognition-block offset.
KEY_MAPPING = (
    (r"side_adapter_network\.vit_model\.pos_embed", r"model.side_adapter.pos_embed"),
    (r"side_adapter_network\.vit_model\.patch_embed\.proj\.(weight|bias)", r"model.side_adapter.patch_embed.\1"),
    (r"side_adapter_network\.vit_model\.blocks\.(\d+)\.(.+)", r"model.side_adapter.layers.\1.\2"),
    (r"side_adapter_network\.fusion_layers\.(layer_\d+)\.input_proj\.0\.(.+)", r"model.side_adapter.fusion_layers.\1.norm.\2"),
    (r"side_adapter_network\.fusion_layers\.(layer_\d+)\.input_proj\.1\.(.+)", r"model.side_adapter.fusion_layers.\1.proj.\2"),
    (r"side_adapter_network\.(query_embed|query_pos_embed|mask_decoder\..+)", r"model.side_adapter.\1"),
    (r"clip_visual_extractor\.resblocks\.(\d+)\.(.+)", r"model.clip_tower.clip.visual.transformer.resblocks.\1.\2"),
    (r"clip_visual_extractor\.(class_embedding|positional_embedding|conv1\..+|ln_pre\..+)", r"model.clip_tower.clip.visual.\1"),
    (r"clip_rec_head\.resblocks\.(\d+)\.(.+)", "REC"),
    (r"clip_rec_head\.(ln_post\..+|proj)", r"model.clip_tower.clip.visual.\1"),
    (r"ov_classifier\.bg_embed", r"classifier.void_embedding"),
    (
        r"ov_classifier\.(token_embedding\..+|positional_embedding|transformer\..+|ln_final\..+|text_projection|logit_scale)",
        r"model.clip_tower.clip.\1",
    ),
)


def rename_key(key: str, num_feature_layers: int) -> str | None:
    """Reference key -> our key (None for dropped buffers); raises KeyError for keys that have no mapping."""
    if key in DROPPED_KEYS:
        return None
    for pattern, target in KEY_MAPPING:
        match = re.fullmatch(pattern, key)
        if match is None:
            continue
        if target == "REC":  # the recognition head holds CLIP blocks F.., re-indexed from 0 by the reference
            block, rest = int(match.group(1)) + num_feature_layers, match.group(2)
            return f"model.clip_tower.clip.visual.transformer.resblocks.{block}.{rest}"
        return match.expand(target)
    raise KeyError(key)


# The inverse table (our name -> reference name), for exporting back to the reference layout; `REC` as above.
REVERSE_KEY_MAPPING = (
    (r"model\.side_adapter\.pos_embed", r"side_adapter_network.vit_model.pos_embed"),
    (r"model\.side_adapter\.patch_embed\.(weight|bias)", r"side_adapter_network.vit_model.patch_embed.proj.\1"),
    (r"model\.side_adapter\.layers\.(\d+)\.(.+)", r"side_adapter_network.vit_model.blocks.\1.\2"),
    (r"model\.side_adapter\.fusion_layers\.(layer_\d+)\.norm\.(.+)", r"side_adapter_network.fusion_layers.\1.input_proj.0.\2"),
    (r"model\.side_adapter\.fusion_layers\.(layer_\d+)\.proj\.(.+)", r"side_adapter_network.fusion_layers.\1.input_proj.1.\2"),
    (r"model\.side_adapter\.(query_embed|query_pos_embed|mask_decoder\..+)", r"side_adapter_network.\1"),
    (r"model\.clip_tower\.clip\.visual\.transformer\.resblocks\.(\d+)\.(.+)", "REC"),
    (r"model\.clip_tower\.clip\.visual\.(class_embedding|positional_embedding|conv1\..+|ln_pre\..+)", r"clip_visual_extractor.\1"),
    (r"model\.clip_tower\.clip\.visual\.(ln_post\..+|proj)", r"clip_rec_head.\1"),
    (r"classifier\.void_embedding", r"ov_classifier.bg_embed"),
    (r"model\.clip_tower\.clip\.(.+)", r"ov_classifier.\1"),
)


def to_reference_state_dict(converted: dict, config: PATConfig) -> dict:
    """Our state dict -> the reference key layout (the two rebuilt buffers are not produced)."""
    reference = {}
    for key, tensor in converted.items():
        for pattern, target in REVERSE_KEY_MAPPING:
            match = re.fullmatch(pattern, key)
            if match is None:
                continue
            if target == "REC":
                block, rest = int(match.group(1)), match.group(2)
                first = config.clip_feature_layers
                name = f"clip_visual_extractor.resblocks.{block}" if block < first else f"clip_rec_head.resblocks.{block - first}"
                reference[f"{name}.{rest}"] = tensor
            else:
                reference[match.expand(target)] = tensor
            break
        else:
            raise KeyError(f"No reference name for {key}.")
    return reference


def convert_state_dict(reference: dict, config: PATConfig) -> dict:
    """Rename every reference tensor (float32); fail listing all keys that have no mapping."""
    converted, unknown = {}, []
    for key, tensor in reference.items():
        try:
            new_key = rename_key(key, config.clip_feature_layers)
        except KeyError:
            unknown.append(key)
            continue
        if new_key is not None:
            converted[new_key] = tensor.float() if tensor.is_floating_point() else tensor
    if unknown:
        raise ValueError(f"{len(unknown)} checkpoint keys have no mapping (is this a SAN checkpoint?): {unknown[:10]}")
    return converted


def load_converted_weights(model: PATForOpenVocabSegmentation, converted: dict) -> None:
    """Load strictly: every model tensor must be provided, with the right shape, and nothing may be left over."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in converted and converted[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint ({len(missing)}): {missing[:10]}")
    if unexpected:
        problems.append(f"not in the model ({len(unexpected)}): {unexpected[:10]}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {mismatched[:10]}")
    if problems:
        raise ValueError(
            "The checkpoint does not fit this configuration (check --config):\n  " + "\n  ".join(problems)
        )
    model.load_state_dict(converted, strict=True)


def read_checkpoint(path: str | Path) -> dict:
    """A `.pth` (weights only, never unpickling code) or `.safetensors` file -> flat state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        bad = bad_weights_error([path])
        if bad is not None:
            raise bad
        return load_file(str(path))
    checkpoint = torch_load_weights(path)
    for wrapper in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return checkpoint


def config_from_reference_json(description: dict) -> PATConfig:
    """A golden folder's `config.json` (the reference's configuration, see its README) -> PATConfig."""
    clip, san, side = description["clip"], description["san"], description["side_adapter"]
    vision, text = clip["vision"], clip["text"]
    fusion = {int(k): int(v) for k, v in san["fusion_side_position_to_clip_index"].items()}
    train = description.get("train", {})
    names = description.get("class_names", [])
    return PATConfig(
        clip_model_name=clip.get("open_clip_model_name_used", "custom"),
        clip_config={
            "embed_dim": clip["embed_dim"],
            "vision_cfg": {
                "image_size": vision["image_size"], "layers": vision["layers"], "width": vision["width"],
                "head_width": vision["head_width"], "patch_size": vision["patch_size"], "mlp_ratio": vision["mlp_ratio"],
            },
            "text_cfg": {
                "context_length": text["context_length"], "vocab_size": text["vocab_size"], "width": text["width"],
                "heads": text["heads"], "layers": text["layers"], "mlp_ratio": text["mlp_hidden"] / text["width"],
            },
        },
        clip_quick_gelu=clip.get("quick_gelu", True),
        clip_resolution=san["clip_resolution"] if san.get("asymmetric_input", True) else 1.0,
        clip_feature_layers=san["feature_last_layer_idx"],
        side_hidden_size=side["embed_dim"],
        side_num_hidden_layers=side["depth"],
        side_num_attention_heads=side["num_heads"],
        side_mlp_ratio=side["mlp_ratio"],
        side_patch_size=side["patch_size"],
        side_image_size=side["img_size"],
        side_layer_norm_eps=side["layer_norm_eps"],
        num_queries=side["num_queries"],
        fusion_side_layers=sorted(fusion),
        fusion_clip_layers=[fusion[j] for j in sorted(fusion)],
        fusion_layer_norm_eps=san["fusion_channel_layernorm_eps"],
        deep_supervision_layers=side["deep_supervision_idxs"],
        mask_embed_dim=side["attn_bias"]["embed_channels"],
        mask_mlp_dim=side["attn_bias"]["mlp_channels"],
        mask_mlp_num_layers=side["attn_bias"]["mlp_num_layers"],
        attn_bias_num_heads=side["attn_bias"]["num_heads"],
        attn_bias_num_layers=side["attn_bias"]["num_layers"],
        rescale_attn_bias=side["attn_bias"]["rescale_attn_bias"],
        rec_mask_value=san["rec_head"]["mask_constant"],
        prompt_templates=san["templates"],
        size_divisibility=san["size_divisibility"],
        class_weight=train.get("class_weight", 2.0),
        mask_weight=train.get("mask_weight", 5.0),
        dice_weight=train.get("dice_weight", 5.0),
        no_object_weight=train.get("no_object_weight", 0.1),
        train_num_points=train.get("num_points", 12544),
        oversample_ratio=train.get("oversample_ratio", 3.0),
        importance_sample_ratio=train.get("importance_sample_ratio", 0.75),
        ignore_index=train.get("ignore_label", 255),
        id2label={i: name for i, name in enumerate(names)} or None,
    )


def resolve_config(spec: str) -> PATConfig:
    """Preset name, PATConfig JSON file, or a golden folder's `config.json` -> PATConfig."""
    path = Path(spec)
    if not path.is_file():
        return PATConfig.from_preset(spec)
    description = json.loads(path.read_text())
    if "side_adapter" in description and "san" in description:
        return config_from_reference_json(description)
    return PATConfig.from_json_file(str(path))


def convert(checkpoint_path: str | Path, config: PATConfig) -> PATForOpenVocabSegmentation:
    """The whole conversion: read, rename, load strictly, eval mode."""
    model = PATForOpenVocabSegmentation(config)
    load_converted_weights(model, convert_state_dict(read_checkpoint(checkpoint_path), config))
    return model.eval()


def save(model: PATForOpenVocabSegmentation, output_dir: str | Path) -> None:
    """`save_pretrained` folder with model, config and processor (tokenizer included), loadable through the Auto
    classes. Written to a staging folder first and then moved file by file, so a failed or interrupted save never
    leaves a half-written weights file over an earlier conversion in `output_dir`."""
    from .. import register_for_auto_classes
    from ..atomic_files import staged_folder

    register_for_auto_classes()
    with staged_folder(output_dir) as staging:
        model.save_pretrained(staging)
        PATProcessor.from_config(model.config).save_pretrained(staging)


def reload_difference(model: PATForOpenVocabSegmentation, output_dir: str | Path) -> float:
    """Reload the saved folder through the Auto classes and return the largest difference of its outputs from
    `model`'s on one small image (one forward pass each)."""
    from transformers import AutoModelForSemanticSegmentation, AutoProcessor

    reloaded = AutoModelForSemanticSegmentation.from_pretrained(output_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(output_dir)
    generator = torch.Generator().manual_seed(0)
    image = (torch.rand(3, 96, 128, generator=generator) * 255).to(torch.uint8)
    inputs = processor(images=image, text=["cat", "sky", "grass"], return_tensors="pt")
    with torch.no_grad():
        a = model(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"])
        b = reloaded(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"])
    diff = (a.class_queries_logits - b.class_queries_logits).abs().max().item()
    return max(diff, (a.masks_queries_logits - b.masks_queries_logits).abs().max().item())
