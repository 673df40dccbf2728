"""SuperGLUE metrics against values computed by hand on crafted predictions."""

import pytest

from glm_jax.superglue import metrics


def test_accuracy():
  assert metrics.accuracy([True, False, True, True], [True, True, True, False]) == 0.5
  with pytest.raises(ValueError):
    metrics.accuracy([1], [1, 0])


def test_cb_accuracy_and_macro_f1():
  labels = ["entailment", "entailment", "contradiction", "contradiction", "neutral"]
  preds = ["entailment", "contradiction", "contradiction", "contradiction", "entailment"]
  out = metrics.compute("cb", preds, labels)
  # entailment: tp 1, fp 1, fn 1 -> 2/4; contradiction: tp 2, fp 1, fn 0 -> 4/5; neutral: 0.
  assert out["accuracy"] == pytest.approx(3 / 5)
  assert out["f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_multirc_f1_over_answers_and_exact_match_per_question():
  questions = ["q1", "q1", "q1", "q2", "q2", "q3"]
  labels = [1, 0, 1, 0, 1, 0]
  preds = [1, 0, 0, 0, 1, 1]
  out = metrics.compute("multirc", preds, labels, questions)
  # tp 2 (q1a, q2b), fp 1 (q3), fn 1 (q1c) -> F1 = 4 / 6; only q2 is all right -> EM 1/3.
  assert out["f1a"] == pytest.approx(4 / 6)
  assert out["exact_match"] == pytest.approx(1 / 3)


def test_record_max_over_gold_exact_match_and_f1():
  preds = ["the Chelsea", "Diego Costa", "Jose"]
  golds = [["Chelsea", "Chelsea FC"], ["Costa"], ["Mourinho"]]
  out = metrics.compute("record", preds, golds)
  # q1: "the" is an article -> EM 1, F1 1; q2: EM 0, F1 = 2*(1/2*1)/(1/2+1) = 2/3; q3: 0, 0.
  assert out["exact_match"] == pytest.approx(1 / 3)
  assert out["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_normalize_answer():
  assert metrics.normalize_answer("  The U.S. Army, an  army! ") == "us army army"


def test_wsc_and_superglue_average():
  assert metrics.compute("wsc", [True, False, False], [True, True, False]) == {
      "accuracy": pytest.approx(2 / 3)}
  per_task = {"cb": {"accuracy": 0.8, "f1": 0.6}, "rte": {"accuracy": 0.5},
              "multirc": {"f1a": 0.4, "exact_match": 0.2}}
  assert metrics.superglue_average(per_task) == pytest.approx((0.7 + 0.5 + 0.3) / 3)
