"""Tests for modeling_pat.image_loading: the sources `load_image` accepts (file, URL, base64, PIL), the one RGB
normalisation (`normalize_rgb`: first frame, EXIF orientation, 16-bit scaling, transparency over white) and the
array layout rule. Bad files and their messages are in test_bad_inputs.py (the `load` entry point)."""

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modeling_pat import image_loading
from modeling_pat.image_loading import infer_channel_layout, load_image, normalize_rgb, upright
from modeling_pat.image_processing_pat import PATImageProcessor


SAMPLE = Path(__file__).parent / "fixtures" / "samples" / "chelsea.png"
GRAY16 = np.linspace(0, 65535, 12 * 20).reshape(12, 20).astype(np.uint16)


def load_rgb(path: Path = SAMPLE) -> Image.Image:
    assert path.is_file(), f"missing test fixture {path}"
    return Image.open(path).convert("RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def two_frames(path: Path) -> Image.Image:
    """A two-frame GIF (red, then blue) saved at `path` and opened, left at its second frame."""
    frames = [Image.new("RGB", (6, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    image = Image.open(path)
    image.seek(1)
    return image


def test_upright_rgb_images_are_not_copied_and_rotated_ones_are_turned():
    image = load_rgb()
    assert upright(image) is image and load_image(image) is image  # nothing to apply: no full-size copies
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    rotated = Image.new("RGB", (64, 40), (30, 160, 60))
    rotated.info["exif"] = exif.tobytes()
    assert rotated.getexif()[0x0112] == 6
    turned = upright(rotated)
    assert turned.size == (40, 64) and upright(turned) is turned  # the tag is gone once applied
    keyed = Image.new("RGB", (4, 4), (255, 0, 0))
    keyed.info["transparency"] = (255, 0, 0)  # colour-key transparency: still composited over white
    assert np.asarray(load_image(keyed)).min() == 255



@pytest.mark.parametrize(
    "shape, layout",
    [
        ((1, 65535, 3), "channels_last"),  # a one-pixel-high RGB strip, not a 65535x3 grey image
        ((4, 7, 4), "channels_last"),
        ((480, 640, 3), "channels_last"),
        ((480, 640, 1), "channels_last"),
        ((3, 480, 640), "channels_first"),
        ((1, 480, 640), "channels_first"),
        ((3, 480, 1), "channels_first"),
    ],
)
def test_channel_layout_rule(shape, layout):
    assert infer_channel_layout(shape).value == layout


def test_normalize_rgb_takes_the_first_frame_and_leaves_the_callers_frame(tmp_path):
    image = two_frames(tmp_path / "two.gif")
    normalised = normalize_rgb(image)
    assert normalised.mode == "RGB" and normalised.getpixel((0, 0)) == (255, 0, 0)
    assert image.tell() == 1  # the caller's image is not moved
    assert load_image(tmp_path / "two.gif").getpixel((0, 0)) == (255, 0, 0)
    pixels = PATImageProcessor()(image, do_resize=False, do_normalize=False, do_rescale=False)["pixel_values"]
    assert pixels[0, :, 0, 0].tolist() == [255.0, 0.0, 0.0]


def test_normalize_rgb_without_rgb_conversion_keeps_the_mode_but_turns_the_image():
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    rotated = Image.new("RGBA", (64, 40), (30, 160, 60, 128))
    rotated.info["exif"] = exif.tobytes()
    kept = normalize_rgb(rotated, to_rgb=False)
    assert kept.mode == "RGBA" and kept.size == (40, 64)
    assert normalize_rgb(rotated).mode == "RGB"


def test_every_caller_reaches_the_one_normalisation(monkeypatch, tmp_path):
    """`load_image` (files, URLs, base64 and PIL: the pipeline, the CLI and the demo call it) and the processor's
    PIL inputs all go through `normalize_rgb`."""
    calls = []
    original = image_loading.normalize_rgb
    monkeypatch.setattr(image_loading, "normalize_rgb", lambda image, **kw: calls.append(1) or original(image, **kw))
    photo = load_rgb().resize((16, 12))
    photo.save(tmp_path / "photo.png")
    load_image(tmp_path / "photo.png")
    load_image(photo)
    load_image("data:image/png;base64," + base64.b64encode(png_bytes(photo)).decode())
    PATImageProcessor()(photo, do_resize=False)
    assert len(calls) == 4


@pytest.mark.parametrize("as_uri", [False, True])
def test_base64_strings_are_decoded_with_the_package_normalisation(as_uri):
    """A base64 16-bit PNG is scaled by 255 / 65535, not clipped to white as PIL's `convert("RGB")` would."""
    text = base64.b64encode(png_bytes(Image.fromarray(GRAY16))).decode()
    image = load_image("data:image/png;base64," + text if as_uri else text)
    np.testing.assert_array_equal(np.asarray(image)[..., 0], np.round(GRAY16 / 257.0))


def test_strings_that_are_neither_files_nor_images_name_the_missing_file():
    with pytest.raises(ValueError, match=r"Image file 'no_such_photo\.jpg' does not exist\.$"):
        load_image("no_such_photo.jpg")
    with pytest.raises(ValueError, match="does not exist \\(nor is it a base64-encoded image"):
        load_image("A" * 96)  # valid base64, but not an image
    with pytest.raises(ValueError, match="does not exist"):
        load_image("data:image/png;base64,???")


class FakeResponse:
    def __init__(self, content: bytes, status_error: Exception | None = None):
        self.content, self.status_error = content, status_error

    def raise_for_status(self):
        if self.status_error is not None:
            raise self.status_error


class FakeSession:
    """Stands in for huggingface_hub's HTTP session (tests never use the network)."""

    def __init__(self, response: FakeResponse):
        self.response, self.requests = response, []

    def get(self, url, **kwargs):
        self.requests.append((url, kwargs))
        return self.response


def test_urls_are_fetched_through_the_hub_session(monkeypatch):
    import huggingface_hub

    photo = Image.new("RGBA", (5, 3), (10, 20, 30, 0))  # fully transparent: white once normalised
    session = FakeSession(FakeResponse(png_bytes(photo)))
    monkeypatch.setattr(huggingface_hub, "get_session", lambda: session)
    image = load_image("https://example.com/photo.png", timeout=7)
    assert image.mode == "RGB" and image.size == (5, 3) and np.asarray(image).min() == 255
    assert session.requests == [("https://example.com/photo.png", {"timeout": 7, "follow_redirects": True})]


@pytest.mark.parametrize("response, message", [
    (FakeResponse(b"", RuntimeError("404 Not Found")), r"Could not download the image .*404 Not Found"),
    (FakeResponse(b""), r"Image 'https://example\.com/x\.png' is empty \(0 bytes\)"),
    (FakeResponse(b"not an image"), r"'https://example\.com/x\.png' is not an image file"),
])
def test_url_failures_name_the_url(monkeypatch, response, message):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_session", lambda: FakeSession(response))
    with pytest.raises(ValueError, match=message):
        load_image("https://example.com/x.png")
