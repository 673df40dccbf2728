"""seqio Tasks and Mixtures of the eight SuperGLUE tasks as cloze questions.

Registered names (each yields one rendered example per record; features below):
  superglue_<task>        release JSONL under the gin macro SUPERGLUE_DIR (works offline)
  fewglue_<task>          FewGLUE 32-example train sets (FEWGLUE_DIR); validation/test from
                          SUPERGLUE_DIR
  superglue_<task>_tfds   TFDS super_glue/<task> for users who have the TFDS data
  mixtures: superglue, superglue_no_record, fewglue, superglue_tfds,
            superglue_no_record_tfds (equal rates)

Features: `inputs_pretokenized` (the pattern with [MASK]), `candidates` (answer strings),
`label` (gold candidate index or -1), `record` (the flat record as JSON: the input of
patterns.render, which the batching in inputs.py and the evaluator tokenize).
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


def _features(task: str, record: dict) -> dict:
  example = patterns.render(task, record)
  return {"inputs_pretokenized": patterns.pattern_text(example),
          "candidates": list(example.candidates), "label": example.label,
          "record": json.dumps(record)}


def _from_records(task: str, records: List[dict]) -> tf.data.Dataset:
  return tf.data.Dataset.from_generator(lambda: (_features(task, r) for r in records),
                                        output_signature=_SIGNATURE)


def _jsonl_dataset(split: str, shuffle_files: bool = False, seed=None, *, task: str,
                   source: str) -> tf.data.Dataset:
  del shuffle_files, seed  # one file per split; shuffling is the batcher's job
  return _from_records(task, sources.load_records(task, split, source=source))


def _tfds_to_cloze(dataset: tf.data.Dataset, *, task: str) -> tf.data.Dataset:
  """TFDS super_glue examples -> the cloze features (WSC needs the whole split)."""
  return _from_records(task, sources.from_tfds(task, dataset.as_numpy_iterator()))


def _register() -> None:
  for task in sources.TASKS:
    for source in ("superglue", "fewglue"):
      name = f"{source}_{task}"
      if name not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(
            name, seqio.FunctionDataSource(
                functools.partial(_jsonl_dataset, task=task, source=source),
                splits=sources.SPLITS),
            output_features=OUTPUT_FEATURES)
    name = f"superglue_{task}_tfds"
    if name not in seqio.TaskRegistry.names():
      seqio.TaskRegistry.add(
          name, seqio.TfdsDataSource(f"super_glue/{_TFDS_CONFIGS[task]}:{TFDS_VERSION}"),
          preprocessors=[functools.partial(_tfds_to_cloze, task=task)],
          output_features=OUTPUT_FEATURES)
  no_record = [t for t in sources.TASKS if t != "record"]
  mixtures = {
      "superglue": [f"superglue_{t}" for t in sources.TASKS],
      "superglue_no_record": [f"superglue_{t}" for t in no_record],
      "fewglue": [f"fewglue_{t}" for t in sources.TASKS],
      "superglue_tfds": [f"superglue_{t}_tfds" for t in sources.TASKS],
      "superglue_no_record_tfds": [f"superglue_{t}_tfds" for t in no_record],
  }
  for name, tasks in mixtures.items():
    if name not in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.add(name, tasks, default_rate=1.0)


_register()


def task_names(mixture_or_task: str) -> List[str]:
  """The task names of a mixture (or the one task; 'rte' is superglue_rte), in order."""
  if mixture_or_task in sources.TASKS:
    return [f"superglue_{mixture_or_task}"]
  if mixture_or_task in seqio.MixtureRegistry.names():
    return [t.name for t in seqio.get_mixture_or_task(mixture_or_task).tasks]
  if mixture_or_task in seqio.TaskRegistry.names():
    return [mixture_or_task]
  raise ValueError(f"Unknown SuperGLUE task or mixture {mixture_or_task!r}; use one of "
                   f"{sorted(n for n in seqio.MixtureRegistry.names() if 'glue' in n)} or a "
                   "task such as superglue_rte.")


def tfds_records(task: str, split: str) -> List[dict]:
  """Flat records of super_glue/<task> read through its seqio task (TFDS data needed)."""
  dataset = seqio.get_mixture_or_task(f"superglue_{task}_tfds").get_dataset(
      sequence_length=None, split=split, shuffle=False)
  return [json.loads(ex["record"]) for ex in dataset.as_numpy_iterator()]
