"""The `pat-segment` command (`modeling_pat/apps/cli.py`), run in-process with the tiny random model
(`random:san-tiny`)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_pat import PATConfig, PATForOpenVocabSegmentation, PATProcessor
from modeling_pat.apps import cli
from modeling_pat.apps.cli import (
    EXIT_MODEL,
    EXIT_OK,
    EXIT_UNREADABLE,
    EXIT_USAGE,
    vocabulary_class_names,
    main,
    segment_batch,
)


FIXTURES = Path(__file__).parent / "fixtures"
SAMPLES = sorted((FIXTURES / "samples").glob("*.png"))
LABELS = ["cat", "cup", "person", "sky", "grass"]
RANDOM = ["--model", "random:san-tiny", "--quiet"]


def _copy_samples(folder: Path, names=None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    chosen = [p for p in SAMPLES if names is None or p.stem in names]
    return [Path(shutil.copy(p, folder / p.name)) for p in chosen]


def _check_outputs(output_dir: Path, stem: str, size, labels: list[str], model: str = "random:san-tiny") -> dict:
    """The three files of one image: label PNG (size, dtype, values), overlay (RGB, room for the legend), JSON."""
    width, height = size
    with Image.open(output_dir / f"{stem}_labels.png") as png:
        label_map = np.array(png)
    assert label_map.shape == (height, width)
    assert label_map.dtype == (np.uint8 if len(labels) <= 256 else np.uint16)
    assert label_map.max() < len(labels)
    with Image.open(output_dir / f"{stem}_overlay.png") as overlay:
        assert overlay.mode == "RGB"
        assert overlay.width > width and overlay.height >= height
    summary = json.loads((output_dir / f"{stem}.json").read_text(encoding="utf-8"))
    assert summary["labels"] == labels
    assert summary["image_size"] == {"height": height, "width": width}
    assert summary["model"] == model
    assert abs(sum(summary["pixel_fractions"]) - 1.0) < 1e-6
    counts = np.bincount(label_map.ravel(), minlength=len(labels))
    np.testing.assert_allclose(summary["pixel_fractions"], counts / label_map.size, atol=1e-12)
    present = summary["classes_present"]
    assert [c["index"] for c in present] == sorted(np.flatnonzero(counts), key=lambda i: (-counts[i], i))
    assert all(labels[c["index"]] == c["label"] for c in present)
    return summary


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """All three sample photos through a glob, labels given as two --labels options, batches of two."""
    inputs = tmp_path_factory.mktemp("inputs")
    _copy_samples(inputs)
    output_dir = tmp_path_factory.mktemp("outputs")
    argv = [str(inputs / "*.png"), "--labels", "cat, cup", "--labels", "person,sky,grass", "--batch-size", "2"]
    code = main(argv + RANDOM + ["--output-dir", str(output_dir)])
    return code, output_dir


def test_sample_photos_give_label_map_overlay_and_json(sample_run):
    code, output_dir = sample_run
    assert code == EXIT_OK
    for sample in SAMPLES:
        with Image.open(sample) as image:
            size = image.size
        summary = _check_outputs(output_dir, sample.stem, size, LABELS)
        assert summary["label_map"] == f"{sample.stem}_labels.png"
    assert len(list(output_dir.iterdir())) == 3 * len(SAMPLES)


def test_vocabulary_and_folder_input(tmp_path):
    _copy_samples(tmp_path / "photos", ["chelsea"])
    (tmp_path / "photos" / "notes.txt").write_text("not an image, and not picked up from a folder")
    code = main([str(tmp_path / "photos"), "--vocabulary", "voc20", "--output-dir", str(tmp_path / "out")] + RANDOM)
    assert code == EXIT_OK
    voc20 = vocabulary_class_names("voc20")
    assert len(voc20) == 20 and voc20[0] == "aeroplane"
    _check_outputs(tmp_path / "out", "chelsea", (451, 300), voc20)
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["chelsea.json", "chelsea_labels.png", "chelsea_overlay.png"]


def test_more_than_256_classes_give_16_bit_label_maps(tmp_path):
    image = tmp_path / "small.png"
    Image.new("RGB", (40, 30), (90, 140, 200)).save(image)
    labels = [f"thing {i}" for i in range(257)]
    code = main([str(image), "--labels", ",".join(labels), "--output-dir", str(tmp_path / "out")] + RANDOM)
    assert code == EXIT_OK
    summary = _check_outputs(tmp_path / "out", "small", (40, 30), labels)
    assert summary["label_map_dtype"] == "uint16"


def test_globs_files_and_folders_are_deduplicated_and_same_stems_kept_apart(tmp_path):
    _copy_samples(tmp_path / "a", ["coffee"])
    (tmp_path / "b").mkdir()
    Image.new("RGB", (48, 32), (200, 30, 30)).save(tmp_path / "b" / "coffee.jpg")
    inputs = [str(tmp_path / "a"), str(tmp_path / "a" / "coffee.png"), str(tmp_path / "**" / "*.jpg")]
    code = main(inputs + ["--labels", "cup,table", "--output-dir", str(tmp_path / "out")] + RANDOM)
    assert code == EXIT_OK
    _check_outputs(tmp_path / "out", "coffee", (600, 400), ["cup", "table"])
    _check_outputs(tmp_path / "out", "coffee-2", (48, 32), ["cup", "table"])
    assert len(list((tmp_path / "out").iterdir())) == 6


def test_exif_orientation_is_honoured(tmp_path):
    image = Image.new("RGB", (64, 40), (30, 160, 60))  # stored landscape, 64 wide and 40 high
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    argv = [str(tmp_path / "rotated.jpg"), "--labels", "grass,sky", "--output-dir", str(tmp_path / "out")]
    assert main(argv + RANDOM) == EXIT_OK
    _check_outputs(tmp_path / "out", "rotated", (40, 64), ["grass", "sky"])  # displayed portrait: 40 wide, 64 high


def test_huge_outputs_are_post_processed_at_a_reduced_size_then_upsampled(tmp_path, monkeypatch):
    monkeypatch.setattr("modeling_pat.apps.cli.POSTPROCESS_BUDGET", 2_000)  # as if the image were enormous
    image = tmp_path / "wide.png"
    Image.new("RGB", (90, 30), (120, 120, 40)).save(image)
    code = main([str(image), "--labels", "sand,sky", "--output-dir", str(tmp_path / "out")] + RANDOM)
    assert code == EXIT_OK
    _check_outputs(tmp_path / "out", "wide", (90, 30), ["sand", "sky"])  # still the original size


def test_unreadable_images_are_reported_and_skipped(tmp_path, capsys):
    _copy_samples(tmp_path, ["chelsea"])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "truncated.png").write_bytes(SAMPLES[0].read_bytes()[:2000])
    (tmp_path / "text.jpg").write_text("this is not a JPEG")
    code = main([str(tmp_path), "--labels", "cat,sky", "--output-dir", str(tmp_path / "out")] + RANDOM)
    assert code == EXIT_UNREADABLE
    _check_outputs(tmp_path / "out", "chelsea", (451, 300), ["cat", "sky"])
    assert len(list((tmp_path / "out").iterdir())) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for name in ("empty.png", "truncated.png", "text.jpg"):
        assert name in err


@pytest.mark.parametrize("with_processor", [True, False])
def test_save_pretrained_folder_as_model(tmp_path, with_processor):
    config = PATConfig.from_preset("san-tiny")
    folder = tmp_path / "tiny-model"
    PATForOpenVocabSegmentation(config).save_pretrained(folder)
    if with_processor:  # without one, the processor is rebuilt from the model's config
        PATProcessor.from_config(config).save_pretrained(folder)
    image = tmp_path / "small.png"
    Image.new("RGB", (40, 30), (90, 140, 200)).save(image)
    argv = [str(image), "--labels", "sky,sea", "--model", str(folder), "--output-dir", str(tmp_path / "out"), "-q"]
    code = main(argv)
    assert code == EXIT_OK
    _check_outputs(tmp_path / "out", "small", (40, 30), ["sky", "sea"], model=str(folder))


def test_unloadable_hub_model_exits_3_with_instructions(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image = _copy_samples(tmp_path, ["chelsea"])[0]
    code = main([str(image), "--labels", "cat", "--model", "nobody/no-such-pat-model", "--output-dir", str(tmp_path)])
    assert code == EXIT_MODEL
    err = capsys.readouterr().err
    for text in ("Mendel192/san", "san_vit_b_16.pth", "hf download Mendel192/san", "san-vit-b16"):
        assert text in err
    assert "random:san-tiny" in err and "Traceback" not in err


@pytest.mark.parametrize("model_args", [[], ["--model", "missing-folder"], ["--model", "random:no-such-preset"]])
def test_missing_default_model_folder_or_preset_exits_3(tmp_path, capsys, monkeypatch, model_args):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    image = _copy_samples(tmp_path, ["chelsea"])[0]
    assert main([str(image), "--labels", "cat"] + model_args) == EXIT_MODEL
    err = capsys.readouterr().err
    assert "hf download Mendel192/san san_vit_b_16.pth" in err and "random:san-tiny" in err
    assert not (tmp_path / "outputs").exists()  # nothing written when the model cannot be loaded


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{tmp}/nothing-here/*.png", "--labels", "cat"], "no image matched"),
        (["{tmp}/missing.png", "--labels", "cat"], "no image matched"),
        (["{tmp}/empty-folder", "--labels", "cat"], "no image matched"),
        (["{sample}", "--labels", " , ,"], "no class names"),
        (["{sample}", "--labels", "cat,sky", "--labels", "Cat"], "twice"),
        (["{sample}"], "--labels --vocabulary"),
        (["{sample}", "--labels", "cat", "--vocabulary", "voc20"], "not allowed with"),
        (["{sample}", "--vocabulary", "ade9000"], "invalid choice"),
        (["{sample}", "--labels", "cat", "--batch-size", "0"], "at least 1"),
        ([], "required"),
    ],
)
def test_usage_errors_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "empty-folder").mkdir()
    sample = str(SAMPLES[0])
    argv = [a.format(tmp=tmp_path, sample=sample) for a in argv]
    assert main(argv + ["--output-dir", str(tmp_path / "out")] + RANDOM) == EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_help_exits_0(capsys):
    assert main(["--help"]) == EXIT_OK
    assert "random:<preset>" in capsys.readouterr().out


def _photo(path: Path, colour, size=(40, 30)) -> bytes:
    Image.new("RGB", size, colour).save(path)
    return path.read_bytes()


def test_output_folder_that_is_the_input_folder_loses_no_photo_and_skips_earlier_results(tmp_path, capsys):
    _photo(tmp_path / "x.png", (200, 40, 40))
    user_photo = _photo(tmp_path / "x_labels.png", (20, 90, 200), size=(36, 24))  # a photo, not a result
    argv = [str(tmp_path), "--labels", "sky,sea", "--output-dir", str(tmp_path)] + RANDOM
    assert main(argv) == EXIT_OK
    assert (tmp_path / "x_labels.png").read_bytes() == user_photo
    _check_outputs(tmp_path, "x-2", (40, 30), ["sky", "sea"])  # x's results under the next free stem
    _check_outputs(tmp_path, "x_labels", (36, 24), ["sky", "sea"])  # the photo was segmented as a photo
    err = capsys.readouterr().err
    assert "x-2_labels.png" in err and "is an input of this run" in err
    first = sorted(p.name for p in tmp_path.iterdir())
    assert len(first) == 2 + 6

    assert main(argv) == EXIT_OK  # again: the results are not photos, and they are replaced, not multiplied
    assert sorted(p.name for p in tmp_path.iterdir()) == first
    assert (tmp_path / "x_labels.png").read_bytes() == user_photo
    assert "x_labels_labels_labels" not in capsys.readouterr().err


def test_an_earlier_result_named_as_a_file_is_segmented(tmp_path):
    _photo(tmp_path / "x.png", (200, 40, 40))
    assert main([str(tmp_path / "x.png"), "--labels", "sky,sea", "--output-dir", str(tmp_path / "out")] + RANDOM) == 0
    result = tmp_path / "out" / "x_overlay.png"
    assert main([str(result), "--labels", "sky,sea", "--output-dir", str(tmp_path / "again")] + RANDOM) == EXIT_OK
    assert (tmp_path / "again" / "x_overlay_labels.png").is_file()


def test_a_foreign_file_with_a_result_name_is_never_overwritten(tmp_path, capsys):
    _photo(tmp_path / "x.png", (200, 40, 40))
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.json").write_text('{"my": "notes"}')  # valid JSON, but not a pat-segment summary
    assert main([str(tmp_path / "x.png"), "--labels", "sky,sea", "--output-dir", str(out)] + RANDOM) == EXIT_OK
    assert (out / "x.json").read_text() == '{"my": "notes"}'
    _check_outputs(out, "x-2", (40, 30), ["sky", "sea"])
    assert "not an earlier pat-segment summary file" in capsys.readouterr().err  # reported even with --quiet


def test_a_failed_write_fails_that_image_only_with_exit_4(tmp_path, capsys):
    _photo(tmp_path / "a.png", (200, 40, 40))
    _photo(tmp_path / "b.png", (40, 200, 40))
    out = tmp_path / "out"
    (out / "a_overlay.png").mkdir(parents=True)  # a folder in the way of one result file
    argv = [str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--labels", "sky,sea", "--output-dir", str(out)]
    assert main(argv + RANDOM) == EXIT_UNREADABLE
    _check_outputs(out, "b", (40, 30), ["sky", "sea"])
    assert not (out / "a.json").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind
    err = capsys.readouterr().err
    failure_lines = [line for line in err.splitlines() if "a.png" in line]
    assert len(failure_lines) == 1 and "cannot write its results" in failure_lines[0]
    assert f"{out / 'a_overlay.png'}: Is a directory" in failure_lines[0] and "Traceback" not in err


def test_a_truncated_weights_file_exits_3_naming_it(tmp_path, capsys):
    folder = tmp_path / "tiny-model"
    PATForOpenVocabSegmentation(PATConfig.from_preset("san-tiny")).save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    _photo(tmp_path / "x.png", (200, 40, 40))
    argv = [str(tmp_path / "x.png"), "--labels", "sky", "--model", str(folder), "--output-dir", str(tmp_path / "o")]
    assert main(argv + ["-q"]) == EXIT_MODEL
    err = capsys.readouterr().err
    assert f"{weights} is unusable: truncated" in err and "Traceback" not in err


def test_a_file_that_appears_during_the_run_is_kept(tmp_path, monkeypatch, capsys):
    _photo(tmp_path / "x.png", (200, 40, 40))
    out = tmp_path / "out"
    segment = cli.segment_batch

    def segment_then_someone_writes(*args, **kwargs):  # another program saves x.json while the model runs
        (out / "x.json").write_text("someone else's file")
        return segment(*args, **kwargs)

    monkeypatch.setattr(cli, "segment_batch", segment_then_someone_writes)
    assert main([str(tmp_path / "x.png"), "--labels", "sky,sea", "--output-dir", str(out)] + RANDOM) == EXIT_UNREADABLE
    assert (out / "x.json").read_text() == "someone else's file"
    assert "exists and is not an earlier pat-segment result" in capsys.readouterr().err


def test_one_very_wide_image_does_not_pad_the_batch(monkeypatch):
    """segment_batch runs the batch in `padding_groups`: the three small images together, the wide one alone (not
    four images padded to its width), with the maps of one image at a time."""
    torch.manual_seed(0)
    model = PATForOpenVocabSegmentation(PATConfig.from_preset("san-tiny")).eval()
    processor = PATProcessor.from_config(model.config, size={"shortest_edge": 96, "longest_edge": 384})
    embeddings = model.get_class_embeddings(class_names=LABELS)
    small = Image.open(SAMPLES[0]).convert("RGB").resize((144, 96))
    wide = Image.open(SAMPLES[1]).convert("RGB").resize((1200, 40))  # resized to 13 x 384
    images = [small, wide, small.transpose(Image.FLIP_LEFT_RIGHT), small.rotate(180)]
    shapes = []
    forward = model.forward
    def recording(pixel_values, **kwargs):
        shapes.append(tuple(pixel_values.shape))
        return forward(pixel_values, **kwargs)

    monkeypatch.setattr(model, "forward", recording)
    maps = segment_batch(model, processor, images, embeddings, torch.device("cpu"), torch.float32)
    assert sorted(shapes) == [(1, 3, 32, 384), (3, 3, 96, 160)]
    for image, label_map in zip(images, maps, strict=True):
        alone = segment_batch(model, processor, [image], embeddings, torch.device("cpu"), torch.float32)[0]
        assert label_map.shape == (image.height, image.width) and np.array_equal(label_map, alone)


def test_images_are_preprocessed_on_the_models_device(tmp_path, monkeypatch):
    """`--device` reaches the image processor: the photos are uploaded as they are and resized there."""
    from modeling_pat.image_processing_pat import PATImageProcessor

    devices = []
    preprocess = PATImageProcessor.preprocess

    def spy(self, *args, **kwargs):
        devices.append(kwargs.get("device"))
        return preprocess(self, *args, **kwargs)

    monkeypatch.setattr(PATImageProcessor, "preprocess", spy)
    inputs = _copy_samples(tmp_path / "in", ["chelsea"])
    argv = [str(inputs[0]), "--labels", "cat, sofa", "--device", "cpu", "--output-dir", str(tmp_path / "out")]
    assert main(argv + RANDOM) == EXIT_OK
    assert devices and set(devices) == {torch.device("cpu")}


def test_a_truncated_official_checkpoint_file_exits_3_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PAT_CONVERTED_CACHE", str(tmp_path / "converted"))
    bad = tmp_path / "san_vit_b_16.pth"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 64)  # the start of a zip archive, cut off
    inputs = _copy_samples(tmp_path / "in", ["chelsea"])
    argv = [str(inputs[0]), "--labels", "cat,sofa", "--model", str(bad), "--output-dir", str(tmp_path / "out")]
    assert main(argv) == EXIT_MODEL
    err = capsys.readouterr().err
    assert "san_vit_b_16.pth" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
