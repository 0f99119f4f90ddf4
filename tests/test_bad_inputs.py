"""Bad and unusual inputs, through every entry point they can reach: each gives a correct result or a clear,
specific error naming the argument (or the file) and the fix, never a traceback from deep inside torch or PIL.

One table, `CASES`: (case id, entry point, input builder, expected). Entry points: `load` (`load_image`),
`process*` (`PATProcessor`), `forward` / `embed` (the model), `segment*` (the pipeline), `cli*` (`pat-segment`,
in process), `convert` (the SAN converter's strict loader), `from_pretrained` / `config` (transformers loading).
Expected: `Ok(check)`, `Raises(type, regex)`, `Warns(type, regex, check)` or `Exits(code, regex)` (CLI: exit code
and a stderr message without a traceback).

Decisions these cases pin down:
* 16-bit images are scaled by 255 / 65535 (not clipped); CMYK, palette, grayscale and bilevel become RGB; any
  transparency is composited over white (as transformers' `convert_to_rgb`); EXIF orientation is applied for files
  and PIL images, in the processor, the pipeline and the CLI.
* Duplicate class names (equal after CLIP's lower-casing / whitespace cleaning) are an error everywhere (processor,
  pipeline, CLI): deduplicating silently would shift the indices of the names after the duplicate.
* Names longer than CLIP's 77-token context are truncated with a UserWarning; 1,000 names work (the text tower runs
  in chunks of 64 classes).
* Unknown config fields (a config from a newer version) are kept with a UserWarning and the model builds; a missing
  checkpoint key is reported by transformers' load report (the weight is newly initialised: needed to start PAT
  from SAN weights), a mis-shaped key is an error (RuntimeError unless `ignore_mismatched_sizes=True`); the
  converter rejects both.
* Files that are empty, truncated, not images or over PIL's decompression-bomb limit are ValueErrors naming the
  file; the CLI skips them, lists them and exits with code 4.
* Float `pixel_values` / `class_embeddings` of another dtype are cast to the model's; integer ones are a TypeError
  naming both dtypes. NaN / inf in either is a ValueError (read on CPU tensors only: a GPU forward never waits).
* An empty image list is a ValueError in the processor, `[]` from the pipeline and exit code 2 in the CLI.
* A config field out of range is a ValueError naming the field, raised when the config is loaded.
"""

import contextlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import PIL.Image
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import pipeline

from conftest import tiny_model
from conversion_scripts import convert_san_to_hf as convert
from modeling_pat import PATConfig, PATForOpenVocabSegmentation, PATProcessor
from modeling_pat.apps.cli import main as cli_main
from modeling_pat.image_processing_pat import load_image


LABELS = ["cat", "sky", "grass"]
RNG = np.random.default_rng(0)
RGB8 = RNG.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)  # 56 wide, 40 high
GRAY16 = np.linspace(0, 65535, 40 * 56).reshape(40, 56).astype(np.uint16)


# -- the objects under test (module scope: built once) ----------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny random SAN, its processor (short side 64 px), a saved folder and a pipeline on that folder."""
    folder = tmp_path_factory.mktemp("tiny_model")
    model = tiny_model()
    processor = PATProcessor.from_config(model.config, size={"shortest_edge": 64, "longest_edge": 256})
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    segmenter = pipeline("image-segmentation", model=str(folder))
    return {"model": model, "processor": processor, "folder": folder, "pipeline": segmenter}


@dataclass
class Ctx:
    """What a builder or an entry point may use: the shared objects, a fresh folder, monkeypatch."""

    env: dict
    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch

    def __getattr__(self, name):
        return self.env[name]


@pytest.fixture
def ctx(env, tmp_path, monkeypatch):
    return Ctx(env, tmp_path, monkeypatch)


# -- expected outcomes ------------------------------------------------------------------------------------------------
@dataclass
class Ok:
    check: Callable[[Any, Ctx], None]


@dataclass
class Raises:
    type: type
    match: str


@dataclass
class Warns:
    type: type
    match: str
    check: Callable[[Any, Ctx], None]


@dataclass
class Exits:
    code: int
    match: str


# -- entry points -----------------------------------------------------------------------------------------------------
def load(path, ctx):
    return load_image(path)


def process(images, ctx):
    return ctx.processor(images=images, text=LABELS)


