"""Two local processes joined by jax.distributed train like one process with two devices."""

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from glm_jax import checkpoints

from conftest import REPO_ROOT, multi_device_env, prepare_in_process, run_module, write_tiny_gin

pytestmark = pytest.mark.slow

ARGS = ["--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=3", "--gin.EVAL_PERIOD=3",
        "--gin.EVAL_STEPS=2", "--gin.MESH_DATA=2"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _losses(model_dir):
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  train = {r["step"]: r["loss"] for r in records if "loss" in r}
  evals = {r["step"]: r["eval/loss"] for r in records if "eval/loss" in r}
  return train, evals


def _one_and_two_processes(tmp_path, gin_file, *extra):
  """Runs one process with two devices, then two processes with one device each."""
  single = tmp_path / "single"
  result = run_module("glm_jax.train", [f"--gin_file={gin_file}", f"--gin.MODEL_DIR={single}",
                                        *ARGS, *extra], env=multi_device_env(2))
  assert result.returncode == 0, result.stderr[-3000:]

  multi = tmp_path / "multi"
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "glm_jax.train", f"--gin_file={gin_file}",
       f"--gin.MODEL_DIR={multi}", *ARGS, *extra, f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}"],
      cwd=REPO_ROOT, env=multi_device_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return single, multi, [err for _, err in outputs]


def test_two_processes_match_one_process(tmp_path):
  gin_file = write_tiny_gin(tmp_path)
  single, multi, _ = _one_and_two_processes(tmp_path, gin_file)

  train_1, eval_1 = _losses(single)
  train_2, eval_2 = _losses(multi)
  assert sorted(train_1) == sorted(train_2) == list(range(1, 7))
  for step in train_1:
    assert train_2[step] == pytest.approx(train_1[step], abs=1e-5), step
  assert sorted(eval_1) == sorted(eval_2) == [3, 6]
  for step in eval_1:
    assert eval_2[step] == pytest.approx(eval_1[step], abs=1e-5), step
  # Both processes wrote one shared checkpoint directory; it restores like any other.
  assert [r["step"] for r in checkpoints.describe(str(multi))] == [3, 6]


def test_two_processes_on_a_prepared_corpus(tmp_path):
  corpus = prepare_in_process(tmp_path / "corpus")
  gin_file = write_tiny_gin(tmp_path, f"""
model.GLMConfig.vocab_size = 8064
TRAIN_INPUT = @train.task_batches
MIXTURE_OR_TASK_NAME = 'prepared:{corpus}'
VOCABULARY = 'builtin'
""")
  single, multi, logs = _one_and_two_processes(tmp_path, gin_file, "--verbosity=0")
  train_1, eval_1 = _losses(single)
  train_2, eval_2 = _losses(multi)
  assert sorted(train_1) == sorted(train_2) == list(range(1, 7))
  for step in train_1:
    assert train_2[step] == pytest.approx(train_1[step], abs=1e-5), step
  for step in eval_1:
    assert eval_2[step] == pytest.approx(eval_1[step], abs=1e-5), step
  # Each process built only its own rows: disjoint halves that cover every global batch.
  for split in ("train", "validation"):
    rows = []
    for log in logs:
      found = re.findall(rf"Input prepared:\S+/{split}: process rows \[(\d+), (\d+)\) of "
                         r"every global batch of (\d+)", log)
      assert len(found) == 1, (split, log[-2000:])
      rows.append(tuple(map(int, found[0])))
    assert sorted(rows) == [(0, 4, 8), (4, 8, 8)], rows
