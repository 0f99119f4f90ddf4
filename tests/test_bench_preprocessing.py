"""The preprocessing benchmark (`benchmarks/bench_preprocessing.py`) runs on the CPU: the device path given
explicitly agrees with the host path, and both are timed (on a GPU the same script compares CUDA with the host)."""

import json
import os
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def test_device_path_agrees_and_is_timed(tmp_path):
    output = tmp_path / "preprocessing.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_preprocessing.py"), "--repeats", "1",
                           "--output", str(output)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(output.read_text())["result"]
    assert result["max_grey_level_difference"] == 0 and result["labels_identical"] and result["sizes_identical"]
    for batch in ("batch_1", "batch_8"):
        assert result[batch]["host_then_upload_ms"] > 0 and result[batch]["on_device_ms"] > 0
