"""The prepared GPU check runs end to end on the CPU (--dry-run), so it is ready when a session is lent a GPU."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": str(Path(os.sys.executable)), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check" / "gpu_check.json").read_text())
    assert report["all_ok"], {k: v.get("error") for k, v in report.items() if isinstance(v, dict)}
    assert report["sft"]["returncode"] == 0 and report["grpo"]["returncode"] == 0
    decoding = report["decoding"]
    assert decoding["invalid"] == 0 and decoding["top10_identical_rows"] == decoding["batch"]
