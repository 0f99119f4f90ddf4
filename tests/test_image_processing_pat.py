"""Tests for PATImageProcessor: golden parity, real photos, label maps, post-processing through the processor,
errors, save/load. Loading and RGB normalisation are in test_image_loading.py, the post-processing functions in
test_post_processing.py."""

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput

from modeling_pat import image_processing_pat
from modeling_pat.image_processing_pat import (
    PATImageProcessor,
    get_padded_size,
    get_resize_output_size,
    padding_groups,
    reduce_labels,
)


FIXTURES = Path(__file__).parent / "fixtures"
TOLERANCE = 1e-5  # DECISIONS.md item 6


def fixture(*parts: str) -> Path:
    """Path of a fixture file; a missing file fails the test (parity tests must never skip)."""
    path = FIXTURES.joinpath(*parts)
    assert path.is_file(), f"missing test fixture {path} (copy it from ../shared into tests/fixtures/)"
    return path


def load_rgb(name: str) -> Image.Image:
    """A fixture photo as an RGB PIL image (data/images/<name> or samples/<name>)."""
    folder = ("samples",) if name in ("astronaut.png", "chelsea.png", "coffee.png") else ("data", "images")
    return Image.open(fixture(*folder, name)).convert("RGB")


def load_label(stem: str) -> np.ndarray:
    """A fixture label map [H, W] uint8."""
    return np.array(Image.open(fixture("data", "labels", f"{stem}.png")))


@pytest.fixture(scope="module")
def golden():
    return load_file(fixture("san_tiny", "inference_io.safetensors"))


@pytest.fixture(scope="module")
def processor():
    return PATImageProcessor()


def assert_close(actual, expected, name, tolerance=TOLERANCE):
    diff = (actual.double() - expected.double()).abs().max().item()
    print(f"{name}: max abs diff {diff:.3g} (tolerance {tolerance:g})")
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert diff <= tolerance, f"{name}: max abs diff {diff} > {tolerance}"


# ---------------------------------------------------------------- golden parity


@pytest.mark.parity
def test_golden_pixel_values(golden, processor):
    images = [Image.open(fixture("san_tiny", f"image_{i}.png")) for i in range(2)]
    inputs = processor(images, do_resize=False)
    assert inputs["pixel_values"].dtype == torch.float32
    assert_close(inputs["pixel_values"], golden["input.batch"], "input.batch")
    assert torch.equal(inputs["image_sizes"], golden["input.image_sizes"])
    assert torch.equal(inputs["original_sizes"], golden["input.image_sizes"])
    assert inputs["image_sizes"].dtype == inputs["original_sizes"].dtype == torch.int64


def golden_outputs(golden, with_padded_sizes=True):
    outputs = {
        "class_queries_logits": golden["pred.class_logits"],
        "masks_queries_logits": golden["side.mask_logits"],
        "image_sizes": golden["input.image_sizes"],
    }
    if with_padded_sizes:
        outputs["padded_sizes"] = torch.tensor([[128, 128], [128, 128]])
    return outputs


@pytest.mark.parity
@pytest.mark.parametrize("with_padded_sizes", [True, False])
def test_golden_semantic_segmentation(golden, processor, with_padded_sizes):
    results = processor.post_process_semantic_segmentation(
        golden_outputs(golden, with_padded_sizes),
        target_sizes=golden["input.output_sizes"],
        return_segmentation_scores=True,
    )
    assert len(results) == 2
    for i, result in enumerate(results):
        assert isinstance(result, SemanticSegmentationPostProcessorOutput)
        assert_close(result.segmentation_scores, golden[f"pred.sem_seg.{i}"], f"pred.sem_seg.{i}")
        assert result.segmentation.dtype == torch.int64
        assert torch.equal(result.segmentation, golden[f"pred.label_map.{i}"].long()), f"pred.label_map.{i}"
        png = torch.from_numpy(np.array(Image.open(fixture("san_tiny", f"pred_label_{i}.png")))).long()
        assert torch.equal(result.segmentation, png)


