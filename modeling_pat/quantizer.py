"""PAT's vector quantiser: vMF-VQ (choice V1, ViT-VQGAN's factorised l2-normalised lookup) or Euclidean VQ.

Paper: arXiv 2412.14145, Eq. 2 (vMFVQ); choices V1, V2, V3. Shapes in the symbols of
`modeling_pat.py`'s table: a (B, C_side, H_s, W_s) map in, codes of width C_code from a codebook of K rows. The core
works on channels-last (..., C_code) vectors; its VQ loss is a mean over all elements times C_code, which equals the
mean over positions of the squared L2 distance.
"""

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PATQuantizerOutput:
    """Quantiser result: maps (B, C_code, H_s, W_s), indices (B, H_s, W_s)."""

    quantized: torch.Tensor  # straight-through codes: value e_k*, gradient to `encoded`
    indices: torch.Tensor  # (B, H_s, W_s) int64
    loss: torch.Tensor  # codebook term + beta * commitment term (+ diversity_weight * diversity)
    encoded: torch.Tensor  # h: the (normalised) projection, before quantisation
    perplexity: torch.Tensor  # exp(entropy of the batch's code histogram), in [1, K]
    usage: torch.Tensor  # fraction of the K codes used in the batch, in [1/K, 1]
    diversity: torch.Tensor | None = None  # log K - entropy of the batch's mean soft assignment, in [0, log K]


