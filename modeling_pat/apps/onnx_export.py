"""ONNX export of SAN / PAT's image path (`python -m modeling_pat.export`), so that inference needs no PyTorch.

    python -m modeling_pat.export --model san-vit-b16 --output san.onnx --vocabulary ade150 \
        --dynamic-batch --dynamic-size
    python -m modeling_pat.export --model random:san-tiny --output tiny.onnx --labels "cat,sky"   # offline smoke test

The exported graph (float32, opset 18 by default) takes the class embeddings as an input, so one export serves any
vocabulary:

* input `pixel_values` (batch, 3, height, width): normalised images padded to a multiple of size_divisibility
  (the image processor's `pixel_values`);
* input `class_embeddings` (num_classes, embed_dim): unit CLIP text embeddings of the class names
  (`model.get_class_embeddings`);
* output `masks_queries_logits` (batch, num_queries, height / side_patch_size, width / side_patch_size): mask logits;
* output `class_queries_logits` (batch, num_queries, num_classes + 1): class logits per proposal, the last is void.

`num_classes` is always dynamic; `batch` with `--dynamic-batch` (else `--batch-size`), `height` and `width` with
`--dynamic-size` (else `--image-size` squared, the images resized to fit inside it and padded to it). Label maps come
from the outputs as in `PATImageProcessor.post_process_semantic_segmentation`; `examples/onnx_runner.py` does that
and the preprocessing in numpy, with onnxruntime alone. The preprocessing settings travel in the ONNX file's
metadata (`modeling_pat.preprocessing`, JSON), with the signature above (`modeling_pat.signature`).

`--labels` / `--vocabulary` also write that vocabulary beside the model: `<output stem>.embeddings.npy` (float32
(num_classes, embed_dim)) and `<output stem>.labels.json` (the class names in index order, with the prompt templates).

After exporting, the ONNX model is run with onnxruntime on the example input and compared with PyTorch (unless
`--no-check`); a difference above 1e-4 (absolute, plus 1e-4 relative) fails the export.

Exit codes: 0 success; 1 the export or its check failed; 2 usage error (bad arguments, labels, missing export
packages); 3 the model could not be loaded.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modeling_pat_cli import DEFAULT_MODEL, EXIT_MODEL, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE  # torch-free front

from ..configuration_pat import VOCABULARY_FILES
from .cli import parse_labels, vocabulary_class_names
from .model_loading import ModelLoadError, UsageError, compute_class_embeddings, load_model
from .pretrained import OFFICIAL_MODELS


DEFAULT_OPSET = 18
MIN_OPSET = 17  # LayerNormalization, used by every CLIP and side-ViT block, is an ONNX op from opset 17
INPUT_NAMES = ("pixel_values", "class_embeddings")
OUTPUT_NAMES = ("masks_queries_logits", "class_queries_logits")
TOLERANCE = 1e-4  # atol and rtol of the post-export check
METADATA_PREPROCESSING = "modeling_pat.preprocessing"
METADATA_SIGNATURE = "modeling_pat.signature"


class PATOnnxGraph(nn.Module):
    """The exported computation: (pixel_values, class_embeddings) -> (masks_queries_logits, class_queries_logits)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, class_embeddings: torch.Tensor):
        outputs = self.model(
            pixel_values=pixel_values, class_embeddings=class_embeddings, output_auxiliary_logits=False
        )
        return outputs.masks_queries_logits, outputs.class_queries_logits


# -- export ----------------------------------------------------------------------------------------------------------
def example_inputs(model, batch_size: int, size: tuple[int, int], num_classes: int = 3):
    """Seeded normalised-looking images (B, 3, H_img, W_img) and unit class embeddings (N, D): tracing and checking
    inputs."""
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch_size, 3, *size, generator=generator)
    embeddings = torch.randn(num_classes, model.classifier.void_embedding.shape[-1], generator=generator)
    return pixel_values, nn.functional.normalize(embeddings, dim=-1)


