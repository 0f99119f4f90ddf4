"""Device-resident throughput and latency: pixel values already on the device, forward + post-processing.

    python benchmarks/bench_throughput.py --device cuda                     # the GPU sweep (results/throughput_cuda.*)
    python benchmarks/bench_throughput.py --device cpu --presets san-tiny --batches 1,2 --repeats 3   # smoke run

What one timed call is: `model(pixel_values, class_embeddings=..., image_sizes=...)` then
`post_process_semantic_segmentation(outputs, target_sizes=...)` to [H, W] label maps at the input size, under
`torch.inference_mode()`, the vocabulary's class embeddings cached (ADE-150), weights random and calibrated as in
`bench_inference.py` (logit scale 100, mask logits and attention biases with a standard deviation of 5). On CUDA every
call ends with `torch.cuda.synchronize()` and TF32 is off, so fp32 is true fp32.

Sections of the result:
* `sweep`: images/s for every preset x batch x dtype;
* `bf16_agreement`: per preset, the share of pixels where bf16's label map equals fp32's (batch 8), with the fp32
  score margins (best minus second-best class score) overall and at the pixels that disagree, so a reader can judge
  whether disagreements are near-ties;
* `latency_b1`: batch 1 bf16 per-call latency, eager and under `torch.compile(mode="reduce-overhead")` (CUDA graphs),
  and the number of host-device synchronisations in one eager call (`torch.cuda.set_sync_debug_mode`);
* `classes`: post-processing alone at 20 and at 847 classes, and their ratio.
"""

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.bench_inference import RESULTS, Setup, class_names, environment, images, seeded_model  # noqa: E402
from modeling_pat import PATImageProcessor  # noqa: E402
from modeling_pat.image_processing_pat import semantic_map  # noqa: E402


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_seconds(call, device: str, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        call()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Bench:
    """One preset's calibrated model (fp32, plus a bf16 copy on demand) and its inputs at a given batch size."""

    def __init__(self, preset: str, device: str, size: int, vocabulary: str = "ade150"):
        self.device, self.size = device, size
        self.setup = Setup(preset=preset, size=size, batch=1, vocabulary=vocabulary, device=device)
        self.processor = PATImageProcessor(do_resize=False)
        self.models = {"fp32": seeded_model(self.setup, self.inputs(1)[0])}
        self.names = class_names(self.setup, self.models["fp32"].config)

    def inputs(self, batch: int):
        data = self.processor(images=images(replace(self.setup, batch=batch)), return_tensors="pt")
        sizes = [tuple(map(int, s)) for s in data["original_sizes"]]
        # the sizes stay where the processor made them, on the host: post-processing reads them without a sync
        return data["pixel_values"].to(self.device), data["image_sizes"], sizes

    def model(self, dtype: str):
        if dtype not in self.models:
            self.models[dtype] = copy.deepcopy(self.models["fp32"]).to(DTYPES[dtype])
        return self.models[dtype]

    def call(self, dtype: str, batch: int, names=None, model=None):
        model = model or self.model(dtype)
        pixel_values, image_sizes, sizes = self.inputs(batch)
        pixel_values = pixel_values.to(DTYPES[dtype])
        names = names or self.names
        with torch.inference_mode():
            embeddings = model.get_class_embeddings(class_names=names)

        def run():
            with torch.inference_mode():
                outputs = model(pixel_values, class_embeddings=embeddings, image_sizes=image_sizes)
                return self.processor.post_process_semantic_segmentation(outputs, target_sizes=sizes), outputs
        return run


def sweep(bench: Bench, batches, dtypes, warmup, repeats) -> dict:
    rows = {}
    for dtype in dtypes:
        for batch in batches:
            try:
                seconds = median_seconds(bench.call(dtype, batch), bench.device, warmup, repeats)
                rows[f"{dtype} b{batch}"] = {"seconds": seconds, "images_per_s": batch / seconds}
            except torch.OutOfMemoryError as error:  # report, keep going
                rows[f"{dtype} b{batch}"] = {"error": str(error).splitlines()[0]}
                torch.cuda.empty_cache()
            print(f"  {bench.setup.preset} {dtype} b{batch}: {rows[f'{dtype} b{batch}']}", flush=True)
    return rows


def bf16_agreement(bench: Bench, batch: int = 8) -> dict:
    """Share of pixels with equal labels in bf16 and fp32, and fp32 score margins overall / where they differ."""
    maps32, out32 = bench.call("fp32", batch)()
    maps16, _ = bench.call("bf16", batch)()
    margins, disagreeing, agree = [], [], []
    processor_sizes = bench.inputs(batch)
    for i, (a, b) in enumerate(zip(maps32, maps16)):
        scores = semantic_map(out32.class_queries_logits[i], out32.masks_queries_logits[i],
                              padded_size=tuple(processor_sizes[0].shape[-2:]),
                              image_size=tuple(processor_sizes[1][i].tolist()), output_size=processor_sizes[2][i],
                              return_scores=True)["segmentation_scores"]
        top2 = scores.topk(2, dim=0).values
        margin = (top2[0] - top2[1]).flatten().float().cpu()
        differ = (a != b).flatten().cpu()
        margins.append(margin)
        disagreeing.append(margin[differ])
        agree.append(float((~differ).float().mean()))
    margins, disagreeing = torch.cat(margins), torch.cat(disagreeing)

    def quantiles(x):
        if x.numel() == 0:
            return {}
        q = torch.quantile(x[: 2**24].double(), torch.tensor([0.01, 0.05, 0.5], dtype=torch.float64))
        return {"p1": float(q[0]), "p5": float(q[1]), "p50": float(q[2]), "max": float(x.max())}
    return {"label_agreement": float(np.mean(agree)), "margin_all": quantiles(margins),
            "margin_at_disagreements": quantiles(disagreeing)}


def count_syncs(run) -> int:
    """Host-device synchronisations in one call (CUDA only): each raises a warning in 'warn' mode."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def latency_b1(bench: Bench, warmup: int, repeats: int) -> dict:
    result = {"eager_ms": 1e3 * median_seconds(bench.call("bf16", 1), bench.device, warmup, repeats)}
    if bench.device == "cuda":
        result["syncs_per_call"] = count_syncs(bench.call("bf16", 1))
        print(f"  latency b1 (eager): {result}", flush=True)  # before the (long) compilation
        try:
            compiled = copy.deepcopy(bench.model("bf16"))
            compiled.model = torch.compile(compiled.model, mode="reduce-overhead", dynamic=False)
            run = bench.call("bf16", 1, model=compiled)
            result["reduce_overhead_ms"] = 1e3 * median_seconds(run, bench.device, max(warmup, 3), repeats)
        except Exception as error:  # noqa: BLE001 -- reported, not hidden
            result["reduce_overhead_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
    return result


def classes_cost(bench: Bench, warmup: int, repeats: int) -> dict:
    """Post-processing alone (outputs precomputed) at 20 and 847 classes."""
    all_names = json.loads((REPO_ROOT / "configuration" / "vocabularies" / "ade847.json").read_text())["class_names"]
    pixel_values, image_sizes, sizes = bench.inputs(1)
    model = bench.model("fp32")
    out = {}
    for count in (20, 847):
        with torch.inference_mode():
            embeddings = model.get_class_embeddings(class_names=all_names[:count])
            outputs = model(pixel_values, class_embeddings=embeddings, image_sizes=image_sizes)

        def post(outputs=outputs):
            with torch.inference_mode():
                return bench.processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
        out[f"post_{count}_ms"] = 1e3 * median_seconds(post, bench.device, warmup, repeats)
    out["ratio_847_over_20"] = out["post_847_ms"] / out["post_20_ms"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="san-clip-vit-b16,pat-clip-vit-b16,san-clip-vit-l14-336")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--sections", default="sweep,agreement,latency,classes")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    sections = set(args.sections.split(","))
    batches = [int(b) for b in args.batches.split(",")]
    dtypes = args.dtypes.split(",")
    result = {"environment": environment(), "args": vars(args), "presets": {}}
    suffix = "_cuda" if args.device == "cuda" else ""
    path = Path(args.output) if args.output else RESULTS / f"throughput{suffix}.json"
    for index, preset in enumerate(args.presets.split(",")):
        start = time.time()
        bench = Bench(preset, args.device, args.size)
        entry = result["presets"][preset] = {}
        if "sweep" in sections:
            entry["sweep"] = sweep(bench, batches, dtypes, args.warmup, args.repeats)
        if index == 0:  # the cheaper checks on the first preset only
            if "agreement" in sections and "bf16" in dtypes:
                entry["bf16_agreement"] = bf16_agreement(bench, batch=min(8, max(batches)))
                print(f"  bf16 agreement: {entry['bf16_agreement']}", flush=True)
            if "latency" in sections:
                entry["latency_b1"] = latency_b1(bench, args.warmup, args.repeats)
                print(f"  latency b1: {entry['latency_b1']}", flush=True)
            if "classes" in sections:
                entry["classes"] = classes_cost(bench, args.warmup, args.repeats)
                print(f"  classes: {entry['classes']}", flush=True)
        entry["seconds_spent"] = time.time() - start
        del bench
        if args.device == "cuda":
            torch.cuda.empty_cache()
        path.write_text(json.dumps(result, indent=1, default=str))  # after every preset: a cut-short run keeps them
        print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
