"""Training throughput: steps/s, images/s, where a step's time goes, peak memory; and the data loader's CPU cost.

    python benchmarks/bench_training.py --preset san-tiny --batch 2 --crop 128 --seconds 20
    python benchmarks/bench_training.py --preset san-clip-vit-b16 --device cuda --dtype bf16 --batch 32 --workers 14
    python benchmarks/bench_training.py --loader-only --seconds 30        # CPU work per training image, one worker

What runs is what `run_semantic_segmentation.py` runs, minus `Trainer`'s bookkeeping:
* data: the fixture photos (tests/fixtures/data, ADE20K / COCO-Stuff / VOC pairs, labels outside the COCO-Stuff-171
  vocabulary ignored) repeated to `--length` examples, so that an epoch is far longer than the run and loader
  start-up is not measured; `SegmentationTrainDataset` (decode, SAN's augmentation with `--crop`, normalisation)
  batched by `SegmentationCollator` in a `DataLoader` with `--workers` persistent workers (pinned memory on a GPU);
* model: the preset with random weights (nothing is downloaded: dense layers cost the same whatever the values),
  vocabulary COCO-Stuff-171 as in SAN's recipe, in training mode; its forward with `labels` computes SAN's loss (and
  PAT's tokenisation losses); `--dtype bf16` runs the forward under bfloat16 autocast with fp32 weights, as
  `Trainer(bf16=True)` does;
* optimiser step as Trainer's: gradient clipping to 0.01 (SAN's full-model clipping), AdamW with SAN's weight-decay
  groups, the poly learning-rate schedule, gradients set to None.

A step's time is split into data wait (next batch from the loader and its upload), forward (with the loss),
backward and optimiser; on a GPU each part ends with `torch.cuda.synchronize()`, so the split is device time (the
syncs cost a little throughput). The first `--warmup` steps are not timed; then steps run for `--seconds` (or
`--steps`). Peak memory: the CUDA allocator's peak of allocated tensors during the timed steps, on the CPU the
process's peak resident set.

`--loader-only` measures the CPU work per training image in one process with one thread, i.e. what one loader
worker does: decode, SAN's augmentation (resize, crop, colour jitter, flip, pad to the crop) and normalisation, in
images/s, with the share of decoding and augmentation.

Results go to benchmarks/results/training[_cuda].{json,md} (one row per preset / dtype / batch / crop / workers,
replaced when rerun; `--output` for another file).
"""

import argparse
import dataclasses
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.bench_inference import environment, result_suffix  # noqa: E402
from modeling_pat import PATConfig, PATForOpenVocabSegmentation, PATImageProcessor  # noqa: E402
from modeling_pat.apps.data import (  # noqa: E402
    LabelMapping,
    SANTrainAugmentation,
    SegmentationCollator,
    SegmentationTrainDataset,
    load_folder,
    load_vocabulary,
)
from modeling_pat.apps.optimization import POLY_LR_SCHEDULER_KWARGS, get_parameter_groups  # noqa: E402


RESULTS = Path(__file__).resolve().parent / "results"
PHOTOS = REPO_ROOT / "tests" / "fixtures" / "data"
VOCABULARY = "coco171"
PRESETS = ("san-clip-vit-b16", "pat-clip-vit-b16", "san-clip-vit-l14-336", "san-tiny", "pat-tiny")
MAX_GRAD_NORM = 0.01  # SAN's full-model gradient clipping (run_semantic_segmentation.py's default)
LEARNING_RATE = 1e-4


# -- data -------------------------------------------------------------------------------------------------------------
def repeated_photos(folder: Path, length: int, class_names: list[str]):
    """The fixture photos as a training split of `length` examples (the pairs repeated), labels outside the
    vocabulary ignored. Built through `load_folder`, the loader of a user's own folder."""
    pairs = sorted(p.stem for p in (PHOTOS / "labels").glob("*.png"))
    (folder / "image").mkdir(parents=True)
    (folder / "label").mkdir()
    for stem in pairs:
        image = next((PHOTOS / "images").glob(f"{stem}.*"))
        shutil.copy(image, folder / "image" / image.name)
        shutil.copy(PHOTOS / "labels" / f"{stem}.png", folder / "label" / f"{stem}.png")
    (folder / "id2label.json").write_text(json.dumps(dict(enumerate(class_names))))
    split = load_folder(folder, "train", train_val_split=None)
    mapping = LabelMapping.from_dict({v: v for v in range(len(class_names))}, split.ignore_index)
    split = dataclasses.replace(split, label_mapping=mapping)
    return split.select([i % len(split) for i in range(length)])


def training_dataset(folder: Path, args, class_names: list[str], config: PATConfig) -> SegmentationTrainDataset:
    split = repeated_photos(folder, args.length, class_names)
    processor = PATImageProcessor(size_divisibility=config.size_divisibility, ignore_index=split.ignore_index)
    augmentation = SANTrainAugmentation(crop_size=args.crop, ignore_index=split.ignore_index)
    return SegmentationTrainDataset(split, augmentation, processor, seed=0)


