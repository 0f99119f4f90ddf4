"""Sliding-window inference (`modeling_pat/apps/sliding_window.py`): equal to the normal path when the image fits in one
window, full-size output with every pixel covered, overlaps averaged (checked with a stub model whose output encodes
each window), argument errors, and the pipeline / CLI options."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from conftest import FIXTURES, tiny_model
from modeling_pat import PATProcessor
from modeling_pat.apps.cli import main as cli_main
from modeling_pat.apps.sliding_window import sliding_window_scores, sliding_window_segmentation, window_starts


NAMES = ["cat", "wall", "floor"]
CAT = FIXTURES / "samples" / "chelsea.png"  # 451 wide x 300 high


@pytest.fixture(scope="module")
def model():
    return tiny_model()  # side_image_size 128: windows of 128 x 128


def processor_for(model, shortest_edge):
    size = {"shortest_edge": shortest_edge, "longest_edge": 4 * shortest_edge}
    return PATProcessor.from_config(model.config, size=size)


@pytest.mark.parametrize("size", [(100, 120), (128, 128), (60, 70)])
def test_one_window_equals_the_normal_path(model, size):
    processor = processor_for(model, 96)
    image = Image.open(CAT).convert("RGB").resize(size[::-1])
    embeddings = model.get_class_embeddings(class_names=NAMES)
    inputs = processor(images=image)
    assert max(inputs["image_sizes"][0].tolist()) <= model.config.side_image_size  # one window
    with torch.no_grad():
        outputs = model(
            pixel_values=inputs["pixel_values"], class_embeddings=embeddings, image_sizes=inputs["image_sizes"]
        )
    for target in (None, size):  # the resized size, and the original size
        expected = processor.post_process_semantic_segmentation(
            outputs, target_sizes=None if target is None else [target], return_segmentation_scores=True
        )[0]
        result = sliding_window_segmentation(
            model, processor.image_processor, image, class_embeddings=embeddings,
            target_sizes=[inputs["image_sizes"][0].tolist() if target is None else target],
            return_segmentation_scores=True,
        )[0]
        torch.testing.assert_close(result["segmentation_scores"], expected["segmentation_scores"], atol=1e-5, rtol=0)
        assert torch.equal(result["segmentation"], expected["segmentation"])


def test_large_image_full_size_output(model):
    processor = processor_for(model, 200)  # 451 x 300 -> 301 x 200: larger than a 128 window both ways
    (result,) = sliding_window_segmentation(
        model, processor.image_processor, CAT, class_names=NAMES, return_segmentation_scores=True
    )
    assert result["segmentation"].shape == (300, 451)
    assert result["segmentation_scores"].shape == (len(NAMES), 300, 451)
    assert torch.isfinite(result["segmentation_scores"]).all()
    assert bool((result["segmentation_scores"].sum(0) > 0).all())  # every pixel got scores


class WindowStub:
    """A stand-in model: for each window one query whose mask probability is the window's mean pixel value and whose
    class is certainly class 0, so each window's class-0 score is that value on its whole footprint."""

    def __init__(self, side_image_size=128, size_divisibility=32, patch=16):
        self.config = SimpleNamespace(side_image_size=side_image_size, size_divisibility=size_divisibility)
        self.device, self.dtype, self.patch = torch.device("cpu"), torch.float32, patch
        self.windows = []

    def __call__(self, pixel_values, class_embeddings):
        n, _, height, width = pixel_values.shape
        means = pixel_values[:, 0, :, :].mean(dim=(1, 2))  # (n,) one value per window
        self.windows += [tuple(pixel_values.shape[-2:])] * n
        masks = torch.logit(means).view(n, 1, 1, 1).expand(n, 1, height // self.patch, width // self.patch)
        classes = torch.full((n, 1, class_embeddings.shape[0] + 1), -30.0)
        classes[:, :, 0] = 30.0
        return SimpleNamespace(class_queries_logits=classes, masks_queries_logits=masks)


def ramp_image(height, width):
    """(3, H, W) values in (0.1, 0.9) that grow with x and y, so every window has its own mean."""
    y = torch.linspace(0.1, 0.5, height)[:, None]
    x = torch.linspace(0.0, 0.4, width)[None, :]
    return (y + x).expand(3, height, width).clone()


@pytest.mark.parametrize("size, stride", [((200, 301), 85), ((128, 300), 50), ((250, 250), 128), ((96, 140), 1000)])
def test_every_pixel_covered_and_overlaps_averaged(size, stride):
    height, width = size
    stub = WindowStub()
    image = ramp_image(height, width)
    if stride > 128:  # a stride larger than the window would leave gaps: refused
        with pytest.raises(ValueError, match=r"`window_stride` must be an int in \[1, window_size=128\]"):
            sliding_window_scores(stub, image, torch.zeros(2, 8), stride=stride)
        return
    scores = sliding_window_scores(stub, image, torch.zeros(2, 8), stride=stride, batch_size=3)
    # brute force: the mean of the window values over the windows containing each pixel
    win_h = 128 if height > 128 else math.ceil(height / 32) * 32
    win_w = 128 if width > 128 else math.ceil(width / 32) * 32
    padded = torch.nn.functional.pad(image, (0, max(win_w - width, 0), 0, max(win_h - height, 0)))
    total, count = torch.zeros(height, width), torch.zeros(height, width)
    for y in window_starts(height, win_h, stride):
        for x in window_starts(width, win_w, stride):
            total[y : y + win_h, x : x + win_w] += padded[0, y : y + win_h, x : x + win_w].mean()
            count[y : y + win_h, x : x + win_w] += 1
    assert bool((count >= 1).all())  # every pixel is covered
    assert count.max() > 1 or (height <= 128 and width <= 128)  # and overlaps exist when there are several windows
    torch.testing.assert_close(scores[0], total / count, atol=1e-5, rtol=0)
    assert scores[1].abs().max() < 1e-6  # class 1 never wins a query
    assert len(stub.windows) == len(window_starts(height, win_h, stride)) * len(window_starts(width, win_w, stride))


def test_window_starts():
    assert window_starts(100, 128, 85) == [0]
    assert window_starts(301, 128, 85) == [0, 85, 170, 173]
    assert window_starts(256, 128, 128) == [0, 128]
    for length, window, stride in [(1000, 640, 426), (641, 640, 1), (2560, 640, 640)]:
        starts = window_starts(length, window, stride)
        covered = np.zeros(length, bool)
        for start in starts:
            covered[start : start + window] = True
        assert covered.all() and starts[-1] + window == length
        assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"window_size": 100}, r"`window_size` must be a positive multiple of size_divisibility=32, got 100"),
        ({"window_size": 0}, r"`window_size` must be a positive multiple"),
        ({"stride": 0}, r"`window_stride` must be an int in \[1, window_size=128\], got 0"),
        ({"batch_size": 0}, r"`batch_size` must be a positive int"),
    ],
)
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sliding_window_scores(WindowStub(), ramp_image(64, 64), torch.zeros(2, 8), **kwargs)


