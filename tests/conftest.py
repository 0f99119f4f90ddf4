"""Shared test helpers: fixture paths and a tiny random SAN (the golden parity configuration)."""

from pathlib import Path

import pytest
import torch

from modeling_pat import PATConfig, PATForOpenVocabSegmentation


FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "san_tiny"


def tiny_config(preset: str = "san-tiny", **overrides) -> PATConfig:
    """A tiny preset (`san-tiny`: CLIP width 64 / 6 layers, side width 48 / 5 layers, 12 queries; or `pat-tiny`)."""
    config = PATConfig.from_preset(preset)
    for key, value in overrides.items():
        setattr(config, key, value)
    config.validate_architecture()
    return config


def tiny_model(seed: int = 0, **overrides) -> PATForOpenVocabSegmentation:
    torch.manual_seed(seed)
    return PATForOpenVocabSegmentation(tiny_config(**overrides)).eval()


@pytest.fixture
def model() -> PATForOpenVocabSegmentation:
    return tiny_model()


@pytest.fixture
def pixel_values() -> torch.Tensor:
    """Two normalised-looking 128x160 images (non-square, a multiple of 32)."""
    return torch.randn(2, 3, 128, 160, generator=torch.Generator().manual_seed(1))
