"""onnxruntime (CPU) beside PyTorch on the exported image path: same weights, same inputs, round-robin.

    python benchmarks/bench_onnx.py                                   # SAN ViT-B/16, 640x640, batch 1, 150 classes
    python benchmarks/bench_onnx.py --preset san-tiny --size 128 --repeats 10 --output /tmp/onnx_tiny.json

The model is `bench_inference.py`'s (seeded random weights, calibrated to a trained model's output scales) on its
inputs (the sample photos, centre-cropped to `--size`). It is exported with `python -m modeling_pat.export`'s code
at exactly the benchmarked batch and size (a fixed-shape graph, the fastest for onnxruntime; `--dynamic` exports
with a dynamic batch and size instead). One timed call is the exported computation: pixel values and class
embeddings in, mask and class logits out (PyTorch under `torch.inference_mode()`; onnxruntime's `session.run`, with
as many intra-op threads as PyTorch). Both run after a warm-up, round-robin, so that machine load hits them alike.
The table (`results/onnx.md`, raw numbers in `results/onnx.json`) gives median and p90 wall seconds, images/s,
process CPU seconds, the speed-up of onnxruntime over PyTorch and the largest output difference between them.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.bench_inference import (  # noqa: E402
    RESULTS,
    Setup,
    class_names,
    environment,
    images,
    seeded_model,
    time_calls,
)
from modeling_pat import PATImageProcessor, PATProcessor  # noqa: E402
from modeling_pat.apps.model_loading import compute_class_embeddings  # noqa: E402
from modeling_pat.apps.onnx_export import OUTPUT_NAMES, export_onnx  # noqa: E402


def build(setup: Setup):
    """(PyTorch graph module, its processor, pixel values, class embeddings)."""
    pixel_values = PATImageProcessor(do_resize=False)(images=images(setup), return_tensors="pt")["pixel_values"]
    model = seeded_model(setup, pixel_values)
    processor = PATProcessor.from_config(model.config)
    embeddings = compute_class_embeddings(model, processor, class_names(setup, model.config))
    return model, processor, pixel_values, embeddings


def session_for(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(setup: Setup, dynamic: bool, warmup: int, repeats: int) -> dict:
    model, processor, pixel_values, embeddings = build(setup)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        graph, _ = export_onnx(model, path, processor.image_processor, setup.batch, setup.size,
                               dynamic_batch=dynamic, dynamic_size=dynamic)
        session = session_for(path, torch.get_num_threads())
    feed = {"pixel_values": pixel_values.numpy(), "class_embeddings": embeddings.numpy()}

    def torch_call():
        with torch.inference_mode():
            return [t.numpy() for t in graph(pixel_values, embeddings)]

    def onnx_call():
        return session.run(list(OUTPUT_NAMES), feed)

    results, outputs = time_calls({"pytorch": torch_call, "onnxruntime": onnx_call}, warmup, repeats)
    difference = max(float(np.abs(a - b).max()) for a, b in zip(outputs["pytorch"], outputs["onnxruntime"]))
    for name, stats in results.items():
        stats["images_per_s"] = setup.batch / stats["median"]
        stats["speedup"] = results["pytorch"]["median"] / stats["median"]
    return {"setup": setup.label() + (" dynamic" if dynamic else " fixed-shape"), "variants": results,
            "num_classes": int(embeddings.shape[0]), "max_abs_difference": difference}


def markdown(report: dict) -> str:
    lines = [
        f"Scenario: {report['setup']}, {report['num_classes']} classes; max |onnxruntime - PyTorch| = "
        f"{report['max_abs_difference']:.2g}",
        "",
        "| runtime | median s | p90 s | images/s | CPU s | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for name, stats in report["variants"].items():
        lines.append(f"| {name} | {stats['median']:.4f} | {stats['p90']:.4f} | {stats['images_per_s']:.2f} | "
                     f"{stats['cpu_median']:.4f} | {stats['speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="san-clip-vit-b16", help="a SAN preset of configuration/")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--vocabulary", default="ade150", help="'default', a vocabulary file name, or N")
    parser.add_argument("--dynamic", action="store_true", help="export with a dynamic batch and image size")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="PyTorch and onnxruntime threads")
    parser.add_argument("--output", type=Path, default=RESULTS / "onnx.json", help="JSON path (.md beside it)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    setup = Setup(preset=args.preset, size=args.size, batch=args.batch, vocabulary=args.vocabulary,
                  threads=args.threads)
    report = run(setup, args.dynamic, args.warmup, args.repeats)
    report["environment"] = environment()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    args.output.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
