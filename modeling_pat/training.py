"""Training helpers: a `Trainer` that logs every loss term of SAN/PAT next to the total.

Trainer only logs `loss`. `PATTrainer` also averages each weighted term of `outputs.loss_dict` (and, in PAT mode,
the per-codebook / per-stage breakdown `outputs.loss_details` and the codebook perplexities) over the steps between
two log events and logs them under their own names (`loss_ce`, `loss_vq_early`, `perplexity_latent`, ...).
Weight decay follows SAN's parameter groups (`optimization.get_decay_parameter_names`), not Trainer's default.
"""

from collections import defaultdict

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


__all__ = ["PATTrainer"]