def test_post_process_plain_list_and_defaults(golden, processor):
    outputs = SimpleNamespace(**golden_outputs(golden))  # attribute access, like a ModelOutput
    maps = processor.post_process_semantic_segmentation(outputs)
    assert all(isinstance(m, torch.Tensor) and m.shape == (128, 128) and m.dtype == torch.int64 for m in maps)
    assert torch.equal(maps[0], golden["pred.label_map.0"].long())
    # Without image_sizes nothing is cropped: maps stay at mask resolution, or go straight to the target size.
    bare = {k: golden_outputs(golden)[k] for k in ("class_queries_logits", "masks_queries_logits")}
    assert processor.post_process_semantic_segmentation(bare)[0].shape == (8, 8)
    assert processor.post_process_semantic_segmentation(bare, target_sizes=[(20, 30), (5, 6)])[1].shape == (5, 6)


def test_post_process_half_precision(golden, processor):
    outputs = {k: v.half() if v.is_floating_point() else v for k, v in golden_outputs(golden).items()}
    result = processor.post_process_semantic_segmentation(outputs, return_segmentation_scores=True)[0]
    assert result.segmentation_scores.dtype == torch.float32
    assert_close(result.segmentation_scores, golden["pred.sem_seg.0"], "float16 logits", tolerance=5e-3)


# ---------------------------------------------------------------- resize rule and real photos


@pytest.mark.parametrize(
    "size, expected",
    [
        ((512, 683), (640, 854)),  # round half up (transformers' helper would give 853)
        ((300, 400), (640, 853)),
        ((513, 513), (640, 640)),
        ((683, 512), (854, 640)),
        ((100, 1000), (256, 2560)),  # long edge capped at 2560
        ((1000, 100), (2560, 256)),
        ((640, 960), (640, 960)),
    ],
)
def test_resize_rule(size, expected):
    assert get_resize_output_size(*size, 640, 2560) == expected


def test_defaults(processor):
    assert processor.do_resize and processor.do_rescale and processor.do_normalize and processor.do_pad
    assert dict(processor.size) == {"shortest_edge": 640, "longest_edge": 2560}
    assert processor.size_divisibility == 32 and processor.ignore_index == 255
    assert processor.do_reduce_labels is False and processor.do_convert_rgb is True
    assert tuple(processor.image_mean) == (0.48145466, 0.4578275, 0.40821073)
    assert tuple(processor.image_std) == (0.26862954, 0.26130258, 0.27577711)


def test_real_photos_mixed_batch(processor):
    names = ["ade150_ADE_val_00000001.jpg", "ade150_ADE_val_00000003.jpg", "cocostuff_000000001503.jpg", "chelsea.png"]
    photos = [load_rgb(name) for name in names]
    # Mixed input types in one batch: PIL, numpy HWC, torch CHW.
    images = [photos[0], np.array(photos[1]), torch.from_numpy(np.array(photos[2])).permute(2, 0, 1), photos[3]]
    inputs = processor(images)

    original = [(p.height, p.width) for p in photos]
    expected_sizes = [get_resize_output_size(h, w, 640, 2560) for h, w in original]
    assert inputs["original_sizes"].tolist() == [list(s) for s in original]
    assert inputs["image_sizes"].tolist() == [list(s) for s in expected_sizes]
    assert expected_sizes == [(640, 854), (640, 853), (640, 853), (640, 962)]

    padded = (640, 992)  # largest H and W, each rounded up to 32
    assert inputs["pixel_values"].shape == (4, 3, *padded) and inputs["pixel_values"].dtype == torch.float32
    for pixels, (h, w) in zip(inputs["pixel_values"], expected_sizes, strict=True):
        assert torch.count_nonzero(pixels[:, h:, :]) == 0 and torch.count_nonzero(pixels[:, :, w:]) == 0
        content = pixels[:, :h, :w]
        assert content.min() >= -1.80 and content.max() <= 2.15  # CLIP-normalised 0..255 range
        assert content[:, -1, :].abs().sum() > 0 and content[:, :, -1].abs().sum() > 0  # content reaches the edge

    # Each image alone gives the same unpadded pixels as in the batch (resize is per image).
    alone = processor(photos[1])
    h, w = expected_sizes[1]
    assert alone["pixel_values"].shape == (1, 3, 640, 864)
    assert torch.equal(alone["pixel_values"][0, :, :h, :w], inputs["pixel_values"][1, :, :h, :w])


