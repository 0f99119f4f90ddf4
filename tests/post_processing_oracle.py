"""The dense semantic inference: the oracle that `modeling_pat.post_processing.semantic_map` is checked against.

The package keeps only the banded, pruned `semantic_map`; this is the formula it computes, written the plain way
(SAN / Mask2Former's `semantic_inference`), for tests and benchmarks that compare against it.
"""

import torch


def semantic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """class_logits [Q, N + 1], resized mask_logits [Q, H_out, W_out] -> [N, H_out, W_out] float32 scores,
    sum_q softmax(class)[q, n] * sigmoid(mask)[q]."""
    # The void column is dropped after the softmax and the rest is not renormalised (SAN / Mask2Former).
    class_probs = class_logits.float().softmax(dim=-1)[..., :-1]
    mask_probs = mask_logits.float().sigmoid()
    return torch.einsum("qn,qhw->nhw", class_probs, mask_probs)
