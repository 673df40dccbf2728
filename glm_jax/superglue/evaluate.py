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

from glm_jax import partitioning, paths, sizes
from glm_jax.superglue import inputs
from glm_jax.superglue import metrics as metrics_lib
from glm_jax.superglue import scoring
from glm_jax.superglue.cloze_model import ClozeModel

# The reference's config_tasks/task_<task>.sh: MAX_SEQ_LEN, and WSC's --loss-func mix
# --length-penalty 1 (configs/superglue/<task>.gin hold the same; tests check they agree).
DEFAULT_LENGTHS = {"boolq": 256, "cb": 256, "copa": 256, "multirc": 512, "record": 512,
                   "rte": 256, "wic": 256, "wsc": 128}
DEFAULT_LOSSES = {"wsc": "mix"}
DEFAULT_LENGTH_PENALTIES = {"wsc": 1.0}


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
def _row_length(e, layout: str) -> int:
  """Tokens the longest row of an encoded example needs in `layout`."""
  if not e.multi_token:
    return len(e.part_a) + 1
  if layout == "shared":
    return len(e.part_a) + sum(map(len, e.answers))
  if layout == "generative":
    return len(e.part_a_of(0)) + len(e.answers[0])
  return max(len(e.part_a_of(c)) + len(a) for c, a in enumerate(e.answers))


def score_task(model: ClozeModel, params, split: inputs.EncodedSplit, *, batch_size: int,
               layout: str = "auto", score_fn=None) -> list:
  """Candidate scores (lists, one per example, in example order), batched by length.

  Generative layout: one score per example, 0 when the gold span is the greedy fill.
  """
  score_fn = score_fn or make_score_fn(model, partitioning.active())
  order = sorted(range(len(split.encoded)), key=lambda i: split.encoded[i].longest_part_a)
  out = [None] * len(order)
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    enc = [split.encoded[i] for i in rows]
    need = max(_row_length(e, layout) for e in enc)
    c = 1 if layout == "generative" else max(len(e.answers) for e in enc)
    batch = inputs.make_batch(enc, [0] * len(enc), sequence_length=sizes.round_up(need, 64),
                              batch_size=batch_size, num_candidates=2 ** math.ceil(math.log2(c)),
                              layout=layout)
    scores = np.asarray(score_fn(params, batch))
    for r, i in enumerate(rows):
      out[i] = scores[r, :1 if layout == "generative" else len(split.encoded[i].answers)].tolist()
  return out


def predictions_of(examples, scores, layout: str = "auto") -> list:
  """The dataset-valued prediction of each example from its candidate scores.

  WSC: true iff the queried span (candidate 0) scores highest, or, generative, iff it is
  the greedy fill.
  """
  preds = []
  for e, s in zip(examples, scores):
    if layout == "generative":
      preds.append(bool(s[0] > scoring.INVALID_SCORE / 2))
      continue
    best = int(np.argmax(s))
    preds.append(best == 0 if e.task == "wsc" else _json_value(e.candidate_values[best]))
  return preds


def task_metrics(examples, preds) -> Dict[str, float]:
  task = examples[0].task
  if task == "record":
    return metrics_lib.compute(task, preds, [list(e.answers) for e in examples])
  # MultiRC exact match groups answer options by question id, as the reference's multirc_em.
  groups = [e.idx["question"] for e in examples] if task == "multirc" else ()
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
  """FileNotFoundError when no task of `names` (or, without skip_missing, one) has data;
  ValueError naming the file and line of a malformed or incomplete example."""
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
      continue
    sources.load_records(task, split, source=source)  # every line parsed and its fields checked
  if missing and len(missing) == len(list(names)):
    raise FileNotFoundError(
        f"No SuperGLUE data for {mixture!r} ({split}): {missing[0]} (and "
        f"{len(missing) - 1} more); set --gin.SUPERGLUE_DIR (and FEWGLUE_DIR) to the unzipped "
        "release, <dir>/<Task>/{train,val,test}.jsonl.")


