"""Tests for modeling_pat.post_processing: mask-logit resizing, the banded, pruned `semantic_map` (the package's
only semantic inference) against the dense oracle (tests/post_processing_oracle.py) within 1e-5 fp32 and identical
label maps, on the golden parity data and on random logits, and the output / size-table helpers."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from modeling_pat import post_processing
from modeling_pat.image_processing_pat import PATImageProcessor
from modeling_pat.post_processing import (
    CPU_BAND_PIXELS,
    ResizeRows,
    _band_block,
    _candidate_classes,
    _tile_row_sources,
    mask_outputs,
    mask_proposals,
    mask_resize_matrix,
    mask_resize_rows,
    output_field,
    resize_mask_logits,
    semantic_map,
    size_at,
    size_rows,
)
from post_processing_oracle import semantic_inference


ATOL = 1e-5  # DECISIONS.md item 6
GOLDEN = Path(__file__).parent / "fixtures" / "san_tiny" / "inference_io.safetensors"


@pytest.fixture(scope="module")
def golden():
    assert GOLDEN.is_file(), f"missing test fixture {GOLDEN}"  # parity tests fail, never skip
    return load_file(str(GOLDEN))


def golden_outputs(golden):
    return {
        "class_queries_logits": golden["pred.class_logits"],
        "masks_queries_logits": golden["side.mask_logits"],
        "image_sizes": golden["input.image_sizes"],
        "padded_sizes": torch.tensor([[128, 128], [128, 128]]),
    }


def close(a, b, atol=ATOL):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


# -- golden data ------------------------------------------------------------------------------------------------------
@pytest.mark.parity
def test_semantic_map_reproduces_the_golden_scores_and_maps(golden):
    """The package's path on its own, as an evaluation loop calls it: scores within 1e-5, identical label maps."""
    for i in range(2):
        sizes = dict(padded_size=(128, 128), image_size=golden["input.image_sizes"][i].tolist(),
                     output_size=golden["input.output_sizes"][i].tolist())
        result = semantic_map(golden["pred.class_logits"][i], golden["side.mask_logits"][i], **sizes,
                              return_scores=True)
        close(result["segmentation_scores"], golden[f"pred.sem_seg.{i}"])
        assert torch.equal(result["segmentation"], golden[f"pred.label_map.{i}"].long())


@pytest.mark.parity
def test_the_oracle_reproduces_the_golden_scores(golden):
    """The oracle itself is SAN's semantic inference: it reproduces the golden scores after `resize_mask_logits`."""
    for i in range(2):
        masks = resize_mask_logits(golden["side.mask_logits"][i], padded_size=(128, 128),
                                   image_size=golden["input.image_sizes"][i].tolist(),
                                   output_size=golden["input.output_sizes"][i].tolist())
        close(semantic_inference(golden["pred.class_logits"][i], masks), golden[f"pred.sem_seg.{i}"])


# -- the banded, pruned path against the oracle ------------------------------------------------------------------------
def test_resize_matrices_equal_the_interpolation_chain():
    logits = torch.randn(5, 8, 10, generator=torch.Generator().manual_seed(0)) * 10
    for padded, image, output in [((128, 160), (128, 150), (80, 97)), ((128, 160), (100, 160), (300, 411)),
                                  ((8, 10), (8, 10), (8, 10)), (None, None, (13, 7))]:
        expected = resize_mask_logits(logits, padded, image, output)
        rows = mask_resize_matrix(8, *(None if s is None else s[0] for s in (padded, image, output))).float()
        cols = mask_resize_matrix(10, *(None if s is None else s[1] for s in (padded, image, output))).float()
        close(rows @ logits @ cols.T, expected, atol=1e-4)  # logits ~ 10: float32 rounding of a different order


@pytest.mark.parity
def test_post_processing_equals_the_oracle_and_the_golden_maps(golden):
    outputs = golden_outputs(golden)
    targets = golden["input.output_sizes"].tolist()
    processor = PATImageProcessor(do_resize=False)
    with_scores = processor.post_process_semantic_segmentation(outputs, targets, return_segmentation_scores=True)
    maps = processor.post_process_semantic_segmentation(outputs, targets)
    for i, (result, label_map) in enumerate(zip(with_scores, maps, strict=True)):
        sizes = dict(padded_size=(128, 128), image_size=golden["input.image_sizes"][i].tolist(), output_size=targets[i])
        masks = resize_mask_logits(golden["side.mask_logits"][i], **sizes)
        oracle = semantic_inference(golden["pred.class_logits"][i], masks)
        close(result["segmentation_scores"], oracle)
        close(result["segmentation_scores"], golden[f"pred.sem_seg.{i}"])
        assert torch.equal(result["segmentation"], oracle.argmax(dim=0))
        assert torch.equal(label_map, golden[f"pred.label_map.{i}"].long())


