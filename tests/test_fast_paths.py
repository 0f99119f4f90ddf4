"""Every fast inference path equals the plain path (fp32, 1e-5) on the golden parity data; the plain text and
recognition paths are the oracles in `clip_oracles.py` (the package keeps the fast ones only).

The model is the golden tiny SAN (tests/fixtures/san_tiny) built with the parity script's own helpers; the inputs
are its recorded inputs. Fast paths covered: truncated, length-bucketed text encoding; the SDPA recognition head
(row-group masks, last block computing only the SOS rows), forward and backward; the on-disk text-embedding cache
and its keys. The banded, pruned post-processing (`semantic_map`) is checked against its oracle in
test_post_processing.py.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from conversion_scripts import check_san_parity
from modeling_pat import clip_tower as clip_tower_module
from modeling_pat.open_clip_backend import sdpa_block_forward

import clip_oracles
from conftest import GOLDEN


ATOL = 1e-5


@pytest.fixture(scope="module")
def golden():
    description = json.loads((GOLDEN / "config.json").read_text())
    torch.manual_seed(0)
    model = check_san_parity.build_model(GOLDEN, description).eval()
    return model, description, load_file(str(GOLDEN / "inference_io.safetensors"))


def close(a, b, atol=ATOL):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


def side_outputs(model, pixel_values):
    """CLIP features and the final level's attention biases, as the model's forward computes them."""
    inner = model.model
    features = inner.clip_tower.extract_features(inner.clip_input(pixel_values))
    side = inner.run_side_adapter(pixel_values, features, inner.side_adapter.output_layers[-1:])[0].levels[-1]
    mask_logits, biases = inner.side_adapter.mask_decoder(side.queries, side.side_tokens)
    return features, mask_logits, biases


# -- text -------------------------------------------------------------------------------------------------------------
def test_truncated_text_encoding_equals_full_context(golden, monkeypatch):
    model, _, io = golden
    tower = model.model.clip_tower
    ids = io["text.token_ids"].long().reshape(-1, 77)  # (T*N, 77) golden token ids
    with torch.no_grad():
        plain = clip_oracles.encode_text(tower, ids)
        fast = tower.encode_text(ids)
        monkeypatch.setattr(clip_tower_module, "TEXT_TOKENS_PER_CHUNK", 200)  # several chunks of unequal lengths
        chunked = tower.encode_text(ids)
    close(fast, plain)
    close(chunked, plain)
    close(fast.reshape(io["text.template_embeddings"].shape), io["text.template_embeddings"])


def test_truncation_ignores_everything_after_the_end_of_text_token(golden):
    model, _, io = golden
    tower = model.model.clip_tower
    ids = io["text.token_ids"].long()[0]  # (N, 77)
    noisy = ids.clone()
    eot = ids.argmax(dim=-1)
    for row, position in enumerate(eot.tolist()):  # garbage after EOT (smaller ids, so argmax stays the EOT)
        noisy[row, position + 1 :] = torch.randint(1, 49000, (76 - position,))
    with torch.no_grad():
        close(tower.encode_text(noisy), clip_oracles.encode_text(tower, ids))
        close(clip_oracles.encode_text(tower, noisy), clip_oracles.encode_text(tower, ids))  # causality itself


def test_class_embeddings_fast_equals_plain(golden):
    model, _, io = golden
    tower = model.model.clip_tower
    ids = io["text.token_ids"].long().transpose(0, 1)  # (N, T, 77)
    with torch.no_grad():
        fast, plain = tower.encode_class_names(ids), clip_oracles.encode_class_names(tower, ids)
    close(fast, plain)
    close(fast, io["text.class_embeddings"])


# -- recognition head -------------------------------------------------------------------------------------------------
def test_sdpa_block_forward_equals_the_block(golden):
    model, _, _ = golden
    block = model.model.clip_tower.recognition_blocks[0]
    x = torch.randn(2, 29, 64, generator=torch.Generator().manual_seed(0))
    mask = torch.randn(2, 4, 29, 29, generator=torch.Generator().manual_seed(1)) * 3
    with torch.no_grad():
        expected = block(x, attn_mask=mask.reshape(8, 29, 29))
        whole = sdpa_block_forward(block, x, [(0, 29, mask, False)])
        split = sdpa_block_forward(block, x, [(0, 12, mask[:, :, :12], False), (12, 29, mask[:, :, 12:], False)])
        rows = sdpa_block_forward(block, x, [(0, 12, mask[:, :, :12], False)])
    close(whole, expected)
    close(split, expected)
    close(rows, expected[:, :12])


@pytest.mark.parametrize("per_block", [False, True])
def test_sdpa_recognition_equals_plain(golden, per_block):
    model, _, io = golden
    tower = model.model.clip_tower
    with torch.no_grad():
        features, _, biases = side_outputs(model, io["input.batch"])
        if per_block:  # one bias per recognition block, different ones
            biases = [biases[0], biases[0].flip(-1) * 0.5]
        fast = tower.recognize(features, biases, 12)
        plain = clip_oracles.recognize(tower, features, biases, 12)
    close(fast, plain)
    if not per_block:
        close(fast, io["rec.mask_embeddings"])


def test_sdpa_recognition_gradients_equal_plain(golden):
    """Training uses the recognition head too: gradients w.r.t. the attention bias must match."""
    model, _, io = golden
    tower = model.model.clip_tower
    with torch.no_grad():
        features, _, biases = side_outputs(model, io["input.batch"])
    weights = torch.randn(2, 12, 8, generator=torch.Generator().manual_seed(2))
    grads = []
    for recognize in (tower.recognize, lambda *args: clip_oracles.recognize(tower, *args)):
        bias = biases[0].clone().requires_grad_(True)
        (recognize(features, [bias], 12) * weights).sum().backward()
        grads.append(bias.grad)
    close(grads[0], grads[1])


# -- on-disk text-embedding cache -------------------------------------------------------------------------------------
def test_disk_cache_second_model_reads_without_text_tower(golden, tmp_path, monkeypatch):
    model, description, _ = golden
    names = description["class_names"]
    model.inference_cache.clear()
    first = model.get_class_embeddings(class_names=names, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    other = check_san_parity.build_model(GOLDEN, description).eval()  # same weights, new "process"

    def refuse(*args, **kwargs):
        raise AssertionError("the text tower ran although every name is on disk")

    monkeypatch.setattr(other.model.clip_tower, "encode_class_names", refuse)
    close(other.get_class_embeddings(class_names=names[::-1], cache_dir=tmp_path), first.flip(0), atol=0)
    close(first, model.get_class_embeddings(class_names=names, cache_dir=None), atol=ATOL)


def test_disk_cache_misses_on_weight_or_template_change_and_adds_new_names(golden, tmp_path):
    model, description, _ = golden
    names = description["class_names"]
    templates = list(model.config.prompt_templates)
    tower = model.model.clip_tower
    encoded = []
    original = tower.encode_class_names

    def counting(input_ids, *args, **kwargs):
        encoded.append(input_ids.shape[0])
        return original(input_ids, *args, **kwargs)

    def fresh_call():
        model.inference_cache.clear()
        return model.get_class_embeddings(class_names=names, cache_dir=tmp_path)

    tower.encode_class_names = counting
    try:
        model.inference_cache.clear()
        model.get_class_embeddings(class_names=names[:4], cache_dir=tmp_path)
        fresh_call()  # only the 2 new names are encoded
        assert encoded == [4, 2]
        fresh_call()  # all on disk
        assert encoded == [4, 2]
        model.config.prompt_templates = templates[:3]  # template change: a miss
        fresh_call()
        assert encoded == [4, 2, 6]
        model.config.prompt_templates = templates
        with torch.no_grad():  # weight change (in place, then announced as documented): a miss
            tower.text_tower.ln_final.bias.add_(1e-3)
        model.clear_inference_caches()
        fresh_call()
        assert encoded == [4, 2, 6, 6]
        assert len(list(tmp_path.glob("*.safetensors"))) == 3
    finally:
        model.config.prompt_templates = templates
        with torch.no_grad():
            if len(encoded) == 4:
                tower.text_tower.ln_final.bias.sub_(1e-3)
        del tower.encode_class_names
        model.clear_inference_caches()


# -- end to end -------------------------------------------------------------------------------------------------------
def test_inference_mode_forward_equals_golden(golden):
    """The default (fast) forward under inference_mode reproduces the golden outputs."""
    model, _, io = golden
    with torch.inference_mode():
        embeddings = model.get_class_embeddings(class_names=json.loads((GOLDEN / "class_names.json").read_text()))
        outputs = model(io["input.batch"], class_embeddings=embeddings)
    close(outputs.class_queries_logits, io["pred.class_logits"])
    close(outputs.masks_queries_logits, io["side.mask_logits"])