def process_file(path, ctx):
    return ctx.processor(images=str(path), text=LABELS)


def process_pil(path, ctx):
    with Image.open(path) as image:
        return ctx.processor(images=image, text=LABELS)


def process_text(names, ctx):
    return ctx.processor(images=RGB8, text=names)


def forward(kwargs, ctx):
    with torch.no_grad():
        return ctx.model(**kwargs)


def embed(names, ctx):
    return ctx.model.get_class_embeddings(class_names=names)


def process_and_forward(names, ctx):
    with torch.no_grad():
        return ctx.model(**ctx.processor(images=RGB8, text=names))


def segment(path, ctx):
    return ctx.pipeline(str(path), candidate_labels=LABELS)


def segment_many(images, ctx):
    return ctx.pipeline(images, candidate_labels=LABELS)


def segment_labels(names, ctx):
    return ctx.pipeline(Image.fromarray(RGB8), candidate_labels=names)


def cli(path, ctx):
    return run_cli([str(path), "--labels", ",".join(LABELS)], ctx)


def cli_labels(labels_argument, ctx):
    image = ctx.tmp_path / "image.png"
    Image.fromarray(RGB8).save(image)
    return run_cli([str(image), "--labels", labels_argument], ctx)


def run_cli(argv, ctx):
    """`pat-segment` in process on the saved tiny model -> (exit code, stderr, output folder)."""
    output_dir = ctx.tmp_path / "out"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = cli_main(argv + ["--model", str(ctx.folder), "--output-dir", str(output_dir), "--quiet"])
    return code, stderr.getvalue(), output_dir


def convert_load(state_dict, ctx):
    model = PATForOpenVocabSegmentation(ctx.model.config)
    convert.load_converted_weights(model, state_dict)
    return model


def from_pretrained(folder, ctx):
    return PATForOpenVocabSegmentation.from_pretrained(folder, output_loading_info=True)


def config_and_model(folder, ctx):
    return PATConfig.from_pretrained(folder), PATForOpenVocabSegmentation.from_pretrained(folder)


# -- input builders ---------------------------------------------------------------------------------------------------
def saved(name: str, image_fn: Callable[[], Image.Image], **save_kwargs):
    """A builder writing `image_fn()` to `name` in the test's folder and returning the path."""

    def build(ctx):
        path = ctx.tmp_path / name
        image_fn().save(path, **save_kwargs)
        return path

    build.__name__ = name
    return build


def raw_file(name: str, content: Callable[[], bytes]):
    def build(ctx):
        path = ctx.tmp_path / name
        path.write_bytes(content())
        return path

    return build


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(RGB8).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3]


def bomb(limit: int):
    """A 64 x 64 PNG (4,096 pixels) with PIL's decompression-bomb limit lowered to `limit` pixels."""

    def build(ctx):
        ctx.monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", limit)
        path = ctx.tmp_path / "bomb.png"
        Image.new("RGB", (64, 64), (90, 120, 30)).save(path)
        return path

    return build


def exif_rotated() -> tuple[Image.Image, dict]:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 64 wide x 40 high; displayed rotated 90 degrees clockwise: 40 wide x 64 high
    return Image.new("RGB", (64, 40), (30, 160, 60)), {"exif": exif}


def rgba() -> Image.Image:
    array = np.dstack([RGB8, np.full(RGB8.shape[:2], 255, np.uint8)])
    array[:, :28, 3] = 0  # left half fully transparent
    return Image.fromarray(array)  # mode RGBA


def palette_with_transparency() -> Image.Image:
    image = Image.fromarray(RGB8).quantize(colors=8)
    image.info["transparency"] = 0  # palette entry 0 is transparent
    return image


def value(x):
    return lambda ctx: x


def nan_class_embeddings(ctx):
    embeddings = embed(LABELS, ctx).clone()
    embeddings[0, 0] = float("nan")
    return {"pixel_values": torch.zeros(1, 3, 64, 64), "class_embeddings": embeddings}


def empty_folder(ctx) -> Path:
    folder = ctx.tmp_path / "no-images"
    folder.mkdir()
    return folder


def pixel_values(fill=0.0, channels=3, size=(64, 64)):
    return lambda ctx: {"pixel_values": torch.full((1, channels, *size), fill), "class_embeddings": embed(LABELS, ctx)}


