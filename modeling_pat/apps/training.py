"""Training helpers: a `Trainer` that logs every loss term of SAN/PAT next to the total.

Trainer only logs `loss`. `PATTrainer` also averages each weighted term of `outputs.loss_dict` (and, in PAT mode,
the per-codebook / per-stage breakdown `outputs.loss_details` and the codebook perplexities) over the steps between
two log events and logs them under their own names (`loss_ce`, `loss_vq_early`, `perplexity_latent`, ...).
Weight decay follows SAN's parameter groups (`optimization.get_decay_parameter_names`), not Trainer's default.
`last_complete_checkpoint` finds the checkpoint to resume from, passing over folders that a kill during saving left
incomplete.
"""

import json
import logging
import re
import struct
import zipfile
from collections import defaultdict
from pathlib import Path

import torch
from transformers import Trainer

from .optimization import apply_learning_rate_multipliers, get_decay_parameter_names


class PATTrainer(Trainer):
    """`Trainer` + per-term loss logging for PATForOpenVocabSegmentation."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._term_sums: dict[str, torch.Tensor | float] = defaultdict(float)  # tensors stay on the device until `log`
        self._term_counts: dict[str, int] = defaultdict(int)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        if model.training:
            self._accumulate(outputs)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        return (loss, outputs) if return_outputs else loss

    def get_decay_parameter_names(self, model) -> list[str]:
        """SAN / PAT weight-decay groups (biases decayed; norms, position / query embeddings, codebooks, void not)."""
        return get_decay_parameter_names(model)

    def create_optimizer(self, model=None):
        """Trainer's optimiser, its groups split by learning rate: the unfrozen CLIP blocks get
        `config.clip_lr_multiplier` times the rate (`optimization.apply_learning_rate_multipliers`)."""
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh:
            apply_learning_rate_multipliers(optimizer, self.model if model is None else model)
        return optimizer

    def _accumulate(self, outputs) -> None:
        terms = dict(outputs.get("loss_dict") or {})
        terms.update(outputs.get("loss_details") or {})
        terms.update({f"perplexity_{k}": v for k, v in (outputs.get("codebook_perplexity") or {}).items()})
        for name, value in terms.items():
            # summed as device tensors: a float() per term would make the host wait for the GPU every step
            self._term_sums[name] += value.detach().float() if isinstance(value, torch.Tensor) else float(value)
            self._term_counts[name] += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._term_counts:  # a training log event: add the averaged terms
            for name, total in self._term_sums.items():
                logs[name] = round(float(total) / self._term_counts[name], 6)
            self._term_sums.clear()
            self._term_counts.clear()
        super().log(logs, start_time)


# -- resuming ----------------------------------------------------------------------------------------------------------
logger = logging.getLogger(__name__)
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def last_complete_checkpoint(output_dir) -> str | None:
    """The newest `checkpoint-N` folder of `output_dir` that `checkpoint_problem` finds complete, or None. Each newer
    folder passed over is named in a warning: a process killed while saving leaves one behind (Trainer writes the
    weights, optimizer, scheduler and RNG state first and `trainer_state.json` last)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    numbered = [(int(m.group(1)), path) for path in folder.iterdir()
                if path.is_dir() and (m := CHECKPOINT_PATTERN.match(path.name))]
    for _, path in sorted(numbered, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        logger.warning("Skipping the incomplete checkpoint %s (%s); it is not resumed from.", path, problem)
    return None


def checkpoint_problem(folder) -> str | None:
    """What makes a checkpoint folder unusable for resuming, or None when it is complete: `trainer_state.json` missing,
    unreadable or for another step; no model weights; a safetensors file shorter than its header says; a torch
    pickle (optimizer, scheduler, RNG state) that is not a whole zip archive. Reads headers only, never the tensors."""
    folder = Path(folder)
    problem = _trainer_state_problem(folder)
    if problem is not None:
        return problem
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("pytorch_model*.bin"))
    if not weights:
        return "no model weights file"
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        problem = _missing_shards(index)
        if problem is not None:
            return problem
    for path in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem is not None:
            return f"{path.name}: {problem}"
    for path in sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth")) + sorted(folder.glob("*.bin")):
        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; cut short, it has no central directory
            return f"{path.name}: truncated or not a torch checkpoint"
    return None


def _trainer_state_problem(folder: Path) -> str | None:
    state_file = folder / "trainer_state.json"
    if not state_file.is_file():
        return "no trainer_state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return f"trainer_state.json is unreadable ({error})"
    match = CHECKPOINT_PATTERN.match(folder.name)
    if not isinstance(state, dict) or (match and state.get("global_step") != int(match.group(1))):
        return "trainer_state.json is not the state of this step"
    return None


def _missing_shards(index: Path) -> str | None:
    try:
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        return f"{index.name} is unreadable"
    missing = sorted(name for name in shards if not (index.parent / name).is_file())
    return f"shard {missing[0]} is missing" if missing else None


def safetensors_problem(path) -> str | None:
    """None when the file is as long as its header says (the tensors end where the file ends), else what is wrong."""
    size = Path(path).stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return f"truncated ({size} bytes, shorter than a safetensors header)"
        header_size = struct.unpack("<Q", prefix)[0]
        if 8 + header_size > size:
            return f"truncated ({size} bytes, the header alone needs {8 + header_size})"
        try:
            header = json.loads(handle.read(header_size))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "unreadable header"
    try:
        ends = [int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"]
    except (KeyError, TypeError, IndexError, ValueError, AttributeError):
        return "unreadable header"
    expected = 8 + header_size + max(ends, default=0)
    if size < expected:
        return f"truncated ({size} of {expected} bytes)"
    return None


__all__ = ["PATTrainer", "checkpoint_problem", "last_complete_checkpoint", "safetensors_problem"]