def autocast_off(device_type: str):
    """Autocast switched off on `device_type`; nothing to switch where it has no autocast (the meta device, on which
    the tests trace inference for host-device synchronisations). The fp32 islands of the model (code assignment,
    classification) use it."""
    if not torch.amp.is_autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def code_statistics(indices: torch.Tensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(...) int64 -> (perplexity, usage) fp32 scalars of the batch's code histogram."""
    flat = indices.reshape(-1)
    # fixed-size histogram (not bincount): its output shape does not depend on the data
    ones = torch.ones_like(flat, dtype=torch.float)
    counts = torch.zeros(codebook_size, device=flat.device).index_add_(0, flat, ones)
    probs = counts / counts.sum().clamp(min=1)
    perplexity = torch.exp(-torch.xlogy(probs, probs).sum())  # xlogy: 0 log 0 = 0 for unused codes
    usage = (counts > 0).float().mean()
    return perplexity, usage


class PATVectorQuantizer(nn.Module):
    """(B, C_side, H_s, W_s) -> `PATQuantizerOutput`: 1x1 projection to C_code, nearest of K codes,
    straight-through, VQ loss."""

    # vMF (`use_vmf=True`): projection and codes are l2-normalised and the assignment is the cosine argmax, the MAP
    # code of an equal-concentration vMF mixture. Euclidean (`use_vmf=False`, the "No vMF meanshift" ablation): raw
    # vectors, squared-distance argmin. Loss: mean ||sg(h) - e||^2 + beta * mean ||h - sg(e)||^2 over positions.

    def __init__(
        self,
        in_channels: int,
        codebook_size: int,
        code_dim: int = 32,
        beta: float = 0.25,
        use_vmf: bool = True,
        diversity_weight: float = 0.0,
        diversity_temperature: float = 0.1,
    ):
        super().__init__()
        if codebook_size < 1 or code_dim < 1:
            raise ValueError(f"codebook_size ({codebook_size}) and code_dim ({code_dim}) must be positive.")
        self.codebook_size = codebook_size
        self.code_dim = code_dim
        self.beta = beta
        self.use_vmf = use_vmf
        self.diversity_weight = diversity_weight
        self.diversity_temperature = diversity_temperature
        self.proj = nn.Conv2d(in_channels, code_dim, kernel_size=1)
        self.codebook = nn.Parameter(torch.empty(codebook_size, code_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # choice V2: N(0, 1) codes (directions uniform on the sphere once normalised). Standalone, proj gets torch's
        # default; inside a PAT model, `PATPreTrainedModel._init_weights` gives it N(0, initializer_range).
        nn.init.normal_(self.codebook)
        self.proj.reset_parameters()

    def _normalize(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return F.normalize(x, dim=dim) if self.use_vmf else x

    def normalized_codebook(self) -> torch.Tensor:
        """(K, C_code): the codes as used for assignment and lookup (unit rows for vMF, raw rows for Euclidean)."""
        return self._normalize(self.codebook, dim=-1)

    def codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(...) int64 -> (..., C_code) codes, differentiable w.r.t. the codebook."""
        return F.embedding(indices, self.normalized_codebook())

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H_s, W_s) int64 -> (B, C_code, H_s, W_s): the quantised map of given indices (`quantized` for them)."""
        return self.codes_from_indices(indices).permute(0, 3, 1, 2)  # (B, H_s, W_s, C_code) -> (B, C_code, H_s, W_s)

    @torch.no_grad()
    def assign(self, encoded: torch.Tensor) -> torch.Tensor:
        """(..., C_code) -> (...) int64: nearest code (cosine argmax for vMF, squared-distance argmin otherwise)."""
        # fp32 and autocast off (no-ops in fp32): in bf16 about 1% of the argmaxes flip between near-equal codes
        with autocast_off(encoded.device.type):
            flat = encoded.reshape(-1, self.code_dim).float()  # (B * L_s, C_code), L_s = H_s * W_s
            codebook = self.normalized_codebook().float()  # (K, C_code)
            similarity = flat @ codebook.T  # (B * L_s, K)
            if not self.use_vmf:
                # argmin ||h - e||^2 = argmax (2 h.e - ||e||^2); ||h||^2 is the same for every code
                similarity = 2 * similarity - codebook.pow(2).sum(-1)
        return similarity.argmax(-1).view(encoded.shape[:-1])

    def diversity(self, encoded: torch.Tensor) -> torch.Tensor:
        """(..., C_code) -> scalar log K - H(mean soft assignment): 0 when the batch spreads evenly over all K codes.

        Without it a learnable codebook with no EMA or restarts (choice V2) collapses onto a few codes: codes that
        are never chosen get no gradient. The soft assignment gives every code a gradient, stays stateless (nothing
        is mutated in forward) and is differentiable w.r.t. both the encoder and the codebook.
        """
        flat = encoded.reshape(-1, self.code_dim)
        codebook = self.normalized_codebook().to(flat.dtype)
        logits = flat @ codebook.T  # (B * L_s, K)
        if not self.use_vmf:
            logits = 2 * logits - codebook.pow(2).sum(-1) - flat.pow(2).sum(-1, keepdim=True)  # -||h - e||^2
        mean_assignment = (logits.float() / self.diversity_temperature).softmax(-1).mean(0)  # (K,)
        entropy = -torch.xlogy(mean_assignment, mean_assignment).sum()
        return math.log(self.codebook_size) - entropy  # a host number: no copy to the device

    def _quantize(self, encoded: torch.Tensor) -> PATQuantizerOutput:
        """(..., C_code) channels-last encoded vectors -> output fields in the same layout."""
        indices = self.assign(encoded)
        codes = self.codes_from_indices(indices).to(encoded.dtype)
        # straight-through h + sg(e - h), written so that the forward value is exactly e (eval output == lookup)
        quantized = codes.detach() + (encoded - encoded.detach())
        # mean over all elements * C_code == mean over positions of the squared L2 distance
        codebook_term = F.mse_loss(codes, encoded.detach()) * self.code_dim
        commitment_term = F.mse_loss(encoded, codes.detach()) * self.code_dim
        perplexity, usage = code_statistics(indices, self.codebook_size)
        loss = codebook_term + self.beta * commitment_term
        diversity = None
        if self.diversity_weight:
            diversity = self.diversity(encoded)
            loss = loss + self.diversity_weight * diversity
        return PATQuantizerOutput(
            quantized=quantized,
            indices=indices,
            loss=loss,
            encoded=encoded,
            perplexity=perplexity,
            usage=usage,
            diversity=diversity,
        )

    def forward(self, x: torch.Tensor) -> PATQuantizerOutput:
        # (B, C_side, H_s, W_s) -> (B, C_code, H_s, W_s) -> (B, H_s, W_s, C_code) for the core, and back for the maps
        encoded = self._normalize(self.proj(x), dim=1)
        out = self._quantize(encoded.permute(0, 2, 3, 1))
        out.quantized = out.quantized.permute(0, 3, 1, 2).contiguous()  # NCHW, as convs' weight gradients need
        out.encoded = encoded
        return out

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size}, code_dim={self.code_dim}, beta={self.beta}, vmf={self.use_vmf}, "
            f"diversity_weight={self.diversity_weight}"
        )
