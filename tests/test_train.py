"""End to end through `python -m glm_jax.train`: metrics, resume after kill -9, SIGTERM, init, NaN."""

import dataclasses
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from glm_jax import checkpoints

from conftest import REPO_ROOT, multi_device_env, run_module, write_tiny_gin

pytestmark = pytest.mark.slow

STEPS = 40
RUN_GIN = f"""
TRAIN_STEPS = {STEPS}
CHECKPOINT_PERIOD = 3
KEEP_CHECKPOINTS = 2
EVAL_PERIOD = 20
EVAL_STEPS = 2
KEEP_BEST_METRIC = 'eval/loss'
BEST_MODE = 'min'
model.GLMConfig.embedding_dropout = 0.1
model.GLMConfig.hidden_dropout = 0.1
"""


def _train_args(gin_file, model_dir, *extra):
  return [f"--gin_file={gin_file}", f"--gin.MODEL_DIR={model_dir}", *extra]


def _metrics(model_dir):
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _operative_value(text, name):
  """The value an operative config gives `name` ('scope.parameter' or a MACRO), macros resolved."""
  values = dict(re.findall(r"^([\w./]+) = (.+)$", text, re.MULTILINE))
  value = values[name]
  while value.startswith("%"):
    value = values[value[1:]]
  return value


