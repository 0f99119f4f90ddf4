"""Class embeddings (`class_embeddings.py`): prompts, the in-memory text cache and its invalidation, the fingerprint."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from conftest import tiny_model


def test_custom_prompt_templates_are_validated(model):
    assert model.prompt_input_ids(["cat"], ["a {} here"]).shape == (1, 1, 77)
    with pytest.raises(ValueError, match=r"`prompt_templates\[0\]` 'a \{\} and a \{\}' must contain exactly one"):
        model.prompt_input_ids(["cat"], ["a {} and a {}"])


def test_text_cache_is_reused_and_invalidated_by_weight_edits(model):
    first = model.get_class_embeddings(class_names=["cat", "sky"])
    assert model.get_class_embeddings(class_names=["cat", "sky"]) is first
    with torch.no_grad():
        projection = model.model.clip_tower.clip.text_projection
        projection.add_(torch.randn(projection.shape, generator=torch.Generator().manual_seed(0)))
    model.clear_inference_caches()  # the documented call after an in-place edit
    recomputed = model.get_class_embeddings(class_names=["cat", "sky"])
    assert recomputed is not first and not torch.allclose(recomputed, first)


def test_text_cache_is_bypassed_while_a_text_parameter_trains():
    model = tiny_model()
    names = ["cat", "sky"]
    first = model.get_class_embeddings(class_names=names)
    projection = model.model.clip_tower.clip.text_projection
    projection.requires_grad_(True)
    with torch.no_grad():  # an optimiser step: no call announces it
        projection.add_(torch.randn(projection.shape, generator=torch.Generator().manual_seed(0)))
    assert not torch.allclose(model.get_class_embeddings(class_names=names), first)
    assert model.get_class_embeddings(class_names=names) is not model.get_class_embeddings(class_names=names)


def test_text_fingerprint_is_kept_across_moves_and_modes_and_redone_on_new_weights(monkeypatch):
    import modeling_pat.class_embeddings as modeling

    model = tiny_model()
    hashed = []
    real = modeling.fingerprint_text_weights
    monkeypatch.setattr(modeling, "fingerprint_text_weights", lambda params: hashed.append(1) or real(params))
    fingerprint = model.text_weights_fingerprint()
    model.to("cpu").train().eval()
    assert model.text_weights_fingerprint() == fingerprint and len(hashed) == 1
    model.load_state_dict(model.state_dict())  # same values, but loaded weights are hashed again
    assert model.text_weights_fingerprint() == fingerprint and len(hashed) == 2
    model.to(torch.float64)  # a dtype change: other bytes
    assert model.text_weights_fingerprint() != fingerprint and len(hashed) == 3
    with torch.no_grad():
        model.model.clip_tower.clip.ln_final.bias.add_(1.0)
    model.clear_inference_caches()
    assert len({model.text_weights_fingerprint(), fingerprint}) == 2 and len(hashed) == 4


def test_text_cache_is_shared_safely_by_threads(model, monkeypatch):
    """Visitors of a web demo share one model: a vocabulary asked for by several threads at once is encoded once."""
    encode, calls = model._encode_class_names, []

    def slow_encode(input_ids):  # slow enough that every thread asks before the first one is done
        calls.append(input_ids.shape)
        time.sleep(0.2)
        return encode(input_ids)

    monkeypatch.setattr(model, "_encode_class_names", slow_encode)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: model.get_class_embeddings(class_names=["cat", "sky"]), range(4)))
    assert len(calls) == 1
    assert all(result is results[0] for result in results)


def test_text_embeddings_made_under_autocast_are_full_precision(model):
    """A training step under bf16 autocast fills the vocabulary cache that a full-precision evaluation reads next."""
    names = ["cat", "sky"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = model.get_class_embeddings(class_names=names)
    model.inference_cache.clear()
    plain = model.get_class_embeddings(class_names=names)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, plain, rtol=0, atol=0)


def test_class_names_hit_the_text_cache_when_ids_live_on_an_accelerator(monkeypatch):
    # names are keyed by their text, whatever device their ids are tokenised onto (simulated: the host check says no)
    import modeling_pat.class_embeddings as modeling

    model = tiny_model()
    monkeypatch.setattr(modeling, "ids_on_host", lambda input_ids: False)
    first = model.get_class_embeddings(class_names=["cat", "dog"])
    assert model.get_class_embeddings(class_names=["cat", "dog"]) is first
