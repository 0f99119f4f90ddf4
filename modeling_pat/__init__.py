"""SAN and PAT as transformers models. Importing the package registers them with the Auto classes.

The model, its configuration and its processors are the flat modules here (what Hub remote code copies); the
applications built on them (pipeline, sliding windows, region queries, CLI, data, training, evaluation, export, model
cards, demo) are in `modeling_pat.apps`, which imports the model and is never imported by it. The names below are
re-exported from both so that `from modeling_pat import ...` is all a user needs.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForSemanticSegmentation, AutoProcessor

from .apps.pipeline import PATImageSegmentationPipeline, register_pipeline
from .apps.region_query import PATRegionMatch, PATRegionProposals, query_region
from .apps.sliding_window import sliding_window_segmentation
from .configuration_pat import PATConfig
from .image_processing_pat import PATImageProcessor, load_image
from .image_tokenizer import PATImageTokenizer, PATImageTokenizerOutput
from .modeling_pat import (
    PATForOpenVocabSegmentation,
    PATForOpenVocabSegmentationOutput,
    PATModel,
    PATModelOutput,
    PATPreTrainedModel,
)
from .processing_pat import PATProcessor


AutoConfig.register(PATConfig.model_type, PATConfig, exist_ok=True)
AutoModel.register(PATConfig, PATModel, exist_ok=True)
AutoModelForSemanticSegmentation.register(PATConfig, PATForOpenVocabSegmentation, exist_ok=True)
AutoImageProcessor.register(PATConfig, image_processor_classes={"torchvision": PATImageProcessor}, exist_ok=True)
AutoProcessor.register(PATConfig, PATProcessor, exist_ok=True)
# pipeline("image-segmentation") accepts candidate_labels for SAN/PAT; every other model behaves as before
register_pipeline()


def __getattr__(name: str):
    # Imported on first use, not here: `python -m modeling_pat.model_card` would otherwise run a module that the
    # package import already loaded (runpy warns about exactly that).
    if name == "write_model_card":
        from .apps.model_card import write_model_card

        return write_model_card
    if name in ("resolve_pretrained", "WeightsUnavailableError"):  # application code, loaded when first asked for
        from .apps import pretrained

        return getattr(pretrained, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_for_auto_classes() -> None:
    """Make `save_pretrained` write `auto_map` and copy the code, so a saved folder loads with trust_remote_code."""
    PATConfig.register_for_auto_class()
    PATModel.register_for_auto_class("AutoModel")
    PATForOpenVocabSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
    PATImageProcessor.register_for_auto_class()
    PATProcessor.register_for_auto_class()


__all__ = [
    "PATConfig",
    "PATForOpenVocabSegmentation",
    "PATForOpenVocabSegmentationOutput",
    "PATImageProcessor",
    "PATImageSegmentationPipeline",
    "PATImageTokenizer",
    "PATImageTokenizerOutput",
    "PATModel",
    "PATModelOutput",
    "PATPreTrainedModel",
    "PATProcessor",
    "PATRegionMatch",
    "PATRegionProposals",
    "WeightsUnavailableError",
    "load_image",
    "query_region",
    "register_for_auto_classes",
    "register_pipeline",
    "resolve_pretrained",
    "sliding_window_segmentation",
    "write_model_card",
]
