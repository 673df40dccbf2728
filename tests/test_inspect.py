"""inspect: decoded Part A / Part B, --stats JSON, one-line CLI errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from glm_jax.data import inspect as inspect_lib
from glm_jax.data import objectives
from glm_jax.data import tasks

TINY = os.path.join(os.path.dirname(__file__), "data", "tiny_corpus.txt")
KEYS = {"masked_fraction_mean", "masked_fraction_std", "span_length_hist",
        "spans_per_sample_mean", "length_mean"}


@pytest.fixture(scope="module")
def task_name():
  return tasks.register_text_task("inspect_tiny", train_files=[TINY], mix="sent")


def test_examples_show_parts(task_name):
  text = inspect_lib.show_examples(task_name, "train", 4, 96, seed=1, objective="token")
  assert text.count("=== example") == 4
  assert text.count("Part A: [CLS]") == 4 and text.count("Part B:") == 4
  assert "[MASK]" in text and "<eop>" in text and "[pos " in text
  assert '"invalid_utf8": 0' in text  # counters are reported


def _reassemble(ex, spans):
  """Part A with each mask replaced by its span's tokens (read from the targets)."""
  by_position = {}
  for start, end, length in zip(*spans):
    by_position[int(ex["positions"][0, start])] = ex["targets"][start:end][:length]
  out = []
  for i, token in enumerate(ex["tokens"][:int(ex["sep"])]):
    out.extend(by_position[i].tolist() if i in by_position else [int(token)])
  return out


@pytest.mark.parametrize("objective", ["token", "sentence", "document"])
def test_part_a_and_b_reassemble_the_sample(task_name, objective):
  sop = tasks.glm_task(task_name).vocabulary.special.sop
  for ex in inspect_lib.examples(task_name, "train", 96, 0, 0, 12, objective):
    spans = objectives.part_b_spans(ex)
    assert len(spans[0]) == ex["num_spans"] and (ex["tokens"][spans[0]] == sop).all()
    assert spans[2].sum() == ex["num_masked"]
    assert _reassemble(ex, spans) == ex["sample"][:ex["raw_length"]].tolist()


def test_examples_are_the_trainer_rows(task_name):
  from glm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  batch = next(pipeline.get_batches(task_name, "train", sequence_length=96, batch_size=4,
                                    seed=3, start_batch=2))
  shown = inspect_lib.examples(task_name, "train", 96, seed=3, start=8, count=4)
  for row, ex in enumerate(shown):
    assert ex["index"] == 8 + row
    n = len(ex["tokens"])
    assert ex["tokens"].tolist() == batch["tokens"][row][:n].tolist()
    assert not batch["tokens"][row][n:].any()
    assert ex["positions"].tolist() == batch["positions"][row][:, :n].tolist()


def test_stats_token_objective(task_name):
  result = inspect_lib.stats(task_name, "train", 40, 128, objective="token")
  assert KEYS <= result.keys() and result["objective"] == "token"
  hist = np.asarray(result["span_length_hist"])
  assert len(hist) == 40 and abs(hist.sum() - 1) < 1e-6
  assert 0.12 < result["masked_fraction_mean"] < 0.2
  assert result["spans_per_sample_mean"] > 1 and result["length_mean"] <= 128
  assert result["counters"]["samples"]["samples"] > 0


def test_stats_per_objective_of_the_mix(task_name):
  result = inspect_lib.stats(task_name, "train", 8, 96)
  assert set(result) == {"token", "sentence", "counters"}
  for objective in ("token", "sentence"):
    assert KEYS <= result[objective].keys()


def test_cli_stats_prints_one_json_object():
  result = subprocess.run(
      [sys.executable, "-m", "glm_jax.data.inspect", f"--task=text:{TINY}", "--stats=6",
       "--objective=document", "--sequence_length=64"],
      capture_output=True, text=True, timeout=180)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 1
  data = json.loads(lines[0])
  assert KEYS <= data.keys() and data["spans_per_sample_mean"] == 1.0
  assert 0.45 < data["masked_fraction_mean"] <= 1.0


def test_cli_unknown_task_is_one_line():
  # A subprocess: parsing absl flags in this process would change other tests' logging.
  result = subprocess.run([sys.executable, "-m", "glm_jax.data.inspect", "--task=no_such_task"],
                          capture_output=True, text=True, timeout=180)
  assert result.returncode == 2
  err = [l for l in result.stderr.strip().splitlines() if l.startswith("error:")]
  assert len(err) == 1 and "not a GLM task" in err[0]
  assert result.stderr.strip().splitlines()[-1] == err[0]
