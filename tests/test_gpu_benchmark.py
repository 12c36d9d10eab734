"""``benchmarks/gpu.py --dry-run``: the GPU benchmark's whole path at tiny sizes on the CPU, so that the script a
GPU session runs is known to work before the device time is spent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_dry_run_writes_its_json(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run", "--steps", "2",
                           "--pipelines", "simba_shortcut_kd", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dry_run"] and set(result["pipelines"]) == {"simba_shortcut_kd"}
    simba = result["pipelines"]["simba_shortcut_kd"]
    assert simba["architecture"] == "simba_cnn" and simba["input"] == [1, 32, 32, 32]
    for name in ("erm", "kd", "kd_cached"):
        assert simba[name]["images_per_s"] > 0 and simba[name]["measured_steps"] == 2
    assert simba["kd_over_erm"] > 0 and simba["kd_cached_over_erm"] > 0
