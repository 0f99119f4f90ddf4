"""Every fast inference path equals the plain path (fp32, 1e-5) on the golden parity data.

The model is the golden tiny SAN (tests/fixtures/san_tiny) built with the parity script's own helpers; the inputs
are its recorded inputs. Fast paths covered: truncated, length-bucketed text encoding; the SDPA recognition head
(row-group masks, last block computing only the SOS rows), forward and backward; the banded, pruned
post-processing (`semantic_map`); the on-disk text-embedding cache and its keys.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conversion_scripts import check_san_parity
from modeling_pat import PATProcessor
from modeling_pat import clip_tower as clip_tower_module
from modeling_pat.clip_tower import sdpa_block_forward
from modeling_pat.image_processing_pat import (
    mask_resize_matrix,
    resize_mask_logits,
    semantic_inference,
    semantic_map,
)

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
    side = inner.run_side_adapter(pixel_values, features, inner.side_adapter.output_layers[-1:]).levels[-1]
    mask_logits, biases = inner.side_adapter.mask_decoder(side.queries, side.side_tokens)
    return features, mask_logits, biases


# -- text -------------------------------------------------------------------------------------------------------------
def test_truncated_text_encoding_equals_full_context(golden, monkeypatch):
    model, _, io = golden
    tower = model.model.clip_tower
    ids = io["text.token_ids"].long().reshape(-1, 77)  # (T*N, 77) golden token ids
    with torch.no_grad():
        plain = tower.encode_text(ids, truncate=False)
        fast = tower.encode_text(ids, truncate=True)
        monkeypatch.setattr(clip_tower_module, "TEXT_TOKENS_PER_CHUNK", 200)  # several chunks of unequal lengths
        chunked = tower.encode_text(ids, truncate=True)
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
        close(tower.encode_text(noisy, truncate=True), tower.encode_text(ids, truncate=False))
        close(tower.encode_text(noisy, truncate=False), tower.encode_text(ids, truncate=False))  # causality itself


def test_class_embeddings_fast_equals_plain(golden):
    model, _, io = golden
    tower = model.model.clip_tower
    ids = io["text.token_ids"].long().transpose(0, 1)  # (N, T, 77)
    with torch.no_grad():
        fast, plain = tower.encode_class_names(ids), tower.encode_class_names(ids, truncate=False)
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
        plain = tower.recognize(features, biases, 12, fast=False)
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
    for fast in (True, False):
        bias = biases[0].clone().requires_grad_(True)
        (tower.recognize(features, [bias], 12, fast=fast) * weights).sum().backward()
        grads.append(bias.grad)
    close(grads[0], grads[1])


def test_hooked_recognition_blocks_run_the_plain_path(golden):
    """Forward hooks (e.g. the parity recorder) observe the block forward, which the SDPA path skips."""
    model, _, io = golden
    tower = model.model.clip_tower
    seen = []
    handle = tower.recognition_blocks[0].register_forward_hook(lambda m, a, out: seen.append(out.shape))
    try:
        with torch.no_grad():
            features, _, biases = side_outputs(model, io["input.batch"])
            tower.recognize(features, biases, 12)
    finally:
        handle.remove()
    assert seen == [torch.Size([2, 29, 64])]


# -- post-processing --------------------------------------------------------------------------------------------------
def test_resize_matrices_equal_the_interpolation_chain():
    logits = torch.randn(5, 8, 10, generator=torch.Generator().manual_seed(0)) * 10
    for padded, image, output in [((128, 160), (128, 150), (80, 97)), ((128, 160), (100, 160), (300, 411)),
                                  ((8, 10), (8, 10), (8, 10)), (None, None, (13, 7))]:
        expected = resize_mask_logits(logits, padded, image, output)
        rows = mask_resize_matrix(8, *(None if s is None else s[0] for s in (padded, image, output))).float()
        cols = mask_resize_matrix(10, *(None if s is None else s[1] for s in (padded, image, output))).float()
        close(rows @ logits @ cols.T, expected, atol=1e-4)  # logits ~ 10: float32 rounding of a different order


def test_post_processing_fast_equals_plain_on_golden_outputs(golden):
    model, description, io = golden
    processor = PATProcessor.from_config(model.config, do_resize=False).image_processor
    outputs = {
        "class_queries_logits": io["pred.class_logits"],
        "masks_queries_logits": io["side.mask_logits"],
        "image_sizes": io["input.image_sizes"],
        "padded_sizes": torch.tensor([[128, 128], [128, 128]]),
    }
    targets = io["input.output_sizes"].tolist()
    for scores in (True, False):
        fast = processor.post_process_semantic_segmentation(outputs, targets, scores, fast=True)
        plain = processor.post_process_semantic_segmentation(outputs, targets, scores, fast=False)
        for i, (a, b) in enumerate(zip(fast, plain)):
            if scores:
                close(a["segmentation_scores"], b["segmentation_scores"])
                close(a["segmentation_scores"], io[f"pred.sem_seg.{i}"])
                a, b = a["segmentation"], b["segmentation"]
            assert torch.equal(a, b)
            assert torch.equal(a, io[f"pred.label_map.{i}"].long())


@pytest.mark.parametrize("num_classes", [6, 40, 300])
def test_banded_pruned_label_map_equals_plain(num_classes):
    generator = torch.Generator().manual_seed(num_classes)
    queries = 12
    low = F.avg_pool2d(torch.randn(1, queries, 12, 14, generator=generator) * 12, 3, stride=1)[0]  # (Q, 10, 12)
    embeddings = F.normalize(torch.randn(queries, 16, generator=generator), dim=-1)
    classes = F.normalize(torch.randn(num_classes + 1, 16, generator=generator), dim=-1)
    class_logits = 100 * embeddings @ classes.T
    sizes = dict(padded_size=(160, 192), image_size=(150, 180), output_size=(113, 136))
    scores = semantic_inference(class_logits, resize_mask_logits(low, **sizes))
    labels = scores.argmax(dim=0)
    for prune in (False, True):
        result = semantic_map(class_logits, low, **sizes, prune=prune, return_score_summary=True)
        assert torch.equal(result["segmentation"], labels)
        close(result["best_scores"], scores.max(dim=0).values)
        close(result["score_sums"], scores.sum(dim=0), atol=1e-4)  # a sum of num_classes scores
    with_scores = semantic_map(class_logits, low, **sizes, return_scores=True)
    close(with_scores["segmentation_scores"], scores)
    assert torch.equal(with_scores["segmentation"], labels)


@pytest.mark.parametrize("num_classes", [6, 300])
@pytest.mark.parametrize("band_elements", [1 << 24, 12 * 136 * 8])  # one band; bands of 8 or fewer rows
def test_gpu_band_plan_gives_the_same_maps(num_classes, band_elements, monkeypatch):
    """The plan `semantic_map` uses off the CPU (few large bands, pruning from DEVICE_PRUNE_MIN_CLASSES classes:
    at 300 classes here, over several tile rows per band), run here on CPU tensors."""
    from modeling_pat import image_processing_pat

    plan = image_processing_pat._band_plan
    assert plan("cuda", 100, 20, 640, 16, None, False) == (262, False)  # 16M-element blocks: 3 bands at 640 px
    assert plan("cuda", 100, 150, 640, 16, None, False) == (174, False)  # ADE-150: 4 bands, no pruning (no sync)
    assert plan("cuda", 100, 847, 640, 16, None, False) == (256, True)  # whole pruning tiles of [Q, rows, W]
    assert plan("cuda", 100, 847, 640, 16, False, False) == (30, False)  # the [rows, C, W] scores set the size
    assert plan("cuda", 100, 847, 640, 16, None, True) == (30, False)  # all the scores: no pruning
    assert plan("cpu", 100, 847, 640, 16, None, False) == (16, True)
    monkeypatch.setattr(image_processing_pat, "_band_plan", lambda device, *args: plan("cuda", *args))
    monkeypatch.setattr(image_processing_pat, "DEVICE_BAND_ELEMENTS", band_elements)
    generator = torch.Generator().manual_seed(num_classes)
    low = F.avg_pool2d(torch.randn(1, 12, 12, 14, generator=generator) * 12, 3, stride=1)[0]  # (Q, 10, 12)
    class_logits = 10 * torch.randn(12, num_classes + 1, generator=generator)
    sizes = dict(padded_size=(160, 192), image_size=(150, 180), output_size=(113, 136))
    scores = semantic_inference(class_logits, resize_mask_logits(low, **sizes))
    result = semantic_map(class_logits, low, **sizes, return_scores=True, return_score_summary=True)
    assert torch.equal(result["segmentation"], scores.argmax(dim=0))
    assert torch.equal(semantic_map(class_logits, low, **sizes)["segmentation"], scores.argmax(dim=0))
    close(result["segmentation_scores"], scores)
    close(result["best_scores"], scores.max(dim=0).values)


def test_pruning_actually_prunes_on_peaked_class_probabilities():
    """Sanity: with a trained-like (peaked) classifier most classes are skipped per band, yet the map is exact."""
    generator = torch.Generator().manual_seed(0)
    queries, num_classes = 12, 200
    low = F.avg_pool2d(torch.randn(1, queries, 10, 10, generator=generator) * 12, 3, stride=1)[0]
    class_logits = torch.full((queries, num_classes + 1), -10.0)
    class_logits[torch.arange(queries), torch.randint(0, num_classes, (queries,), generator=generator)] = 10.0
    from modeling_pat.image_processing_pat import _candidate_classes

    probs = class_logits.softmax(-1)[:, :-1].T.contiguous()
    band = torch.sigmoid(resize_mask_logits(low, output_size=(64, 64))[:, :16])  # (Q, 16, 64)
    low_bound, high_bound = band.amin(dim=1), band.amax(dim=1)
    assert len(_candidate_classes(probs, low_bound, high_bound, 16, 1e-4)) <= queries
    labels = semantic_inference(class_logits, resize_mask_logits(low, output_size=(64, 64))).argmax(0)
    assert torch.equal(semantic_map(class_logits, low, output_size=(64, 64))["segmentation"], labels)


def test_pruning_bounds_per_tile_row_group():
    """A band of several tile rows (the device plan's) is bounded per group of `tile` rows, by the low-resolution
    rows each group reads: its candidates are the union of the groups', and a group's are fewer than the band's."""
    from modeling_pat.image_processing_pat import _candidate_classes, _tile_row_sources

    generator = torch.Generator().manual_seed(0)
    queries, num_classes, tile = 12, 200, 16
    low = F.avg_pool2d(torch.randn(1, queries, 10, 10, generator=generator) * 12, 3, stride=1)[0]  # (Q, 8, 8)
    class_logits = torch.full((queries, num_classes + 1), -10.0)
    class_logits[torch.arange(queries), torch.randint(0, num_classes, (queries,), generator=generator)] = 10.0
    probs = class_logits.softmax(-1)[:, :-1].T.contiguous()
    sources = _tile_row_sources((8, None, None, 88), 0, 88, tile, torch.device("cpu"))
    dense = mask_resize_matrix(8, None, None, 88)
    assert sources.shape[0] == 6  # 5 x 16 + 8 rows
    for group, rows in enumerate(sources):  # every source row a group's output rows read is among its rows
        assert set(dense[group * tile:(group + 1) * tile].nonzero()[:, 1].tolist()) <= set(rows.tolist())
    logits = low.transpose(0, 1)  # (h, Q, w)
    lows, highs = torch.aminmax(logits[sources], dim=1)
    grouped = _candidate_classes(probs, lows.sigmoid(), highs.sigmoid(), tile, 1e-4)
    each = [_candidate_classes(probs, lows[g].sigmoid(), highs[g].sigmoid(), tile, 1e-4) for g in range(6)]
    assert torch.equal(grouped, torch.cat(each).unique())
    band_low, band_high = torch.aminmax(logits, dim=0)
    whole = _candidate_classes(probs, band_low.sigmoid(), band_high.sigmoid(), tile, 1e-4)
    assert min(len(ids) for ids in each) < len(whole)


def test_subnormal_class_probabilities_are_flushed_and_maps_unchanged(monkeypatch):
    """A sharp softmax over many classes gives subnormal probabilities (slow on CPUs); `semantic_map` scores with
    them flushed to 0 and still gives the plain path's maps and scores."""
    from modeling_pat import image_processing_pat

    generator = torch.Generator().manual_seed(0)
    low = F.avg_pool2d(torch.randn(1, 12, 12, 14, generator=generator) * 12, 3, stride=1)[0]  # (Q, 10, 12)
    class_logits = 40 * torch.randn(12, 301, generator=generator)
    plain_probs = class_logits.softmax(-1)
    tiny = torch.finfo(torch.float32).tiny
    assert ((plain_probs > 0) & (plain_probs < tiny)).any()  # the case at hand
    seen = []
    candidates = image_processing_pat._candidate_classes
    monkeypatch.setattr(image_processing_pat, "_candidate_classes",
                        lambda probs, *args: seen.append(probs) or candidates(probs, *args))
    sizes = dict(padded_size=(160, 192), image_size=(150, 180), output_size=(113, 136))
    scores = semantic_inference(class_logits, resize_mask_logits(low, **sizes))
    result = semantic_map(class_logits, low, **sizes, prune=True, return_score_summary=True)
    assert seen and not any(((probs > 0) & (probs < tiny)).any() for probs in seen)
    assert torch.equal(result["segmentation"], scores.argmax(dim=0))
    close(result["best_scores"], scores.max(dim=0).values)
    close(semantic_map(class_logits, low, **sizes, return_scores=True)["segmentation_scores"], scores)


# -- on-disk text-embedding cache -------------------------------------------------------------------------------------
def test_disk_cache_second_model_reads_without_text_tower(golden, tmp_path, monkeypatch):
    model, description, _ = golden
    names = description["class_names"]
    model._text_cache.clear()
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
        model._text_cache.clear()
        return model.get_class_embeddings(class_names=names, cache_dir=tmp_path)

    tower.encode_class_names = counting
    try:
        model._text_cache.clear()
        model.get_class_embeddings(class_names=names[:4], cache_dir=tmp_path)
        fresh_call()  # only the 2 new names are encoded
        assert encoded == [4, 2]
        fresh_call()  # all on disk
        assert encoded == [4, 2]
        model.config.prompt_templates = templates[:3]  # template change: a miss
        fresh_call()
        assert encoded == [4, 2, 6]
        model.config.prompt_templates = templates
        with torch.no_grad():  # weight change (in place): a miss
            tower.text_tower.ln_final.bias.add_(1e-3)
        fresh_call()
        assert encoded == [4, 2, 6, 6]
        assert len(list(tmp_path.glob("*.safetensors"))) == 3
    finally:
        model.config.prompt_templates = templates
        with torch.no_grad():
            if len(encoded) == 4:
                tower.text_tower.ln_final.bias.sub_(1e-3)
        del tower.encode_class_names
        model._text_cache.clear()


# -- end to end -------------------------------------------------------------------------------------------------------
def test_inference_mode_forward_equals_golden(golden):
    """The default (fast) forward under inference_mode reproduces the golden outputs."""
    model, _, io = golden
    with torch.inference_mode():
        embeddings = model.get_class_embeddings(class_names=json.loads((GOLDEN / "class_names.json").read_text()))
        outputs = model(io["input.batch"], class_embeddings=embeddings)
    close(outputs.class_queries_logits, io["pred.class_logits"])
    close(outputs.masks_queries_logits, io["side.mask_logits"])