@pytest.mark.parametrize("num_classes", [6, 40, 300])
def test_banded_pruned_label_map_equals_the_oracle(num_classes):
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
    plan = post_processing._band_plan
    assert plan("cuda", 100, 20, 640, 16, None, False) == (262, False)  # 16M-element blocks: 3 bands at 640 px
    assert plan("cuda", 100, 150, 640, 16, None, False) == (174, False)  # ADE-150: 4 bands, no pruning (no sync)
    assert plan("cuda", 100, 847, 640, 16, None, False) == (256, True)  # whole pruning tiles of [Q, rows, W_out]
    assert plan("cuda", 100, 847, 640, 16, False, False) == (30, False)  # the [rows, N, W_out] scores set the size
    assert plan("cuda", 100, 847, 640, 16, None, True) == (30, False)  # all the scores: no pruning
    assert plan("cpu", 100, 847, 640, 16, None, False) == (16, True)
    monkeypatch.setattr(post_processing, "_band_plan", lambda device, *args: plan("cuda", *args))
    monkeypatch.setattr(post_processing, "DEVICE_BAND_ELEMENTS", band_elements)
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
    probs = class_logits.softmax(-1)[:, :-1].T.contiguous()
    band = torch.sigmoid(resize_mask_logits(low, output_size=(64, 64))[:, :16])  # (Q, 16, 64)
    low_bound, high_bound = band.amin(dim=1), band.amax(dim=1)
    assert len(_candidate_classes(probs, low_bound, high_bound, 16, 1e-4)) <= queries
    labels = semantic_inference(class_logits, resize_mask_logits(low, output_size=(64, 64))).argmax(0)
    assert torch.equal(semantic_map(class_logits, low, output_size=(64, 64))["segmentation"], labels)


def test_pruning_bounds_per_tile_row_group():
    """A band of several tile rows (the device plan's) is bounded per group of `tile` rows, by the low-resolution
    rows each group reads: its candidates are the union of the groups', and a group's are fewer than the band's."""
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
    them flushed to 0 and still gives the oracle's maps and scores."""
    generator = torch.Generator().manual_seed(0)
    low = F.avg_pool2d(torch.randn(1, 12, 12, 14, generator=generator) * 12, 3, stride=1)[0]  # (Q, 10, 12)
    class_logits = 40 * torch.randn(12, 301, generator=generator)
    plain_probs = class_logits.softmax(-1)
    tiny = torch.finfo(torch.float32).tiny
    assert ((plain_probs > 0) & (plain_probs < tiny)).any()  # the case at hand
    seen = []
    candidates = post_processing._candidate_classes
    monkeypatch.setattr(post_processing, "_candidate_classes",
                        lambda probs, *args: seen.append(probs) or candidates(probs, *args))
    sizes = dict(padded_size=(160, 192), image_size=(150, 180), output_size=(113, 136))
    scores = semantic_inference(class_logits, resize_mask_logits(low, **sizes))
    result = semantic_map(class_logits, low, **sizes, prune=True, return_score_summary=True)
    assert seen and not any(((probs > 0) & (probs < tiny)).any() for probs in seen)
    assert torch.equal(result["segmentation"], scores.argmax(dim=0))
    close(result["best_scores"], scores.max(dim=0).values)
    close(semantic_map(class_logits, low, **sizes, return_scores=True)["segmentation_scores"], scores)


def test_semantic_map_drops_void_after_softmax_without_renormalising():
    class_logits = torch.tensor([[0.0, 0.0, 0.0], [2.0, -1.0, 5.0]])  # [Q=2, N + 1=3]
    mask_logits = torch.zeros(2, 1, 1)  # sigmoid = 0.5
    scores = semantic_map(class_logits, mask_logits, return_scores=True)["segmentation_scores"]
    expected = 0.5 * (class_logits.softmax(-1)[:, :2]).sum(0)
    assert scores.shape == (2, 1, 1)
    close(scores[:, 0, 0], expected)
    assert scores.sum() < 1.0  # no renormalisation after dropping void