def trace_size(config, image_size: int, dynamic_size: bool) -> tuple[int, int]:
    """The example image size to trace at.

    The model resizes its position tables only for grids unlike the table's (a Python branch on the shape), and
    tracing records the branch taken. A dynamic-size export is therefore traced at a non-square size whose side-ViT
    token count differs from the table's, so that the resize is in the graph; on a grid like the table's it is the
    identity (bicubic at the same size). The one input it then handles unlike PyTorch is a non-square grid with the
    table's token count (e.g. 20 x 80 for a 40 x 40 table), which the shortest-edge resize never produces.
    """
    if not dynamic_size:
        return image_size, image_size
    step, patch = max(1, config.size_divisibility), config.side_patch_size
    table_tokens = (config.side_image_size // patch) ** 2
    height, width = image_size, image_size + step
    while (height // patch) * (width // patch) == table_tokens:
        width += step
    return height, width


def dynamic_shapes(size_divisibility: int, dynamic_batch: bool, dynamic_size: bool) -> dict:
    """torch.export's dynamic dimensions of the two inputs; heights and widths stay multiples of size_divisibility."""
    pixel_dims = {}
    if dynamic_batch:
        pixel_dims[0] = torch.export.Dim("batch", min=1)
    if dynamic_size:
        step = max(1, size_divisibility)
        pixel_dims[2] = step * torch.export.Dim("height_blocks", min=1)
        pixel_dims[3] = step * torch.export.Dim("width_blocks", min=1)
    return {"pixel_values": pixel_dims, "class_embeddings": {0: torch.export.Dim("num_classes", min=1)}}


def preprocessing_settings(image_processor, image_size: int, dynamic_size: bool, batch_size: int | None) -> dict:
    """What a runner needs to prepare images as `image_processor` would for this export (stored in the metadata).

    A fixed-size export gets images resized to fit inside image_size x image_size (short side to image_size, long
    side capped at it) and padded to exactly that: the processor with that `size` and `pad_size`.
    """
    size = dict(image_processor.size)
    settings = {
        "shortest_edge": size.get("shortest_edge"),
        "longest_edge": size.get("longest_edge"),
        "do_resize": bool(image_processor.do_resize),
        "resample": "bilinear",
        "rescale_factor": float(image_processor.rescale_factor),
        "image_mean": [float(v) for v in image_processor.image_mean],
        "image_std": [float(v) for v in image_processor.image_std],
        "size_divisibility": int(image_processor.size_divisibility),
        "pad_size": None,
        "batch_size": batch_size,
    }
    if not dynamic_size:
        settings.update(shortest_edge=image_size, longest_edge=image_size, pad_size=[image_size, image_size])
    return settings


def export_onnx(
    model,
    output: Path,
    image_processor,
    batch_size: int = 1,
    image_size: int = 640,
    dynamic_batch: bool = False,
    dynamic_size: bool = False,
    opset: int = DEFAULT_OPSET,
) -> tuple[PATOnnxGraph, tuple[torch.Tensor, torch.Tensor]]:
    """Export `model` (float32, eval) to `output`; returns the exported module and its example inputs."""
    graph = PATOnnxGraph(model.float()).eval()
    # A dynamic batch dimension cannot be traced from a batch of 1 (torch.export specialises sizes 0 and 1).
    batch = max(batch_size, 2) if dynamic_batch else batch_size
    inputs = example_inputs(model, batch, trace_size(model.config, image_size, dynamic_size))
    shapes = dynamic_shapes(model.config.size_divisibility, dynamic_batch, dynamic_size)
    # Traced with PyTorch's math attention: the CPU flash kernel's output layout makes the exporter's decomposition
    # emit a view that is invalid for the decomposed attention (SAN's recognition blocks reshape that output).
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH), torch.no_grad():
        program = torch.onnx.export(
            graph, inputs, dynamo=True, opset_version=opset, input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES), dynamic_shapes=shapes, verbose=False,
        )
    settings = preprocessing_settings(image_processor, image_size, dynamic_size, None if dynamic_batch else batch_size)
    program.model.metadata_props[METADATA_PREPROCESSING] = json.dumps(settings)
    program.model.metadata_props[METADATA_SIGNATURE] = json.dumps(signature(model.config, dynamic_batch, dynamic_size))
    program.save(str(output))
    return graph, inputs


