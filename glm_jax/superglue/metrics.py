"""SuperGLUE metrics as the reference computes them; every value is a fraction in [0, 1].

accuracy (BoolQ, COPA, RTE, WiC, WSC), CB accuracy + macro-F1 (sklearn's: the mean over the
classes that occur in the labels or predictions), MultiRC F1 over all answer options (f1a) +
exact match per question id, ReCoRD max-over-gold exact match and token F1 with the
reference's normalisation (lower case, transliterated to ASCII by unidecode, no punctuation,
no articles, single spaces). `task_score` is a task's number in the SuperGLUE average (the
mean of its metrics); the reference prints the same numbers x 100.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any, Dict, Hashable, Sequence

import numpy as np


def accuracy(predictions: Sequence[Any], labels: Sequence[Any]) -> float:
  if len(predictions) != len(labels) or not labels:
    raise ValueError(f"Need as many predictions as labels (got {len(predictions)} and "
                     f"{len(labels)}), at least one.")
  return float(np.mean([p == l for p, l in zip(predictions, labels)]))


def f1_binary(predictions: Sequence[Any], labels: Sequence[Any], positive: Any = 1) -> float:
  """F1 of the positive class; 0 when there is no true positive."""
  tp = sum(p == positive and l == positive for p, l in zip(predictions, labels))
  fp = sum(p == positive and l != positive for p, l in zip(predictions, labels))
  fn = sum(p != positive and l == positive for p, l in zip(predictions, labels))
  return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def f1_macro(predictions: Sequence[Any], labels: Sequence[Any], classes: Sequence[Any]) -> float:
  """Unweighted mean over `classes` of each class's one-vs-rest F1."""
  return float(np.mean([f1_binary(predictions, labels, c) for c in classes]))


def cb_metrics(predictions, labels) -> Dict[str, float]:
  classes = sorted(set(labels) | set(predictions), key=str)
  return {"accuracy": accuracy(predictions, labels),
          "f1": f1_macro(predictions, labels, classes)}


def multirc_metrics(predictions: Sequence[int], labels: Sequence[int],
                    questions: Sequence[Hashable]) -> Dict[str, float]:
  """f1a over every answer option; exact match = all options of a question id right."""
  per_question = collections.defaultdict(list)
  for p, l, q in zip(predictions, labels, questions):
    per_question[q].append(p == l)
  return {"f1a": f1_binary(predictions, labels, 1),
          "exact_match": float(np.mean([all(v) for v in per_question.values()]))}


def normalize_answer(text: str) -> str:
  """Lower case in ASCII (unidecode), no punctuation, no articles, single spaces (ReCoRD)."""
  import unidecode  # pylint: disable=g-import-not-at-top
  text = "".join(ch for ch in unidecode.unidecode(text.lower())
                 if ch not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
  pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
  common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
  if common == 0:
    return 0.0
  precision, recall = common / len(pred), common / len(ref)
  return 2 * precision * recall / (precision + recall)


def record_metrics(predictions: Sequence[str],
                   golds: Sequence[Sequence[str]]) -> Dict[str, float]:
  """Max over the gold answers of exact match and token F1, averaged over queries."""
  em, f1 = [], []
  for p, answers in zip(predictions, golds):
    em.append(max((float(normalize_answer(p) == normalize_answer(a)) for a in answers),
                  default=0.0))
    f1.append(max((token_f1(p, a) for a in answers), default=0.0))
  return {"exact_match": float(np.mean(em)), "f1": float(np.mean(f1))}


def compute(task: str, predictions: Sequence[Any], labels: Sequence[Any],
            groups: Sequence[Hashable] = ()) -> Dict[str, float]:
  """The metrics of `task` (labels: gold values; ReCoRD: gold answer lists;
  groups: MultiRC question ids)."""
  if task == "cb":
    return cb_metrics(predictions, labels)
  if task == "multirc":
    return multirc_metrics(predictions, labels, groups)
  if task == "record":
    return record_metrics(predictions, labels)
  return {"accuracy": accuracy(predictions, labels)}


def task_score(metrics: Dict[str, float]) -> float:
  """A task's entry in the SuperGLUE average: the mean of its metrics."""
  return float(np.mean(list(metrics.values())))


def superglue_average(per_task: Dict[str, Dict[str, float]]) -> float:
  return float(np.mean([task_score(m) for m in per_task.values()]))