def reference_state_dict(mutate: Callable[[dict], None]):
    """The tiny model's weights in the converter's output layout, then `mutate`d."""

    def build(ctx):
        state_dict = convert.convert_state_dict(
            convert.to_reference_state_dict(ctx.model.state_dict(), ctx.model.config), ctx.model.config
        )
        mutate(state_dict)
        return state_dict

    return build


def saved_model(edit_weights=None, edit_config=None):
    """The tiny model saved to a folder, its weights file and / or config.json edited."""

    def build(ctx):
        folder = ctx.tmp_path / "edited"
        ctx.model.save_pretrained(folder)
        if edit_weights is not None:
            weights = load_file(folder / "model.safetensors")
            edit_weights(weights)
            save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        if edit_config is not None:
            config = json.loads((folder / "config.json").read_text())
            edit_config(config)
            (folder / "config.json").write_text(json.dumps(config))
        return folder

    return build


def drop(key):
    return lambda weights: weights.pop(key)


def grow(key):
    def edit(weights):
        weights[key] = torch.zeros(weights[key].shape[0] + 1, *weights[key].shape[1:])

    return edit


def zero_queries(config):
    config["num_queries"] = 0


def two_placeholder_template(config):
    config["prompt_templates"] = ["a {} or a {}"]


def newer_config(config):
    config["transformers_version"] = "99.0.0"
    config["brand_new_field"] = {"introduced_in": "a future modeling_pat"}


QUERY_EMBED = "model.side_adapter.query_embed"
VOID = "classifier.void_embedding"
LONG_NAME = "a very long class name " * 16  # 80 tokens: more than the 77-token context with or without template
NAMES_1000 = [f"class number {i}" for i in range(1000)]


# -- checks -----------------------------------------------------------------------------------------------------------
def same_pixels_as(reference: Callable[[], Any], atol: float = 0.0):
    """Preprocessed like `reference()` (an image the processor takes) -> identical `pixel_values` (or within `atol`:
    0.016 is one 8-bit level after CLIP normalisation, for inputs that the reference rounds to 8 bits)."""

    def check(result, ctx):
        expected = ctx.processor(images=reference(), text=LABELS)
        assert result["original_sizes"].tolist() == expected["original_sizes"].tolist()
        torch.testing.assert_close(result["pixel_values"], expected["pixel_values"], atol=atol, rtol=0)

    return check


def gray16_as_8bit() -> Image.Image:
    return Image.fromarray(np.round(GRAY16 / 257.0).astype(np.uint8)).convert("RGB")  # 65535 -> 255, not clipped


def rgba_over_white() -> np.ndarray:
    array = RGB8.copy()
    array[:, :28] = 255
    return array


def palette_over_white() -> Image.Image:
    rgba_image = palette_with_transparency().convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba_image.size, (255, 255, 255, 255)), rgba_image).convert("RGB")


def opened_rgb(path_name: str):
    """Check: identical to the file opened with PIL and converted with PIL's own `convert("RGB")`."""

    def check(result, ctx):
        with Image.open(ctx.tmp_path / path_name) as image:
            same_pixels_as(lambda: image.convert("RGB"))(result, ctx)

    return check


def original_size(height, width):
    def check(result, ctx):
        if isinstance(result, PIL.Image.Image):  # load_image
            assert result.mode == "RGB" and result.size == (width, height)
        else:
            assert result["original_sizes"].tolist() == [[height, width]]

    return check


def masks_of_size(height, width):
    def check(annotation, ctx):
        assert annotation and all(entry["mask"].size == (width, height) for entry in annotation)

    return check


def cli_label_map_of_size(height, width):
    def check(result, ctx):
        code, stderr, output_dir = result
        assert code == 0, stderr
        (label_map,) = output_dir.glob("*_labels.png")
        with Image.open(label_map) as png:
            assert png.size == (width, height)

    return check


def logits_with_columns(num_columns):
    def check(outputs, ctx):
        assert outputs.class_queries_logits.shape[-1] == num_columns
        assert torch.isfinite(outputs.class_queries_logits).all()

    return check


def default_vocabulary_logits(outputs, ctx):
    logits_with_columns(len(ctx.model.config.id2label) + 1)(outputs, ctx)


