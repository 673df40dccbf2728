"""SuperGLUE task and mixture names, and the TFDS seqio Tasks as cloze questions.

Task names (inputs.parse_task_name reads them):
  superglue_<task>        release JSONL under the gin macro SUPERGLUE_DIR (works offline)
  fewglue_<task>          FewGLUE 32-example train sets (FEWGLUE_DIR); validation/test from
                          SUPERGLUE_DIR
  superglue_<task>_tfds   TFDS super_glue/<task>, a seqio Task, for users who have the TFDS data
Mixtures (equal rates): superglue, superglue_no_record, fewglue, superglue_tfds,
superglue_no_record_tfds; the two TFDS ones are also seqio Mixtures.

The JSONL records are read directly (`sources.load_records`); TFDS records through their
seqio Task, whose features are `inputs_pretokenized` (the pattern with [MASK]), `candidates`
(answer strings), `label` (gold candidate index or -1) and `record` (the flat record as JSON:
the input of patterns.render, which the batching in inputs.py and the evaluator tokenize).
"""

from __future__ import annotations

import functools
import json
from typing import List

import seqio
import tensorflow as tf

from glm_jax.superglue import patterns
from glm_jax.superglue import sources

TFDS_VERSION = "1.0.2"
_TFDS_CONFIGS = {t: t for t in sources.TASKS} | {"wsc": "wsc.fixed"}
_TEXT = seqio.PassThroughVocabulary(size=0)
OUTPUT_FEATURES = {
    "inputs_pretokenized": seqio.Feature(_TEXT, add_eos=False, dtype=tf.string, rank=0),
    "candidates": seqio.Feature(_TEXT, add_eos=False, dtype=tf.string, rank=1),
    "label": seqio.Feature(_TEXT, add_eos=False, dtype=tf.int32, rank=0),
    "record": seqio.Feature(_TEXT, add_eos=False, dtype=tf.string, rank=0),
}
_SIGNATURE = {
    "inputs_pretokenized": tf.TensorSpec([], tf.string),
    "candidates": tf.TensorSpec([None], tf.string),
    "label": tf.TensorSpec([], tf.int32),
    "record": tf.TensorSpec([], tf.string),
}

_NO_RECORD = [t for t in sources.TASKS if t != "record"]
MIXTURES = {
    "superglue": [f"superglue_{t}" for t in sources.TASKS],
    "superglue_no_record": [f"superglue_{t}" for t in _NO_RECORD],
    "fewglue": [f"fewglue_{t}" for t in sources.TASKS],
    "superglue_tfds": [f"superglue_{t}_tfds" for t in sources.TASKS],
    "superglue_no_record_tfds": [f"superglue_{t}_tfds" for t in _NO_RECORD],
}
TASK_NAMES = frozenset(name for names in MIXTURES.values() for name in names)


def cloze_features(task: str, record: dict) -> dict:
  """The seqio features of one flat record (its default pattern)."""
  example = patterns.render(task, record)
  return {"inputs_pretokenized": patterns.pattern_text(example),
          "candidates": list(example.candidates), "label": example.label,
          "record": json.dumps(record)}


def _tfds_to_cloze(dataset: tf.data.Dataset, *, task: str) -> tf.data.Dataset:
  """TFDS super_glue examples -> the cloze features (WSC needs the whole split)."""
  records = sources.from_tfds(task, dataset.as_numpy_iterator())
  return tf.data.Dataset.from_generator(lambda: (cloze_features(task, r) for r in records),
                                        output_signature=_SIGNATURE)


def _register() -> None:
  for task in sources.TASKS:
    name = f"superglue_{task}_tfds"
    if name not in seqio.TaskRegistry.names():
      seqio.TaskRegistry.add(
          name, seqio.TfdsDataSource(f"super_glue/{_TFDS_CONFIGS[task]}:{TFDS_VERSION}"),
          preprocessors=[functools.partial(_tfds_to_cloze, task=task)],
          output_features=OUTPUT_FEATURES)
  for name in ("superglue_tfds", "superglue_no_record_tfds"):
    if name not in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.add(name, MIXTURES[name], default_rate=1.0)


_register()


def task_names(mixture_or_task: str) -> List[str]:
  """The task names of a mixture (or the one task; 'rte' is superglue_rte), in order."""
  if mixture_or_task in sources.TASKS:
    return [f"superglue_{mixture_or_task}"]
  if mixture_or_task in MIXTURES:
    return list(MIXTURES[mixture_or_task])
  if mixture_or_task in TASK_NAMES:
    return [mixture_or_task]
  raise ValueError(f"Unknown SuperGLUE task or mixture {mixture_or_task!r}; use one of "
                   f"{sorted(MIXTURES)} or a task such as superglue_rte.")


def tfds_records(task: str, split: str) -> List[dict]:
  """Flat records of super_glue/<task> read through its seqio task (TFDS data needed)."""
  dataset = seqio.get_mixture_or_task(f"superglue_{task}_tfds").get_dataset(
      sequence_length=None, split=split, shuffle=False)
  return [json.loads(ex["record"]) for ex in dataset.as_numpy_iterator()]
