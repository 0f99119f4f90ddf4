"""The SAN / PAT optimisation recipe: AdamW parameter groups (which parameters get weight decay) and the schedule.

SAN (`train_net.py` `build_optimizer` + `configs/Base-coco-stuff-164K-171.yaml`) and PAT
(section 3.13, choices V2 / TS1):

| setting | value | how to get it with `Trainer` |
|---|---|---|
| optimiser | AdamW, betas (0.9, 0.999), eps 1e-8 | `optim="adamw_torch"` (the defaults) |
| learning rate | 1e-4, one multiplier for every group (SAN's `BACKBONE_MULTIPLIER` / `CLIP_MULTIPLIER` are 1.0) | `learning_rate=1e-4` |
| weight decay | 1e-4, with the exceptions below | `weight_decay=1e-4` + `PATTrainer` (uses `get_decay_parameter_names`) |
| schedule | WarmupPolyLR: `lr = base * (1 - step / max_steps) ** 0.9`, no warm-up (factor 1.0, 0 iterations), ends at 0 | `lr_scheduler_type="polynomial"`, `lr_scheduler_kwargs=POLY_LR_SCHEDULER_KWARGS`, `warmup_steps=0` |
| gradient clipping | full-model L2 norm, max 0.01 | `max_grad_norm=0.01` |
| precision | AMP in training, fp32 evaluation | `bf16=True` or `fp16=True` on CUDA |
| steps / batch | SAN 60k x 32 (COCO-Stuff-171); PAT 120k x 12 | `max_steps`, `per_device_train_batch_size` x devices x `gradient_accumulation_steps` |

Weight decay 0 (everything else that trains keeps 1e-4, **biases included**, as in SAN):

- parameters whose own name contains `absolute_pos_embed`, `positional_embedding`, `pos_embed`, `query_embed` or
  `relative_position_bias_table` (SAN's `WEIGHT_DECAY_EMBED_GROUP`; here the side adapter's `pos_embed`,
  `query_embed`, `query_pos_embed` and CLIP's trainable visual `positional_embedding`);
- parameters of normalisation modules: `torch.nn.LayerNorm`, the BatchNorm / SyncBatchNorm / GroupNorm /
  InstanceNorm / LocalResponseNorm family (SAN's `norm_module_types`, `WEIGHT_DECAY_NORM = 0`), and `nn.Embedding`;
- PAT's codebooks (`codebook`, choice V2);
- the learnable void embedding of the classifier (`void_embedding`) — asked for by the training issue; **SAN itself
  decays its `bg_embed`** (it is in no exception list), pass `decay_void_embedding=True` for the strict SAN rule.

Learning rates: one for every group, as in SAN, except the CLIP visual blocks unfrozen by `clip_trainable_layers`
(not their LoRA adapters), whose rate is multiplied by `config.clip_lr_multiplier`
(`get_learning_rate_multipliers`; `PATTrainer` splits its optimiser groups by it). Those blocks follow the same
weight-decay rule (their LayerNorms undecayed, their linear weights and biases decayed).

SAN's fusion layers use a custom channel LayerNorm (`PATChannelLayerNorm`), which is not a `torch.nn.LayerNorm` and
therefore keeps weight decay in SAN; so do PAT's channel LayerNorms here. The trainable set is whatever the model
leaves `requires_grad=True` (the config's frozen policy: CLIP frozen except its visual positional embedding).
"""

from collections import defaultdict

from torch import nn


# Parameter names of the CLIP visual blocks (open_clip OpenAI layout; timm Eva); `finetuning` groups them the same way.
CLIP_BLOCK_NAME_PATTERNS = (".visual.transformer.resblocks.", ".visual.trunk.blocks.")


NO_DECAY_NAME_PATTERNS = (
    "absolute_pos_embed",
    "positional_embedding",
    "pos_embed",
    "query_embed",
    "relative_position_bias_table",
)
CODEBOOK_NAME_PATTERNS = ("codebook",)
VOID_EMBEDDING_NAME_PATTERNS = ("void_embedding",)
NORM_MODULE_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)