def task_setting(task: str, name: str, task_settings: Optional[dict], default: Any) -> Any:
  """A task's setting from `task_settings` (configs/superglue dicts), else `default`."""
  return (task_settings or {}).get(task, {}).get(name, default)


@gin.configurable
def evaluate_superglue(params, config, vocab_spec: str, output_dir: Optional[str] = None, *,
                       mixture_or_task_name: str = "superglue", split: str = "validation",
                       sequence_length: int = 256, task_lengths: Optional[dict] = None,
                       task_settings: Optional[dict] = None, pattern_id: Optional[int] = None,
                       batch_size: int = 16, layout: str = "auto", vocabulary: Any = None,
                       wsc_candidates: str = "heuristic",
                       skip_missing: bool = True, check_only: bool = False) -> Dict[str, Any]:
  """Scores every task of a SuperGLUE mixture; returns {task: metrics, 'average': x}.

  Each task's sequence length, pattern, loss ('generative' WSC changes the prediction) and
  length penalty come from `task_settings` ({task: {'sequence_length': ..., 'pattern_id':
  ..., 'loss': ..., 'length_penalty': ...}}, the dicts of configs/superglue/*.gin), else the
  reference scripts' defaults; `task_lengths` and `pattern_id` (every task; the 10B recipe
  uses 0) override them. Tasks whose data files are missing (e.g. ReCoRD in ../shared/data)
  are skipped with a warning when skip_missing, else the FileNotFoundError stops the run; no
  data for any task is an error. `check_only` (glm_jax.eval, before restoring) checks that.
  """
  from glm_jax.superglue import tasks  # pylint: disable=g-import-not-at-top
  if not output_dir:
    raise ValueError("The SuperGLUE evaluator needs an output directory; set OUTPUT_DIR.")
  if check_only:
    _check_data(tasks.task_names(mixture_or_task_name), split, mixture_or_task_name,
                skip_missing)
    return {}
  vocab = inputs.resolve_vocabulary(vocabulary if vocabulary is not None else vocab_spec)
  is_chief = jax.process_index() == 0
  results, skipped = {}, []
  for name in tasks.task_names(mixture_or_task_name):
    task, _ = inputs.parse_task_name(name)
    length = (task_lengths or {}).get(task) or task_setting(
        task, "sequence_length", task_settings, DEFAULT_LENGTHS.get(task, sequence_length))
    settings = inputs.ClozeSettings(
        pattern_id=pattern_id if pattern_id is not None else task_setting(
            task, "pattern_id", task_settings, None),
        loss=task_setting(task, "loss", task_settings, DEFAULT_LOSSES.get(task,
                                                                          "cross_entropy")),
        length_penalty=task_setting(task, "length_penalty", task_settings,
                                    DEFAULT_LENGTH_PENALTIES.get(task, 0.0)),
        wsc_candidates=wsc_candidates).check_task(task)
    try:
      records = inputs.load_records(name, split)
    except FileNotFoundError as e:
      if not skip_missing:
        raise
      logging.warning("Skipping %s: %s", name, e)
      skipped.append(name)
      continue
    start = time.perf_counter()
    task_layout = inputs.layout_for(settings, layout)
    examples = inputs.render_records(task, records, settings)
    encoded = inputs.encode_examples(examples, vocab, min(length, config.max_sequence_length),
                                     shared_candidates=task_layout == "shared")
    model = ClozeModel(config, length_penalty=settings.length_penalty, loss=settings.loss)
    scores = score_task(model, params, encoded, batch_size=batch_size, layout=task_layout)
    preds = predictions_of(examples, scores, task_layout)
    if any(e.label_value is None for e in examples):  # unlabeled test split: predictions only
      metrics = {}
    else:
      metrics = task_metrics(examples, preds)
    seconds = time.perf_counter() - start
    if is_chief:
      write_task(output_dir, task, examples, scores, preds, metrics,
                 {"num_examples": len(examples), "num_truncated": encoded.num_truncated,
                  "pattern_id": examples[0].pattern_id, "seconds": round(seconds, 2)})
    logging.info("%s: %s (%d examples, pattern %d, %.1fs)", name, metrics, len(examples),
                 examples[0].pattern_id, seconds)
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