def data_loader(dataset, args, config: PATConfig) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=args.workers,
        persistent_workers=args.workers > 0, pin_memory=args.device == "cuda",
        collate_fn=SegmentationCollator(dataset.split.ignore_index, config.size_divisibility),
        generator=torch.Generator().manual_seed(0),
    )


def batches(loader):
    """Batches for ever: a new epoch (a new shuffle; persistent workers stay) when one ends."""
    while True:
        yield from loader


# -- model and optimiser ----------------------------------------------------------------------------------------------
def build_model(args, class_names: list[str]) -> PATForOpenVocabSegmentation:
    torch.manual_seed(0)
    config = PATConfig.from_preset(args.preset)
    config.id2label = dict(enumerate(class_names))
    config.label2id = {name: i for i, name in enumerate(class_names)}
    return PATForOpenVocabSegmentation(config).to(args.device).train()


def build_optimizer(model, total_steps: int):
    """AdamW with SAN's weight-decay groups and the poly schedule, as `Trainer` builds them for the training script."""
    from transformers import get_polynomial_decay_schedule_with_warmup

    optimizer = torch.optim.AdamW(get_parameter_groups(model), lr=LEARNING_RATE)
    scheduler = get_polynomial_decay_schedule_with_warmup(optimizer, 0, total_steps, **POLY_LR_SCHEDULER_KWARGS)
    return optimizer, scheduler


# -- timing -----------------------------------------------------------------------------------------------------------
class Clock:
    """Wall time since the last mark, after the device has finished (a no-op sync on the CPU)."""

    def __init__(self, device: str):
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        self.last = time.perf_counter()

    def lap(self) -> float:
        self.sync()
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed


def train_step(model, batch, optimizer, scheduler, args, clock: Clock) -> dict:
    """One optimiser step on a batch already on the device -> seconds of forward / backward / optimiser and loss."""
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    with autocast:
        loss = model(**batch).loss
    forward = clock.lap()
    loss.backward()
    backward = clock.lap()
    torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"forward": forward, "backward": backward, "optimizer": clock.lap(), "loss": loss.detach()}


def next_batch(iterator, device: str) -> dict:
    batch = next(iterator)
    non_blocking = device == "cuda"  # pinned by the loader: the copy overlaps, the next sync waits for it
    return {key: value.to(device, non_blocking=non_blocking) for key, value in batch.items()}