# detectron2's WarmupPolyLR (power 0.9, constant ending 0) as transformers' "polynomial" schedule.
POLY_LR_SCHEDULER_KWARGS = {"power": 0.9, "lr_end": 0.0}


def is_decayed(module: nn.Module, param_name: str, decay_void_embedding: bool = False) -> bool:
    """Whether parameter `param_name` (its own name, without the module path) of `module` gets weight decay."""
    if isinstance(module, NORM_MODULE_TYPES + (nn.Embedding,)):
        return False
    patterns = NO_DECAY_NAME_PATTERNS + CODEBOOK_NAME_PATTERNS
    if not decay_void_embedding:
        patterns = patterns + VOID_EMBEDDING_NAME_PATTERNS
    return not any(pattern in param_name for pattern in patterns)


def get_decay_parameter_names(model: nn.Module, decay_void_embedding: bool = False) -> list[str]:
    """Names (as in `model.named_parameters()`) of the parameters that get weight decay; frozen ones included, the
    optimiser skips them anyway. A parameter shared by several modules is judged at its first occurrence."""
    decayed, seen = [], set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if is_decayed(module, param_name, decay_void_embedding):
                decayed.append(f"{module_name}.{param_name}" if module_name else param_name)
    return decayed


def get_learning_rate_multipliers(model: nn.Module) -> dict[str, float]:
    """{parameter name: learning-rate factor} of the trainable parameters whose rate is not the base one: the CLIP
    visual blocks' own weights (`clip_trainable_layers`) get `config.clip_lr_multiplier`; LoRA adapters do not."""
    config = getattr(model, "config", None)
    multiplier = float(getattr(config, "clip_lr_multiplier", 1.0))
    if multiplier == 1.0:
        return {}
    return {
        name: multiplier
        for name, param in model.named_parameters()
        if param.requires_grad and "lora_" not in name and any(p in name for p in CLIP_BLOCK_NAME_PATTERNS)
    }


def get_parameter_groups(
    model: nn.Module, weight_decay: float = 1e-4, decay_void_embedding: bool = False, learning_rate: float = 1e-4
) -> list[dict]:
    """AdamW groups of the trainable parameters, for loops without `Trainer`:
    `torch.optim.AdamW(get_parameter_groups(model, learning_rate=1e-4))`. Two groups (decayed or not) per learning
    rate: the base one and, with `clip_trainable_layers` and a `clip_lr_multiplier`, the CLIP blocks' own."""
    decay = set(get_decay_parameter_names(model, decay_void_embedding))
    multipliers = get_learning_rate_multipliers(model)
    trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    groups = []
    for factor in sorted({1.0, *multipliers.values()}):
        members = [(n, p) for n, p in trainable if multipliers.get(n, 1.0) == factor]
        for decayed in (True, False):
            params = [p for n, p in members if (n in decay) == decayed]
            if params or factor == 1.0:
                groups.append({"params": params, "weight_decay": weight_decay if decayed else 0.0,
                               "lr": learning_rate * factor})
    return groups


def apply_learning_rate_multipliers(optimizer, model: nn.Module) -> None:
    """Move the parameters with a learning-rate factor (`get_learning_rate_multipliers`) out of an optimiser's
    groups into copies of those groups with the rate scaled; before the first step and the scheduler only."""
    multipliers = get_learning_rate_multipliers(model)
    if not multipliers:
        return
    factor_of = {id(p): multipliers[n] for n, p in model.named_parameters() if n in multipliers}
    for group in list(optimizer.param_groups):
        moved = defaultdict(list)
        for param in group["params"]:
            if id(param) in factor_of:
                moved[factor_of[id(param)]].append(param)
        if not moved:
            continue
        group["params"] = [p for p in group["params"] if id(p) not in factor_of]
        for factor, params in moved.items():
            optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"},
                                       "params": params, "lr": group["lr"] * factor})


__all__ = [
    "NORM_MODULE_TYPES",
    "NO_DECAY_NAME_PATTERNS",
    "POLY_LR_SCHEDULER_KWARGS",
    "apply_learning_rate_multipliers",
    "get_learning_rate_multipliers",
    "get_decay_parameter_names",
    "get_parameter_groups",
    "is_decayed",
]
