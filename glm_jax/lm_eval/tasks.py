"""seqio Tasks for the language-model evaluations: their rows as fixed-length model rows.

`register_tasks()` (gin-configurable; paths come from gin macros LAMBADA_PATH, WIKITEXT_DIR
and XSUM_PATH, see configs/runs/eval_lm.gin) adds:

  glm_lambada, glm_lambada_uni             split 'test'
  glm_wikitext2, glm_wikitext2_uni         splits 'test', 'validation'
  glm_xsum                                 splits 'train', 'validation', 'test'

Each example already is a model row (tokens, positions, sep, targets, loss_weights), built by
the same functions the evaluators in glm_jax.lm_eval.evaluate use, with the vocabulary's
task-mask flag (or TASK_MASK).
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, List

import gin
import numpy as np
import seqio
import tensorflow as tf

from glm_jax import task_mask
from glm_jax.lm_eval import blank_rows, lambada, wikitext, xsum


def _signature(length: int) -> Dict[str, tf.TensorSpec]:
  return {"tokens": tf.TensorSpec([length], tf.int32),
          "positions": tf.TensorSpec([2, length], tf.int32),
          "sep": tf.TensorSpec([], tf.int32),
          "targets": tf.TensorSpec([length], tf.int32),
          "loss_weights": tf.TensorSpec([length], tf.float32)}


def _source(build: Callable[[str], List[dict]], splits, length: int) -> seqio.DataSource:
  """A FunctionDataSource over rows built lazily (once per split) in Python."""
  cached = functools.lru_cache(maxsize=None)(build)

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    rows = [{k: r[k] for k in blank_rows.FEATURES} for r in cached(split)]
    return tf.data.Dataset.from_generator(lambda: iter(rows),
                                          output_signature=_signature(length))

  return seqio.FunctionDataSource(dataset_fn, splits=list(splits))


def _features(vocabulary) -> Dict[str, seqio.Feature]:
  return {"tokens": seqio.Feature(vocabulary, add_eos=False),
          "targets": seqio.Feature(vocabulary, add_eos=False)}


def _add(name: str, source, vocabulary) -> None:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, source=source, output_features=_features(vocabulary),
                         shuffle_buffer_size=None)


@gin.configurable
def register_tasks(vocab_spec: str = "builtin", *, lambada_path: str = gin.REQUIRED,
                   wikitext_dir: str = gin.REQUIRED, xsum_path: str = gin.REQUIRED,
                   lambada_length: int = lambada.SEQUENCE_LENGTH,
                   wikitext_length: int = 512, wikitext_overlap: int = wikitext.OVERLAP,
                   wikitext_convention: str = "glm_jax",
                   xsum_source_length: int = xsum.SOURCE_LENGTH,
                   xsum_target_length: int = xsum.TARGET_LENGTH) -> List[str]:
  """Registers (or re-registers) the tasks for one vocabulary; returns their names."""
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  vocabulary = vocab_lib.get_vocabulary(vocab_spec)
  special = task_mask.special_tokens(vocabulary)
  names = []
  for suffix, bidirectional in (("", True), ("_uni", False)):
    build = functools.partial(
        lambda split, bi: lambada.build_rows(lambada.read(lambada_path), vocabulary, special,
                                             sequence_length=lambada_length,
                                             bidirectional=bi), bi=bidirectional)
    _add(f"glm_lambada{suffix}", _source(build, ["test"], lambada_length), vocabulary)
    names.append(f"glm_lambada{suffix}")

    def build_wiki(split, bi=bidirectional):
      raw = wikitext.read(wikitext.split_path(wikitext_dir, split))
      return wikitext.build_rows(wikitext.tokenize(raw, vocabulary, wikitext_convention),
                                 special, sequence_length=wikitext_length,
                                 overlap=wikitext_overlap, bidirectional=bi,
                                 convention=wikitext_convention)

    _add(f"glm_wikitext2{suffix}", _source(build_wiki, wikitext.SPLIT_FILES, wikitext.row_length(
        wikitext_length, wikitext_convention)), vocabulary)
    names.append(f"glm_wikitext2{suffix}")

  def build_xsum(split):
    return [xsum.train_row(s, t, vocabulary, special, source_length=xsum_source_length,
                           target_length=xsum_target_length)
            for s, t in xsum.read(xsum_path, split)]

  _add("glm_xsum", _source(build_xsum, xsum.SPLITS, xsum_source_length + xsum_target_length),
       vocabulary)
  names.append("glm_xsum")
  return names


def task_rows(name: str, split: str, limit: int = 0) -> Dict[str, np.ndarray]:
  """The first `limit` (0: all) rows of a registered task as stacked numpy arrays."""
  ds = seqio.get_mixture_or_task(name).get_dataset(
      sequence_length=None, split=split, shuffle=False, use_cached=False)
  if limit:
    ds = ds.take(limit)
  return blank_rows.stack_rows(list(ds.as_numpy_iterator()))