def no_annotations(result, ctx):
    assert result == []


def ids_equal_open_clip(result, ctx):
    names = ["café", "猫", "Ωμέγα", "naïve résumé"]
    assert torch.equal(result["input_ids"], ctx.model.prompt_input_ids(names))


def labels_are(names):
    def check(annotation, ctx):
        assert annotation and {entry["label"] for entry in annotation} <= set(names)

    return check


def truncated_ids(result, ctx):
    ids = result["input_ids"]  # (2 names, 14 templates, 77): the long name's prompts are cut, end-of-text kept last
    assert ids.shape[-1] == 77 and bool((ids[0, :, -1] == 49407).all()) and bool((ids[1, :, -1] == 0).all())


def loaded_with_missing(key):
    def check(result, ctx):
        model, info = result
        assert info["missing_keys"] == {key} or key in info["missing_keys"]
        assert torch.isfinite(dict(model.named_parameters())[key]).all()

    return check


def kept_and_built(result, ctx):
    config, model = result
    assert config.brand_new_field == {"introduced_in": "a future modeling_pat"}
    assert model.config.brand_new_field == config.brand_new_field
    with torch.no_grad():
        outputs = model(pixel_values=torch.zeros(1, 3, 64, 64), class_embeddings=embed(LABELS, ctx))
    assert outputs.class_queries_logits.shape[-1] == len(LABELS) + 1


# -- the table --------------------------------------------------------------------------------------------------------
def P(case: str, entry: Callable, build: Callable, expected) -> Any:
    """One row: readable as `case [entry point]` in pytest's output."""
    return pytest.param(case, entry, build, expected, id=f"{case} [{entry.__name__}]")


def exif_file(ctx) -> Path:
    image, kwargs = exif_rotated()
    path = ctx.tmp_path / "rotated.jpg"
    image.save(path, **kwargs)
    return path


# Inputs used by several rows.
DOT_PNG = saved("dot.png", lambda: Image.new("RGB", (1, 1), (200, 10, 10)))
DEEP_PNG = saved("deep.png", lambda: Image.fromarray(GRAY16))
CMYK_JPG = saved("cmyk.jpg", lambda: Image.fromarray(RGB8).convert("CMYK"))
PALETTE_PNG = saved("pal.png", palette_with_transparency)
GRAY_PNG = saved("gray.png", lambda: Image.fromarray(RGB8).convert("L"))
RGBA_PNG = saved("alpha.png", rgba)
NO_IDS = value({"pixel_values": torch.zeros(1, 3, 64, 64), "input_ids": torch.zeros(0, 14, 77, dtype=torch.long)})
NO_EMBEDDINGS = value({"pixel_values": torch.zeros(1, 3, 64, 64), "class_embeddings": torch.zeros(0, 8)})
UINT8_PIXELS = value({"pixel_values": torch.zeros(1, 3, 64, 64, dtype=torch.uint8)})
NON_ASCII = ["café", "猫", "Ωμέγα", "naïve résumé"]

FILE_ERRORS = [
    ("zero-byte file", raw_file("empty.png", lambda: b""), r"'.*empty\.png' is empty \(0 bytes\)"),
    ("truncated JPEG", raw_file("cut.jpg", truncated_jpeg), r"'.*cut\.jpg' is truncated or corrupt"),
    ("non-image file", raw_file("notes.jpg", lambda: b"this is not a JPEG"), r"'.*notes\.jpg' is not an image file"),
    ("missing file", lambda ctx: ctx.tmp_path / "missing.png", r"'.*missing\.png' does not exist"),
    ("decompression bomb", bomb(1000), r"'.*bomb\.png' has more pixels than PIL's decompression-bomb limit"),
]

