"""SAN's mask decoder (`MLPMaskDecoder`): side-ViT query tokens and side tokens -> mask logits and attention biases.

Shapes (symbols of `modeling_pat.py`): queries (B, Q, C_side), side tokens (B, C_side, H, W), mask logits
(B, Q, H, W), attention biases (B, A_clip, Q, H, W), one per recognition layer; C_hidden = `mask_mlp_dim`, the MLPs' hidden width.
"""

import torch
from torch import nn

from .configuration_pat import PATConfig
from .layers import PATMLP


class PATMaskDecoder(nn.Module):
    """queries (B, Q, C_side), side tokens (B, C_side, H, W) -> mask logits (B, Q, H, W) and attention biases
    [(B, A_clip, Q, H, W)] (one per recognition layer)."""

    def __init__(self, config: PATConfig):
        super().__init__()
        dim, hidden, embed, depth = (
            config.side_hidden_size,
            config.mask_mlp_dim,
            config.mask_embed_dim,
            config.mask_mlp_num_layers,
        )
        self.num_heads = config.attn_bias_num_heads
        self.num_layers = config.attn_bias_num_layers
        self.query_mlp = PATMLP(dim, hidden, embed, depth)
        self.pix_mlp = PATMLP(dim, hidden, embed, depth, conv=True)
        self.attn_mlp = PATMLP(dim, hidden, embed * self.num_heads * self.num_layers, depth, conv=True)
        self.bias_scaling = nn.Linear(1, 1) if config.rescale_attn_bias else nn.Identity()

    def attention_bias(self, query_embeddings: torch.Tensor, side_tokens: torch.Tensor) -> list[torch.Tensor]:
        """(B, Q, C_mask) query embeddings, (B, C_side, H, W) side tokens -> one (B, A_clip, Q, H, W) bias per
        recognition layer.

        SAN takes the dot product of each query embedding with attn_mlp's per-(layer, head) pixel embeddings,
        e . (W h + c) with h the last layer's input. Re-associated as (e W) . h + e . c, the (B, layers*A*C_mask, H, W)
        pixel embeddings (3,072 channels for ViT-B/16) are never built; equal up to float rounding. (Measured on 2
        CPU threads at 640x640: 27 -> 11 ms for one image, 61 -> 20 ms for two: the big tensor made batches slow.)
        """
        hidden = self.attn_mlp.features(side_tokens)  # (B, C_hidden, H, W)
        last = self.attn_mlp.layers[-1]  # 1x1 conv C_hidden -> layers * A * C_mask
        b, d, h, w = hidden.shape
        groups = self.num_layers * self.num_heads
        weight = last.weight.view(groups, -1, d)  # (layers*A, C_mask, C_hidden)
        query_weight = torch.einsum("bqe,ned->bnqd", query_embeddings, weight).reshape(b, -1, d)  # (B, n*Q, C_hidden)
        if last.bias is None:
            bias = torch.bmm(query_weight, hidden.flatten(2))
        else:
            query_bias = torch.einsum("bqe,ne->bnq", query_embeddings, last.bias.view(groups, -1)).reshape(b, -1, 1)
            bias = torch.baddbmm(query_bias, query_weight, hidden.flatten(2))  # (B, n*Q, H*W)
        bias = bias.view(b, self.num_layers, self.num_heads, -1, h, w)  # (B, layers, A, Q, H, W)
        bias = self.bias_scaling(bias[..., None]).squeeze(-1)  # learnable scalar affine w*x + b
        return list(bias.unbind(dim=1))

    def query_attention_bias(self, queries: torch.Tensor, side_tokens: torch.Tensor) -> list[torch.Tensor]:
        """The attention biases alone, for query tokens (B, Q, C_side) that did not come out of the side ViT (PAT's
        final global tokens, choice M2)."""
        return self.attention_bias(self.query_mlp(queries), side_tokens)

    def forward(self, queries: torch.Tensor, side_tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        query_embeddings = self.query_mlp(queries)
        mask_logits = torch.einsum("bqe,behw->bqhw", query_embeddings, self.pix_mlp(side_tokens))
        return mask_logits, self.attention_bias(query_embeddings, side_tokens)


__all__ = ["PATMaskDecoder"]
