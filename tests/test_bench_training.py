"""The training benchmark (`benchmarks/bench_training.py`) runs a few steps end to end on the tiny preset.

Timings are not asserted (these machines are noisy); what is checked is what its table rests on: steps ran with a
finite loss through the training code (a persistent loader worker, the loss, an optimiser step), the time split
adds up, the loader-only mode timed whole examples, and the JSON and Markdown reports keep one row per setup.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.bench_training import write_results


REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_training.py"


def run_benchmark(output: Path, *args) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, str(SCRIPT), "--preset", "san-tiny", "--output", str(output), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_training_steps_and_loader_only(tmp_path):
    output = tmp_path / "training.json"
    run_benchmark(output, "--batch", "2", "--crop", "96", "--steps", "3", "--warmup", "1", "--workers", "1")
    run_benchmark(output, "--loader-only", "--crop", "96", "--steps", "4", "--warmup", "1")
    rows = {row["setup"]["mode"]: row for row in json.loads(output.read_text())["runs"]}
    assert set(rows) == {"train", "loader"}

    train = rows["train"]["result"]
    assert train["steps"] == 3 and train["images_per_s"] > 0
    assert abs(train["images_per_s"] - 2 * train["steps_per_s"]) < 1e-6
    split = train["split_s_per_step"]
    assert set(split) == {"data_wait", "forward", "backward", "optimizer"} and min(split.values()) > 0
    assert sum(split.values()) <= 1 / train["steps_per_s"] + 1e-3  # the parts fit in a step
    assert train["peak_memory_bytes"] > 0 and train["trainable_parameters"] > 0
    assert all(abs(train[key]) < 1e4 for key in ("loss_first", "loss_last"))  # finite (the script checks that too)
    assert rows["train"]["setup"] == {"mode": "train", "preset": "san-tiny", "device": "cpu", "dtype": "fp32",
                                      "batch": 2, "crop": 96, "workers": 1}

    loader = rows["loader"]["result"]
    assert loader["images"] == 4 and loader["images_per_cpu_s"] > 0 and loader["images_per_s"] > 0
    assert loader["decode_cpu_s_per_image"] > 0 and loader["augmentation_cpu_s_per_image"] > 0

    table = output.with_suffix(".md").read_text()
    assert table.count("| san-tiny | cpu | fp32 | 2 | 96 | 1 |") == 1 and "img/s per worker" in table
    rerun = dict(rows["loader"], result=dict(loader, images=2))
    write_results(rerun, output)  # a rerun of a setup replaces its row
    runs = json.loads(output.read_text())["runs"]
    assert len(runs) == 2 and [r["result"]["images"] for r in runs if r["setup"]["mode"] == "loader"] == [2]
