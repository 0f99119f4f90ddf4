"""PAT's semantic branch (choices H1, T1, G1): local and global tokens.

After each pyramid block of the side ViT (stages early, mid, late), Eq. 2 of the paper updates two token sets:
    q_s = E_s + TokenMixer_{s-1 -> s}(e_{s-1})      (early: q = E_early)
    e_s = HSAttn(q_s, z_s, z_s)                      one vMF mean-shift step of the codes towards the side tokens
    g'  = g + TokenMixer_s(e_s)                      local -> global
    g^  = g' + MHA_s(LN(g'), LN(z_s), LN(z_s))       global tokens attend to the side tokens (G1)
z_s are the side patch tokens *before* SAN's fusion add. Nothing flows from the global tokens to the local ones:
e_s depends only on the codebooks and the side tokens.

Shape symbols: see `modeling_pat.py` (global tokens (B, Q, C_side), side tokens z_s (B, L, C_side), codebook
E_s (K_s, C_code), local tokens e_s (B, K_s, C_code)).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_pat import PATConfig
from .constants import PYRAMID_STAGES
from .layers import PATGlobalTokenAttention


class PATHypersphereAttention(nn.Module):
    """Single-head hypersphere (vMF mean-shift) attention: queries (B, K_s, C_q), keys (B, L, C_k) -> (B, K_s, C_out).

    With `use_vmf` (choice H1): normalize(softmax(kappa * normalize(q) normalize(k)^T) v), one mean-shift step of
    the query centroids; the output lies on the unit sphere so it stays comparable to (normalised) codes.
    Without it (the "No vMF meanshift" ablation): plain softmax(q k^T / sqrt(dim)) v, unnormalised.
    There is no output projection and no residual: the update is the mean-shift step itself.

    Shape:
        queries: (B, K_s, query_dim); keys: (B, L, key_dim) (also the values) -> (B, K_s, dim)
    """

    def __init__(self, query_dim: int, key_dim: int, dim: int, kappa: float = 30.0, use_vmf: bool = True):
        super().__init__()
        self.q_proj = nn.Linear(query_dim, dim)
        self.k_proj = nn.Linear(key_dim, dim)
        self.v_proj = nn.Linear(key_dim, dim)
        self.kappa = kappa
        self.use_vmf = use_vmf

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        # one head axis, (B, K_s, C_code) -> (B, 1, K_s, C_code): the ONNX exporter translates 4-D attention only
        q, k, v = self.q_proj(queries)[:, None], self.k_proj(keys)[:, None], self.v_proj(keys)[:, None]
        if not self.use_vmf:
            return F.scaled_dot_product_attention(q, k, v)[:, 0]  # default scale 1/sqrt(dim)
        # cosine logits times the vMF concentration; SDPA's `scale` multiplies q k^T, which is exactly kappa here
        out = F.scaled_dot_product_attention(F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, scale=self.kappa)
        return F.normalize(out[:, 0], dim=-1)

    def extra_repr(self) -> str:
        return f"kappa={self.kappa}, use_vmf={self.use_vmf}"


class PATTokenMixer(nn.Module):
    """Token-axis 3-layer MLP (choice T1): (B, tokens_in, C_in) -> (B, tokens_out, C_out).

    The MLP mixes along the token axis (MLP-Mixer style) because it must change the token count (128 -> 64 -> 32 and
    K_s -> Q); a channel Linear follows only when C_in != C_out.

    Shape:
        tokens: (B, num_in, in_dim) -> (B, num_out, out_dim)
    """

    def __init__(self, num_in: int, num_out: int, in_dim: int, out_dim: int, hidden_dim: int = 256):
        super().__init__()
        self.fc1 = nn.Linear(num_in, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.fc3 = nn.Linear(hidden_dim, num_out)
        self.channel_proj = nn.Linear(in_dim, out_dim) if in_dim != out_dim else nn.Identity()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens.transpose(1, 2)  # (B, tokens_in, C_in) -> (B, C_in, tokens_in)
        x = self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(x)))))  # (B, C_in, tokens_out)
        return self.channel_proj(x.transpose(1, 2))  # (B, tokens_out, C_in) -> (B, tokens_out, C_out)


class PATSemanticBranch(nn.Module):
    """Per-stage local/global token updates of Eq. 2 inside the side ViT.

    Modules are keyed by stage name ("early", "mid", "late"):
        hsattn[s]         HSAttn, codes (C_code) attend to side tokens (C_side) -> local tokens e_s (B, K_s, C_code)
        global_mixers[s]  TokenMixer K_s -> Q, C_code -> C_side (local -> global)
        global_attn[s]    pre-norm residual cross-attention of the global tokens to z_s
        local_mixers[s]   TokenMixer K_{s-1} -> K_s, C_code -> C_code, for s in ("mid", "late") (keyed by the target stage)
    With `use_token_mixer=False` (the "no TokenMixer" ablation) `local_mixers` and `global_mixers` are None: the
    HSAttn queries are the codebook alone and the global tokens change only through attention.

    The `unified_tokens` ablation is the caller's business: it passes the shared table as `codebook`.
    """

    def __init__(self, config: PATConfig):
        super().__init__()
        sizes = dict(zip(PYRAMID_STAGES, config.codebook_sizes, strict=True))
        code_dim, width, hidden = config.code_dim, config.side_hidden_size, config.token_mixer_hidden_dim
        self.hsattn = nn.ModuleDict(
            {
                s: PATHypersphereAttention(code_dim, width, code_dim, config.hsattn_kappa, config.use_vmf)
                for s in PYRAMID_STAGES
            }
        )
        self.global_attn = nn.ModuleDict(
            {
                s: PATGlobalTokenAttention(width, width, config.global_attn_num_heads, config.side_layer_norm_eps)
                for s in PYRAMID_STAGES
            }
        )
        self.global_mixers = None
        self.local_mixers = None
        if config.use_token_mixer:
            self.global_mixers = nn.ModuleDict(
                {s: PATTokenMixer(sizes[s], config.num_queries, code_dim, width, hidden) for s in PYRAMID_STAGES}
            )
            self.local_mixers = nn.ModuleDict(
                {
                    s: PATTokenMixer(sizes[prev], sizes[s], code_dim, code_dim, hidden)
                    for prev, s in zip(PYRAMID_STAGES[:-1], PYRAMID_STAGES[1:])
                }
            )

    def local_query(self, name: str, codebook: torch.Tensor, previous_local, batch_size: int) -> torch.Tensor:
        """(K_s, C_code) codebook (+ mixed (B, K_{s-1}, C_code) previous local tokens) -> HSAttn queries
        (B, K_s, C_code)."""
        query = codebook.unsqueeze(0).expand(batch_size, -1, -1)  # (K_s, C_code) -> (B, K_s, C_code)
        if self.local_mixers is None or name not in self.local_mixers:
            return query  # early stage, or the no-TokenMixer ablation (no flow between stages)
        if previous_local is None:
            raise ValueError(f"stage {name!r} needs the previous stage's local tokens (use_token_mixer=True).")
        return query + self.local_mixers[name](previous_local)

    def forward_stage(
        self,
        stage: str,
        codebook: torch.Tensor,
        previous_local: torch.Tensor | None,
        side_tokens: torch.Tensor,
        global_tokens: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One stage of Eq. 2 (`stage` one of `PYRAMID_STAGES`): -> (local tokens e_s (B, K_s, C_code), updated global
        tokens (B, Q, C_side)).

        Shape:
            codebook: (K_s, C_code) raw rows (HSAttn normalises); previous_local: (B, K_{s-1}, C_code) or None
            (early); side_tokens: (B, L, C_side) z_s, before fusion; global_tokens: (B, Q, C_side)
        """
        name = stage
        query = self.local_query(name, codebook, previous_local, side_tokens.shape[0])
        local_tokens = self.hsattn[name](query, side_tokens)
        if self.global_mixers is not None:
            global_tokens = global_tokens + self.global_mixers[name](local_tokens)
        global_tokens = self.global_attn[name](global_tokens, side_tokens)
        return local_tokens, global_tokens


__all__ = ["PATHypersphereAttention", "PATSemanticBranch", "PATTokenMixer"]
