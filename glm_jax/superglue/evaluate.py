"""The SuperGLUE evaluator of glm_jax.eval: every task of a mixture, metrics and predictions.

For each task it writes OUTPUT_DIR/<task>/metrics.json and predictions.jsonl (one line per
example, MultiRC one per answer option: the dataset's idx, gold label and prediction as the
dataset's own label values, and every candidate's score), then prints a table with the
SuperGLUE average (each task's mean of its metrics, averaged over the tasks evaluated).
Under glm_jax.eval it scores on that mesh (`partitioning.active()`): the parameters stay in
their shardings, batch rows are split over the batch axes, and process 0 writes the files
(local or gs://).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Dict, Optional

from absl import logging
import gin
import jax
import numpy as np

from glm_jax import partitioning, paths
from glm_jax.superglue import inputs
from glm_jax.superglue import metrics as metrics_lib
from glm_jax.superglue import patterns
from glm_jax.superglue.model import ClozeModel

# Sequence lengths of the reference's fine-tuning scripts; others use `sequence_length`.
DEFAULT_LENGTHS = {"boolq": 512, "multirc": 512, "record": 512, "wsc": 128}


def _bucket(x: int, multiple: int) -> int:
  return int(math.ceil(x / multiple) * multiple)


def _json_value(value: Any) -> Any:
  return value.item() if hasattr(value, "item") else value


def make_score_fn(model: ClozeModel, partitioner=None):
  """jit(model.score); with a partitioner it runs under its mesh, scores replicated."""
  if partitioner is None:
    return jax.jit(model.score)
  jitted = jax.jit(model.score, out_shardings=partitioner.replicated())

  def score(params, batch):
    with partitioner.under_mesh():
      return jitted(params, partitioner.put_global(batch, "SuperGLUE batch"))

  return score


def score_task(model: ClozeModel, params, split: inputs.EncodedSplit, *, batch_size: int,
               layout: str = "auto", score_fn=None) -> list:
  """Candidate scores (lists, one per example, in example order), batched by length."""
  score_fn = score_fn or make_score_fn(model, partitioning.active())
  order = sorted(range(len(split.encoded)), key=lambda i: len(split.encoded[i].part_a))
  out = [None] * len(order)
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    enc = [split.encoded[i] for i in rows]
    shared = layout == "shared" and enc[0].multi_token
    need = max(len(e.part_a) + (sum(map(len, e.answers)) if shared else
                                max(map(len, e.answers)) if e.multi_token else 1) for e in enc)
    c = max(len(e.answers) for e in enc)
    batch = inputs.make_batch(enc, [0] * len(enc), sequence_length=_bucket(need, 64),
                              batch_size=batch_size, num_candidates=2 ** math.ceil(math.log2(c)),
                              layout=layout)
    scores = np.asarray(score_fn(params, batch))
    for r, i in enumerate(rows):
      out[i] = scores[r, :len(split.encoded[i].answers)].tolist()
  return out


def predictions_of(examples, scores) -> list:
  """The dataset-valued prediction of each example from its candidate scores."""
  preds = []
  for e, s in zip(examples, scores):
    best = int(np.argmax(s))
    preds.append(best == 0 if e.task == "wsc" else _json_value(e.candidate_values[best]))
  return preds


def task_metrics(examples, preds) -> Dict[str, float]:
  task = examples[0].task
  if task == "record":
    return metrics_lib.compute(task, preds, [list(e.answers) for e in examples])
  groups = [(e.idx["paragraph"], e.idx["question"]) for e in examples] if task == "multirc" \
      else ()
  return metrics_lib.compute(task, preds, [e.label_value for e in examples], groups)


def write_task(output_dir: str, task_name: str, examples, scores, preds,
               metrics: Dict[str, float], extra: Dict[str, Any]) -> None:
  directory = paths.resolve(output_dir) / task_name
  paths.write_json(directory / "metrics.json", {**metrics, **extra})
  lines = []
  for e, s, p in zip(examples, scores, preds):
    candidates = [c.strip() for c in e.candidates] if e.task == "wsc" else [
        _json_value(v) for v in e.candidate_values]
    lines.append(json.dumps({"idx": e.idx, "label": e.label_value, "prediction": p,
                             "candidates": candidates, "scores": s}) + "\n")
  paths.write_text(directory / "predictions.jsonl", "".join(lines))


def format_table(results: Dict[str, Dict[str, float]], average: float) -> str:
  lines = [f"{'task':<22} {'metrics':<40} {'score':>6}"]
  for name, m in results.items():
    shown = ", ".join(f"{k} {100 * v:.1f}" for k, v in m.items())
    lines.append(f"{name:<22} {shown:<40} {100 * metrics_lib.task_score(m):6.1f}")
  lines.append(f"{'SuperGLUE average':<63} {100 * average:6.1f}")
  return "\n".join(lines)


def _check_data(names, split: str, mixture: str, skip_missing: bool) -> None:
  """FileNotFoundError when no task of `names` (or, without skip_missing, one) has data."""
  from glm_jax.superglue import sources  # pylint: disable=g-import-not-at-top
  missing = []
  for name in names:
    task, source = inputs.parse_task_name(name)
    if source == "tfds":
      return  # TFDS finds (or downloads) its own data
    try:
      sources.records_path(task, split, source)
    except (FileNotFoundError, ValueError) as e:
      if not skip_missing:
        raise
      missing.append(str(e).split(";")[0])
  if missing and len(missing) == len(list(names)):
    raise FileNotFoundError(
        f"No SuperGLUE data for {mixture!r} ({split}): {missing[0]} (and "
        f"{len(missing) - 1} more); set --gin.SUPERGLUE_DIR (and FEWGLUE_DIR) to the unzipped "
        "release, <dir>/<Task>/{train,val,test}.jsonl.")


@gin.configurable
def evaluate_superglue(params, config, vocab_spec: str, output_dir: Optional[str] = None, *,
                       mixture_or_task_name: str = "superglue", split: str = "validation",
                       sequence_length: int = 256, task_lengths: Optional[dict] = None,
                       batch_size: int = 16, layout: str = "auto", vocabulary: Any = None,
                       skip_missing: bool = True, check_only: bool = False) -> Dict[str, Any]:
  """Scores every task of a SuperGLUE mixture; returns {task: metrics, 'average': x}.

  Tasks whose data files are missing (e.g. ReCoRD in ../shared/data) are skipped with a
  warning when skip_missing, else the FileNotFoundError stops the run; no data for any task
  is an error. `check_only` (glm_jax.eval, before restoring) checks that only.
  """
  from glm_jax.superglue import tasks  # pylint: disable=g-import-not-at-top
  if not output_dir:
    raise ValueError("The SuperGLUE evaluator needs an output directory; set OUTPUT_DIR.")
  if check_only:
    _check_data(tasks.task_names(mixture_or_task_name), split, mixture_or_task_name,
                skip_missing)
    return {}
  vocab = inputs.resolve_vocabulary(vocabulary if vocabulary is not None else vocab_spec)
  lengths = {**DEFAULT_LENGTHS, **(task_lengths or {})}
  model = ClozeModel(config)
  score_fn = make_score_fn(model, partitioning.active())
  is_chief = jax.process_index() == 0
  results, skipped = {}, []
  for name in tasks.task_names(mixture_or_task_name):
    task, _ = inputs.parse_task_name(name)
    try:
      records = inputs.load_records(name, split)
    except FileNotFoundError as e:
      if not skip_missing:
        raise
      logging.warning("Skipping %s: %s", name, e)
      skipped.append(name)
      continue
    start = time.perf_counter()
    examples = [patterns.render(task, r) for r in records]
    encoded = inputs.encode_examples(examples, vocab, min(lengths.get(task, sequence_length),
                                                          config.max_sequence_length),
                                     shared_candidates=layout == "shared")
    scores = score_task(model, params, encoded, batch_size=batch_size, layout=layout,
                        score_fn=score_fn)
    preds = predictions_of(examples, scores)
    if any(e.label_value is None for e in examples):  # unlabeled test split: predictions only
      metrics = {}
    else:
      metrics = task_metrics(examples, preds)
    seconds = time.perf_counter() - start
    if is_chief:
      write_task(output_dir, task, examples, scores, preds, metrics,
                 {"num_examples": len(examples), "num_truncated": encoded.num_truncated,
                  "seconds": round(seconds, 2)})
    logging.info("%s: %s (%d examples, %.1fs)", name, metrics, len(examples), seconds)
    if metrics:
      results[task] = metrics
  if not results and skipped:
    _check_data(skipped, split, mixture_or_task_name, skip_missing)
  average = metrics_lib.superglue_average(results) if results else float("nan")
  table = format_table(results, average)
  if skipped:
    table += "\nskipped (no data): " + ", ".join(skipped)
  if is_chief:
    print(table, flush=True)
    paths.write_json(paths.resolve(output_dir) / "superglue.json",
                     {"tasks": results, "average": average, "skipped": skipped})
  return {**results, "average": average}