def signature(config, dynamic_batch: bool, dynamic_size: bool) -> dict:
    """Inputs and outputs of the graph, with symbolic dimension names (recorded in the metadata)."""
    batch = "batch" if dynamic_batch else "fixed"
    size = "dynamic" if dynamic_size else "fixed"
    return {
        "inputs": {"pixel_values": ["batch", 3, "height", "width"], "class_embeddings": ["num_classes", "embed_dim"]},
        "outputs": {
            "masks_queries_logits": ["batch", config.num_queries, f"height/{config.side_patch_size}",
                                     f"width/{config.side_patch_size}"],
            "class_queries_logits": ["batch", config.num_queries, "num_classes+1 (last: void)"],
        },
        "batch": batch,
        "image_size": size,
    }


# -- checking ---------------------------------------------------------------------------------------------------------
def run_onnx(path: Path, pixel_values: np.ndarray, class_embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime CPU inference -> (masks_queries_logits, class_queries_logits)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    masks, classes = session.run(
        list(OUTPUT_NAMES), {"pixel_values": pixel_values, "class_embeddings": class_embeddings}
    )
    return masks, classes


@torch.inference_mode()
def max_differences(path: Path, graph: PATOnnxGraph, pixel_values: torch.Tensor, class_embeddings: torch.Tensor):
    """{output name: max |onnxruntime - PyTorch|} on one input; raises ValueError beyond TOLERANCE."""
    expected = [t.numpy() for t in graph(pixel_values, class_embeddings)]
    actual = run_onnx(path, pixel_values.numpy(), class_embeddings.numpy())
    differences = {}
    for name, want, got in zip(OUTPUT_NAMES, expected, actual, strict=True):
        if want.shape != got.shape:
            raise ValueError(f"ONNX output {name} has shape {got.shape}, PyTorch's {want.shape}.")
        differences[name] = float(np.abs(want - got).max())
        if not np.allclose(got, want, rtol=TOLERANCE, atol=TOLERANCE):
            raise ValueError(f"ONNX output {name} differs from PyTorch's by up to {differences[name]:.3g}.")
    return differences


# -- vocabulary -------------------------------------------------------------------------------------------------------
def vocabulary_paths(output: Path) -> tuple[Path, Path]:
    """`model.onnx` -> (`model.embeddings.npy`, `model.labels.json`)."""
    return output.with_suffix(".embeddings.npy"), output.with_suffix(".labels.json")


def write_vocabulary(output: Path, class_names: list[str], embeddings: torch.Tensor, templates) -> tuple[Path, Path]:
    """The class embeddings (float32 .npy, no pickling) and their names (JSON) beside the exported model."""
    embeddings_path, labels_path = vocabulary_paths(output)
    np.save(embeddings_path, embeddings.detach().float().cpu().numpy(), allow_pickle=False)
    record = {"labels": list(class_names), "prompt_templates": list(templates), "embeddings": embeddings_path.name}
    labels_path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return embeddings_path, labels_path


# -- command line -----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_pat.export",
        description="Export SAN / PAT's image path to ONNX (pixel values and class embeddings in, mask and class "
        "logits out).",
        epilog="Exit codes: 0 ok, 1 export or check failed, 2 usage error, 3 model not loadable.",
    )
    parser.add_argument("--model", default=None,
                        help=f"an official name ({', '.join(OFFICIAL_MODELS)}; default {DEFAULT_MODEL}), a "
                        "save_pretrained folder, a Hub id (owner/name) or random:<preset> (e.g. random:san-tiny)")
    parser.add_argument("--output", required=True, type=Path, help="the .onnx file to write")
    vocabulary = parser.add_mutually_exclusive_group()
    vocabulary.add_argument("--labels", action="append", metavar="NAMES",
                            help="class names, comma-separated; writes their embeddings beside the model")
    vocabulary.add_argument("--vocabulary", choices=sorted(VOCABULARY_FILES),
                            help="a benchmark's class names; writes their embeddings beside the model")
    parser.add_argument("--dynamic-batch", action="store_true", help="any batch size (default: --batch-size)")
    parser.add_argument("--dynamic-size", action="store_true",
                        help="any image size, multiples of size_divisibility (default: --image-size squared)")
    parser.add_argument("--batch-size", type=_positive_int, default=1, help="fixed batch size (default: 1)")
    parser.add_argument("--image-size", type=_positive_int, default=None, metavar="PIXELS",
                        help="fixed padded side, or the tracing size with --dynamic-size (default: the image "
                        "processor's shortest_edge, 640)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, >= {MIN_OPSET} "
                        f"(default: {DEFAULT_OPSET})")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime-versus-PyTorch check")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _check_export_packages(need_runtime: bool) -> None:
    """The optional export dependencies, with the install command when one is missing."""
    import importlib.util

    names = ["onnx", "onnxscript"] + (["onnxruntime"] if need_runtime else [])
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(
            f"ONNX export needs {', '.join(missing)}: pip install 'modeling_pat[export]' "
            "(or pip install onnx onnxscript onnxruntime)."
        )


