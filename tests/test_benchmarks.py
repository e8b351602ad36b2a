"""The GPU benchmark runs end to end on the CPU (where no GPU is present), so it is ready when one is lent."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_runs_every_stage_on_the_cpu(tmp_path):
    """segment on 2 workers and DDP train on 2 ranks each print their rate (the flow stage runs the process-archive
    flow that tests/test_flows.py covers; left out here for the suite's time)."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--edge", "1024",
                          "--flow-edge", "1024", "--train-minutes", "0.05", "--workers", "2", "--stages", "segment", "train",
                          "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    segments = [line for line in lines if line.startswith("segment 1024^2")]
    assert [re.search(r"(\d) worker", line).group(1) for line in segments] == ["2"]
    for line in segments:
        objects = int(re.search(r"(\d+) objects", line).group(1))
        network = float(re.search(r"network ([\d.]+) s", line).group(1))
        assert objects > 100 and network > 0 and "device busy n/a" in line
    trains = [line for line in lines if line.startswith("train ")]
    assert len(trains) == 1 and "2 rank(s)" in trains[0] and all(int(re.search(r"(\d+) steps", line).group(1)) > 0 for line in trains)
