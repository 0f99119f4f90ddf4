"""ONNX export (`python -m modeling_pat.export`, `modeling_pat/apps/onnx_export.py`) and the torch-free runner
(`examples/onnx_runner.py`), on the golden tiny SAN (its converted reference weights) and the golden images.

One dynamic export (batch and size) serves most tests; a fixed-size export of the random tiny preset covers the
default export and the runner's fixed-batch path.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conversion_scripts import convert_san_to_hf as convert
from modeling_pat import PATForOpenVocabSegmentation, PATImageProcessor, PATProcessor
from modeling_pat.apps import onnx_export
from modeling_pat.apps.model_loading import compute_class_embeddings, load_model

from conftest import FIXTURES, GOLDEN


REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "examples" / "onnx_runner.py"
CLASS_NAMES = json.loads((GOLDEN / "class_names.json").read_text())
GOLDEN_IMAGES = [GOLDEN / f"image_{i}.png" for i in range(2)]
TOLERANCE = 1e-4


def load_runner():
    spec = importlib.util.spec_from_file_location("onnx_runner", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def golden_images() -> list[Image.Image]:
    return [Image.open(path).convert("RGB") for path in GOLDEN_IMAGES]


@pytest.fixture(scope="module")
def golden_folder(tmp_path_factory) -> Path:
    """The golden tiny SAN (reference weights, converted) saved as a model folder."""
    config = convert.resolve_config(str(GOLDEN / "config.json"))
    model = PATForOpenVocabSegmentation(config)
    reference = load_file(str(GOLDEN / "reference_state_dict.safetensors"))
    convert.load_converted_weights(model, convert.convert_state_dict(reference, config))
    folder = tmp_path_factory.mktemp("golden-model")
    model.save_pretrained(folder)
    # the golden images are model inputs (128 x 128): a processor that keeps them at that size
    PATProcessor.from_config(config, size={"shortest_edge": 128, "longest_edge": 512}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def exported(golden_folder, tmp_path_factory):
    """(onnx path, PyTorch model, processor): the golden model exported with a dynamic batch and image size."""
    output = tmp_path_factory.mktemp("export") / "san-tiny.onnx"
    code = onnx_export.main([
        "--model", str(golden_folder), "--output", str(output), "--labels", ",".join(CLASS_NAMES),
        "--dynamic-batch", "--dynamic-size", "--image-size", "128",
    ])
    assert code == 0
    model, processor = load_model(str(golden_folder), torch.device("cpu"), torch.float32)
    return output, model, processor


def test_export_writes_the_graph_its_metadata_and_the_vocabulary(exported):
    path, model, processor = exported
    graph = onnx.load(str(path))
    assert max(entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx")) >= 17
    inputs = {value.name: value for value in graph.graph.input}
    outputs = {value.name: value for value in graph.graph.output}
    assert list(inputs) == list(onnx_export.INPUT_NAMES) and list(outputs) == list(onnx_export.OUTPUT_NAMES)
    pixel_dims = inputs["pixel_values"].type.tensor_type.shape.dim
    assert [d.dim_value for d in pixel_dims][1] == 3
    assert all(d.dim_param for i, d in enumerate(pixel_dims) if i != 1)  # batch, height, width: symbolic
    assert inputs["class_embeddings"].type.tensor_type.shape.dim[0].dim_param  # any vocabulary size
    metadata = {entry.key: json.loads(entry.value) for entry in graph.metadata_props}
    settings = metadata[onnx_export.METADATA_PREPROCESSING]
    assert settings["pad_size"] is None and settings["batch_size"] is None
    assert settings["shortest_edge"] == processor.image_processor.size["shortest_edge"]
    assert metadata[onnx_export.METADATA_SIGNATURE]["batch"] == "batch"

    embeddings_path, labels_path = onnx_export.vocabulary_paths(path)
    assert embeddings_path.name == "san-tiny.embeddings.npy" and labels_path.name == "san-tiny.labels.json"
    record = json.loads(labels_path.read_text())
    assert record["labels"] == CLASS_NAMES and record["prompt_templates"] == list(model.config.prompt_templates)
    saved = np.load(embeddings_path, allow_pickle=False)
    expected = compute_class_embeddings(model, processor, CLASS_NAMES)
    np.testing.assert_allclose(saved, expected.numpy(), rtol=0, atol=1e-6)


def _golden_batches(processor: PATProcessor):
    """(name, pixel_values) at two batch sizes and two image sizes: the golden images as they are (128 x 128,
    the model inputs of the golden run), and padded to 160 x 224."""
    images = golden_images()
    plain = processor.image_processor(images, do_resize=False, return_tensors="pt")["pixel_values"]
    padded = processor.image_processor(images, do_resize=False, pad_size={"height": 160, "width": 224},
                                       return_tensors="pt")["pixel_values"]
    return [("128x128 batch 2", plain), ("128x128 batch 1", plain[1:]), ("160x224 batch 2", padded),
            ("160x224 batch 1", padded[:1])]


def test_onnxruntime_equals_pytorch_on_the_golden_images(exported):
    path, model, processor = exported
    vocabularies = {
        "golden classes": compute_class_embeddings(model, processor, CLASS_NAMES),
        "3 classes": compute_class_embeddings(model, processor, ["cat", "sky", "floor"]),
    }
    graph = onnx_export.PATOnnxGraph(model).eval()
    checked = 0
    for vocabulary, embeddings in vocabularies.items():
        for name, pixel_values in _golden_batches(processor):
            differences = onnx_export.max_differences(path, graph, pixel_values, embeddings)
            print(f"{name}, {vocabulary}: max abs difference {differences} (tolerance {TOLERANCE})")
            assert max(differences.values()) <= TOLERANCE
            checked += 1
    assert checked == 8
    # the comparison is not vacuous: the golden model's outputs are far from zero
    with torch.inference_mode():
        masks, classes = graph(_golden_batches(processor)[0][1], vocabularies["golden classes"])
    assert masks.abs().max() > 1 and classes.abs().max() > 1


def test_runner_runs_without_torch_and_reproduces_the_reference(exported, tmp_path):
    """The runner alone (numpy + onnxruntime, no torch) gives the PyTorch pipeline's label maps, and at the golden
    run's output sizes the reference SAN's score maps (within 1e-4) and label maps."""
    path, model, processor = exported
    golden = load_file(str(GOLDEN / "inference_io.safetensors"))
    output_sizes = [tuple(size) for size in golden["input.output_sizes"].tolist()]
    output_dir = tmp_path / "maps"
    code = f"""
