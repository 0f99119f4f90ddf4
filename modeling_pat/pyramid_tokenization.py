"""PAT's feature-pyramid tokenization on top of SAN (architecture.md section 3), as one unit `PATPyramidTokenization`.

It owns every PAT addition and is called by `PATModel` at three points:
1. inside the side ViT, after the pyramid blocks: the semantic branch (HSAttn on the local tokens, TokenMixers,
   global-token attention) updates the query ("global") tokens (`semantic_hook`);
2. after the side ViT: the pixel branch quantises the fusion terms into the pyramid z_q, the last side map is
   quantised into z_latent, and the shared decoder (Transformer + SPADE, top-down) decodes both into stride-4
   pixel features and final global tokens (`decode`);
3. heads: final masks (MLP(global) . MLP(pixels)), and the reconstruction of the input image.

Shapes: B batch, Q queries, C side width, D code dim, K_s codebook sizes, E decoder width, H x W side grid.
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from .configuration_pat import PATConfig
from .decoder import PATMaskHead, PATReconstructionHead, PATSharedDecoder
from .pixel_branch import STAGES, PATPixelBranch, PATPixelBranchOutput, build_quantizer
from .quantizer import PATQuantizerOutput
from .semantic_branch import PATSemanticBranch, PATTokenMixer


@dataclass
class PATTokenizationOutput:
    """What the PAT path adds to SAN's: masks (B, Q, 4H, 4W), pixel features (B, E, 4H, 4W), tokens and codes."""

    masks_queries_logits: torch.Tensor
    global_tokens: torch.Tensor
    pixel_features: torch.Tensor
    pyramid: PATPixelBranchOutput
    latent: PATQuantizerOutput
    local_tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    reconstruction: torch.Tensor | None = None

    def quantizer_outputs(self) -> dict[str, PATQuantizerOutput]:
        """Every codebook's outputs, keyed early, mid, late, latent."""
        return {**self.pyramid.quantizer_outputs, "latent": self.latent}


class PATPyramidTokenization(nn.Module):
    """All PAT modules; see the module docstring for where `PATModel` calls them."""

    def __init__(self, config: PATConfig):
        super().__init__()
        self.num_queries = config.num_queries
        self.stage_positions = {position: i for i, position in enumerate(config.pyramid_side_layers)}
        self.pixel_branch = PATPixelBranch(config)
        self.latent_quantizer = build_quantizer(config, config.side_hidden_size, config.latent_codebook_size)
        self.semantic_branch = PATSemanticBranch(config)
        # "unified pixel/segmentation tokens" ablation: the global tokens are read from the latent (local) token
        # table instead of having their own embeddings (choice, see the README's register of choices).
        self.query_mixer = None
        if config.unified_tokens:
            self.query_mixer = PATTokenMixer(
                config.latent_codebook_size, config.num_queries, config.code_dim, config.side_hidden_size,
                config.token_mixer_hidden_dim,
            )
        self.decoder = PATSharedDecoder(config)
        # "separate decoding" ablation: a second decoder of the same shape serves the reconstruction only
        self.pixel_decoder = None if config.shared_decoder else PATSharedDecoder(config, decode_global_tokens=False)
        self.mask_head = PATMaskHead(config)
        self.reconstruction_head = PATReconstructionHead(config.decoder_hidden_size, config.decoder_hidden_size // 2)

    def codebook(self, stage: int) -> torch.Tensor:
        """(K_s, D) codebook E_s of a pyramid stage, shared by the pixel branch's VQ and the semantic branch."""
        return self.pixel_branch.quantizers[stage].codebook

    def query_embed(self) -> torch.Tensor | None:
        """(1, Q, C) query tokens read from the latent table (unified-tokens ablation), else None (SAN's own)."""
        if self.query_mixer is None:
            return None
        return self.query_mixer(self.latent_quantizer.codebook[None])

    def semantic_hook(self, local_tokens: dict[str, torch.Tensor]):
        """A side-adapter `stage_hook` that runs the semantic branch after the pyramid blocks (Eq. 2).

        z_s is the side map *before* fusion (the paper's side features); the updated global tokens are written back
        into the query slots; the local tokens e_s are collected in `local_tokens` by stage name.
        """
        q = self.num_queries

        def hook(position: int, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
            stage = self.stage_positions.get(position)
            if stage is None:
                return after
            previous = local_tokens.get(STAGES[stage - 1]) if stage > 0 else None
            local, global_tokens = self.semantic_branch.forward_stage(
                stage, self.codebook(stage), previous, before[:, q:], after[:, :q]
            )
            local_tokens[STAGES[stage]] = local
            return torch.cat([global_tokens, after[:, q:]], dim=1)

        return hook

    def forward(
        self,
        pixel_values: torch.Tensor,
        fusion_terms: dict[int, torch.Tensor],
        queries: torch.Tensor,
        patches: torch.Tensor,
        local_tokens: dict[str, torch.Tensor],
        reconstruct: bool = True,
    ) -> PATTokenizationOutput:
        """Pixel branch, latent VQ, shared decoder and heads, after the side ViT.

        queries (B, Q, C) and patches (B, C, H, W) are the side ViT's final output (g_8, z_8).
        """
        pyramid, latent = self.encode(pixel_values, fusion_terms, patches)
        decoded = self.decoder(latent.quantized, pyramid.quantized, queries)
        masks = self.mask_head(decoded.global_tokens, decoded.pixel_features)
        reconstruction = None
        if reconstruct:
            pixel_features = decoded.pixel_features
            if self.pixel_decoder is not None:
                pixel_features = self.pixel_decoder(latent.quantized, pyramid.quantized, None).pixel_features
            reconstruction = self.reconstruction_head(pixel_features)
        return PATTokenizationOutput(
            masks_queries_logits=masks,
            global_tokens=decoded.global_tokens,
            pixel_features=decoded.pixel_features,
            pyramid=pyramid,
            latent=latent,
            local_tokens=dict(local_tokens),
            reconstruction=reconstruction,
        )

    def encode(self, pixel_values, fusion_terms: dict[int, torch.Tensor], patches: torch.Tensor):
        """Quantise the pyramid (pixel branch on the fusion terms) and the final side map (B, C, H, W) (latent)."""
        terms = [fusion_terms[position] for position in self.stage_positions]
        return self.pixel_branch(pixel_values, terms), self.latent_quantizer(patches)

    def decode_codes(self, indices: dict[str, torch.Tensor]) -> torch.Tensor:
        """Codes {early, mid, late, latent: (B, H_s, W_s)} -> reconstructed image (B, 3, 4*H_early, 4*W_early)."""
        quantized = {
            name: quantizer.lookup(indices[name]) for name, quantizer in zip(STAGES, self.pixel_branch.quantizers)
        }
        latent = self.latent_quantizer.lookup(indices["latent"])
        decoder = self.pixel_decoder if self.pixel_decoder is not None else self.decoder
        return self.reconstruction_head(decoder(latent, quantized, None).pixel_features)


__all__ = ["PATPyramidTokenization", "PATTokenizationOutput"]
