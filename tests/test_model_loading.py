"""Loading a model for the applications (`modeling_pat/apps/model_loading.py`): `random:<preset>`, saved folders,
devices, and errors that say what went wrong; on the tiny random SAN, offline."""

import pytest
import torch

from modeling_pat.apps import model_loading
from modeling_pat.apps.model_loading import (
    ModelLoadError,
    UsageError,
    compute_class_embeddings,
    first_line,
    load_model,
    resolve_device,
)

from conftest import tiny_model


def test_random_presets_are_seeded_and_in_eval_mode():
    model, processor = load_model("random:san-tiny", torch.device("cpu"), torch.float32)
    again, _ = load_model("random:san-tiny", torch.device("cpu"), torch.float32)
    assert not model.training and processor.image_processor is not None
    for (name, ours), (_, theirs) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(ours, theirs), name


def test_an_unknown_preset_names_the_available_ones():
    with pytest.raises(ModelLoadError, match="available presets"):
        load_model("random:no-such-preset", torch.device("cpu"), torch.float32)


def test_a_folder_without_processor_files_gets_the_processor_from_its_config(tmp_path):
    tiny_model().save_pretrained(tmp_path)  # weights and config only
    model, processor = load_model(str(tmp_path), torch.device("cpu"), torch.bfloat16)
    assert model.dtype == torch.bfloat16 and not model.training
    assert list(processor.prompt_templates) == list(model.config.prompt_templates)


def test_a_folder_that_is_no_model_is_a_load_error_naming_it(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="could not load"):
        load_model(str(tmp_path), torch.device("cpu"), torch.float32)


def test_cuda_without_a_device_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(model_loading.torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UsageError, match="no CUDA device"):
        resolve_device("cuda")


def test_class_embeddings_are_unit_rows_one_per_name():
    model, processor = load_model("random:san-tiny", torch.device("cpu"), torch.float32)
    embeddings = compute_class_embeddings(model, processor, ["cat", "sky", "grass"])
    assert embeddings.shape == (3, model.config.clip_config["embed_dim"])  # (N, D)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3))


def test_first_line_of_an_error():
    assert first_line(ValueError("bad file\nmore detail")) == "bad file"
    assert first_line(OSError()) == "OSError"


def test_a_load_error_reports_the_instructions_unless_it_gives_its_own():
    from modeling_pat.apps.model_loading import ModelLoadError
    from modeling_pat.apps.pretrained import OFFICIAL_MODELS

    general = ModelLoadError("no such folder").report()
    assert general.startswith("the model could not be loaded.\nno such folder\n\n")
    assert all(name in general for name in OFFICIAL_MODELS) and "{names}" not in general
    assert ModelLoadError("offline: fetch it once", complete=True).report() == (
        "the model could not be loaded.\noffline: fetch it once"
    )