import importlib.util, sys
import numpy as np
spec = importlib.util.spec_from_file_location("onnx_runner", {str(RUNNER)!r})
runner = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runner)
assert runner.main([{str(path)!r}, *{[str(p) for p in GOLDEN_IMAGES]!r}, "--output-dir", {str(output_dir)!r}]) == 0
session, settings = runner.load_session({str(path)!r})
labels, embeddings = runner.load_vocabulary({str(path)!r})
images = [runner.read_image(p) for p in {[str(p) for p in GOLDEN_IMAGES]!r}]
pixel_values, sizes = runner.preprocess(images, settings)
masks, classes = session.run(None, {{"pixel_values": pixel_values, "class_embeddings": embeddings}})
for index, output_size in enumerate({output_sizes!r}):
    _, scores = runner.semantic_segmentation(classes[index], masks[index], pixel_values.shape[-2:], sizes[index],
                                             output_size, return_scores=True)
    np.save({str(tmp_path)!r} + f"/scores_{{index}}.npy", scores)
print("torch imported:", "torch" in sys.modules)
"""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # the runner needs no package
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch imported: False" in done.stdout
    assert f"{GOLDEN_IMAGES[0]}: " in done.stdout  # the classes present, printed per image

    for index in range(2):
        scores = np.load(tmp_path / f"scores_{index}.npy")
        reference = golden[f"pred.sem_seg.{index}"].numpy()
        difference = float(np.abs(scores - reference).max())
        print(f"image {index}: max |runner - reference SAN| score {difference:.2g} (tolerance {TOLERANCE})")
        assert scores.shape == reference.shape and difference <= TOLERANCE
        np.testing.assert_array_equal(scores.argmax(axis=0), golden[f"pred.label_map.{index}"].numpy())

    inputs = processor(images=golden_images(), return_tensors="pt")  # the saved processor: the images unresized
    with torch.inference_mode():
        outputs = model(pixel_values=inputs["pixel_values"], class_embeddings=compute_class_embeddings(
            model, processor, CLASS_NAMES), image_sizes=inputs["image_sizes"])
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=inputs["original_sizes"])
    for image_path, label_map in zip(GOLDEN_IMAGES, expected, strict=True):
        written = np.asarray(Image.open(output_dir / f"{image_path.stem}_labels.png"))
        assert written.shape == tuple(label_map.shape)
        assert (written == label_map.numpy()).mean() > 0.999  # equal but for exact ties within float rounding


def test_runner_preprocessing_equals_the_image_processor():
    runner = load_runner()
    processor = PATImageProcessor()
    settings = onnx_export.preprocessing_settings(processor, 640, dynamic_size=True, batch_size=None)
    images = golden_images()
    # no resize: bit for bit
    mine, sizes = runner.preprocess(images, {**settings, "do_resize": False})
    reference = processor(images, do_resize=False, return_tensors="pt")
    np.testing.assert_array_equal(mine, reference["pixel_values"].numpy())
    assert sizes == [tuple(s) for s in reference["image_sizes"].tolist()]
    # with the resize (PIL's antialiased bilinear against torchvision's): at most one 8-bit level, rarely
    photos = [Image.open(FIXTURES / "samples" / name).convert("RGB") for name in ("chelsea.png", "astronaut.png")]
    for shortest_edge in (640, 200):
        resized = {**settings, "shortest_edge": shortest_edge}
        mine, sizes = runner.preprocess(photos, resized)
        reference = processor(photos, size={"shortest_edge": shortest_edge, "longest_edge": 2560},
                              return_tensors="pt")
        assert sizes == [tuple(s) for s in reference["image_sizes"].tolist()]
        difference = np.abs(mine - reference["pixel_values"].numpy())
        one_level = 1.0 / (255 * min(processor.image_std))  # one 8-bit step, normalised
        assert difference.max() <= one_level * 1.01 and (difference > 1e-6).mean() < 0.01


@pytest.mark.parametrize("output_size", [(300, 375), (120, 150), (57, 41)])
def test_runner_postprocessing_equals_the_image_processor(output_size):
    runner = load_runner()
    generator = torch.Generator().manual_seed(0)
    class_logits = torch.randn(1, 12, 7, generator=generator) * 4
    mask_logits = torch.randn(1, 12, 8, 10, generator=generator) * 5
    outputs = {"class_queries_logits": class_logits, "masks_queries_logits": mask_logits,
               "image_sizes": torch.tensor([[120, 150]]), "padded_sizes": torch.tensor([[128, 160]])}
    expected = PATImageProcessor().post_process_semantic_segmentation(
        outputs, target_sizes=[output_size], return_segmentation_scores=True)[0]
    labels, scores = runner.semantic_segmentation(class_logits[0].numpy(), mask_logits[0].numpy(), (128, 160),
                                                  (120, 150), output_size, return_scores=True)
    np.testing.assert_allclose(scores, expected["segmentation_scores"].numpy(), rtol=0, atol=1e-5)
    assert (labels == expected["segmentation"].numpy()).mean() > 0.999
    assert labels.shape == output_size and labels.dtype == np.int64


def test_fixed_size_export_and_the_runner_in_batches(tmp_path):
    output = tmp_path / "fixed.onnx"
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    done = subprocess.run(  # the module entry point, as a user runs it
        [sys.executable, "-m", "modeling_pat.export", "--model", "random:san-tiny", "--output", str(output),
         "--image-size", "64", "--batch-size", "2"],
        capture_output=True, text=True, timeout=600, env=env, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "onnxruntime matches PyTorch" in done.stderr
    graph = onnx.load(str(output))
    dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 64, 64]
    assert not onnx_export.vocabulary_paths(output)[0].exists()  # no --labels: no vocabulary written

    runner = load_runner()
    session, settings = runner.load_session(output)
    assert settings["pad_size"] == [64, 64] and settings["batch_size"] == 2
    images = golden_images() + [Image.open(FIXTURES / "samples" / "chelsea.png").convert("RGB")]  # 3: 2 groups
    model, processor = load_model("random:san-tiny", torch.device("cpu"), torch.float32)
    embeddings = compute_class_embeddings(model, processor, ["cat", "sky"])
    maps = runner.segment(session, settings, images, embeddings.numpy())
    assert [m.shape for m in maps] == [(image.height, image.width) for image in images]
    # the same preprocessing in PyTorch: fit inside 64 x 64, padded to it
    inputs = processor(images=images, size={"shortest_edge": 64, "longest_edge": 64},
                       pad_size={"height": 64, "width": 64}, return_tensors="pt")
    with torch.inference_mode():
        outputs = model(pixel_values=inputs["pixel_values"], class_embeddings=embeddings,
                        image_sizes=inputs["image_sizes"])
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=inputs["original_sizes"])
    for mine, theirs in zip(maps, expected, strict=True):
        assert (mine == theirs.numpy()).mean() > 0.99  # resize differs by one 8-bit level at a few pixels


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--opset", "16"], 2, "opset 17"),
        (["--image-size", "100"], 2, "multiple of size_divisibility"),
        (["--labels", "cat,Cat"], 2, "the same class twice"),
        (["--model", "no-such-folder"], 3, "could not be loaded"),
    ],
)
def test_usage_errors(tmp_path, capsys, argv, code, message):
    base = ["--model", "random:san-tiny", "--output", str(tmp_path / "m.onnx")]
    assert onnx_export.main(base + argv) == code
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_output_must_be_an_onnx_file_in_an_existing_folder(tmp_path, capsys):
    assert onnx_export.main(["--model", "random:san-tiny", "--output", str(tmp_path / "m.bin")]) == 2
    assert onnx_export.main(["--model", "random:san-tiny", "--output", str(tmp_path / "missing" / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "must end in .onnx" in err and "does not exist" in err


@pytest.mark.slow
def test_pat_mode_exports_and_matches_pytorch(tmp_path):
    """Full PAT (pyramid tokenization) exports too; onnxruntime equals PyTorch at two batch sizes and image sizes."""
    output = tmp_path / "pat.onnx"
    assert onnx_export.main(["--model", "random:pat-tiny", "--output", str(output), "--dynamic-batch",
                             "--dynamic-size", "--image-size", "128"]) == 0
    model, processor = load_model("random:pat-tiny", torch.device("cpu"), torch.float32)
    assert model.config.use_pyramid_tokenization
    graph = onnx_export.PATOnnxGraph(model).eval()
    embeddings = compute_class_embeddings(model, processor, CLASS_NAMES)
    generator = torch.Generator().manual_seed(3)
    for shape in [(1, 3, 128, 128), (2, 3, 96, 160)]:
        pixel_values = torch.randn(*shape, generator=generator)
        differences = onnx_export.max_differences(output, graph, pixel_values, embeddings)
        print(f"PAT {shape}: max abs difference {differences}")
        assert max(differences.values()) <= TOLERANCE