# fmt: off
CASES = [
    # files that cannot be read: ValueError naming the file (CLI: skipped, listed, exit code 4)
    *[P(name, entry, build, Raises(ValueError, match))
      for name, build, match in FILE_ERRORS for entry in (load, process_file, segment)],
    *[P(name, cli, build, Exits(4, match)) for name, build, match in FILE_ERRORS if name != "missing file"],
    P("missing file", cli, value(Path("missing.png")), Exits(2, r"no image matched: missing\.png")),
    P("bomb at 1x-2x limit", load, bomb(3000), Raises(ValueError, r"decompression-bomb limit")),
    # unusual but valid images: converted correctly
    P("1x1 image", process, value(Image.new("RGB", (1, 1))), Ok(original_size(1, 1))),
    P("1x1 image", segment, DOT_PNG, Ok(masks_of_size(1, 1))),
    P("1x1 image", cli, DOT_PNG, Ok(cli_label_map_of_size(1, 1))),
    P("16-bit PNG", process_file, DEEP_PNG, Ok(same_pixels_as(gray16_as_8bit))),
    P("16-bit PNG", process_pil, DEEP_PNG, Ok(same_pixels_as(gray16_as_8bit))),
    P("16-bit array", process, value(GRAY16), Ok(same_pixels_as(gray16_as_8bit, atol=0.016))),
    P("16-bit PNG", segment, DEEP_PNG, Ok(masks_of_size(40, 56))),
    P("16-bit PNG", cli, DEEP_PNG, Ok(cli_label_map_of_size(40, 56))),
    P("CMYK JPEG", process_file, CMYK_JPG, Ok(opened_rgb("cmyk.jpg"))),
    P("CMYK JPEG", segment, CMYK_JPG, Ok(masks_of_size(40, 56))),
    P("palette PNG with transparency", process_file, PALETTE_PNG, Ok(same_pixels_as(palette_over_white))),
    P("palette PNG with transparency", process_pil, PALETTE_PNG, Ok(same_pixels_as(palette_over_white))),
    P("palette PNG with transparency", cli, PALETTE_PNG, Ok(cli_label_map_of_size(40, 56))),
    P("grayscale", process_file, GRAY_PNG, Ok(opened_rgb("gray.png"))),
    P("grayscale", segment, GRAY_PNG, Ok(masks_of_size(40, 56))),
    P("grayscale array", process, value(RGB8[..., 0]), Ok(same_pixels_as(lambda: RGB8[..., [0, 0, 0]]))),
    P("RGBA", process_file, RGBA_PNG, Ok(same_pixels_as(rgba_over_white))),
    P("RGBA", process_pil, RGBA_PNG, Ok(same_pixels_as(rgba_over_white))),
    P("RGBA", segment, RGBA_PNG, Ok(masks_of_size(40, 56))),
    P("EXIF-rotated photo", load, exif_file, Ok(original_size(64, 40))),
    P("EXIF-rotated photo", process_file, exif_file, Ok(original_size(64, 40))),
    P("EXIF-rotated photo", process_pil, exif_file, Ok(original_size(64, 40))),
    P("EXIF-rotated photo", segment, exif_file, Ok(masks_of_size(64, 40))),
    P("EXIF-rotated photo", cli, exif_file, Ok(cli_label_map_of_size(64, 40))),
    P("one-pixel-high RGB array", process, value(RGB8[:1]), Ok(same_pixels_as(lambda: Image.fromarray(RGB8[:1])))),
    # bad pixel values / shapes
    P("NaN in image", process, value(np.full((40, 56, 3), np.nan, np.float32)),
      Raises(ValueError, r"`images\[0\]` contains NaN")),
    P("inf in image", process, value(torch.full((3, 40, 56), float("inf"))),
      Raises(ValueError, r"`images\[0\]` contains NaN or inf")),
    P("NaN in pixel_values", forward, pixel_values(float("nan")), Raises(ValueError, r"`pixel_values` contains NaN")),
    P("inf in pixel_values", forward, pixel_values(float("inf")), Raises(ValueError, r"`pixel_values` .* inf")),
    P("wrong channel count", process, value(np.zeros((40, 56, 2), np.uint8)),
      Raises(ValueError, r"`images\[0\]` has shape \(40, 56, 2\)")),
    P("wrong channel count", process, value(np.zeros((5, 40, 56), np.uint8)),
      Raises(ValueError, r"`images\[0\]` has shape \(5, 40, 56\)")),
    P("wrong channel count", forward, pixel_values(channels=4),
      Raises(ValueError, r"`pixel_values` must have shape \(batch_size, 3")),
    P("uint8 pixel_values", forward, UINT8_PIXELS, Raises(TypeError, r"`pixel_values` must be a float")),
    P("NaN in class_embeddings", forward, nan_class_embeddings,
      Raises(ValueError, r"`class_embeddings` contains NaN")),
    P("float64 pixel_values", forward, value({"pixel_values": torch.zeros(1, 3, 64, 64, dtype=torch.float64)}),
      Ok(default_vocabulary_logits)),
    # empty image lists: a clear error (processor), an empty result (pipeline), a usage error (CLI)
    P("empty image list", process, value([]), Raises(ValueError, r"`images` is empty")),
    P("empty image list", segment_many, value([]), Ok(no_annotations)),
    P("empty image list", cli, empty_folder, Exits(2, r"no image matched")),
    P("integers above 255", process, value(np.full((40, 56, 3), 300, np.int32)),
      Raises(ValueError, r"`images\[0\]` has int32 values in \[300, 300\]")),
    # class names
    P("empty label list", process_text, value([]), Raises(ValueError, r"`text` must contain at least one")),
    P("empty label list", segment_labels, value([]), Raises(ValueError, r"`candidate_labels` must contain")),
    P("empty label list", cli_labels, value(" , "), Exits(2, r"--labels contains no class names")),
    P("empty label list", forward, NO_IDS, Raises(ValueError, r"`input_ids` must be integer token")),
    P("empty label list", forward, NO_EMBEDDINGS, Raises(ValueError, r"`class_embeddings` must have shape")),
    P("empty label list", embed, value([]), Raises(ValueError, r"No class names: pass `class_names`")),
    P("duplicate labels", process_text, value(["cat", "sky", "Cat "]),
      Raises(ValueError, r"`text` names the same class twice: 'cat' \(index 0\) and 'Cat ' \(index 2\)")),
    P("duplicate labels", segment_labels, value(["cat", "sky", "cat"]),
      Raises(ValueError, r"`candidate_labels` names the same class twice")),
    P("duplicate labels", segment_labels, value("cat, sky, CAT"),
      Raises(ValueError, r"`candidate_labels` names the same class twice")),
    P("duplicate labels", cli_labels, value("cat,sky,Cat"),
      Exits(2, r"--labels names the same class twice: 'cat' \(index 0\) and 'Cat' \(index 2\)")),
    P("duplicate labels", cli_labels, value("red kite,red  kite"),  # equal once CLIP's text cleaning collapses spaces
      Exits(2, r"--labels names the same class twice: 'red kite' \(index 0\) and 'red  kite'")),
    P("1,000 labels", process_and_forward, value(NAMES_1000), Ok(logits_with_columns(1001))),
    P("1,000 labels", segment_labels, value(NAMES_1000), Ok(labels_are(NAMES_1000))),
    P("label over 77 tokens", process_text, value([LONG_NAME, "cat"]),
      Warns(UserWarning, r"longer than CLIP's 77-token context and were truncated", truncated_ids)),
    P("label over 77 tokens", segment_labels, value([LONG_NAME + "x", "cat"]),
      Warns(UserWarning, r"fill CLIP's 77-token context .* truncated", labels_are([LONG_NAME + "x", "cat"]))),
    P("non-ASCII labels", process_text, value(NON_ASCII), Ok(ids_equal_open_clip)),
    P("non-ASCII labels", segment_labels, value(NON_ASCII), Ok(labels_are(NON_ASCII))),
    P("labels not strings", process_text, value(["cat", 3]),
      Raises(TypeError, r"`text\[1\]` must be a string \(a class name\), got int")),
    P("labels not strings", process_text, value({"cat": 0}),
      Raises(TypeError, r"`text` must be a class name or a list of class names")),
    P("labels not strings", segment_labels, value([1, 2]), Raises(TypeError, r"`candidate_labels\[0\]` must be")),
    # checkpoints and configs
    P("checkpoint with a missing key", convert_load, reference_state_dict(drop(VOID)),
      Raises(ValueError, r"missing from the checkpoint \(1\): \['classifier\.void_embedding'\]")),
    P("checkpoint with a mis-shaped key", convert_load, reference_state_dict(grow(QUERY_EMBED)),
      Raises(ValueError, r"shape mismatches \(1\): \['model\.side_adapter\.query_embed: checkpoint \(2, 12, 48\) vs")),
    P("checkpoint with a missing key", from_pretrained, saved_model(edit_weights=drop(VOID)),
      Ok(loaded_with_missing(VOID))),
    P("checkpoint with a mis-shaped key", from_pretrained, saved_model(edit_weights=grow(QUERY_EMBED)),
      Raises(RuntimeError, r"ignore_mismatched_sizes")),
    P("config with a field out of range", from_pretrained, saved_model(edit_config=zero_queries),
      Raises(ValueError, r"PATConfig\.num_queries must be a whole number >= 1, got 0")),
    P("config with a field out of range", config_and_model, saved_model(edit_config=two_placeholder_template),
      Raises(ValueError, r"`PATConfig\.prompt_templates\[0\]` 'a \{\} or a \{\}' must contain exactly one")),
    P("config from a newer version", config_and_model, saved_model(edit_config=newer_config),
      Warns(UserWarning, r"unknown field\(s\) \['brand_new_field'\] \(saved with transformers 99\.0\.0\)",
            kept_and_built)),
]
# fmt: on