def peak_memory(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_training(args) -> dict:
    class_names = load_vocabulary(VOCABULARY)["class_names"]
    model = build_model(args, class_names)
    with tempfile.TemporaryDirectory() as folder:
        dataset = training_dataset(Path(folder), args, class_names, model.config)
        loader = data_loader(dataset, args, model.config)
        iterator = batches(loader)
        optimizer, scheduler = build_optimizer(model, total_steps=10**6)
        clock = Clock(args.device)
        for _ in range(args.warmup):  # workers start, caches (text embeddings, allocator) fill
            train_step(model, next_batch(iterator, args.device), optimizer, scheduler, args, clock)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        parts = {"data_wait": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        losses, steps = [], 0
        clock.lap()
        started = time.perf_counter()
        while steps < args.steps if args.steps else time.perf_counter() - started < args.seconds:
            batch = next_batch(iterator, args.device)
            parts["data_wait"] += clock.lap()
            timed = train_step(model, batch, optimizer, scheduler, args, clock)
            for key in ("forward", "backward", "optimizer"):
                parts[key] += timed[key]
            losses.append(timed["loss"])
            steps += 1
        elapsed = time.perf_counter() - started
        del iterator, loader  # persistent workers end here
    losses = torch.stack(losses).float().cpu()
    if not bool(torch.isfinite(losses).all()):
        raise RuntimeError(f"non-finite training loss: {losses.tolist()}")
    return {
        "steps": steps, "seconds": elapsed, "steps_per_s": steps / elapsed, "images_per_s": steps * args.batch / elapsed,
        "split_s_per_step": {key: value / steps for key, value in parts.items()},
        "peak_memory_bytes": peak_memory(args.device), "loss_first": float(losses[0]), "loss_last": float(losses[-1]),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def run_loader_only(args) -> dict:
    """CPU work per training image in one thread (one loader worker): decode, augmentation, normalisation.

    Timed in process CPU seconds (what a worker costs; on a shared machine wall time also counts waiting for a
    core) and wall seconds. The decode and augmentation shares come from separate calls on the same example."""
    torch.set_num_threads(1)
    class_names = load_vocabulary(VOCABULARY)["class_names"]
    config = PATConfig.from_preset(args.preset)
    with tempfile.TemporaryDirectory() as folder:
        dataset = training_dataset(Path(folder), args, class_names, config)
        split, augmentation = dataset.split, dataset.augmentation
        for index in range(args.warmup):
            dataset[index]
        parts = {"decode": 0.0, "augmentation": 0.0, "example": 0.0}
        images, wall, started = 0, 0.0, time.perf_counter()
        while images < args.steps if args.steps else time.perf_counter() - started < args.seconds:
            index = images % len(dataset)
            start = time.process_time()
            image, label, _ = split.load(index)
            loaded = time.process_time()
            augmentation(image, label, np.random.default_rng([1, 0, index]))
            augmented = time.process_time()
            wall_start = time.perf_counter()
            dataset[index]  # the whole example as a worker makes it
            wall += time.perf_counter() - wall_start
            parts["decode"] += loaded - start
            parts["augmentation"] += augmented - loaded
            parts["example"] += time.process_time() - augmented
            images += 1
    per_image = {f"{key}_cpu_s_per_image": value / images for key, value in parts.items()}
    return {"images": images, "images_per_cpu_s": images / parts["example"], "images_per_s": images / wall,
            **per_image}


# -- reports ----------------------------------------------------------------------------------------------------------
def row_key(row: dict) -> tuple:
    s = row["setup"]
    return (s["mode"], s["preset"], s["dtype"], s["batch"], s["crop"], s["workers"])


def write_results(row: dict, path: Path) -> None:
    """Add `row` to the JSON file (replacing the row of the same setup) and rewrite the Markdown table beside it."""
    rows = json.loads(path.read_text())["runs"] if path.exists() else []
    rows = [r for r in rows if row_key(r) != row_key(row)] + [row]
    rows.sort(key=row_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": rows}, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(rows))
    print(f"-> {path}")


def markdown(rows: list[dict]) -> str:
    lines = ["# Training throughput (benchmarks/bench_training.py)", ""]
    training = [r for r in rows if r["setup"]["mode"] == "train"]
    if training:
        lines += ["| preset | device | dtype | batch | crop | workers | steps/s | img/s | data wait | forward | "
                  "backward | optimizer | peak memory | run |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in training:
            s, m, split = r["setup"], r["result"], r["result"]["split_s_per_step"]
            ms = " | ".join(f"{1000 * split[k]:.1f} ms" for k in ("data_wait", "forward", "backward", "optimizer"))
            lines.append(f"| {s['preset']} | {s['device']} | {s['dtype']} | {s['batch']} | {s['crop']} | "
                         f"{s['workers']} | {m['steps_per_s']:.3f} | {m['images_per_s']:.2f} | {ms} | "
                         f"{m['peak_memory_bytes'] / 2**30:.2f} GiB | {run_line(r)} |")
        lines.append("")
    loader = [r for r in rows if r["setup"]["mode"] == "loader"]
    if loader:
        lines += ["Loader: CPU work per training image in one thread (one worker): decode + SAN augmentation + "
                  "normalisation (CPU seconds per image; decode and augmentation timed apart on the same example).",
                  "",
                  "| crop | img/s per worker (CPU time) | img/s (wall) | decode | augmentation | whole example | run |",
                  "|---|---|---|---|---|---|---|"]
        for r in loader:
            m = r["result"]
            lines.append(f"| {r['setup']['crop']} | {m['images_per_cpu_s']:.1f} | {m['images_per_s']:.1f} | "
                         f"{1000 * m['decode_cpu_s_per_image']:.1f} ms | "
                         f"{1000 * m['augmentation_cpu_s_per_image']:.1f} ms | "
                         f"{1000 * m['example_cpu_s_per_image']:.1f} ms | {run_line(r)} |")
        lines.append("")
    return "\n".join(lines)


def run_line(row: dict) -> str:
    env = row["environment"]
    where = env["gpu"] or f"{env['cpu_count']} x {env['cpu']}"
    load = ", ".join(f"{x:.1f}" for x in env["load_average"])
    return f"{row['date']}, {where}, torch {env['torch']}, {str(env['commit'])[:7]}, load {load}"


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="san-tiny", choices=PRESETS)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--crop", type=int, default=640)
    parser.add_argument("--seconds", type=float, default=60.0, help="timed duration after the warm-up")
    parser.add_argument("--steps", type=int, default=0, help="a number of timed steps instead of --seconds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (images with --loader-only) first")
    parser.add_argument("--workers", type=int, default=2, help="persistent DataLoader workers (0: in the loop)")
    parser.add_argument("--length", type=int, default=100_000, help="examples per epoch (the photos repeated)")
    parser.add_argument("--loader-only", action="store_true", help="CPU work per training image, one worker")
    parser.add_argument("--output", type=Path, default=None, help="JSON result file (Markdown beside it)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if min(args.batch, args.crop, args.length) < 1 or args.workers < 0 or args.seconds <= 0:
        parser.error("--batch, --crop and --length must be positive, --workers >= 0, --seconds > 0")
    return args


def main(argv=None) -> int:
    args = parse_arguments(argv)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # Trainer's default (tf32=None leaves torch's: off)
    mode = "loader" if args.loader_only else "train"
    result = run_loader_only(args) if args.loader_only else run_training(args)
    setup = {"mode": mode, "preset": args.preset, "device": args.device, "dtype": args.dtype,
             "batch": 1 if args.loader_only else args.batch, "crop": args.crop,
             "workers": 1 if args.loader_only else args.workers}
    row = {"setup": setup, "result": result, "environment": environment(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(result, indent=2))
    output = args.output or RESULTS / f"training{result_suffix(args.device)}.json"
    write_results(row, output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
