"""Mistakes a user can make end in one line that says what to fix (no traceback)."""

import gin
import pytest

from glm_jax import gin_utils
from glm_jax import train as train_lib

from conftest import multi_device_env, run_module, write_tiny_gin


def _one_line_error(result) -> str:
  assert result.returncode != 0, result.stdout[-1000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
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
])
def test_train_errors_are_one_line(gin_file, tmp_path, args, expected):
  """What `python -m glm_jax.train` prints, run in-process (the CLI path is tested below)."""
  (tmp_path / "a_file").write_text("not a directory")
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


@pytest.mark.parametrize("args,expected", [
    (["--gin_file=configs/runs/pretrian.gin"], "Gin file 'configs/runs/pretrian.gin' not found"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin_bindings=trian.train_steps = 3"],
     "No configurable matching 'trian'"),
    (["--gin_file={gin}", "--gin.MODEL_DIR={tmp}/run", "--gin.MESH_FSDP=4"],
     "needs 4 devices"),
])
def test_train_cli_prints_one_line_without_traceback(gin_file, tmp_path, args, expected):
  args = [a.format(gin=gin_file, tmp=tmp_path) for a in args]
  line = _one_line_error(run_module("glm_jax.train", args, timeout=120))
  assert expected in line, line


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
