"""Two local processes joined by jax.distributed train like one process with two devices."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

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


def _two_processes(module, args, timeout=300):
  """Runs `python -m module args` as processes 0 and 1 of one jax.distributed job."""
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", module, *args, f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}"],
      cwd=REPO_ROOT, env=multi_device_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outputs = [p.communicate(timeout=timeout) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return [out for out, _ in outputs]


EVAL_GIN = """
include 'configs/runs/eval.gin'
from glm_jax.lm_eval import evaluate
EVAL_INPUT = @synthetic.synthetic_batches
SEQUENCE_LENGTH = 32
EVAL_STEPS = 2
eval.evaluate_checkpoint.evaluators = [@eval.infilling_evaluator, @evaluate.wikitext]
evaluate.wikitext.directory = '{wiki}'
evaluate.wikitext.sequence_length = 32
evaluate.wikitext.overlap = 8
evaluate.wikitext.batch_size = 4
"""
WIKI = (" = Valkyria Chronicles = \n\n The game began development in 2010 , carrying over a "
        "large portion of the work done on Valkyria Chronicles II . It met with positive "
        "sales in Japan , and was praised by both Japanese and western critics . \n") * 3


def test_evaluation_and_generation_with_params_sharded_over_two_processes(tmp_path,
                                                                          builtin_vocab):
  from conftest import tiny_glm  # pylint: disable=g-import-not-at-top
  config, params = tiny_glm(builtin_vocab.vocab_size, max_sequence_length=64,
                            initializer_std=0.2, seed=1)
  checkpoint = checkpoints.save_params_checkpoint(str(tmp_path / "ckpt"), params, config,
                                                  "builtin")
  (tmp_path / "wiki").mkdir()
  (tmp_path / "wiki" / "test.txt").write_text(WIKI)
  gin_file = tmp_path / "eval.gin"
  gin_file.write_text(EVAL_GIN.format(wiki=tmp_path / "wiki"))
  eval_args = [f"--gin_file={gin_file}", f"--gin.CHECKPOINT={checkpoint}"]
  single = run_module("glm_jax.eval", [*eval_args, f"--gin.OUTPUT_DIR={tmp_path / 'one'}"])
  assert single.returncode == 0, single.stderr[-3000:]
  assert "into the mesh data:1 x fsdp:1 x tensor:1" in single.stdout
  # data:1 x fsdp:2 over two one-device processes: each holds half of every 'embed' axis.
  out = _two_processes("glm_jax.eval", [*eval_args, f"--gin.OUTPUT_DIR={tmp_path / 'two'}",
                                        "--gin.MESH_DATA=1", "--gin.MESH_FSDP=2"])
  assert "into the mesh data:1 x fsdp:2 x tensor:1" in out[0]
  local, total = (float(x) for x in out[0].split(" MiB of parameters")[0].split("(")[-1]
                  .split(" of "))
  assert local < 0.6 * total
  one = json.load(open(tmp_path / "one" / "metrics.json"))
  two = json.load(open(tmp_path / "two" / "metrics.json"))
  assert sorted(one) == sorted(two)
  for name in ("eval/loss", "eval/accuracy", "wikitext2/bi/token_ppl", "wikitext2/uni/token_ppl"):
    assert two[name] == pytest.approx(one[name], rel=1e-5), name

  prompts = tmp_path / "prompts.txt"
  prompts.write_text("The cat [MASK] on the mat.\nOnce upon a time\nA [MASK] day [MASK] .\n")
  infer_args = [f"--checkpoint={checkpoint}", f"--input_file={prompts}", "--max_new_tokens=6",
                "--strategy=beam", "--num_beams=2"]
  result = run_module("glm_jax.infer", [*infer_args, f"--output_file={tmp_path / 'one.txt'}"])
  assert result.returncode == 0, result.stderr[-3000:]
  out = _two_processes("glm_jax.infer", [*infer_args, f"--output_file={tmp_path / 'two.txt'}",
                                         "--mesh=fsdp:2"])
  expected = (tmp_path / "one.txt").read_text().splitlines()
  assert len(expected) == 3
  assert (tmp_path / "two.txt").read_text().splitlines() == expected
  assert out[0].splitlines()[-3:] == expected  # process 0 prints the fills, 1 does not
  assert not any(line in out[1] for line in expected)


def test_sigterm_to_one_process_saves_the_same_step_on_both_and_exits(tmp_path):
  """JAX's preemption sync point: one notice, all processes save at the agreed step."""
  gin_file = write_tiny_gin(tmp_path, "TRAIN_STEPS = 100000\nCHECKPOINT_PERIOD = 1000\n")
  model_dir = tmp_path / "run"
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "glm_jax.train", f"--gin_file={gin_file}",
       f"--gin.MODEL_DIR={model_dir}", "--gin.MESH_DATA=2",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO_ROOT, env=multi_device_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  metrics = model_dir / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
      break
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)  # the notice reaches one host only
  outputs = [p.communicate(timeout=180) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  saved = [int(out.split("SIGTERM: saved step ")[1].split(";")[0]) for out, _ in outputs]
  assert saved[0] == saved[1]
  assert [r["step"] for r in checkpoints.describe(str(model_dir))] == [saved[0]]
