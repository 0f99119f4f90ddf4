"""Names shared by the model's units: one definition each, imported everywhere they are used."""

# PAT's feature pyramid, finest first: stage s has a grid H_s x W_s of (4H, 2H, H) with the default scales.
PYRAMID_STAGES = ("early", "mid", "late")
# The codebooks: one per pyramid stage plus the latent one on the side grid.
CODEBOOKS = (*PYRAMID_STAGES, "latent")
# The shared decoder works top-down: coarsest stage first (choice R1).
DECODING_ORDER = tuple(reversed(PYRAMID_STAGES))