@pytest.mark.parametrize("case, entry, build, expected", CASES)
def test_bad_input(case, entry, build, expected, ctx):
    given = build(ctx)
    if isinstance(expected, Raises):
        with pytest.raises(expected.type, match=expected.match):
            entry(given, ctx)
    elif isinstance(expected, Warns):
        with pytest.warns(expected.type, match=expected.match):
            result = entry(given, ctx)
        expected.check(result, ctx)
    elif isinstance(expected, Exits):
        code, stderr, _ = entry(given, ctx)
        assert code == expected.code, stderr
        assert re.search(expected.match, stderr), stderr
        assert "Traceback" not in stderr
    else:
        expected.check(entry(given, ctx), ctx)


def test_every_case_of_the_issue_is_in_the_table():
    issue = [
        "zero-byte file", "truncated JPEG", "non-image file", "1x1 image", "16-bit PNG", "CMYK JPEG",
        "palette PNG with transparency", "grayscale", "RGBA", "EXIF-rotated photo", "decompression bomb",
        "NaN in pixel_values", "inf in pixel_values", "wrong channel count", "empty label list", "duplicate labels",
        "1,000 labels", "label over 77 tokens", "non-ASCII labels", "labels not strings",
        "checkpoint with a missing key", "checkpoint with a mis-shaped key", "config from a newer version",
        "NaN in class_embeddings", "empty image list", "config with a field out of range",
    ]
    covered = {case.values[0] for case in CASES}
    assert not set(issue) - covered, set(issue) - covered


