"""Mistakes a user can make end in one line that says what to fix (no traceback), exit code 2,
before anything is written to MODEL_DIR. Faults during a run are in test_faults.py.
"""

import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest

from glm_jax import checkpoints, gin_utils
from glm_jax import train as train_lib
from glm_jax.model import GLMConfig
from glm_jax.superglue import sources

from conftest import REPO_ROOT, multi_device_env, run_module, shipped_fixture
from conftest import write_damaged_corpora
from conftest import write_tiny_gin


def _one_line_error(result, code: int = 2) -> str:
  assert result.returncode == code, (result.returncode, result.stderr[-3000:])
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, result.stderr[-3000:]
  return errors[0]


@pytest.fixture(scope="module")
def gin_file(tmp_path_factory):
  return write_tiny_gin(tmp_path_factory.mktemp("errors"))


@pytest.mark.parametrize("args,expected", [
    (["--gin_file=configs/runs/pretrian.gin"],
     "Gin file 'configs/runs/pretrian.gin' not found"),
    (["--gin_file=configs/runs/pretrain.gin"],
     "Required value(s) not set: MODEL_DIR, MIXTURE_OR_TASK_NAME, TRAIN_STEPS"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin_bindings=train.train.trian_steps=3"],
     "doesn't have a parameter named 'trian_steps'"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin_bindings=trian.train_steps = 3"],
     "No configurable matching 'trian'"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.MESH_FSDP=4"],
     "needs 4 devices (or a divisor of the device count) but 1 are available"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/a_file"],
     "Cannot create MODEL_DIR"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.INIT_CHECKPOINT={tmp}/missing"],
     "INIT_CHECKPOINT"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.SEQUENCE_LENGTH=65"],
     "SEQUENCE_LENGTH 65 exceeds the model's max_sequence_length 64"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.NAN_ACTION='ignore'"],
     "NAN_ACTION must be one of"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.SCHEDULE='cosin'"],
     "schedule must be one of"),
    # Macro names against the macros the config uses.
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.TRAIN_STEPZ=4"],
     "--gin.TRAIN_STEPZ sets a macro that nothing in the gin config uses. Did you mean "
     "TRAIN_STEPS?"),
    # Gin syntax: file and line.
    (["--gin_file={tmp}/bracket.gin", "--gin.MODEL_DIR={tmp}/run"],
     "bracket.gin ends inside an unclosed bracket or string (the bracket opened on line 3)"),
    (["--gin_file={tmp}/syntax.gin", "--gin.MODEL_DIR={tmp}/run"],
     "syntax.gin line 3: Expected ',' or ')' (at 'LOG_PERIOD = 1'); fix the syntax there"),
    (["--gin_file={tmp}/include.gin", "--gin.MODEL_DIR={tmp}/run"],
     "include.gin line 2: include 'configs/runs/pretrian.gin' not found"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin_bindings=TRAIN_STEPS ="],
     "Gin binding 'TRAIN_STEPS =' is not valid gin"),
    # Types, named by their macro.
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.TRAIN_STEPS=four"],
     "TRAIN_STEPS must be an integer, got 'four' (str)"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.BATCH_SIZE=2.5"],
     "BATCH_SIZE must be an integer, got 2.5 (float)"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.PACK=2"],
     "PACK must be True or False, got 2 (int)"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.MESH_TENSOR=2.0"],
     "MESH_TENSOR must be an integer, got 2.0"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.LEARNING_RATE='fast'"],
     "LEARNING_RATE must be a number, got 'fast'"),
    # Ranges.
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.SEQUENCE_LENGTH=4"],
     "SEQUENCE_LENGTH must be at least 8 (the shortest a GLM sample fits in), got 4"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.KEEP_CHECKPOINTS=-1"],
     "KEEP_CHECKPOINTS must be at least 0, got -1"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.LOG_PERIOD=0"],
     "LOG_PERIOD must be at least 1, got 0"),
    (["--gin_file={gin}", "--gin.MODEL_DIR=''"], "MODEL_DIR is empty"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.LEARNING_RATE=-1e-3"],
     "LEARNING_RATE must lie in [0.0, inf), got -0.001"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.ADAM_B2=1.0"],
     "ADAM_B2 must lie in [0.0, 1.0), got 1.0"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.ADAM_EPS=0"],
     "ADAM_EPS must lie in (0.0, inf), got 0"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.CLIP_NORM=-1.0"],
     "CLIP_NORM must lie in (0.0, inf), got -1.0"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.WARMUP_FRACTION=2.0"],
     "WARMUP_FRACTION must lie in [0.0, 1.0], got 2.0"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.LABEL_SMOOTHING=1.5"],
     "LABEL_SMOOTHING must lie in [0.0, 1.0), got 1.5"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run",
      "--gin_bindings=model.GLMConfig.num_heads = 0"],
     "model.GLMConfig.num_heads must be at least 1, got 0"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run",
      "--gin_bindings=model.GLMConfig.hidden_dropout = 1.5"],
     "model.GLMConfig.hidden_dropout must lie in [0.0, 1.0), got 1.5"),
    # The vocabulary, the evaluation's metric names and data, INIT_CHECKPOINT's model.
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.TRAIN_INPUT=@train.task_batches",
      "--gin.VOCABULARY='gpt3:{tmp}/none'"],
     "VOCABULARY 'gpt3:{tmp}/none' cannot be loaded (Unknown vocabulary spec"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.EVAL_PERIOD=4",
      "--gin.EVAL_STEPS=1", "--gin.KEEP_BEST_METRIC='eval/acc'"],
     "KEEP_BEST_METRIC 'eval/acc' is not a metric of the evaluation; choose one of "
     "eval/accuracy, eval/loss"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.TRAIN_INPUT=@train.task_batches",
      "--gin.VOCABULARY='builtin'", "--gin.MIXTURE_OR_TASK_NAME='glm_builtin'",
      "--gin.model.GLMConfig.vocab_size=8064", "--gin.EVAL_PERIOD=4",
      "--gin.EVAL_SPLIT='dev'"],
     "Reading the evaluation data ('glm_builtin', split 'dev') failed: Unknown split 'dev'"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.INIT_CHECKPOINT={tmp}/wider"],
     "does not match the model config (hidden_size 64 != 32"),
    # Corpus files whose bad lines pass MAX_DROPPED_FRACTION, and that setting's range.
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.TRAIN_INPUT=@train.task_batches",
      "--gin.VOCABULARY='builtin'", "--gin.model.GLMConfig.vocab_size=8064",
      "--gin.MIXTURE_OR_TASK_NAME='text:{tmp}/binary.txt'"],
     "Reading the train data ('text:{tmp}/binary.txt', split 'train') failed: Corpus file "
     "{tmp}/binary.txt: 99 of 100 lines are bad (99.0%; 99 invalid UTF-8"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.TRAIN_INPUT=@train.task_batches",
      "--gin.VOCABULARY='builtin'", "--gin.model.GLMConfig.vocab_size=8064",
      "--gin.MIXTURE_OR_TASK_NAME='text:{tmp}/broken.jsonl'", "--gin.EVAL_PERIOD=4"],
     "Reading the evaluation data ('text:{tmp}/broken.jsonl', split 'validation') failed: "
     "Corpus file {tmp}/broken.jsonl: 30 of 90 lines are bad (33.3%; 0 invalid UTF-8, 30 not "
     "JSON with a text string), more than MAX_DROPPED_FRACTION = 0.01"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.TRAIN_INPUT=@train.task_batches",
      "--gin.VOCABULARY='builtin'", "--gin.model.GLMConfig.vocab_size=8064",
      "--gin.MAX_DROPPED_FRACTION=1.5"],
     "MAX_DROPPED_FRACTION must lie in [0.0, 1.0], got 1.5"),
])
def test_train_errors_are_one_line(gin_file, tmp_path, args, expected):
  """What `python -m glm_jax.train` prints, run in-process (the CLI path is tested below);
  MODEL_DIR is never created."""
  (tmp_path / "a_file").write_text("not a directory")
  (tmp_path / "bracket.gin").write_text(
      f"include '{gin_file}'\nTRAIN_STEPS = 3\nEVAL_STEPS = (1,\n  2\n")
  (tmp_path / "syntax.gin").write_text(f"include '{gin_file}'\nEVAL_STEPS = (1, 2\n"
                                       "LOG_PERIOD = 1\n")
  (tmp_path / "include.gin").write_text(f"include '{gin_file}'\n"
                                        "include 'configs/runs/pretrian.gin'\n")
  write_damaged_corpora(tmp_path)
  if "wider" in " ".join(args):
    checkpoints.save_params_checkpoint(
        str(tmp_path / "wider"), {"w": np.zeros((2, 2), np.float32)},
        GLMConfig(vocab_size=128, num_layers=2, hidden_size=64, num_heads=4,
                  max_sequence_length=64), "synthetic")
  expected = expected.format(tmp=tmp_path)
  args = gin_utils.rewrite_gin_args([a.format(gin=gin_file, tmp=tmp_path) for a in args])
  files = [a.split("=", 1)[1] for a in args if a.startswith("--gin_file=")]
  bindings = [a.split("=", 1)[1] for a in args if a.startswith("--gin_bindings=")]
  gin.clear_config()
  try:
    with pytest.raises((ValueError, FileNotFoundError)) as info:
      gin_utils.parse_gin(files, bindings)
      train_lib.train()  # pylint: disable=no-value-for-parameter
  finally:
    gin.clear_config()
  line = gin_utils.one_line(info.value)
  assert expected in line, line
  assert "\n" not in line
  assert gin_utils.exit_code(info.value) == 2
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,expected", [
    (["--gin_file=configs/runs/pretrian.gin"], "Gin file 'configs/runs/pretrian.gin' not found"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin_bindings=trian.train_steps = 3"],
     "No configurable matching 'trian'"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.MESH_FSDP=4"],
     "needs 4 devices"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.TRAIN_STEPZ=4"],
     "--gin.TRAIN_STEPZ sets a macro that nothing in the gin config uses"),
    (["--gin_file={tmp}/bracket.gin", "--gin.MODEL_DIR={tmp}/run"],
     "ends inside an unclosed bracket or string (the bracket opened on line 2)"),
    (["--gin_file={tmp}/include.gin", "--gin.MODEL_DIR={tmp}/run"],
     "include.gin line 2: include 'configs/runs/pretrian.gin' not found"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.TRAIN_STEPS='four'"],
     "TRAIN_STEPS must be an integer, got 'four' (str); set e.g. --gin.TRAIN_STEPS=1000."),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.BATCH_SIZE=2.5"],
     "BATCH_SIZE must be an integer, got 2.5 (float)"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.SEQUENCE_LENGTH=4"],
     "SEQUENCE_LENGTH must be at least 8 (the shortest a GLM sample fits in), got 4"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.TRAIN_INPUT=@train.task_batches",
      "--gin.VOCABULARY='gpt3:/none'"], "VOCABULARY 'gpt3:/none' cannot be loaded"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.EVAL_PERIOD=4",
      "--gin.EVAL_STEPS=1", "--gin.KEEP_BEST_METRIC='eval/acc'"],
     "KEEP_BEST_METRIC 'eval/acc' is not a metric of the evaluation"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--train_stepz=4"],
     "Unknown command line flag 'train_stepz' (see --helpfull)"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "stray"], "Unexpected arguments ['stray']"),
])
def test_train_cli_prints_one_line_without_traceback(gin_file, tmp_path, args, expected):
  (tmp_path / "bracket.gin").write_text(f"include '{gin_file}'\nEVAL_STEPS = [1,\n")
  (tmp_path / "include.gin").write_text(f"include '{gin_file}'\n"
                                        "include 'configs/runs/pretrian.gin'\n")
  args = [a.format(gin=gin_file, tmp=tmp_path) for a in args]
  line = _one_line_error(run_module("glm_jax.train", args, timeout=120))
  assert expected in line, line
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_train_cli_stops_on_a_damaged_corpus_and_logs_a_few_bad_lines(gin_file, tmp_path):
  damaged = write_damaged_corpora(tmp_path)
  corpus_run = [f"--gin_file={gin_file}", "--gin.TRAIN_INPUT=@train.task_batches",
                "--gin.VOCABULARY='builtin'", "--gin.model.GLMConfig.vocab_size=8064",
                "--gin.TRAIN_STEPS=2", "--gin.CHECKPOINT_PERIOD=0"]
  env = dict(multi_device_env(1), GLM_JAX_CACHE_DIR=str(tmp_path / "cache"))
  line = _one_line_error(run_module("glm_jax.train", corpus_run + [
      f"--gin.MODEL_DIR={tmp_path}/bad", f"--gin.MIXTURE_OR_TASK_NAME='text:{damaged['broken']}'"],
      env=env, timeout=300))
  assert (f"Corpus file {damaged['broken']}: 30 of 90 lines are bad (33.3%; 0 invalid UTF-8, 30 "
          "not JSON with a text string), more than MAX_DROPPED_FRACTION = 0.01; ") in line, line
  assert not (tmp_path / "bad").exists()
  result = run_module("glm_jax.train", corpus_run + [
      f"--gin.MODEL_DIR={tmp_path}/few", f"--gin.MIXTURE_OR_TASK_NAME='text:{damaged['few']}'"],
      env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (f"Corpus file {damaged['few']}: 300 lines: 299 documents, 1 not JSON with a text "
          "string (skipped); 1 of 300 lines bad, within MAX_DROPPED_FRACTION = 0.01.") in \
      result.stderr, result.stderr[-3000:]
  assert (tmp_path / "few" / "2").is_dir()


def test_batch_size_not_dividing_the_data_axes(gin_file, tmp_path):
  result = run_module("glm_jax.train", [f"--gin_file={gin_file}", f"--gin.MODEL_DIR={tmp_path}",
                                        "--gin.BATCH_SIZE=6"], env=multi_device_env(8),
                      timeout=120)
  line = _one_line_error(result)
  assert "not divisible by the data-parallel mesh size 8" in line


def test_eval_and_checkpoint_tool_errors(tmp_path):
  line = _one_line_error(run_module(
      "glm_jax.eval", ["--gin_file=configs/runs/eval.gin", f"--gin.CHECKPOINT={tmp_path}/none"],
      timeout=120))
  assert "does not exist" in line
  line = _one_line_error(run_module("glm_jax.eval", ["--gin_file=configs/runs/eval.gin"],
                                    timeout=120))
  assert "CHECKPOINT" in line
  line = _one_line_error(run_module("glm_jax.plot", [f"--metrics={tmp_path}/metrics.jsonl"],
                                    timeout=120))
  assert "not found" in line


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
  """A params-only checkpoint of a 64-position model with the built-in vocabulary."""
  root = tmp_path_factory.mktemp("small_checkpoint")
  config = GLMConfig(vocab_size=128, num_layers=1, hidden_size=16, num_heads=2,
                     max_sequence_length=64)
  return checkpoints.save_params_checkpoint(str(root / "ckpt"), {"w": np.zeros(3, np.float32)},
                                            config, "builtin")


def test_eval_refuses_settings_before_restoring(small_checkpoint, tmp_path):
  output = tmp_path / "eval_out"
  line = _one_line_error(run_module("glm_jax.eval", [
      "--gin_file=configs/runs/eval.gin", f"--gin.CHECKPOINT={small_checkpoint}",
      "--gin.SEQUENCE_LENGTH=512", f"--gin.OUTPUT_DIR={output}"], timeout=120))
  assert "SEQUENCE_LENGTH 512 exceeds the checkpoint's max_sequence_length 64" in line, line
  # The README's SuperGLUE command without the data: one line, not an average of NaN.
  line = _one_line_error(run_module("glm_jax.eval", [
      "--gin_file=configs/runs/eval_superglue.gin", f"--gin.CHECKPOINT={small_checkpoint}",
      f"--gin.SUPERGLUE_DIR={tmp_path}/none", f"--gin.FEWGLUE_DIR={tmp_path}/none",
      f"--gin.OUTPUT_DIR={output}"], timeout=120))
  assert "No SuperGLUE data for 'superglue' (validation)" in line and "SUPERGLUE_DIR" in line
  # A malformed line and a missing field: file and line named, before the checkpoint is read.
  good = {"idx": 0, "premise": "A man sleeps.", "hypothesis": "A man rests.",
          "label": "entailment"}
  missing = {k: v for k, v in good.items() if k != "hypothesis"}
  for name, lines, expected in (
      ("cut", [json.dumps(good), "", json.dumps(good)[:-3]],
       "cut/RTE/val.jsonl line 3 is not valid JSON"),
      ("field", [json.dumps(good), json.dumps(missing)],
       "field/RTE/val.jsonl line 2: the example lacks 'hypothesis'")):
    (tmp_path / name / "RTE").mkdir(parents=True)
    (tmp_path / name / "RTE" / "val.jsonl").write_text("\n".join(lines) + "\n")
    line = _one_line_error(run_module("glm_jax.eval", [
        "--gin_file=configs/runs/eval_superglue.gin", f"--gin.CHECKPOINT={small_checkpoint}",
        f"--gin.SUPERGLUE_DIR={tmp_path}/{name}", f"--gin.FEWGLUE_DIR={tmp_path}/none",
        f"--gin.OUTPUT_DIR={output}"], timeout=120))
    assert expected in line, line
  assert not output.exists()


def test_superglue_files_name_the_bad_line_and_field(tmp_path):
  rte = tmp_path / "RTE"
  rte.mkdir()
  good = {"idx": 0, "premise": "A man sleeps.", "hypothesis": "A man rests.",
          "label": "entailment"}
  (rte / "val.jsonl").write_text(json.dumps(good) + "\n\n" + json.dumps(good)[:-3] + "\n")
  with pytest.raises(ValueError, match=r"RTE/val.jsonl line 3 is not valid JSON"):
    sources.load_jsonl_records("rte", "validation", str(tmp_path))
  missing = {k: v for k, v in good.items() if k != "hypothesis"}
  (rte / "val.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(missing) + "\n")
  with pytest.raises(ValueError, match=r"RTE/val.jsonl line 2: the example lacks 'hypothesis'"):
    sources.load_jsonl_records("rte", "validation", str(tmp_path))
  wsc = tmp_path / "WSC"
  wsc.mkdir()
  (wsc / "val.jsonl").write_text(json.dumps({"idx": 0, "text": "He ran.", "label": True,
                                             "target": {"span1_text": "He"}}) + "\n")
  with pytest.raises(ValueError, match=r"line 1: the example lacks 'target.span2_text'"):
    sources.load_jsonl_records("wsc", "validation", str(tmp_path))


def _npz_without_a_key(path) -> str:
  arrays = dict(np.load(shipped_fixture("glm_reference", "model_glm_tiny_a.npz")))
  del arrays["transformer.layers.0.mlp.dense_h_to_4h.weight"]
  np.savez(path, **arrays)
  return str(path)


def _pickle_that_runs_code(directory) -> str:
  from test_convert import _RunsCode  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  path = os.path.join(str(directory), "evil.pt")
  torch.save({"module": {"word_embeddings.weight": torch.zeros(2, 2)},
              "payload": _RunsCode(os.path.join(str(directory), "pwned"))}, path)
  return path


@pytest.mark.parametrize("module,args,expected", [
    ("glm_jax.infer", ["--checkpoint={ckpt}", "--text=a [MASK].", "--max_new_tokens=0"],
     "--max_new_tokens must be >= 1, got 0"),
    ("glm_jax.infer", ["--checkpoint={ckpt}", "--input_file={tmp}/binary"],
     "is not UTF-8 text"),
    ("glm_jax.infer", ["--checkpoint={ckpt}", "--text=a", "--batch_size=two"],
     "flag --batch_size=two: invalid literal for int()"),
    ("glm_jax.convert", ["--official={npz}", "--output_dir={tmp}/out", "--vocabulary=builtin",
                         "--num_heads=0"], "--num_heads must be a positive integer, got 0"),
    ("glm_jax.convert", ["--official={npz}", "--output_dir={tmp}/out", "--vocabulary=builtin",
                         "--num_heads=4"],
     "missing transformer.layers.0.mlp.dense_h_to_4h.weight"),
    ("glm_jax.convert", ["--official={evil}", "--output_dir={tmp}/out", "--vocabulary=builtin"],
     "Refusing {tmp}/evil.pt: its pickle needs more than tensors and plain data"),
    ("glm_jax.plot", ["--metrics={tmp}/binary", "--output={tmp}/x.png"],
     "binary line 1 is not UTF-8 text"),
    ("glm_jax.plot", ["--metrics={tmp}/nostep.jsonl", "--output={tmp}/x.png"],
     "nostep.jsonl line 2 is an object without an integer 'step'"),
    ("glm_jax.data.inspect", ["--task=glm_nope"], "'glm_nope' is not a GLM task"),
    ("glm_jax.data.train_vocab", ["--input={tmp}/none.txt", "--output={tmp}/v"],
     "none.txt does not exist"),
    ("glm_jax.data.train_vocab", ["--input={tmp}/few.jsonl,{tmp}/broken.jsonl",
                                  "--output={tmp}/v"],
     "Corpus file {tmp}/broken.jsonl: 30 of 90 lines are bad (33.3%; 0 invalid UTF-8, 30 not "
     "JSON with a text string), more than --max_dropped_fraction = 0.01"),
    ("glm_jax.plan", ["--gin_file=configs/experiments/glm_base.gin", "--batch_size=0"],
     "--batch_size must be at least 1, got 0"),
    ("glm_jax.testing.gcs_emulator", ["--port=abc", "--root={tmp}"],
     "argument --port: invalid int value: 'abc'"),
])
def test_every_cli_prints_one_line(small_checkpoint, tmp_path, module, args, expected):
  (tmp_path / "binary").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
  (tmp_path / "nostep.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"loss": 1.0}\n')
  write_damaged_corpora(tmp_path)
  npz = _npz_without_a_key(tmp_path / "missing.npz") if "{npz}" in " ".join(args) else ""
  evil = _pickle_that_runs_code(tmp_path) if "{evil}" in " ".join(args) else ""
  args = [a.format(ckpt=small_checkpoint, tmp=tmp_path, npz=npz, evil=evil) for a in args]
  line = _one_line_error(run_module(module, args, timeout=120))
  assert expected.format(tmp=tmp_path) in line, line
  assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("script,args,expected", [
    ("benchmarks/corpus_format.py", [], "Pass --corpus=DIR"),
    ("benchmarks/train_step.py", ["--bogus=1"], "Unknown command line flag 'bogus'"),
    ("launch/slurm_gpu.py", ["--dry_run"], "Pass glm_jax.train flags after `--`"),
])
def test_every_script_prints_one_line(script, args, expected):
  """The benchmarks and launchers end a mistake in the same `error: ...` line (exit 2)."""
  result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, script), *args],
                          cwd=REPO_ROOT, env=multi_device_env(1), capture_output=True,
                          text=True, timeout=120)
  assert expected in _one_line_error(result)


def test_checkpoints_lists_a_corrupt_step_and_says_which_is_used(tmp_path):
  from test_checkpoints import CFG, _manager, _state  # pylint: disable=g-import-not-at-top
  from test_faults import _data_file, _cut  # pylint: disable=g-import-not-at-top
  manager = _manager(tmp_path)
  for step in (2, 4):
    manager.save(_state(step), next_batch=step, config=CFG, vocab_spec="builtin")
  manager.close()
  _cut(_data_file(str(tmp_path / "4")))
  result = run_module("glm_jax.checkpoints", [f"--model_dir={tmp_path}"], timeout=120)
  line = _one_line_error(result, code=1)
  assert "1 of 2 checkpoint(s)" in line and "training and eval use step 2" in line, line
  rows = [l.split() for l in result.stdout.splitlines() if l.strip()[:1].isdigit()]
  assert [r[0] for r in rows] == ["2", "4"] and rows[0][-1] == "ok"
  assert "unreadable:" in result.stdout.splitlines()[-1]