def test_resize_close_to_pil_bilinear():
    """The torchvision antialiased bilinear resize stays within one grey level of PIL's (SAN/detectron2 uses PIL)."""
    photo = load_rgb("voc_vainf_sample23.png")
    inputs = PATImageProcessor(do_normalize=False, do_rescale=False, do_pad=False)(photo)
    h, w = inputs["image_sizes"][0].tolist()
    reference = torch.from_numpy(np.array(photo.resize((w, h), Image.BILINEAR))).permute(2, 0, 1).float()
    assert (inputs["pixel_values"][0] - reference).abs().max() <= 1.0


def test_input_formats_agree(processor):
    photo = load_rgb("coffee.png").resize((96, 64))
    as_pil = processor(photo, do_resize=False)["pixel_values"]
    as_numpy = processor(np.array(photo), do_resize=False)["pixel_values"]
    as_torch = processor(torch.from_numpy(np.array(photo)).permute(2, 0, 1), do_resize=False)["pixel_values"]
    as_batch = processor(torch.from_numpy(np.array(photo)).permute(2, 0, 1)[None], do_resize=False)["pixel_values"]
    assert as_pil.shape == (1, 3, 64, 96)
    assert torch.equal(as_pil, as_numpy) and torch.equal(as_pil, as_torch) and torch.equal(as_pil, as_batch)
    gray = processor(photo.convert("L"), do_resize=False)["pixel_values"]
    rgba = processor(photo.convert("RGBA"), do_resize=False)["pixel_values"]
    assert gray.shape == rgba.shape == (1, 3, 64, 96)
    assert torch.equal(rgba, as_pil)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_one_pixel_high_rgb_strip_is_read_channels_last_with_a_warning(processor, as_tensor):
    strip = np.random.default_rng(0).integers(0, 256, size=(1, 40, 3), dtype=np.uint8)
    with pytest.warns(UserWarning, match=r"shape \(1, 40, 3\).*read as channels_last.*input_data_format"):
        result = processor(torch.from_numpy(strip) if as_tensor else strip, do_resize=False)
    expected = processor(Image.fromarray(strip), do_resize=False)  # PIL: 40 wide, 1 high, RGB
    assert result["original_sizes"].tolist() == [[1, 40]]
    assert torch.equal(result["pixel_values"], expected["pixel_values"])


def test_input_data_format_decides_when_given(processor, recwarn):
    strip = np.random.default_rng(0).integers(0, 256, size=(1, 40, 3), dtype=np.uint8)
    grey = processor(strip, do_resize=False, input_data_format="channels_first")
    assert grey["original_sizes"].tolist() == [[40, 3]]  # one channel, 40 high, 3 wide, as asked
    expected = processor(Image.fromarray(strip[0], mode="L"), do_resize=False)
    assert torch.equal(grey["pixel_values"], expected["pixel_values"])
    rgb = processor(strip, do_resize=False, input_data_format="channels_last")
    assert rgb["original_sizes"].tolist() == [[1, 40]]
    photo = np.random.default_rng(1).integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    chw = processor(photo.transpose(2, 0, 1), do_resize=False, input_data_format="channels_first")
    assert torch.equal(chw["pixel_values"], processor(photo, do_resize=False)["pixel_values"])
    assert not [w for w in recwarn if "channels first or last" in str(w.message)]  # unambiguous or chosen: silent


def test_padding_options():
    photo = load_rgb("chelsea.png").resize((50, 40))
    plain = PATImageProcessor(do_resize=False)
    assert plain(photo)["pixel_values"].shape == (1, 3, 64, 64)
    assert plain(photo, size_divisibility=0)["pixel_values"].shape == (1, 3, 40, 50)
    assert plain(photo, pad_size={"height": 100, "width": 120})["pixel_values"].shape == (1, 3, 100, 120)
    assert plain(photo, do_pad=False)["pixel_values"].shape == (1, 3, 40, 50)
    assert get_padded_size([(40, 50), (65, 10)], 32) == (96, 64)
    with pytest.raises(ValueError, match="do_pad"):
        plain([photo, photo.resize((30, 30))], do_pad=False)
    with pytest.raises(ValueError, match="pad_size"):
        plain(photo, pad_size={"height": 20, "width": 20})