def test_transformers_load_image_also_honours_exif_but_drops_alpha_and_clips_16_bit(tmp_path):
    """Why the pipeline uses our `load_image`: transformers' honours EXIF too, but converts RGBA by dropping alpha
    (transparent pixels keep their hidden colour) and 16-bit by clipping at 255."""
    from transformers.image_utils import load_image as transformers_load_image

    image, kwargs = exif_rotated()
    image.save(tmp_path / "rotated.jpg", **kwargs)
    assert transformers_load_image(str(tmp_path / "rotated.jpg")).size == (40, 64)
    rgba().save(tmp_path / "alpha.png")
    assert np.asarray(transformers_load_image(str(tmp_path / "alpha.png")))[:, :28].tolist() == RGB8[:, :28].tolist()
    assert (np.asarray(load_image(tmp_path / "alpha.png"))[:, :28] == 255).all()
    Image.fromarray(GRAY16).save(tmp_path / "deep.png")
    clipped = np.asarray(transformers_load_image(str(tmp_path / "deep.png")))[..., 0]
    assert (clipped == 255).mean() > 0.9  # everything above 255 / 65535 of the range is white
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "deep.png"))[..., 0], np.round(GRAY16 / 257.0))


def test_keys_transformers_itself_writes_are_not_unknown_fields(tmp_path):
    """No false alarm for what transformers puts into config.json: Trainer's `use_cache` (a generation parameter,
    dropped again on load) and remote code's `auto_map`."""
    import warnings

    config = PATConfig.from_preset("san-tiny")
    config.use_cache = False  # what Trainer does
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["auto_map"] = {"AutoConfig": "configuration_pat.PATConfig"}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        loaded = PATConfig.from_pretrained(tmp_path)
    assert loaded.auto_map == saved["auto_map"] and not hasattr(loaded, "use_cache")
