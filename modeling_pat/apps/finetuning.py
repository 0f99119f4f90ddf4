"""Fine-tuning CLIP beyond SAN's recipe: unfrozen last visual blocks, LoRA adapters (peft), the trainable set.

SAN trains the side network and CLIP's visual positional embedding; CLIP itself stays frozen. Two options open
CLIP up (both off by default):

* `clip_trainable_layers = N` (config field, `--clip_trainable_layers`): the last N visual blocks train, with the
  learning rate times `clip_lr_multiplier` (`optimization.get_learning_rate_multipliers`).
* LoRA (`add_lora`, `--lora_rank R --lora_target clip|side|all`) through transformers' adapter API:
  `model.add_adapter(LoraConfig(...))`; `model.save_pretrained(folder)` then writes the adapter only
  (`adapter_config.json`, `adapter_model.safetensors`), `model.load_adapter(folder)` reads it back onto the same base
  weights, and `merge_lora(model)` folds it into the weights for export.

LoRA target modules (`lora_target_modules`):

* `clip`: every `nn.Linear` inside each CLIP visual block's MLP (open_clip: `mlp.c_fc`, `mlp.c_proj`; EVA:
  `mlp.fc1`, `mlp.fc2` or the SwiGLU projections). Not the attention projections: `nn.MultiheadAttention`'s own
  forward (the feature path) reads `in_proj_weight` and `out_proj.weight` as tensors, so an adapter wrapped around
  `out_proj` would reach only the recognition path (which calls `out_proj` as a module); every path calls the MLP
  layers as modules, so an adapter there changes the features and the mask recognition alike.
* `side`: the side adapter's transformer layers (`attn.qkv`, `attn.proj`, `mlp.fc1`, `mlp.fc2`).
* `all`: both.

The adapted base layers are frozen (that is what LoRA means); every other parameter keeps the trainability it had
(the side network, PAT's modules, the positional embedding, unfrozen blocks), unlike peft's default of training the
adapters alone. The text tower is never adapted, so cached class embeddings stay valid; the cache key covers every
text-tower parameter (adapters included), so it would change if the text side changed.

peft is an optional dependency (`pip install modeling_pat[lora]`), imported only when LoRA is asked for.
"""

from collections import defaultdict
from contextlib import suppress

from torch import nn

from .optimization import CLIP_BLOCK_NAME_PATTERNS


LORA_TARGETS = ("clip", "side", "all")

# Groups of the trainable-set summary, in print order; `parameter_group` maps a parameter name to one of them.
PARAMETER_GROUPS = ("side network", "PAT modules", "CLIP positional embedding", "CLIP blocks", "LoRA", "other")


def parameter_group(name: str) -> str:
    """The trainable-set group of a parameter (its name in `model.named_parameters()`)."""
    if "lora_" in name:
        return "LoRA"
    if "clip_tower." in name:
        if any(pattern in name for pattern in CLIP_BLOCK_NAME_PATTERNS):
            return "CLIP blocks"
        if "positional_embedding" in name or "pos_embed" in name:
            return "CLIP positional embedding"
        return "other"
    if ".tokenization." in name:
        return "PAT modules"
    if ".side_adapter." in name or name.startswith("classifier."):
        return "side network"  # SAN's trainable part: the side adapter and the classifier's void embedding
    return "other"


def trainable_parameter_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{group: (trainable parameters, tensors)} for every group in PARAMETER_GROUPS (zeros included)."""
    counts = defaultdict(lambda: [0, 0])
    for name, param in model.named_parameters():
        if param.requires_grad:
            counts[parameter_group(name)][0] += param.numel()
            counts[parameter_group(name)][1] += 1
    return {group: tuple(counts[group]) for group in PARAMETER_GROUPS}


def format_trainable_summary(model: nn.Module) -> str:
    """The trainable set per group, one line each, and the total: what training starts with."""
    counts = trainable_parameter_counts(model)
    total = sum(p.numel() for p in model.parameters())
    lines = ["Trainable parameters:"]
    lines += [f"  {group:<26} {n:>12,} ({tensors} tensors)" for group, (n, tensors) in counts.items()]
    trainable = sum(n for n, _ in counts.values())
    lines.append(f"  {'total':<26} {trainable:>12,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)")
    return "\n".join(lines)


def configure_clip_training(model, trainable_layers: int | None = None, lr_multiplier: float | None = None) -> None:
    """Set `clip_trainable_layers` / `clip_lr_multiplier` on a built model (config and frozen set); None keeps."""
    config = model.config
    if lr_multiplier is not None:
        config.clip_lr_multiplier = float(lr_multiplier)
    if trainable_layers is not None:
        config.clip_trainable_layers = int(trainable_layers)
    config.validate_architecture()
    model.model.clip_tower.freeze(config.clip_trainable_positional_embedding, config.clip_trainable_layers)


def lora_target_modules(model, target: str = "clip") -> list[str]:
    """Full module names of the `nn.Linear` layers LoRA adapts for `target` (see the module docstring)."""
    if target not in LORA_TARGETS:
        raise ValueError(f"Unknown LoRA target {target!r}; choose one of {LORA_TARGETS}.")
    names = []
    if target in ("clip", "all"):
        tower = model.model.clip_tower
        for block in tower.vision.blocks:
            names += [_name_of(model, layer) for layer in block.mlp.modules() if isinstance(layer, nn.Linear)]
    if target in ("side", "all"):
        for layer in model.model.side_adapter.layers:
            names += [_name_of(model, m) for m in (layer.attn.qkv, layer.attn.proj, layer.mlp.fc1, layer.mlp.fc2)]
    return names


def _name_of(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ValueError("module not found in the model")


def add_lora(model, rank: int, target: str = "clip", alpha: float | None = None, dropout: float = 0.0):
    """Add a LoRA adapter ("default") with transformers' `add_adapter` and keep the rest of the trainable set.

    rank: LoRA rank r; alpha: its scaling numerator (default r, i.e. scale 1); dropout on the adapter's input.
    Returns the `peft.LoraConfig` used.
    """
    if rank < 1:
        raise ValueError(f"The LoRA rank must be at least 1, got {rank}.")
    try:
        from peft import LoraConfig
    except ImportError as error:
        raise ImportError("LoRA needs peft: pip install 'modeling_pat[lora]' (or pip install peft).") from error
    targets = lora_target_modules(model, target)
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout,
                        target_modules=targets, bias="none")
    model.add_adapter(config)
    # peft leaves only the adapters trainable; restore the rest, except the adapted layers themselves
    adapted = tuple(f"{name}.base_layer." for name in targets)
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        base_name = name.replace(".base_layer.", ".")
        param.requires_grad = base_name in trainable and not name.startswith(adapted)
    return config


def merge_lora(model):
    """Fold the active LoRA adapter into the base weights and remove peft's wrappers: a plain model whose
    `save_pretrained` writes full weights again (for export). Returns the model."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    with suppress(AttributeError):  # transformers' adapter integration sets it on the model when an adapter is added
        del model.peft_config
    model._hf_peft_config_loaded = False
    model.clear_inference_caches()  # the base weights changed in place (the text weights' fingerprint included)
    return model


__all__ = [
    "LORA_TARGETS",
    "PARAMETER_GROUPS",
    "add_lora",
    "configure_clip_training",
    "format_trainable_summary",
    "lora_target_modules",
    "merge_lora",
    "parameter_group",
    "trainable_parameter_counts",
]