@pytest.fixture(scope="module")
def saved_folder(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sliding")
    model.save_pretrained(folder)
    processor_for(model, 200).save_pretrained(folder)
    return folder


def test_pipeline_option(saved_folder):
    segmenter = pipeline("image-segmentation", model=str(saved_folder))
    plain = segmenter(str(CAT), candidate_labels=NAMES)
    windows = segmenter(str(CAT), candidate_labels=NAMES, sliding_window=True, window_stride=64)
    for annotation in (plain, windows):
        assert annotation and all(entry["mask"].size == (451, 300) for entry in annotation)
        covered = sum(np.asarray(entry["mask"]) > 0 for entry in annotation)
        assert (covered == 1).all()  # a label map: every pixel exactly once
    expected = sliding_window_segmentation(
        segmenter.model, segmenter.image_processor, CAT, class_names=NAMES, stride=64
    )[0]
    for entry in windows:
        assert np.array_equal(np.asarray(entry["mask"]) > 0, (expected == NAMES.index(entry["label"])).numpy())
    with pytest.raises(ValueError, match="only apply with `sliding_window=True`"):
        segmenter(str(CAT), candidate_labels=NAMES, window_stride=64)


def test_pipeline_batch_with_sliding_window(saved_folder):
    segmenter = pipeline("image-segmentation", model=str(saved_folder))
    small = FIXTURES / "data" / "images" / "cocostuff_000000001503.jpg"  # 320 x 240
    batched = segmenter([str(CAT), str(small)], candidate_labels=[NAMES, ["road", "car"]], sliding_window=True,
                        batch_size=2)
    single = [segmenter(str(CAT), candidate_labels=NAMES, sliding_window=True),
              segmenter(str(small), candidate_labels=["road", "car"], sliding_window=True)]
    for a, b in zip(batched, single):
        assert [e["label"] for e in a] == [e["label"] for e in b]
        assert all(np.array_equal(np.asarray(x["mask"]), np.asarray(y["mask"])) for x, y in zip(a, b))


def test_cli_option(saved_folder, tmp_path):
    argv = [str(CAT), "--labels", ",".join(NAMES), "--model", str(saved_folder), "--output-dir", str(tmp_path), "-q"]
    assert cli_main(argv + ["--sliding-window", "--window-stride", "64"]) == 0
    with Image.open(tmp_path / "chelsea_labels.png") as png:
        assert png.size == (451, 300)
    assert cli_main(argv + ["--window-stride", "64"]) == 2  # without --sliding-window: a usage error
    assert cli_main(argv + ["--sliding-window", "--window-stride", "500"]) == 2  # larger than the window