# ---------------------------------------------------------------- preprocessing on a device

# Where a GPU is present the same tests run there too (the device path is the host path's code on another device).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def grey_levels(pixel_values: torch.Tensor, processor: PATImageProcessor) -> torch.Tensor:
    """Normalised [B, 3, H, W] -> the 0..255 values they were computed from (float64)."""
    mean = torch.tensor(processor.image_mean, dtype=torch.float64).view(-1, 1, 1) * 255
    std = torch.tensor(processor.image_std, dtype=torch.float64).view(-1, 1, 1) * 255
    return pixel_values.cpu().double() * std + mean


def mixed_batch_with_labels():
    stems = ["ade150_ADE_val_00000002", "cocostuff_000000001490", "ade150_ADE_val_00000003"]
    images = [load_rgb(f"{stem}.jpg") for stem in stems]
    images[1] = np.array(images[1])  # numpy HWC beside PIL
    return images, [load_label(stem) for stem in stems]


@pytest.mark.parity
@pytest.mark.parametrize("device", DEVICES)
def test_golden_pixel_values_on_device(golden, processor, device):
    images = [Image.open(fixture("san_tiny", f"image_{i}.png")) for i in range(2)]
    inputs = processor(images, do_resize=False, device=device)
    assert inputs["pixel_values"].device.type == device
    assert_close(inputs["pixel_values"].cpu(), golden["input.batch"], f"input.batch on {device}")


@pytest.mark.parametrize("device", DEVICES)
def test_device_path_matches_host_path(processor, device):
    images, labels = mixed_batch_with_labels()
    host = processor(images, segmentation_maps=labels)
    on_device = processor(images, segmentation_maps=labels, device=device)
    assert on_device["pixel_values"].device.type == on_device["labels"].device.type == device
    assert torch.equal(on_device["image_sizes"], host["image_sizes"])
    assert torch.equal(on_device["original_sizes"], host["original_sizes"])
    assert torch.equal(on_device["labels"].cpu(), host["labels"])
    diff = (grey_levels(on_device["pixel_values"], processor) - grey_levels(host["pixel_values"], processor)).abs()
    print(f"{device}: max difference {diff.max().item():.4f} grey levels")
    assert diff.max() <= 1 + 1e-3  # within 1/255 on the 0..1 scale
    for pixels, (h, w) in zip(on_device["pixel_values"], host["image_sizes"].tolist(), strict=True):
        assert torch.count_nonzero(pixels[:, h:]) == torch.count_nonzero(pixels[:, :, w:]) == 0  # padding is zero


def test_float_resize_kernel_within_a_grey_level(processor, monkeypatch):
    """Off the CPU, torchvision resizes uint8 images by a float32 kernel and rounds; forcing that kernel on the CPU
    shows what the device path gives on a GPU: within one grey level of the host's uint8 kernel."""
    images, labels = mixed_batch_with_labels()
    host = processor(images, segmentation_maps=labels)
    import torchvision.transforms.v2.functional._geometry as geometry

    monkeypatch.setattr(geometry, "_do_native_uint8_resize_on_cpu", lambda interpolation: False)
    float_kernel = processor(images, segmentation_maps=labels, device="cpu")
    diff = (grey_levels(float_kernel["pixel_values"], processor) - grey_levels(host["pixel_values"], processor)).abs()
    print(f"float kernel: max {diff.max().item():.4f} grey levels, {(diff > 0.5).double().mean().item():.2%} differ")
    assert 0 < diff.max() <= 1 + 1e-3  # the other kernel did run, and stays within 1/255
    assert torch.equal(float_kernel["labels"], host["labels"])


def test_device_path_never_leaves_the_device(processor):
    """Every step runs where the images are: on `meta` any copy back to the host or read of a value would raise."""
    images, labels = mixed_batch_with_labels()
    inputs = processor(images, segmentation_maps=labels, device="meta")
    assert inputs["pixel_values"].is_meta and inputs["labels"].is_meta
    host = processor(images, segmentation_maps=labels)
    assert inputs["pixel_values"].shape == host["pixel_values"].shape and inputs["labels"].shape == host["labels"].shape


