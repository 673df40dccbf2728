"""Looks at what a GLM task feeds the model: exactly the trainer's examples.

  python -m glm_jax.data.inspect --task=glm_builtin [--split=train] [--num_examples=3]
      [--seed=SEED] [--start=K] [--vocabulary=SPEC] [--sequence_length=T]
  python -m glm_jax.data.inspect --task=glm_builtin_2b --stats=500 [--objective=token]

Examples k = start.. are the trainer's stream positions (row r of global batch i is
i * B + r) built by the same source and seeds, before padding. Examples are printed decoded,
Part A and Part B apart (each Part B span with the position of its mask). `--stats=N`
prints one JSON object: per objective over N samples, `objectives.layout_statistics`:
masked_fraction_mean/std (span tokens / raw sample length), span_length_hist (lengths 1..40,
normalised), spans_per_sample_mean, length_mean (tokens after construction) and the layout
counters; with `--objective` the object is that objective's statistics alone. The read and
sample counters (what preparation skipped: empty lines, invalid UTF-8, bad JSON; what drawing
the samples did: windows, sentence-aligned starts and cuts, re-cuts) are reported as well.
"""

from __future__ import annotations

import json

if __name__ == "__main__":  # the quiet start must come before TensorFlow loads
  from glm_jax import console  # pylint: disable=g-import-not-at-top
  console.quiet_startup()
from typing import Dict, List, Optional, Sequence

from absl import flags
import numpy as np
import tensorflow as tf

from glm_jax import gin_utils
from glm_jax.data import objectives
from glm_jax.data import samples
from glm_jax.data import source as source_lib
from glm_jax.data import tasks as tasks_lib

