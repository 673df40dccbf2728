"""Looks at what a GLM task feeds the model.

  python -m glm_jax.data.inspect --task=glm_builtin [--split=train] [--num_examples=3]
  python -m glm_jax.data.inspect --task=glm_builtin_2b --stats=500 [--objective=token]

Examples are printed decoded, Part A and Part B apart (each Part B span with the position
of its mask). `--stats=N` prints one JSON object: per objective over N samples,
masked_fraction_mean/std (span tokens / raw sample length), span_length_hist (lengths
1..40, normalised), spans_per_sample_mean, length_mean (tokens after construction); with
`--objective` the object is that objective's statistics alone. The read and sample
counters (empty lines, invalid UTF-8, windowed documents, ...) are reported as well.
"""

from __future__ import annotations

import dataclasses
import json
import sys

if __name__ == "__main__":  # the quiet start must come before TensorFlow loads
  from glm_jax import console  # pylint: disable=g-import-not-at-top
  console.quiet_startup()
from typing import Dict, Iterator, List, Optional, Sequence

from absl import flags
import numpy as np
import tensorflow as tf

from glm_jax.data import objectives
from glm_jax.data import pipeline
from glm_jax.data import tasks as tasks_lib

_TASK = flags.DEFINE_string("task", None, "Task name (e.g. glm_builtin, text:PATH).")
_SPLIT = flags.DEFINE_string("split", "train", "train or validation.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 3, "Examples to print.")
_STATS = flags.DEFINE_integer("stats", 0, "If > 0: print statistics over this many samples.")
_OBJECTIVE = flags.DEFINE_enum("objective", None, list(objectives.OBJECTIVES),
                               "Restrict to one objective.")
_SEQUENCE_LENGTH = flags.DEFINE_integer("sequence_length", 512, "Model sequence length T.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the examples.")

MAX_HIST_LENGTH = 40


def role_names(special) -> Dict[int, str]:
  """Id -> printable name of every role (eos/pad shown once when they share an id)."""
  names = {}
  for role, label in (("pad", "<pad>"), ("eos", "<eos>"), ("cls", "[CLS]"), ("mask", "[MASK]"),
                      ("smask", "[sMASK]"), ("gmask", "[gMASK]"), ("sop", "<sop>"),
                      ("eop", "<eop>"), ("dblock", "[dBLOCK]"), ("unk", "<unk>")):
    value = getattr(special, role)
    if value is not None:
      names[int(value)] = label
  return names


def render(vocabulary, ids: Sequence[int]) -> str:
  """Decoded text with every role token shown by name."""
  names = role_names(vocabulary.special)
  out, run = [], []
  for i in ids:
    i = int(i)
    if i in names:
      if run:
        out.append(vocabulary.decode(run))
        run = []
      out.append(names[i])
    else:
      run.append(i)
  if run:
    out.append(vocabulary.decode(run))
  return " ".join(s.strip() for s in out if s.strip())


def part_b_spans(example: Dict[str, np.ndarray], sop: int) -> List[dict]:
  """Part B split into spans: start index, mask position and original-token length."""
  tokens, sep = example["tokens"], int(example["sep"])
  positions = example["positions"]
  n = len(tokens)
  starts = [i for i in range(sep, n) if tokens[i] == sop]
  suffix = bool(example.get("suffix_layout", 0))
  spans = []
  for j, start in enumerate(starts):
    end = starts[j + 1] if j + 1 < len(starts) else n
    # Inputs are sop + span (normal) or sop + span[:-1] (prefix-LM suffix, no eop).
    length = end - start if suffix else end - start - 1
    spans.append({"start": start, "end": end, "position": int(positions[0, start]),
                  "length": length})
  return spans


def format_example(vocabulary, example: Dict[str, np.ndarray], index: int) -> str:
  special = vocabulary.special
  sep = int(example["sep"])
  tokens = example["tokens"]
  objective = objectives.OBJECTIVES[int(example.get("objective", 0))]
  lines = [f"=== example {index}: objective={objective} length={len(tokens)} sep={sep} "
           f"spans={int(example.get('num_spans', 0))}",
           f"Part A: {render(vocabulary, tokens[:sep])}", "Part B:"]
  for span in part_b_spans(example, special.sop):
    targets = example["targets"][span["start"]:span["end"]]
    lines.append(f"  [pos {span['position']}, {span['length']} tokens] "
                 f"{render(vocabulary, targets)}")
  return "\n".join(lines)


def _examples(task: tasks_lib.GLMTask, split: str, sequence_length: int, seed: int,
              count: int, objective: Optional[str]) -> Iterator[Dict[str, np.ndarray]]:
  """Examples k = 0.. of the task (one objective if given), as numpy dicts."""
  mix = task.mix
  if objective is not None:
    probs = tuple(float(o == objective) for o in objectives.OBJECTIVES)
    mix = dataclasses.replace(mix, objective_probs=probs)
  table, _ = pipeline.sample_table(task.name, split, sequence_length)
  task = dataclasses.replace(task, mix=mix)
  make = tf.function(pipeline.example_fn(task, sequence_length), input_signature=[
      tf.TensorSpec([None], tf.int32), tf.TensorSpec([2], tf.int64)])
  base = tf.constant([seed, 17], tf.int64)
  for k in range(count):
    sample = table[k % table.num_samples]
    seed_k = tf.random.experimental.stateless_fold_in(base, k)
    ex = {key: value.numpy() for key, value in
          make(tf.constant(sample), tf.cast(seed_k, tf.int64)).items()}
    # Raw length after the short_seq re-cut: Part A minus masks plus the span tokens.
    ex["raw_length"] = int(ex["sep"]) - int(ex["num_spans"]) + int(ex["num_masked"])
    ex["sample"] = sample
    yield ex


def objective_stats(examples: Sequence[Dict[str, np.ndarray]], sop: int) -> dict:
  """The statistics of `--stats` over examples of one objective."""
  fractions = [float(e["num_masked"]) / float(e["raw_length"]) for e in examples]
  hist = np.zeros(MAX_HIST_LENGTH, np.float64)
  over = 0
  for e in examples:
    for span in part_b_spans(e, sop):
      if 1 <= span["length"] <= MAX_HIST_LENGTH:
        hist[span["length"] - 1] += 1
      else:
        over += 1
  total = hist.sum() + over
  return {
      "num_samples": len(examples),
      "masked_fraction_mean": float(np.mean(fractions)),
      "masked_fraction_std": float(np.std(fractions)),
      "span_length_hist": [float(h) for h in (hist / total if total else hist)],
      "span_length_over_40": int(over),
      "spans_per_sample_mean": float(np.mean([int(e["num_spans"]) for e in examples])),
      "length_mean": float(np.mean([len(e["tokens"]) for e in examples])),
      "raw_length_mean": float(np.mean([e["raw_length"] for e in examples])),
  }


def stats(task_name: str, split: str, num_samples: int, sequence_length: int, seed: int = 0,
          objective: Optional[str] = None) -> dict:
  """`--stats`: per-objective statistics (flat when `objective` is given) plus counters."""
  task = tasks_lib.glm_task(task_name)
  if not task.corpus.in_memory:
    raise ValueError(f"--stats needs a task over an in-memory corpus; {task_name!r} streams "
                     f"from {task.corpus.kind}.")
  sop = task.vocabulary.special.sop
  names = [objective] if objective else [
      o for o, p in zip(objectives.OBJECTIVES, task.mix.objective_probs) if p > 0]
  result = {name: objective_stats(list(_examples(task, split, sequence_length, seed,
                                                 num_samples, name)), sop)
            for name in names}
  _, counters = pipeline.sample_table(task_name, split, sequence_length)
  if objective:
    return dict(result[objective], objective=objective, counters=counters)
  return dict(result, counters=counters)


def show_examples(task_name: str, split: str, num_examples: int, sequence_length: int,
                  seed: int = 0, objective: Optional[str] = None) -> str:
  task = tasks_lib.glm_task(task_name)
  vocabulary = task.vocabulary
  if not task.corpus.in_memory:
    raise ValueError(f"{task_name!r} streams from {task.corpus.kind}; inspect shows tasks over "
                     "the built-in corpus or local files.")
  blocks = [format_example(vocabulary, ex, k) for k, ex in enumerate(
      _examples(task, split, sequence_length, seed, num_examples, objective))]
  _, counters = pipeline.sample_table(task_name, split, sequence_length)
  blocks.append(f"counters: {json.dumps(counters, sort_keys=True)}")
  return "\n".join(blocks)


def main(argv):
  del argv
  if not _TASK.value:
    print("inspect: pass --task=NAME (e.g. --task=glm_builtin).", file=sys.stderr)
    sys.exit(2)
  try:
    if _STATS.value > 0:
      print(json.dumps(stats(_TASK.value, _SPLIT.value, _STATS.value, _SEQUENCE_LENGTH.value,
                             _SEED.value, _OBJECTIVE.value), sort_keys=True))
    else:
      print(show_examples(_TASK.value, _SPLIT.value, _NUM_EXAMPLES.value,
                          _SEQUENCE_LENGTH.value, _SEED.value, _OBJECTIVE.value))
  except (ValueError, FileNotFoundError) as e:
    print(f"inspect: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  console.run(main)