def _tensorboard_scalars(model_dir, tag):
  """[(step, value)] of one tag in MODEL_DIR/tensorboard, as TensorBoard reads it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(os.path.join(model_dir, "tensorboard"),
                                              size_guidance={event_accumulator.TENSORS: 0})
  events.Reload()
  return [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]


def _final_digest(model_dir):
  rows = checkpoints.describe(str(model_dir))
  return rows[-1]["step"], rows[-1]["sha256"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """One uninterrupted run: (gin file, model dir, CompletedProcess)."""
  root = tmp_path_factory.mktemp("reference")
  gin_file = write_tiny_gin(root, RUN_GIN)
  model_dir = root / "run"
  result = run_module("glm_jax.train", _train_args(gin_file, model_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  return gin_file, model_dir, result


def test_run_writes_metrics_configs_tensorboard_and_checkpoints(reference_run):
  gin_file, model_dir, _ = reference_run
  records = _metrics(model_dir)
  train = [r for r in records if "loss" in r]
  evals = [r for r in records if "eval/loss" in r]
  assert [r["step"] for r in train] == list(range(1, STEPS + 1))
  for key in ("learning_rate", "grad_norm", "tokens_per_second", "mfu", "accuracy"):
    assert key in train[-1]
  assert train[-1]["tokens_per_second"] > 0 and 0 < train[-1]["mfu"] < 1
  assert [r["step"] for r in evals] == [20, 40]
  assert evals[-1]["eval/loss"] < evals[0]["eval/loss"]
  assert sum(r["loss"] for r in train[-5:]) < sum(r["loss"] for r in train[:5]) - 0.5
  operative = open(os.path.join(model_dir, "operative_config.gin")).read()
  assert _operative_value(operative, "train.train_steps") == str(STEPS)
  # TensorBoard holds the same scalars as metrics.jsonl.
  for tag, rows in (("loss", train), ("eval/loss", evals)):
    assert _tensorboard_scalars(model_dir, tag) == [
        (r["step"], pytest.approx(r[tag], rel=1e-6)) for r in rows]  # float32 in the events
  rows = checkpoints.describe(str(model_dir))
  assert [r["step"] for r in rows] == [39, 40]  # every 3 steps and the last, keep 2
  # Same command again: already finished, nothing changes.
  again = run_module("glm_jax.train", _train_args(gin_file, model_dir))
  assert again.returncode == 0, again.stderr[-2000:]
  assert "nothing to train" in again.stdout
  assert _final_digest(model_dir) == (rows[-1]["step"], rows[-1]["sha256"])


def _start(gin_file, model_dir):
  return subprocess.Popen([sys.executable, "-m", "glm_jax.train",
                           *_train_args(gin_file, model_dir)], cwd=REPO_ROOT,
                          env=multi_device_env(1), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _wait_for_step(proc, model_dir, step, timeout=240):
  path = os.path.join(model_dir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path):
      with open(path) as f:
        steps = [json.loads(l).get("step", 0) for l in f if l.endswith("\n")]
      if steps and max(steps) >= step:
        return max(steps)
    time.sleep(0.005)
  raise AssertionError(f"run did not reach step {step}: {proc.poll()} "
                       f"{proc.stderr.read()[-2000:] if proc.poll() is not None else ''}")


def test_eval_baseline_and_closing_summary(reference_run):
  _, model_dir, result = reference_run
  # The baseline by hand: the share of the most frequent target in the eval batches.
  from glm_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  batches = synthetic.synthetic_batches("synthetic", "validation", sequence_length=32,
                                        batch_size=8, seed=0, num_batches=2)
  targets = np.concatenate([b["targets"][b["loss_weights"] > 0] for b in batches])
  expected = np.bincount(targets).max() / len(targets)
  evals = [r for r in _metrics(model_dir) if "eval/loss" in r]
  assert [r["eval/baseline_accuracy"] for r in evals] == pytest.approx([expected] * len(evals))
  eval_lines = [l for l in result.stdout.splitlines() if l.startswith("step 20:")]
  assert eval_lines and f"(baseline {expected:.4f}: always id 4)" in eval_lines[0]
  summary = result.stdout[result.stdout.index("Trained to step 40/40"):]
  assert f"checkpoint:  {model_dir}/40" in summary
  assert f"metrics:     {model_dir}/metrics.jsonl" in summary
  for command in ("python -m glm_jax.plot", "python -m glm_jax.eval", "python -m glm_jax.infer"):
    assert command in summary
  # The evaluate command of the summary reproduces the run's last evaluation.
  args = summary.split("python -m glm_jax.eval ", 1)[1].splitlines()[0].split()
  again = run_module("glm_jax.eval", args)
  assert again.returncode == 0, again.stderr[-2000:]
  printed = {l.split()[0]: float(l.split()[1]) for l in again.stdout.splitlines()
             if l.startswith("  eval/")}
  assert printed["eval/loss"] == pytest.approx(evals[-1]["eval/loss"], abs=1e-4)
  assert printed["eval/baseline_accuracy"] == pytest.approx(expected, abs=1e-4)


def test_kill_9_then_resume_is_bitwise_identical(reference_run, tmp_path):
  gin_file, reference_dir, _ = reference_run
  kill_at = random.Random(os.getpid()).randint(2, STEPS - 10)
  model_dir = tmp_path / "killed"
  proc = _start(gin_file, model_dir)
  reached = _wait_for_step(proc, model_dir, kill_at)
  os.kill(proc.pid, signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  steps_after_kill = [r["step"] for r in checkpoints.describe(str(model_dir))]
  assert not steps_after_kill or max(steps_after_kill) < STEPS, (reached, steps_after_kill)
  result = run_module("glm_jax.train", _train_args(gin_file, model_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert _final_digest(model_dir) == _final_digest(reference_dir), f"killed at {reached}"
  # The resumed run's log has each step once and the same losses as the reference.
  losses = {r["step"]: r["loss"] for r in _metrics(model_dir) if "loss" in r}
  reference = {r["step"]: r["loss"] for r in _metrics(reference_dir) if "loss" in r}
  assert losses == reference


def test_sigterm_saves_and_exits_cleanly(tmp_path):
  gin_file = write_tiny_gin(tmp_path, RUN_GIN + "TRAIN_STEPS = 100000\nCHECKPOINT_PERIOD = 1000\n")
  model_dir = tmp_path / "run"
  proc = _start(gin_file, model_dir)
  _wait_for_step(proc, model_dir, 3)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  saved = int(out.split("SIGTERM: saved step ")[1].split(";")[0])
  assert [r["step"] for r in checkpoints.describe(str(model_dir))] == [saved]


def test_init_checkpoint_starts_from_given_params(reference_run, tmp_path):
  gin_file, reference_dir, _ = reference_run
  params, config, vocab, _ = checkpoints.load_params(str(reference_dir))
  init = checkpoints.save_params_checkpoint(str(tmp_path / "init"), params, config, vocab)
  model_dir = tmp_path / "finetune"
  result = run_module("glm_jax.train", _train_args(
      gin_file, model_dir, f"--gin.INIT_CHECKPOINT={init}", "--gin.TRAIN_STEPS=2",
      "--gin.EVAL_PERIOD=0"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Initialised parameters from" in result.stdout
  first_fresh = _metrics(reference_dir)[0]["loss"]
  first_init = _metrics(model_dir)[0]["loss"]
  assert first_init < first_fresh - 0.5  # trained params, fresh optimizer at step 0
  assert _metrics(model_dir)[0]["step"] == 1


def test_nan_stop_keeps_the_last_good_checkpoint_and_skip_carries_on(tmp_path):
  gin_file = write_tiny_gin(tmp_path, "LEARNING_RATE = 1e30\nWARMUP_STEPS = 0\n"
                            "CHECKPOINT_PERIOD = 1\nTRAIN_STEPS = 4\nCLIP_NORM = None\n")
  stop_dir = tmp_path / "stop"
  result = run_module("glm_jax.train", _train_args(gin_file, stop_dir, "--gin.NAN_ACTION='stop'"))
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: Non-finite loss") and "last checkpoint: step 1" in last
  assert [r["step"] for r in checkpoints.describe(str(stop_dir))] == [1]

  skip_dir = tmp_path / "skip"
  result = run_module("glm_jax.train", _train_args(gin_file, skip_dir))
  assert result.returncode == 0, result.stderr[-2000:]
  rows = checkpoints.describe(str(skip_dir))
  assert rows[-1]["step"] == 4 and rows[-1]["sha256"] == rows[0]["sha256"]
  assert "Skipped" in result.stdout + result.stderr
  # Only step 1 was applied: the optimizer's count stays 1, so steps 2-4 log the rate it
  # would apply next (cosine over 4 updates at count 1), not the schedule at steps 2, 3.
  logged = _metrics(skip_dir)
  assert [r["skipped_updates"] for r in logged] == [0, 1, 2, 3]
  at_one = 1e30 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi / 4)))
  assert logged[0]["learning_rate"] == 1e30
  for r in logged[1:]:
    assert r["learning_rate"] == pytest.approx(at_one, rel=1e-12)


@pytest.mark.parametrize("name,layers,lr,steps", [
    ("glm_base", 12, 4e-4, 150000), ("glm_large", 24, 2e-4, 200000),
    ("glm_doc", 24, 2e-4, 200000), ("glm_sent", 24, 2e-4, 200000),
    ("glm_roberta", 24, 4e-4, 500000), ("glm_2b", 36, 1e-4, 250000),
    ("glm_10b", 48, 1e-4, 250000)])
def test_experiment_files_parse_with_the_reference_recipes(name, layers, lr, steps):
  import gin  # pylint: disable=g-import-not-at-top
  from glm_jax import gin_utils, optim  # pylint: disable=g-import-not-at-top
  from glm_jax.model import GLMConfig  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    gin_utils.parse_gin([f"configs/experiments/{name}.gin"])
    assert GLMConfig().num_layers == layers
    assert gin.query_parameter("%LEARNING_RATE") == lr
    assert gin.query_parameter("%TRAIN_STEPS") == steps
    assert gin.query_parameter("%CLIP_NORM") == 1.0
    # The reference's training semantics (configs/runs/reference_training.gin).
    assert gin.query_parameter("%SCHEDULE_CONVENTION") == "reference"
    assert gin.query_parameter("%LOSS_NORMALIZATION") == "microbatch_mean"
    assert gin.query_parameter("%MICROBATCH_CLIP") == "accumulated"
    _, lr_fn = optim.create_optimizer(total_steps=steps)  # warmup: --warmup x DECAY_STEPS
    warmup = {"glm_base": 6000, "glm_large": 8000, "glm_doc": 8000, "glm_sent": 8000,
              "glm_roberta": 30000, "glm_2b": 7000, "glm_10b": 7000}[name]
    assert optim.schedule_value(lr_fn, 0) == 0.0
    assert optim.schedule_value(lr_fn, warmup) == pytest.approx(lr, rel=1e-12)
    assert optim.schedule_value(lr_fn, warmup - 1) < lr
  finally:
    gin.clear_config()


def test_best_evaluation_is_kept(reference_run):
  _, model_dir, _ = reference_run
  evals = [r for r in _metrics(model_dir) if "eval/loss" in r]
  best = min(evals, key=lambda r: r["eval/loss"])
  with open(os.path.join(model_dir, "best", "best.json")) as f:
    record = json.load(f)
  assert record["step"] == best["step"]
  assert abs(record["value"] - best["eval/loss"]) < 1e-6
  params, config, _, step = checkpoints.load_params(os.path.join(model_dir, "best"))
  assert step == best["step"] and config.num_layers >= 1
  if step == STEPS:  # the final checkpoint holds the same parameters
    assert checkpoints.params_digest(params) == _final_digest(model_dir)[1]


# ----------------------------------------------------------------------------- prepared corpora

PREPARED_GIN = """
model.GLMConfig.vocab_size = 8064
TRAIN_INPUT = @train.task_batches
MIXTURE_OR_TASK_NAME = 'prepared:{corpus}'
VOCABULARY = 'builtin'
"""


@pytest.fixture(scope="module")
def prepared_corpus(tmp_path_factory):
  from conftest import prepare_in_process  # pylint: disable=g-import-not-at-top
  return prepare_in_process(tmp_path_factory.mktemp("prepared") / "tiny")


@pytest.fixture(scope="module")
def prepared_reference_run(tmp_path_factory, prepared_corpus):
  root = tmp_path_factory.mktemp("prepared_reference")
  gin_file = write_tiny_gin(root, RUN_GIN + PREPARED_GIN.format(corpus=prepared_corpus))
  model_dir = root / "run"
  result = run_module("glm_jax.train", _train_args(gin_file, model_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  return gin_file, model_dir


def test_prepared_corpus_kill_9_then_resume_is_bitwise_identical(prepared_reference_run,
                                                                 tmp_path):
  gin_file, reference_dir = prepared_reference_run
  records = _metrics(reference_dir)
  assert [r["step"] for r in records if "loss" in r] == list(range(1, STEPS + 1))
  assert any("eval/loss" in r for r in records)
  kill_at = random.Random(os.getpid()).randint(2, STEPS - 10)
  model_dir = tmp_path / "killed"
  proc = _start(gin_file, model_dir)
  reached = _wait_for_step(proc, model_dir, kill_at)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  result = run_module("glm_jax.train", _train_args(gin_file, model_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert _final_digest(model_dir) == _final_digest(reference_dir), f"killed at {reached}"
  losses = {r["step"]: r["loss"] for r in _metrics(model_dir) if "loss" in r}
  assert losses == {r["step"]: r["loss"] for r in records if "loss" in r}


def _error_line(result):
  """The one `error:` line of a run refused for its input (exit 2, docs/faults.md)."""
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), last
  return last


def test_vocabulary_mismatches_stop_the_run_with_one_line(tmp_path, prepared_corpus,
                                                          bert_vocab_file):
  from glm_jax.model import GLMConfig, init_params  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  bert = f"wordpiece:{bert_vocab_file}"
  gin_file = write_tiny_gin(tmp_path, PREPARED_GIN.format(corpus=prepared_corpus))
  # The run's vocabulary is larger than the model's embedding table.
  line = _error_line(run_module("glm_jax.train", _train_args(
      gin_file, tmp_path / "a", f"--gin.VOCABULARY='{bert}'")))
  assert "has 30592 ids" in line and "GLMConfig.vocab_size is 8064" in line
  assert "model.GLMConfig.vocab_size = 30592" in line
  # The prepared corpus was tokenized with another vocabulary than the run's.
  line = _error_line(run_module("glm_jax.train", _train_args(
      gin_file, tmp_path / "b", f"--gin.VOCABULARY='{bert}'",
      "--gin.model.GLMConfig.vocab_size=30592")))
  assert "tokenized with vocabulary 'builtin'" in line and bert in line
  assert f"--vocabulary={bert}" in line
  # INIT_CHECKPOINT was trained with another vocabulary than VOCABULARY.
  config = GLMConfig(vocab_size=30592, num_layers=2, hidden_size=32, num_heads=4,
                     max_sequence_length=64)
  init = checkpoints.save_params_checkpoint(str(tmp_path / "init"),
                                            init_params(config, jax.random.PRNGKey(0)),
                                            config, "builtin")
  line = _error_line(run_module("glm_jax.train", _train_args(
      gin_file, tmp_path / "c", f"--gin.VOCABULARY='{bert}'",
      "--gin.model.GLMConfig.vocab_size=30592", f"--gin.INIT_CHECKPOINT='{init}'")))
  assert f"INIT_CHECKPOINT {init} was trained with vocabulary 'builtin'" in line
  assert bert in line and "VOCABULARY = 'builtin'" in line


def test_default_vocabulary_is_init_checkpoints(tmp_path):
  from glm_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  from glm_jax.model import GLMConfig, init_params  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  config = GLMConfig(vocab_size=128, num_layers=1, hidden_size=32, num_heads=4,
                     max_sequence_length=64)
  init = checkpoints.save_params_checkpoint(str(tmp_path / "init"),
                                            init_params(config, jax.random.PRNGKey(0)),
                                            config, "spm:/somewhere/model.model")
  assert train_lib.default_vocabulary(init) == "spm:/somewhere/model.model"
  assert train_lib.default_vocabulary(None) == "builtin"
  # Resuming a MODEL_DIR trained with another vocabulary is refused the same way.
  with pytest.raises(ValueError, match=r"MODEL_DIR .* was trained with vocabulary "
                     r"'spm:/somewhere/model.model' but VOCABULARY is 'builtin'"):
    train_lib.check_vocabulary("builtin", dataclasses.replace(config, vocab_size=8064),
                               model_dir=init)
  train_lib.check_vocabulary("builtin", dataclasses.replace(config, vocab_size=8064),
                             model_dir=str(tmp_path / "empty"))  # nothing saved: fine
