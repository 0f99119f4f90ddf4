"""PAT's feature-pyramid tokenization on top of SAN, as one unit `PATPyramidTokenization`.

It owns every PAT addition and is called by `PATModel` at three points:
1. between the side ViT's blocks, after each pyramid block: the semantic branch (HSAttn on the local tokens,
   TokenMixers, global-token attention) updates the query ("global") tokens (`semantic_stage`, called by
   `PATModel.run_side_adapter`, which runs the side ViT in steps);
2. after the side ViT: the pixel branch quantises the fusion terms into the pyramid z_q, the last side map is
   quantised into z_latent, and the shared decoder (Transformer + SPADE, top-down) decodes both into stride-4
   pixel features and final global tokens (`decode`);
3. heads: final masks (MLP(global) . MLP(pixels)), and the reconstruction of the input image.

Shape symbols: see `modeling_pat.py` (global tokens (B, Q, C_side), side tokens (B, C_side, H, W), codes
(B, C_code, H_s, W_s), decoder features (B, C_dec, H_early, W_early)).
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from .configuration_pat import PATConfig
from .constants import PYRAMID_STAGES
from .pixel_branch import PATPixelBranch, PATPixelBranchOutput, build_quantizer
from .quantizer import PATQuantizerOutput
from .semantic_branch import PATSemanticBranch, PATTokenMixer
from .shared_decoder import PATDecoderOutput, PATMaskHead, PATReconstructionHead, PATSharedDecoder


@dataclass
class PATTokenizationOutput:
    """What the PAT path adds to SAN's: masks (B, Q, H_early, W_early), pixel features (B, C_dec, H_early, W_early),
    final global tokens (B, Q, C_side), the codes of every codebook, the reconstruction (B, 3, H_img, W_img) when
    asked for, and the shared decoder's stage outputs when asked for (`decoder_hidden_states`)."""

    masks_queries_logits: torch.Tensor
    global_tokens: torch.Tensor
    pixel_features: torch.Tensor
    pyramid: PATPixelBranchOutput
    latent: PATQuantizerOutput
    local_tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    reconstruction: torch.Tensor | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None

    def quantizer_outputs(self) -> dict[str, PATQuantizerOutput]:
        """Every codebook's outputs, keyed early, mid, late, latent."""
        return {**self.pyramid.quantizer_outputs, "latent": self.latent}


class PATPyramidTokenization(nn.Module):
    """All PAT modules; see the module docstring for where `PATModel` calls them."""

    def __init__(self, config: PATConfig):
        super().__init__()
        # pyramid stage -> side block after which the semantic branch runs (and whose fusion term it quantises)
        self.stage_positions = dict(zip(PYRAMID_STAGES, config.pyramid_side_layers, strict=True))
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

    def codebook(self, stage: str) -> torch.Tensor:
        """(K_s, C_code) codebook E_s of a pyramid stage, shared by the pixel branch's VQ and the semantic branch."""
        return self.pixel_branch.quantizers[PYRAMID_STAGES.index(stage)].codebook

    def query_embed(self) -> torch.Tensor | None:
        """(1, Q, C_side) query tokens read from the latent table (unified-tokens ablation), else None (SAN's own)."""
        if self.query_mixer is None:
            return None
        return self.query_mixer(self.latent_quantizer.codebook[None])

    def semantic_stage(
        self, stage: str, side_tokens: torch.Tensor, global_tokens: torch.Tensor, previous_local: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The semantic branch after pyramid stage `stage`'s side block (Eq. 2) -> (local tokens e_s (B, K_s, C_code),
        updated global tokens (B, Q, C_side)).

        side_tokens (B, L, C_side) are z_s, the block's output *before* fusion (the paper's side features);
        global_tokens (B, Q, C_side) are the side ViT's query tokens; previous_local are the previous stage's local
        tokens (None at the first stage).
        """
        return self.semantic_branch.forward_stage(stage, self.codebook(stage), previous_local, side_tokens, global_tokens)

    def forward(
        self,
        pixel_values: torch.Tensor,
        fusion_terms: dict[int, torch.Tensor],
        queries: torch.Tensor,
        side_tokens: torch.Tensor,
        local_tokens: dict[str, torch.Tensor],
        reconstruct: bool = True,
        output_hidden_states: bool = False,
    ) -> PATTokenizationOutput:
        """Pixel branch, latent VQ, shared decoder and heads, after the side ViT.

        queries (B, Q, C_side) and side_tokens (B, C_side, H, W) are the side ViT's final output (g_8, z_8).
        """
        pyramid, latent = self.encode(pixel_values, fusion_terms, side_tokens)
        decoded = self.decoder(latent.quantized, pyramid.quantized, queries, output_hidden_states)
        masks = self.mask_head(decoded.global_tokens, decoded.pixel_features)
        reconstruction = self.reconstruct(latent.quantized, pyramid.quantized, decoded) if reconstruct else None
        return PATTokenizationOutput(
            masks_queries_logits=masks,
            global_tokens=decoded.global_tokens,
            pixel_features=decoded.pixel_features,
            pyramid=pyramid,
            latent=latent,
            local_tokens=dict(local_tokens),
            reconstruction=reconstruction,
            decoder_hidden_states=decoded.hidden_states,
        )

    def encode(self, pixel_values, fusion_terms: dict[int, torch.Tensor], side_tokens: torch.Tensor):
        """Quantise the pyramid (pixel branch on the fusion terms) and the final side map (B, C_side, H, W) (latent)
        -> (`PATPixelBranchOutput`, latent `PATQuantizerOutput`)."""
        terms = [fusion_terms[self.stage_positions[stage]] for stage in PYRAMID_STAGES]
        return self.pixel_branch(pixel_values, terms), self.latent_quantizer(side_tokens)

    def reconstruct(
        self, latent: torch.Tensor, pyramid: dict[str, torch.Tensor], shared: PATDecoderOutput | None = None
    ) -> torch.Tensor:
        """Codes (latent (B, C_code, H, W), pyramid {stage: (B, C_code, H_s, W_s)}) -> image (B, 3, H_img, W_img).

        The one place that chooses the decoder of the reconstruction: the pixel decoder of the "separate decoding"
        ablation when there is one, else the shared decoder, whose output `shared` is reused when already decoded.
        """
        if self.pixel_decoder is not None:
            features = self.pixel_decoder(latent, pyramid, None).pixel_features
        elif shared is not None:
            features = shared.pixel_features
        else:
            features = self.decoder(latent, pyramid, None).pixel_features
        return self.reconstruction_head(features)

    def decode_codes(self, indices: dict[str, torch.Tensor]) -> torch.Tensor:
        """Codes {early, mid, late, latent: (B, H_s, W_s)} -> reconstructed image (B, 3, H_img, W_img)."""
        quantized = {
            stage: quantizer.lookup(indices[stage])
            for stage, quantizer in zip(PYRAMID_STAGES, self.pixel_branch.quantizers)
        }
        return self.reconstruct(self.latent_quantizer.lookup(indices["latent"]), quantized)


__all__ = ["PATPyramidTokenization", "PATTokenizationOutput"]