_TASK = flags.DEFINE_string("task", None, "Task name (e.g. glm_builtin, text:PATH).")
_SPLIT = flags.DEFINE_string("split", "train", "train or validation.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 3, "Examples to print.")
_STATS = flags.DEFINE_integer("stats", 0, "If > 0: print statistics over this many samples.")
_OBJECTIVE = flags.DEFINE_enum("objective", None, list(objectives.OBJECTIVES),
                               "Restrict to one objective.")
_SEQUENCE_LENGTH = flags.DEFINE_integer("sequence_length", 512, "Model sequence length T.")
_SEED = flags.DEFINE_integer("seed", 0, "The run's data seed (DATA_SEED, default SEED).")
_START = flags.DEFINE_integer("start", 0, "First stream position: batch i, row r of batch "
                              "size B is i * B + r.")
_VOCABULARY = flags.DEFINE_string("vocabulary", None, "The run's VOCABULARY (default: the "
                                  "task's).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder of the named prepared corpora "
                                "(PREPARED_DATA_DIR; default $GLM_JAX_DATA_DIR).")

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


def format_example(vocabulary, example: Dict[str, np.ndarray], index: int) -> str:
  sep = int(example["sep"])
  tokens = example["tokens"]
  objective = objectives.OBJECTIVES[int(example.get("objective", 0))]
  lines = [f"=== example {index}: objective={objective} length={len(tokens)} sep={sep} "
           f"spans={int(example.get('num_spans', 0))}",
           f"Part A: {render(vocabulary, tokens[:sep])}", "Part B:"]
  for start, end, length in zip(*objectives.part_b_spans(example)):
    lines.append(f"  [pos {int(example['positions'][0, start])}, {length} tokens] "
                 f"{render(vocabulary, example['targets'][start:end])}")
  return "\n".join(lines)


def examples(task_name: str, split: str, sequence_length: int, seed: int = 0, start: int = 0,
             count: int = 3, objective: Optional[str] = None, vocabulary: Optional[str] = None,
             data_dir: Optional[str] = None) -> List[Dict[str, np.ndarray]]:
  """Examples at stream positions start.. of the trainer's stream (one objective if given).

  Row r of global batch i of a run with batch size B is stream position i * B + r. Each
  example also carries its raw sample ('sample') and its raw length after the re-cut.
  """
  src = tasks_lib.get_source(task_name, vocabulary, data_dir)
  probs = None
  if objective is not None:
    probs = tuple(float(o == objective) for o in objectives.OBJECTIVES)
  positions = tf.data.Dataset.range(start, start + count).map(
      lambda k: source_lib.index_features(split, seed, k))
  out = []
  for k, ex in zip(range(start, start + count),
                   src.examples(positions, sequence_length, probs).as_numpy_iterator()):
    ex = dict(ex)
    ex["raw_length"] = objectives.raw_sample_length(ex)  # after the re-cut
    ex["sample"] = src.raw_sample(split, seed, k, sequence_length)
    out.append(ex)
  return out


def counters(task_name: str, split: str, sequence_length: int, seed: int = 0,
             num_samples: int = 200, vocabulary: Optional[str] = None,
             data_dir: Optional[str] = None) -> dict:
  """What preparing the corpora skipped (manifests) and what drawing samples 0.. did."""
  src = tasks_lib.get_source(task_name, vocabulary, data_dir)
  drawn = samples.SampleCounters()
  for k in range(num_samples):
    src.raw_sample(split, seed, k, sequence_length, drawn)
  read = {}
  for component in src.components:
    for key, value in component.manifest["counters"].items():
      read[key] = read.get(key, 0) + value
  return {"read": read, "samples": drawn.as_dict()}


def stats(task_name: str, split: str, num_samples: int, sequence_length: int, seed: int = 0,
          objective: Optional[str] = None, vocabulary: Optional[str] = None,
          data_dir: Optional[str] = None) -> dict:
  """`--stats`: per-objective statistics (flat when `objective` is given) plus counters."""
  src = tasks_lib.get_source(task_name, vocabulary, data_dir)
  names = [objective] if objective else [
      o for o, p in zip(objectives.OBJECTIVES, src.mix.objective_probs) if p > 0]
  result = {name: objectives.layout_statistics(examples(
      task_name, split, sequence_length, seed, 0, num_samples, name, vocabulary, data_dir))
            for name in names}
  found = counters(task_name, split, sequence_length, seed, num_samples, vocabulary, data_dir)
  if objective:
    return dict(result[objective], objective=objective, counters=found)
  return dict(result, counters=found)


def show_examples(task_name: str, split: str, num_examples: int, sequence_length: int,
                  seed: int = 0, objective: Optional[str] = None, start: int = 0,
                  vocabulary: Optional[str] = None, data_dir: Optional[str] = None) -> str:
  src = tasks_lib.get_source(task_name, vocabulary, data_dir)
  blocks = [format_example(src.vocabulary, ex, start + k) for k, ex in enumerate(
      examples(task_name, split, sequence_length, seed, start, num_examples, objective,
               vocabulary, data_dir))]
  found = counters(task_name, split, sequence_length, seed, max(num_examples, 50), vocabulary,
                   data_dir)
  blocks.append(f"counters: {json.dumps(found, sort_keys=True)}")
  return "\n".join(blocks)


def main(argv):
  gin_utils.begin_cli(argv, "--task, --split, --num_examples")
  if not _TASK.value:
    raise ValueError("Pass --task=NAME (e.g. --task=glm_builtin).")
  if (_SEQUENCE_LENGTH.value < 8 or _NUM_EXAMPLES.value < 0 or _STATS.value < 0
      or _START.value < 0):
    raise ValueError("--sequence_length must be at least 8 and --num_examples / --stats / "
                     "--start not negative.")
  options = dict(vocabulary=_VOCABULARY.value, data_dir=_DATA_DIR.value)
  if _STATS.value > 0:
    print(json.dumps(stats(_TASK.value, _SPLIT.value, _STATS.value, _SEQUENCE_LENGTH.value,
                           _SEED.value, _OBJECTIVE.value, **options), sort_keys=True))
  else:
    print(show_examples(_TASK.value, _SPLIT.value, _NUM_EXAMPLES.value,
                        _SEQUENCE_LENGTH.value, _SEED.value, _OBJECTIVE.value, _START.value,
                        **options))


if __name__ == "__main__":
  gin_utils.run(main)
