"""PAT's vector quantiser: vMF-VQ (choice V1, ViT-VQGAN's factorised l2-normalised lookup) or Euclidean VQ.

Shapes: B batch, C input channels, D code dim, K codebook size, H x W grid, N tokens, M = B*H*W (or B*N) positions.
One code path serves both layouts: the core works on channels-last (..., D) tensors, and the VQ loss is a mean over
all elements times D, which equals the mean over positions of the squared L2 norm whatever the layout.
"""

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PATQuantizerOutput:
    """Quantiser result; maps are (B, D, H, W) from `forward` and (B, N, D) from `forward_tokens`."""

    quantized: torch.Tensor  # straight-through codes: value e_k*, gradient to `encoded`
    indices: torch.Tensor  # (B, H, W) or (B, N) int64
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
    """(B, C, H, W) -> `PATQuantizerOutput`: 1x1 projection to D, nearest of K codes, straight-through, VQ loss."""

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
        # choice V2: N(0, 1) codes (directions uniform on the sphere once normalised); proj keeps torch's default
        nn.init.normal_(self.codebook)
        self.proj.reset_parameters()

    def _normalize(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return F.normalize(x, dim=dim) if self.use_vmf else x

    def normalized_codebook(self) -> torch.Tensor:
        """(K, D): the codes as used for assignment and lookup (unit rows for vMF, raw rows for Euclidean)."""
        return self._normalize(self.codebook, dim=-1)

    def codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(...) int64 -> (..., D) codes, differentiable w.r.t. the codebook."""
        return F.embedding(indices, self.normalized_codebook())

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) int64 -> (B, D, H, W): the quantised map of given indices (equals `quantized` for them)."""
        return self.codes_from_indices(indices).permute(0, 3, 1, 2)  # (B, H, W, D) -> (B, D, H, W)

    @torch.no_grad()
    def assign(self, encoded: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (...) int64: nearest code (cosine argmax for vMF, squared-distance argmin otherwise)."""
        # fp32 and autocast off (no-ops in fp32): in bf16 about 1% of the argmaxes flip between near-equal codes
        with autocast_off(encoded.device.type):
            flat = encoded.reshape(-1, self.code_dim).float()  # (M, D)
            codebook = self.normalized_codebook().float()  # (K, D)
            similarity = flat @ codebook.T  # (M, K)
            if not self.use_vmf:
                # argmin ||h - e||^2 = argmax (2 h.e - ||e||^2); ||h||^2 is the same for every code
                similarity = 2 * similarity - codebook.pow(2).sum(-1)
        return similarity.argmax(-1).view(encoded.shape[:-1])

    def diversity(self, encoded: torch.Tensor) -> torch.Tensor:
        """(..., D) -> scalar log K - H(mean soft assignment): 0 when the batch spreads evenly over all K codes.

        Without it a learnable codebook with no EMA or restarts (choice V2) collapses onto a few codes: codes that
        are never chosen get no gradient. The soft assignment gives every code a gradient, stays stateless (nothing
        is mutated in forward) and is differentiable w.r.t. both the encoder and the codebook.
        """
        flat = encoded.reshape(-1, self.code_dim)
        codebook = self.normalized_codebook().to(flat.dtype)
        logits = flat @ codebook.T  # (M, K)
        if not self.use_vmf:
            logits = 2 * logits - codebook.pow(2).sum(-1) - flat.pow(2).sum(-1, keepdim=True)  # -||h - e||^2
        mean_assignment = (logits.float() / self.diversity_temperature).softmax(-1).mean(0)  # (K,)
        entropy = -torch.xlogy(mean_assignment, mean_assignment).sum()
        return math.log(self.codebook_size) - entropy  # a host number: no copy to the device

    def _quantize(self, encoded: torch.Tensor) -> PATQuantizerOutput:
        """(..., D) channels-last encoded vectors -> output fields in the same layout."""
        indices = self.assign(encoded)
        codes = self.codes_from_indices(indices).to(encoded.dtype)
        # straight-through h + sg(e - h), written so that the forward value is exactly e (eval output == lookup)
        quantized = codes.detach() + (encoded - encoded.detach())
        # mean over all elements * D == mean over positions of the squared L2 distance
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
        # (B, C, H, W) -> (B, D, H, W) -> (B, H, W, D) for the core, and back for the map outputs
        encoded = self._normalize(self.proj(x), dim=1)
        out = self._quantize(encoded.permute(0, 2, 3, 1))
        out.quantized = out.quantized.permute(0, 3, 1, 2).contiguous()  # NCHW, as convs' weight gradients need
        out.encoded = encoded
        return out

    def forward_tokens(self, x: torch.Tensor) -> PATQuantizerOutput:
        """(B, N, C) -> `PATQuantizerOutput` with (B, N, D) maps and (B, N) indices (same weights as `forward`)."""
        encoded = self._normalize(F.linear(x, self.proj.weight.flatten(1), self.proj.bias), dim=-1)
        return self._quantize(encoded)

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size}, code_dim={self.code_dim}, beta={self.beta}, vmf={self.use_vmf}, "
            f"diversity_weight={self.diversity_weight}"
        )
