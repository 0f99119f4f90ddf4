"""Loading a model for the applications (`pat-segment`, `pat-demo`, the ONNX export): `--model` as a name, folder,
checkpoint, Hub id or `random:<preset>` -> (model, processor), with errors that say how to get the weights, and the
vocabulary's (N, D) text embeddings (symbols as in the table of `modeling_pat/modeling_pat.py`)."""

from pathlib import Path

import torch

from modeling_pat_cli import DEFAULT_MODEL, DTYPE_NAMES  # the console script's front, torch-free

from ..configuration_pat import PATConfig
from ..modeling_pat import PATForOpenVocabSegmentation
from ..processing_pat import PATProcessor
from .pretrained import OFFICIAL_MODELS, WeightsUnavailableError, hub_offline, resolve_pretrained


RANDOM_PREFIX = "random:"
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
HOW_TO_GET_WEIGHTS = """\
To get a model: --model takes a name ({names}: the official SAN checkpoints, fetched from the Hugging Face Hub
repository Mendel192/san and converted once into a local cache), a downloaded official .pth file, a save_pretrained
folder or a Hub id (owner/name). Offline, fetch the default's file once where the Hub is reachable (same HF_HOME):
  hf download Mendel192/san san_vit_b_16.pth
Or try the whole pipeline offline with random weights: --model random:san-tiny"""


class UsageError(Exception):
    """Bad command-line input: exit code 2."""


class ModelLoadError(Exception):
    """The model (or its processor) could not be loaded: exit code 3. `complete`: the message already says how to
    get the model (a named official model), so no general instructions are added."""

    def __init__(self, message: str, complete: bool = False):
        super().__init__(message)
        self.complete = complete

    def report(self) -> str:
        """What a command prints after "<prog>: error: ": the failure, then how to get a model unless it says so."""
        instructions = "" if self.complete else "\n\n" + HOW_TO_GET_WEIGHTS.format(names=", ".join(OFFICIAL_MODELS))
        return f"the model could not be loaded.\n{self}{instructions}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but PyTorch sees no CUDA device (use --device cpu or auto).")
    return torch.device(name)


def load_model(spec: str | None, device: torch.device, dtype: torch.dtype, revision: str | None = None):
    """`--model` -> (model in eval mode on `device` in `dtype`, processor); raises ModelLoadError with instructions."""
    spec = spec or DEFAULT_MODEL
    if spec.startswith(RANDOM_PREFIX):
        model, processor = _random_model(spec.removeprefix(RANDOM_PREFIX))
        return model.to(device=device, dtype=dtype).eval(), processor
    try:  # a folder, an official name or .pth file (fetched / converted once), or a Hub id
        source = resolve_pretrained(spec, revision=revision)
    except WeightsUnavailableError as error:
        raise ModelLoadError(str(error), complete=spec in OFFICIAL_MODELS) from error
    except ValueError as error:  # a local file that is not an official SAN checkpoint
        raise ModelLoadError(f"--model {spec!r} could not be converted: {first_line(error)}") from error
    except OSError as error:  # a truncated or corrupt checkpoint, or a damaged cached one: the message names the file
        raise ModelLoadError(f"--model {spec!r}: {first_line(error)}", complete=True) from error
    failure = f"could not load {spec!r}" + ("" if Path(source).is_dir() else " from the Hugging Face Hub")
    model, processor = _pretrained_model(source, dtype, failure, revision)
    return model.to(device=device, dtype=dtype).eval(), processor


def _random_model(preset: str):
    """A model with random weights from a named preset (offline smoke tests); seeded, so runs are repeatable."""
    try:
        config = PATConfig.from_preset(preset)
    except ValueError as error:
        raise ModelLoadError(str(error)) from error
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = PATForOpenVocabSegmentation(config)
    return model, PATProcessor.from_config(config)


def _pretrained_model(spec: str, dtype: torch.dtype, failure: str, revision: str | None = None):
    try:
        model = PATForOpenVocabSegmentation.from_pretrained(spec, dtype=dtype, revision=revision)
    except Exception as error:  # OSError (offline / not found), ValueError / KeyError (not a PAT model), ...
        offline = " (offline mode: HF_HUB_OFFLINE is set)" if hub_offline() and not Path(spec).is_dir() else ""
        raise ModelLoadError(f"{failure}{offline}: {first_line(error)}") from error
    try:
        processor = PATProcessor.from_pretrained(spec, revision=revision)
    except Exception:  # a folder with weights and config only: the config says everything the processor needs
        processor = PATProcessor.from_config(model.config)
    return model, processor


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def compute_class_embeddings(model, processor, class_names: list[str]) -> torch.Tensor:
    """(N, D) unit text embeddings of the class names, computed once per run (the model encodes them in chunks of
    classes, so large vocabularies stay within memory)."""
    input_ids = processor.encode_class_names(class_names)["input_ids"]
    return model.get_class_embeddings(input_ids=input_ids.to(model.device))


__all__ = [
    "DTYPES",
    "HOW_TO_GET_WEIGHTS",
    "ModelLoadError",
    "RANDOM_PREFIX",
    "UsageError",
    "compute_class_embeddings",
    "first_line",
    "load_model",
    "resolve_device",
]
