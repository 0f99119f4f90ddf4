"""The inference benchmark (`benchmarks/bench_inference.py`) runs end to end on tiny presets; its checks hold.

Timings are not asserted (these machines are noisy); what is checked is what the benchmark's table rests on: every
variant ran and was timed, the current package's outputs equal the pinned baseline's on the same weights and inputs,
batching does not change the label maps, and the JSON and Markdown reports are written.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.baseline import BASELINE_COMMIT, resolve_commit


REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_inference.py"


# the baseline is unpacked from the repository's history (benchmarks/baseline.py): a shallow clone lacks it
needs_baseline = pytest.mark.skipif(resolve_commit() is None,
                                    reason=f"baseline commit {BASELINE_COMMIT} not in this checkout (shallow clone)")


def run_benchmark(tmp_path, *args) -> dict:
    output = tmp_path / "report.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, str(SCRIPT), "--size", "64", "--repeats", "2", "--output", str(output),
                           *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert output.with_suffix(".md").read_text().count("|") > 10  # the Markdown table
    return json.loads(output.read_text())["scenarios"]["single"]


def assert_timed(entry: dict, repeats: int = 2) -> None:
    assert len(entry["wall"]) == repeats and entry["median"] > 0 and entry["cpu_median"] > 0


@pytest.mark.slow
@needs_baseline
def test_baseline_and_fast_agree_with_a_cached_vocabulary(tmp_path):
    result = run_benchmark(tmp_path, "--preset", "san-tiny")
    baseline, fast = result["variants"]["baseline"], result["variants"]["fast"]
    for entry in (baseline, fast):
        assert_timed(entry)
    assert baseline["speedup_vs_baseline"] == 1.0
    check = fast["vs_baseline"]
    assert check["class_logits_max_abs_diff"] <= 1e-4 and check["mask_logits_max_abs_diff"] <= 1e-4
    assert check["scores_max_abs_diff"] <= 1e-4 and check["label_map_agreement"] == 1.0


@pytest.mark.slow
@needs_baseline
def test_cold_vocabulary_times_text_encoding_with_equal_embeddings_and_measures_memory(tmp_path):
    result = run_benchmark(tmp_path, "--preset", "san-tiny", "--vocab", "cold", "--vocabulary", "30", "--memory")
    assert result["num_classes"] == 30
    fast = result["variants"]["fast"]
    assert_timed(fast)
    assert fast["vs_baseline"]["embeddings_max_abs_diff"] <= 1e-5
    for entry in result["variants"].values():
        assert entry["memory"]["peak_extra_bytes"] > 0 and entry["memory"]["rss_before_bytes"] > 0  # measured


@pytest.mark.slow
def test_pat_beside_san_and_batch_beside_single_images(tmp_path):
    # neither baseline nor fast named: fast is added as the reference of the ratios
    result = run_benchmark(tmp_path, "--preset", "pat-tiny", "--san-preset", "san-tiny", "--batch", "2",
                           "--variants", "san,fast-b1")
    variants = result["variants"]
    assert list(variants) == ["fast", "san", "fast-b1"]
    for entry in variants.values():
        assert_timed(entry)
        assert entry["speedup_vs_fast"] > 0
    assert variants["fast-b1"]["vs_fast"]["label_map_agreement"] == 1.0  # one forward per image: same maps
    assert "vs_fast" not in variants["san"]  # another model: nothing to compare
