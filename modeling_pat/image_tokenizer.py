"""PAT's tokenizer on its own (the paper's "flexible for the independent tokenization"): image <-> discrete codes.

`PATImageTokenizer` needs no class names. `encode` maps an image to four code maps (early / mid / late pyramid
codebooks and the latent one), `decode` maps codes back to an image through the shared decoder and the
reconstruction head. It is the image side of PAT (`self.model` is a `PATModel`), so it loads straight from a full
`PATForOpenVocabSegmentation` checkpoint (the classifier's weights are simply not used) and shares its weights.

Shape symbols: see `modeling_pat.py` (codes (B, H_s, W_s) per codebook, latent: the side grid H x W; images
(B, 3, H_img, W_img)).
"""

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from .configuration_pat import PATConfig
from .constants import CODEBOOKS
from .modeling_pat import PATModel, PATPreTrainedModel


@dataclass
class PATImageTokenizerOutput(ModelOutput):
    r"""
    reconstruction (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
        The image decoded from its codes, in the normalised input space of `PATImageProcessor`.
    codes (`dict[str, torch.LongTensor]`):
        Code indices per codebook (`early`, `mid`, `late`, `latent`), each `(batch_size, H_s, W_s)`.
    quantized (`dict[str, torch.FloatTensor]`):
        The code vectors per codebook, `(batch_size, code_dim, H_s, W_s)`.
    perplexity (`dict[str, torch.FloatTensor]`):
        Perplexity of each codebook's usage over the batch (how many codes are effectively in use).
    """

    reconstruction: torch.FloatTensor | None = None
    codes: dict[str, torch.Tensor] | None = None
    quantized: dict[str, torch.Tensor] | None = None
    perplexity: dict[str, torch.Tensor] | None = None


class PATImageTokenizer(PATPreTrainedModel):
    """Image (B, 3, H_img, W_img) <-> PAT codes {early, mid, late, latent}; weights shared with
    PATForOpenVocabSegmentation."""

    # a full segmentation checkpoint also holds the open-vocabulary classifier, which the tokenizer does not use
    _keys_to_ignore_on_load_unexpected = [r"^classifier\."]

    def __init__(self, config: PATConfig):
        super().__init__(config)
        if not config.use_pyramid_tokenization:
            raise ValueError("PATImageTokenizer needs a PAT config (use_pyramid_tokenization=True).")
        self.model = PATModel(config)
        self.post_init()

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H_img, W_img) normalised, padded images -> code indices {name: (B, H_s, W_s)}."""
        pyramid, latent = self.model.encode_tokens(pixel_values)
        codes = {name: out.indices for name, out in pyramid.quantizer_outputs.items()}
        codes["latent"] = latent.indices
        return codes

    @torch.no_grad()
    def decode(self, codes: dict[str, torch.Tensor]) -> torch.Tensor:
        """Code indices {early, mid, late, latent: (B, H_s, W_s)} -> (B, 3, H_img, W_img) image, in the normalised
        input space."""
        missing = [name for name in CODEBOOKS if name not in codes]
        if missing:
            raise ValueError(f"`codes` lacks the codebooks {missing}; `encode` returns all of {list(CODEBOOKS)}.")
        return self.model.tokenization.decode_codes({name: codes[name].to(self.device) for name in CODEBOOKS})

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor) -> PATImageTokenizerOutput:
        """Encode and decode in one pass (differentiable through the straight-through codes); `return_dict` is taken
        by `can_return_tuple`, any other keyword is a TypeError."""
        pyramid, latent = self.model.encode_tokens(pixel_values)
        outputs = {**pyramid.quantizer_outputs, "latent": latent}
        return PATImageTokenizerOutput(
            reconstruction=self.model.tokenization.reconstruct(latent.quantized, pyramid.quantized),
            codes={name: out.indices for name, out in outputs.items()},
            quantized={name: out.quantized for name, out in outputs.items()},
            perplexity={name: out.perplexity for name, out in outputs.items()},
        )


__all__ = ["PATImageTokenizer", "PATImageTokenizerOutput"]
