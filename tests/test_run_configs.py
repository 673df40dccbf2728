"""configs/runs/quickstart.gin and cpu_hour.gin bind what docs/quickstart.md and the README say,
and tools/run_cpu_hour.sh sets only macros its evaluation configs have."""

import ast
import os
import re

import gin
import pytest

from glm_jax import gin_utils
import glm_jax.train  # pylint: disable=unused-import  (registers train.train for the gin files)
from conftest import REPO_ROOT

RUNS = {"quickstart": "configs/runs/quickstart.gin", "cpu_hour": "configs/runs/cpu_hour.gin"}
DOC = os.path.join(REPO_ROOT, "docs", "quickstart.md")
SCRIPT = os.path.join(REPO_ROOT, "tools", "run_cpu_hour.sh")


pytestmark = pytest.mark.usefixtures("clean_gin")


def _read(path):
  with open(path) as f:
    return f.read()


def _bound(name):
  """A macro (`NAME`) or a configurable's parameter (`module.Fn.param`) of the parsed config."""
  value = gin.query_parameter(name if "." in name else f"%{name}")
  return value.scoped_configurable_fn() if hasattr(value, "scoped_configurable_fn") else value


def _settings_table():
  """{binding: {run: value}} from the docs table whose header names both gin files."""
  rows, columns = {}, None
  for line in _read(DOC).splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if columns is None:
      if line.startswith("|") and all(f"`{os.path.basename(p)}`" in cells for p in RUNS.values()):
        columns = {run: cells.index(f"`{os.path.basename(p)}`") for run, p in RUNS.items()}
      continue
    if not line.startswith("|"):
      break
    if set(cells[0]) <= set("-: "):
      continue
    name = cells[0].strip("`")
    rows[name] = {run: ast.literal_eval(cells[i].strip("`")) for run, i in columns.items()}
  assert rows, f"No settings table naming {list(RUNS.values())} in {DOC}"
  return rows


@pytest.mark.parametrize("run", sorted(RUNS))
def test_config_binds_the_documented_settings(run):
  table = _settings_table()
  gin_utils.parse_gin([RUNS[run]])
  for name, values in table.items():
    assert _bound(name) == values[run], f"{RUNS[run]}: {name} is {_bound(name)!r}, docs say " \
                                        f"{values[run]!r}"
  # The documented run writes where the README and the run's summary say.
  assert _bound("MODEL_DIR") == f"runs/{run}"


def test_documented_table_covers_the_recipe():
  table = _settings_table()
  for name in ("MIXTURE_OR_TASK_NAME", "model.GLMConfig.num_layers",
               "model.GLMConfig.hidden_size", "SEQUENCE_LENGTH", "BATCH_SIZE", "TRAIN_STEPS",
               "LEARNING_RATE", "EVAL_PERIOD"):
    assert name in table


def test_readme_quickstart_is_two_commands_and_points_at_the_doc():
  readme = _read(os.path.join(REPO_ROOT, "README.md"))
  section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
  block = section.split("```bash", 1)[1].split("```", 1)[0]
  commands = [l for l in block.splitlines() if l.strip() and not l.strip().startswith("#")]
  assert commands == ["pip install -e '.[test]' && python -m glm_jax.train "
                      "--gin_file=configs/runs/quickstart.gin",
                      "pip install -e '.[test]' && python -m pytest -q"]
  assert "docs/quickstart.md" in section
  gin_utils.parse_gin([RUNS["quickstart"]])
  assert f"{_bound('TRAIN_STEPS')} steps" in section


def _script_calls():
  """[(gin file, [macro names set with --gin.NAME=])] of each glm_jax.eval call in the script."""
  text = _read(SCRIPT).replace("\\\n", " ")
  calls = []
  for line in text.splitlines():
    if "python -m glm_jax.eval" in line:
      gin_file = re.search(r"--gin_file=(\S+)", line).group(1)
      calls.append((gin_file, re.findall(r"--gin\.([A-Za-z_][A-Za-z0-9_]*)=", line)))
  return calls


def test_cpu_hour_script_sets_only_macros_its_eval_configs_read():
  calls = _script_calls()
  assert [f for f, _ in calls] == ["configs/runs/eval.gin", "configs/runs/eval_lm.gin"]
  for gin_file, names in calls:
    gin.clear_config()
    gin_utils.parse_gin([gin_file], ["CHECKPOINT = '/unused'"])
    _, used = gin_utils.unused_macros()
    assert names and set(names) <= set(used), (gin_file, sorted(set(names) - set(used)))


def test_cpu_hour_script_evaluates_the_recipes_task_and_length():
  script = _read(SCRIPT)
  gin_utils.parse_gin([RUNS["cpu_hour"]])
  assert re.search(r"^TASK=(\S+)$", script, re.M).group(1) == _bound("MIXTURE_OR_TASK_NAME")
  assert int(re.search(r"^SEQUENCE_LENGTH=(\d+)$", script, re.M).group(1)) == \
      _bound("SEQUENCE_LENGTH")
  assert "--gin_file=configs/runs/cpu_hour.gin" in script
