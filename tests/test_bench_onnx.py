"""The onnxruntime-beside-PyTorch benchmark (`benchmarks/bench_onnx.py`) runs end to end on the tiny preset.

Timings are not asserted (these machines are noisy); what is checked is what its table rests on: both runtimes ran
and were timed on the same inputs, their outputs agree, and the JSON and Markdown reports are written.
"""

import json
import os
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_onnx.py"


def test_benchmark_times_both_runtimes_on_the_same_graph(tmp_path):
    output = tmp_path / "onnx.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, str(SCRIPT), "--preset", "san-tiny", "--size", "64", "--batch", "2",
                           "--vocabulary", "default", "--repeats", "2", "--threads", "1", "--output", str(output)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(output.read_text())
    assert set(report["variants"]) == {"pytorch", "onnxruntime"}
    for stats in report["variants"].values():
        assert len(stats["wall"]) == 2 and stats["median"] > 0 and stats["images_per_s"] > 0
    assert report["max_abs_difference"] <= 1e-4
    assert report["num_classes"] == 6 and "san-tiny 64px b2" in report["setup"]
    assert output.with_suffix(".md").read_text().count("| onnxruntime |") == 1