# -- extreme shapes stay cheap -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_classes", [5, 40])  # without and with class pruning
def test_thin_image_post_processing_is_banded_and_equals_the_oracle(monkeypatch, num_classes):
    """A 65535 x 1 image: model input 2560 x 32 (masks 640 x 8), label map at 65535 x 1. The height chain is a few
    source rows per output row (never a dense 65535 x 640 matrix) and the bands hold CPU_BAND_PIXELS pixels each,
    not 16 rows (4096 bands)."""
    torch.manual_seed(0)
    class_logits, mask_logits = torch.randn(6, num_classes + 1) * 3, torch.randn(6, 640, 8) * 4
    sizes = {"padded_size": (2560, 32), "image_size": (2560, 1), "output_size": (65535, 1)}
    rows = mask_resize_rows(640, 2560, 2560, 65535)
    assert rows.out_size == 65535 and rows.weights.shape[1] <= 4
    bands = []
    block = ResizeRows.block
    _band_block.cache_clear()  # blocks are cached per size: count this call's bands
    monkeypatch.setattr(ResizeRows, "block", lambda self, *a: bands.append(a) or block(self, *a))
    result = semantic_map(class_logits, mask_logits, **sizes, return_scores=True)
    assert 1 <= len(bands) <= math.ceil(65535 / CPU_BAND_PIXELS)
    oracle = semantic_inference(class_logits, resize_mask_logits(mask_logits, **sizes))
    # F.interpolate computes source coordinates in float32, off by ~1e-3 pixel at row 65535 (the banded path's are
    # float64): scores agree to 1e-4, not 1e-5, on this size; the maps are identical
    close(result["segmentation_scores"], oracle, atol=3e-4)
    assert torch.equal(result["segmentation"], oracle.argmax(dim=0))
    assert torch.equal(semantic_map(class_logits, mask_logits, **sizes)["segmentation"], oracle.argmax(dim=0))


# -- reading model outputs --------------------------------------------------------------------------------------------
def test_output_field_and_size_tables():
    class Output:
        image_sizes = torch.tensor([[10, 20], [30, 40]])

    assert output_field({"image_sizes": 1}, "image_sizes") == 1 and output_field({}, "image_sizes") is None
    assert output_field(Output(), "padded_sizes") is None
    assert size_rows(Output.image_sizes, 2) == [(10, 20), (30, 40)] and size_rows(None, 2) == [None, None]
    assert size_at([64, 48], 1) == (64, 48) and size_at([[1, 2], [3, 4]], 1) == (3, 4)  # one size for every image
    assert size_at(torch.tensor([5, 6]), 0) == (5, 6)


def test_mask_outputs_checks_the_logits_against_each_other_and_the_target_sizes():
    outputs = {"class_queries_logits": torch.zeros(2, 3, 5), "masks_queries_logits": torch.zeros(2, 3, 4, 4)}
    class_logits, mask_logits = mask_outputs(outputs, None)
    assert class_logits.shape == (2, 3, 5) and mask_logits.shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match="target_sizes"):
        mask_outputs(outputs, [(8, 8)])
    with pytest.raises(ValueError, match="disagree"):
        mask_outputs({**outputs, "masks_queries_logits": torch.zeros(2, 4, 4, 4)}, None)
    with pytest.raises(ValueError, match="class_queries_logits"):
        mask_outputs({"masks_queries_logits": torch.zeros(2, 3, 4, 4)}, None)


def test_mask_proposals_resize_only_the_queries_asked_for():
    generator = torch.Generator().manual_seed(0)
    class_logits, mask_logits = torch.randn(2, 5, 4, generator=generator), torch.randn(2, 5, 8, 8, generator=generator)
    sizes = [{"padded_size": (32, 32), "image_size": (32, 24), "output_size": (15, 11)},
             {"padded_size": (32, 32), "image_size": (20, 32), "output_size": None}]
    (logits_0, masks_at_0, size_0), (_, masks_at_1, size_1) = mask_proposals(class_logits, mask_logits, sizes)
    assert torch.equal(logits_0, class_logits[0]) and size_0 == (15, 11) and size_1 == (20, 32)  # else the crop
    queries = torch.tensor([3, 1])
    close(masks_at_0(queries), resize_mask_logits(mask_logits[0, queries], **sizes[0]).sigmoid())
    assert masks_at_1(queries).shape == (2, 20, 32)
