"""The SuperGLUE evaluator end to end on the test slices, the seqio tasks and TFDS records."""

import json

import gin
import jax
import numpy as np
import pytest

import glm_jax.superglue.sources  # registers the gin configurables bound below
from glm_jax.model import GLMConfig, init_params
from glm_jax.superglue import evaluate, metrics, sources
from test_superglue_support import FEWGLUE_DIR, SUPERGLUE_DIR, tiny_vocab

CFG = GLMConfig(vocab_size=1024, num_layers=1, hidden_size=32, num_heads=2,
                max_sequence_length=512, initializer_std=0.2)


@pytest.fixture(autouse=True)
def data_dirs():
  with gin.unlock_config():
    gin.bind_parameter("glm_jax.superglue.sources.data_dirs.superglue_dir", SUPERGLUE_DIR)
    gin.bind_parameter("glm_jax.superglue.sources.data_dirs.fewglue_dir", FEWGLUE_DIR)
  yield
  gin.clear_config()


def test_mixtures_and_seqio_task():
  from glm_jax.superglue import tasks  # pylint: disable=g-import-not-at-top
  assert tasks.task_names("superglue") == [f"superglue_{t}" for t in sources.TASKS]
  assert "superglue_record" not in tasks.task_names("superglue_no_record")
  assert len(tasks.task_names("superglue_no_record_tfds")) == 7
  assert tasks.task_names("rte") == ["superglue_rte"]  # TASK = 'rte' in the fine-tuning gin
  import seqio  # pylint: disable=g-import-not-at-top
  ds = seqio.get_mixture_or_task("superglue_cb").get_dataset(
      sequence_length=None, split="validation", shuffle=False)
  first = next(ds.as_numpy_iterator())
  assert first["inputs_pretokenized"].decode().startswith("Valence was helping?[MASK].")
  assert [c.decode() for c in first["candidates"]] == [" Yes", " No", " Maybe"]
  assert first["label"] == 1 and json.loads(first["record"])["idx"] == 0


def test_tfds_examples_become_the_same_records():
  multirc = sources.from_tfds("multirc", [{
      "paragraph": b"P.", "question": b"Q?", "answer": b"A", "label": np.int64(1),
      "idx": {"paragraph": np.int32(0), "question": np.int32(1), "answer": np.int32(2)}}])
  assert multirc == [{"paragraph": "P.", "question": "Q?", "answer": "A", "label": 1,
                      "idx": {"paragraph": 0, "question": 1, "answer": 2}}]
  cb = sources.from_tfds("cb", [{"premise": b"p", "hypothesis": b"h", "idx": np.int32(3),
                                 "label": np.int64(2)}, {"premise": b"p", "hypothesis": b"h",
                                                         "idx": np.int32(4), "label": -1}])
  assert [r["label"] for r in cb] == ["neutral", None]
  wsc = sources.from_tfds("wsc", [
      {"text": b"Mark told Pete lies about himself. He should have been more truthful.",
       "span1_index": 0, "span2_index": 6, "span1_text": b"Mark", "span2_text": b"He",
       "idx": 0, "label": 1},
      {"text": b"Mark told Pete lies about himself. He should have been more truthful.",
       "span1_index": 2, "span2_index": 6, "span1_text": b"Pete", "span2_text": b"He",
       "idx": 1, "label": 0}])
  assert wsc[0]["heuristic_candidates"] == ["Pete"] and wsc[1]["heuristic_candidates"] == ["Mark"]
  assert "candidates" not in wsc[0]  # the public WSC has no candidate lists
  assert wsc[0]["label"] is True


def test_evaluator_writes_metrics_predictions_and_average(tmp_path, capsys):
  params = init_params(CFG, jax.random.PRNGKey(0))
  out = evaluate.evaluate_superglue(params, CFG, "unused", str(tmp_path), vocabulary=tiny_vocab(),
                                    mixture_or_task_name="superglue", batch_size=16,
                                    task_lengths={"boolq": 128, "multirc": 256})
  printed = capsys.readouterr().out
  assert "SuperGLUE average" in printed and "skipped (no data): superglue_record" in printed
  tasks = ["boolq", "cb", "copa", "multirc", "rte", "wic", "wsc"]
  assert sorted(k for k in out if k != "average") == tasks
  assert out["average"] == pytest.approx(metrics.superglue_average(
      {t: out[t] for t in tasks}))
  for task in tasks:
    lines = [json.loads(l) for l in open(tmp_path / task / "predictions.jsonl")]
    saved = json.load(open(tmp_path / task / "metrics.json"))
    expected_rows = {"multirc": 87}.get(task, 40)
    assert len(lines) == saved["num_examples"] == expected_rows
    for line in lines:
      assert len(line["scores"]) == len(line["candidates"]) >= 2
      if task != "wsc":
        assert line["prediction"] == line["candidates"][int(np.argmax(line["scores"]))]
    preds, labels = [l["prediction"] for l in lines], [l["label"] for l in lines]
    groups = [(l["idx"]["paragraph"], l["idx"]["question"]) for l in lines] if (
        task == "multirc") else ()
    recomputed = metrics.compute(task, preds, labels, groups)
    for k, v in recomputed.items():
      assert saved[k] == pytest.approx(v)
  rte = [json.loads(l) for l in open(tmp_path / "rte" / "predictions.jsonl")]
  assert {l["prediction"] for l in rte} <= {"entailment", "not_entailment"}
  boolq = [json.loads(l) for l in open(tmp_path / "boolq" / "predictions.jsonl")]
  assert all(isinstance(l["prediction"], bool) for l in boolq)
  wsc = [json.loads(l) for l in open(tmp_path / "wsc" / "predictions.jsonl")]
  assert all(l["prediction"] == (int(np.argmax(l["scores"])) == 0) for l in wsc)


def test_missing_data_is_a_clear_error(tmp_path):
  with gin.unlock_config():
    gin.bind_parameter("glm_jax.superglue.sources.data_dirs.superglue_dir", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="SUPERGLUE_DIR"):
    sources.load_records("rte", "validation")
  gin.clear_config()
  with pytest.raises(ValueError, match="SUPERGLUE_DIR"):
    sources.load_records("rte", "validation")