def _image_size(requested: int | None, image_processor, size_divisibility: int) -> int:
    size = requested or int(dict(image_processor.size).get("shortest_edge") or 640)
    if size_divisibility > 1 and size % size_divisibility:
        raise UsageError(f"--image-size {size} must be a multiple of size_divisibility={size_divisibility}.")
    return size


def run(args: argparse.Namespace) -> int:
    """The whole export; raises UsageError / ModelLoadError, returns EXIT_OK."""
    if args.opset < MIN_OPSET:
        raise UsageError(f"--opset {args.opset} is too old: the model needs opset {MIN_OPSET} or newer.")
    _check_export_packages(need_runtime=not args.no_check)
    class_names = None
    if args.labels:
        class_names = parse_labels(args.labels)
    elif args.vocabulary:
        class_names = vocabulary_class_names(args.vocabulary)
    if args.output.suffix.lower() != ".onnx":
        raise UsageError(f"--output {str(args.output)!r} must end in .onnx.")
    if not args.output.parent.is_dir():
        raise UsageError(f"the folder of --output ({str(args.output.parent)!r}) does not exist.")
    model, processor = load_model(args.model, torch.device("cpu"), torch.float32)
    image_size = _image_size(args.image_size, processor.image_processor, model.config.size_divisibility)
    graph, inputs = export_onnx(
        model, args.output, processor.image_processor, args.batch_size, image_size, args.dynamic_batch,
        args.dynamic_size, args.opset,
    )
    print(f"wrote {args.output}", file=sys.stderr)
    if not args.no_check:
        differences = max_differences(args.output, graph, *inputs)
        report = ", ".join(f"{name} {value:.2g}" for name, value in differences.items())
        print(f"onnxruntime matches PyTorch (max abs difference: {report})", file=sys.stderr)
    if class_names is not None:
        embeddings = compute_class_embeddings(model, processor, class_names)
        for path in write_vocabulary(args.output, class_names, embeddings, model.config.prompt_templates):
            print(f"wrote {path}", file=sys.stderr)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m modeling_pat.export`; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # argparse: --help (0) or a usage error (2)
        return int(exit_request.code or 0)
    try:
        return run(args)
    except UsageError as error:
        print(f"export: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ModelLoadError as error:
        print(f"export: error: {error.report()}", file=sys.stderr)
        return EXIT_MODEL
    except ValueError as error:  # the post-export check
        print(f"export: error: {error}", file=sys.stderr)
        return EXIT_RUNTIME
