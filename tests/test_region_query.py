"""Region queries (`modeling_pat/apps/region_query.py`) on the tiny random SAN: shapes, the defining properties of the
point and box rankings (checked against brute force over all queries), and errors for regions outside the image."""

import pytest
import torch
from PIL import Image

from conftest import FIXTURES, tiny_model
from modeling_pat import PATProcessor
from modeling_pat.apps.region_query import PATRegionMatch, PATRegionProposals, query_region


NAMES = ["cat", "wall", "floor", "sofa"]
IMAGE = FIXTURES / "samples" / "chelsea.png"  # 451 wide x 300 high


@pytest.fixture(scope="module")
def setup():
    model = tiny_model()
    processor = PATProcessor.from_config(model.config, size={"shortest_edge": 96, "longest_edge": 384})
    image = Image.open(IMAGE).convert("RGB")
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs, class_embeddings=model.get_class_embeddings(class_names=NAMES))
    proposals = PATRegionProposals.from_outputs(outputs, (image.height, image.width), class_names=NAMES)
    return model, processor, image, outputs, proposals


def test_proposals_follow_post_processing_geometry(setup):
    model, processor, image, outputs, proposals = setup
    num_queries = model.config.num_queries
    assert proposals.masks.shape == (num_queries, image.height, image.width) and proposals.masks.dtype == torch.bool
    assert proposals.scores.shape == (num_queries,)
    # the masks are the sigmoid of exactly the logits semantic post-processing uses
    result = processor.post_process_semantic_segmentation(
        outputs, target_sizes=[(image.height, image.width)], return_segmentation_scores=True
    )[0]
    class_probs = outputs.class_queries_logits[0].softmax(-1)[:, :-1]
    rebuilt = torch.einsum("qc,qhw->chw", class_probs, proposals.mask_probs)
    torch.testing.assert_close(rebuilt, result["segmentation_scores"], atol=1e-5, rtol=1e-5)
    assert bool(((proposals.scores >= 0) & (proposals.scores <= 1)).all())


def test_point_query_returns_covering_proposals_best_first(setup):
    _, _, image, _, proposals = setup
    # a point that some proposal covers: the peak of query 0's mask probability
    peak = int(proposals.mask_probs[0].argmax())
    point = (peak % image.width, peak // image.width)
    (matches,) = proposals.query_points([point], top_k=None)
    x, y = point
    expected = {q for q in range(proposals.masks.shape[0]) if proposals.mask_probs[q, y, x] > 0.5}
    assert {m.query_index for m in matches} == expected and expected
    assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)
    for match in matches:
        assert isinstance(match, PATRegionMatch)
        assert match.mask.shape == (image.height, image.width) and bool(match.mask[y, x])
        assert match.label == NAMES[match.label_id]
        assert match.score == pytest.approx(match.class_score * match.mask_score)
    assert proposals.query_points(point, top_k=1)[0] == matches[:1]


def test_several_points_and_an_uncovered_point(setup):
    _, _, image, _, proposals = setup
    results = proposals.query_points(torch.tensor([[0.0, 0.0], [450.9, 299.9], [200, 100]]), top_k=2)
    assert len(results) == 3 and all(len(r) <= 2 for r in results)
    # where no mask is above the threshold, the answer is an empty list, not a guess
    empty = PATRegionProposals(torch.zeros(3, 4, 5), torch.zeros(3, 3), mask_threshold=0.5)
    assert empty.query_points((1, 1)) == [[]]


def test_box_query_ranks_by_iou_times_score(setup):
    _, _, image, _, proposals = setup
    box = (100, 50, 300, 250)
    matches = proposals.query_box(box, top_k=None)
    region = torch.zeros(image.height, image.width, dtype=torch.bool)
    region[50:250, 100:300] = True
    for match in matches:
        mask = proposals.masks[match.query_index]
        iou = (mask & region).sum().item() / (mask | region).sum().item()
        assert match.iou == pytest.approx(iou)
    overlapping = [q for q in range(proposals.masks.shape[0]) if (proposals.masks[q] & region).any()]
    assert sorted(m.query_index for m in matches) == overlapping
    ranking = [m.iou * m.score for m in matches]
    assert ranking == sorted(ranking, reverse=True)
    assert proposals.query_box(box) == matches[:1]


def test_box_equal_to_a_mask_has_iou_one():
    mask_probs = torch.zeros(2, 10, 12)
    mask_probs[0, 2:6, 3:9] = 0.9  # query 0: exactly the box
    mask_probs[1] = 0.8  # query 1: the whole image
    class_logits = torch.tensor([[2.0, 0.0, -1.0], [3.0, 0.0, -1.0]])
    proposals = PATRegionProposals(mask_probs, class_logits, class_names=["a", "b"])
    best = proposals.query_box((3, 2, 9, 6))[0]
    assert best.query_index == 0 and best.iou == pytest.approx(1.0) and best.label == "a"
    assert best.mask_score == pytest.approx(0.9)


def test_query_region_end_to_end(setup):
    model, processor, image, _, proposals = setup
    by_point = query_region(model, processor, image, NAMES, points=[(200, 150)], top_k=3)
    assert by_point[0] == proposals.query_points((200, 150), top_k=3)[0]
    by_box = query_region(model, processor, IMAGE, NAMES, box=(0, 0, 451, 300), top_k=2)  # a path works too
    assert [m.query_index for m in by_box] == [m.query_index for m in proposals.query_box((0, 0, 451, 300), 2)]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"points": (451, 10)}, r"`points` has \(451, 10\) outside the image: x must lie in \[0, 451\)"),
        ({"points": [(10, 10), (5, -1)]}, r"`points` has \(5, -1\) outside the image"),
        ({"points": [(1, 2, 3)]}, r"`points` must be an \(x, y\) pair"),
        ({"box": (10, 10, 5, 20)}, r"`box` \(10, 10, 5, 20\) must satisfy 0 <= x0 < x1 <= 451"),
        ({"box": (0, 0, 452, 20)}, r"`box` .* must satisfy"),
        ({"box": (0, 0, 5)}, r"`box` must be \(x0, y0, x1, y1\)"),
        ({"points": (1, 1), "top_k": 0}, r"`top_k` must be a positive int"),
    ],
)
def test_errors_name_the_argument(setup, kwargs, match):
    _, _, _, _, proposals = setup
    with pytest.raises(ValueError, match=match):
        if "box" in kwargs:
            proposals.query_box(**kwargs)
        else:
            proposals.query_points(**kwargs)


def test_query_region_argument_errors(setup):
    model, processor, image, outputs, _ = setup
    with pytest.raises(ValueError, match="exactly one of `points` and `box`"):
        query_region(model, processor, image, NAMES)
    with pytest.raises(ValueError, match="`class_names` has 2 names but the outputs score 4 classes"):
        PATRegionProposals.from_outputs(outputs, (300, 451), class_names=["a", "b"])
