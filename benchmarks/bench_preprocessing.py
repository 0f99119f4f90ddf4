"""Preprocessing on the model's device against the host path: agreement and time, on the fixture photos.

    python benchmarks/bench_preprocessing.py --device cuda       # on a GPU host

Host path: `processor(images)` on the CPU, then the batch uploaded (what a caller without `device` gets). Device
path: `processor(images, device=...)`, which uploads the uint8 images and resizes, normalises and pads there.
Reports the largest pixel difference in grey levels (0..255; the target is at most 1, i.e. 1/255 on the 0..1
scale), whether label maps and sizes are identical, and the median wall time of each path at batch 1 and 8
(synchronised on a GPU). Results go to benchmarks/results/preprocessing[_cuda].json.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.bench_inference import environment, result_suffix  # noqa: E402
from modeling_pat import PATImageProcessor  # noqa: E402


PHOTOS = REPO_ROOT / "tests" / "fixtures" / "data"


def grey_levels(pixel_values: torch.Tensor, processor: PATImageProcessor) -> torch.Tensor:
    mean = torch.tensor(processor.image_mean, dtype=torch.float64).view(-1, 1, 1) * 255
    std = torch.tensor(processor.image_std, dtype=torch.float64).view(-1, 1, 1) * 255
    return pixel_values.cpu().double() * std + mean


def median_ms(call, device: str, repeats: int) -> float:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    call()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    processor = PATImageProcessor()
    files = sorted((PHOTOS / "images").glob("*.jpg"))[:8]
    images = [Image.open(f).convert("RGB") for f in files]
    labels = [np.array(Image.open(PHOTOS / "labels" / f"{f.stem}.png")) for f in files]
    host = processor(images, segmentation_maps=labels)
    on_device = processor(images, segmentation_maps=labels, device=args.device)
    difference = (grey_levels(on_device["pixel_values"], processor) - grey_levels(host["pixel_values"], processor)).abs()
    result = {
        "max_grey_level_difference": difference.max().item(),
        "share_of_values_differing": (difference > 0.5).double().mean().item(),
        "labels_identical": torch.equal(on_device["labels"].cpu(), host["labels"]),
        "sizes_identical": torch.equal(on_device["image_sizes"], host["image_sizes"]),
    }
    for batch in (1, 8):
        chosen = images[:batch]
        host_ms = median_ms(lambda: processor(chosen)["pixel_values"].to(args.device), args.device, args.repeats)
        device_ms = median_ms(lambda: processor(chosen, device=args.device)["pixel_values"], args.device, args.repeats)
        result[f"batch_{batch}"] = {"host_then_upload_ms": host_ms, "on_device_ms": device_ms}
    print(json.dumps(result, indent=2))
    output = args.output or REPO_ROOT / "benchmarks" / "results" / f"preprocessing{result_suffix(args.device)}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"result": result, "environment": environment(),
                                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, indent=2) + "\n")
    print(f"-> {output}")
    ok = result["max_grey_level_difference"] <= 1 + 1e-3 and result["labels_identical"] and result["sizes_identical"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