def test_batch_is_filled_in_place_with_and_without_padding(processor):
    """The padded batch (normalised into slots) equals normalising each image alone; lists without return_tensors."""
    images, _ = mixed_batch_with_labels()
    batch = processor(images)["pixel_values"]
    listed = processor(images, return_tensors=None)["pixel_values"]
    for image, row, item in zip(images, batch, listed, strict=True):
        alone = processor(image, do_pad=False)["pixel_values"][0]
        h, w = alone.shape[-2:]
        assert torch.equal(row[:, :h, :w], alone) and torch.equal(item, row)
    rescaled = PATImageProcessor(do_normalize=False)(images[0])["pixel_values"]
    plain = PATImageProcessor(do_normalize=False, do_rescale=False)(images[0])["pixel_values"]
    assert torch.allclose(rescaled * 255, plain, atol=1e-4) and plain.max() > 1


# ---------------------------------------------------------------- label maps


def test_labels_resize_nearest_and_ignore_padding():
    stems = ["ade150_ADE_val_00000002", "cocostuff_000000001490"]
    images = [load_rgb(f"{stem}.jpg") for stem in stems]
    labels = [load_label(stem) for stem in stems]
    inputs = PATImageProcessor()(images, segmentation_maps=[Image.fromarray(labels[0]), torch.from_numpy(labels[1])])

    assert inputs["labels"].dtype == torch.int64
    assert inputs["labels"].shape == (2, *inputs["pixel_values"].shape[-2:])
    for label, out, (h, w) in zip(labels, inputs["labels"], inputs["image_sizes"].tolist(), strict=True):
        assert torch.all(out[h:, :] == 255) and torch.all(out[:, w:] == 255)
        # nearest-exact: output pixel (y, x) takes input pixel floor((y + 0.5) * H_in / H_out), exact rationals
        rows = [min((2 * y + 1) * label.shape[0] // (2 * h), label.shape[0] - 1) for y in range(h)]
        cols = [min((2 * x + 1) * label.shape[1] // (2 * w), label.shape[1] - 1) for x in range(w)]
        assert torch.equal(out[:h, :w], torch.from_numpy(label[np.ix_(rows, cols)].astype(np.int64)))
        assert set(out[:h, :w].unique().tolist()) <= set(np.unique(label).tolist())


def test_labels_reduce_ade():
    stem = "ade150_ADE_val_00000001"
    label = load_label(stem)
    inputs = PATImageProcessor()(
        load_rgb(f"{stem}.jpg"), segmentation_maps=label, do_reduce_labels=True, do_resize=False
    )
    h, w = label.shape
    out = inputs["labels"][0]
    expected = np.where(label == 0, 255, label.astype(np.int64) - 1)
    assert torch.equal(out[:h, :w], torch.from_numpy(expected))
    assert torch.all(out[h:, :] == 255) and torch.all(out[:, w:] == 255)
    assert set(out.unique().tolist()) == {0, 1, 2, 4, 6, 9, 17, 255}  # ADE ids 1,2,3,5,7,10,18 minus one
    # Existing ignore pixels stay ignored; 1 -> 0; 150 -> 149.
    assert reduce_labels(torch.tensor([0, 1, 150, 255])).tolist() == [255, 0, 149, 255]


def test_labels_keep_ignore_without_reduce():
    stem = "voc_vainf_sample1"
    label = load_label(stem)
    inputs = PATImageProcessor(do_resize=False)(load_rgb(f"{stem}.png"), segmentation_maps=[label])
    out = inputs["labels"][0]
    assert out.shape == (544, 544)
    assert torch.equal(out[:513, :513], torch.from_numpy(label.astype(np.int64)))
    assert set(out.unique().tolist()) == {0, 1, 255}


# ---------------------------------------------------------------- errors


def test_errors(processor, golden):
    photo = load_rgb("chelsea.png").resize((32, 32))
    with pytest.raises(TypeError, match="images"):
        processor(42)
    with pytest.raises(TypeError, match=r"images\[1\]"):
        processor([photo, {"not": "an image"}])
    with pytest.raises(ValueError, match="images"):
        processor(torch.zeros(5, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        processor(torch.zeros(4, 32, 32, dtype=torch.uint8), do_convert_rgb=False)
    with pytest.raises(ValueError, match="segmentation_maps"):
        processor(photo, segmentation_maps=np.zeros((16, 16), np.uint8))  # wrong size
    with pytest.raises(ValueError, match="segmentation_maps"):
        processor(photo, segmentation_maps=np.zeros((32, 32, 3), np.uint8))  # colour label image
    with pytest.raises(ValueError, match="segmentation_maps"):
        processor([photo, photo], segmentation_maps=[np.zeros((32, 32), np.uint8)])  # one map for two images
    with pytest.raises(TypeError, match="segmentation_maps"):
        processor(photo, segmentation_maps=["label.png"])
    with pytest.raises(ValueError, match="target_sizes"):
        processor.post_process_semantic_segmentation(golden_outputs(golden), target_sizes=[(10, 10)])
    with pytest.raises(ValueError, match="masks_queries_logits"):
        processor.post_process_semantic_segmentation({"class_queries_logits": torch.zeros(1, 2, 3)})


@pytest.mark.parametrize(
    "images",
    [[], (), [[]], np.zeros((0, 32, 32, 3), np.uint8), torch.zeros(0, 3, 32, 32)],
    ids=["list", "tuple", "nested list", "numpy batch", "torch batch"],
)
def test_an_empty_image_list_is_a_clear_error(processor, images):
    with pytest.raises(ValueError, match=r"`images` is empty: pass at least one image"):
        processor(images)


# ---------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path):
    custom = PATImageProcessor(
        size={"shortest_edge": 320, "longest_edge": 640}, size_divisibility=64, do_reduce_labels=True
    )
    custom.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file()
    loaded = PATImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == custom.to_dict()
    assert loaded.size_divisibility == 64 and loaded.do_reduce_labels is True
    assert dict(loaded.size) == {"shortest_edge": 320, "longest_edge": 640}

    stem = "ade150_ADE_val_00000003"
    photo, label = load_rgb(f"{stem}.jpg"), load_label(stem)
    a, b = custom(photo, segmentation_maps=label), loaded(photo, segmentation_maps=label)
    assert a["pixel_values"].shape == (1, 3, 320, 448)  # 300x400 -> 320x427 -> padded to 64
    assert all(torch.equal(a[k], b[k]) for k in ("pixel_values", "image_sizes", "original_sizes", "labels"))
    assert math.isclose(loaded.rescale_factor, 1 / 255)


def test_padding_groups_split_only_when_padding_would_dominate():
    portrait, landscape = (640, 853), (853, 640)
    assert padding_groups([portrait, landscape, portrait]) == [[0, 1, 2]]  # similar sizes: one batch, in order
    # a very wide image among three 640 x 853: alone, not 4 x 640 x 2560 of input
    assert padding_groups([portrait, (640, 2560), portrait, portrait]) == [[0, 2, 3], [1]]
    assert padding_groups([(65535, 1), (640, 640)]) == [[1], [0]]
    assert padding_groups([(100, 100)]) == [[0]] and padding_groups([]) == []
    # no group pads its images by more than the allowed overhead
    sizes = [(96, 96), (96, 2000), (480, 96), (96, 128), (500, 500), (96, 100)]
    for group in padding_groups(sizes, size_divisibility=1):
        height, width = get_padded_size([sizes[i] for i in group], 1)
        own = sum(sizes[i][0] * sizes[i][1] for i in group)
        assert len(group) * height * width <= image_processing_pat.MAX_PADDING_OVERHEAD * own


@pytest.mark.parametrize("kwargs", [{}, {"size": {"shortest_edge": 96, "longest_edge": 384}}, {"do_resize": False},
                                    {"size": {"height": 64, "width": 80}}])
def test_resized_size_is_what_preprocess_gives(kwargs):
    processor = PATImageProcessor(**kwargs)
    for height, width in [(300, 451), (40, 1200), (2000, 3), (17, 17)]:
        image = Image.new("RGB", (width, height))
        assert processor.resized_size(height, width) == tuple(processor(images=image)["image_sizes"][0].tolist())
