"""benchmarks/gpu_attention.py (the GPU measurement of docs/performance.md) runs end to end."""

import json
import math
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_benchmark_script_runs_end_to_end(tmp_path):
  # benchmarks/gpu_attention.py as the GPU run uses it, on a 2-layer model here (cudnn's calls
  # through XLA): one train step row per kernel, decoding rows, all written as JSON.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO, OUT=str(tmp_path))
  result = subprocess.run(["sh", "benchmarks/gpu_attention.sh", "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((tmp_path / "gpu_attention.json").read_text())
  assert report["smoke"] and report["cudnn_calls_through"] == "xla"
  assert [(r["kernel"], r["seq_len"]) for r in report["train"]] == [("xla", 64), ("cudnn", 64)]
  for row in report["train"]:
    assert row["step_s"] > 0 and 0 < row["mfu"] < 1 and math.isfinite(row["loss"])
  xla_loss, cudnn_loss = (r["loss"] for r in report["train"])
  assert cudnn_loss == pytest.approx(xla_loss, rel=1e-3)  # bf16: the same function
  assert [r["batch"] for r in report["decode"]] == [1, 2]
  assert all(r["tokens_per_s"] > 0 for r in report["decode"])
