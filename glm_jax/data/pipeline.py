"""Trainer-facing input pipeline: numpy model batches where batch i = f(seed, split, i).

For GLM tasks over in-memory corpora (the built-in corpus, local files) the raw samples
are held as a `SampleTable`; example k of the stream is sample perm_e[k mod N] of epoch
e = k // N (a seeded permutation per epoch; validation keeps the corpus order) and its
randomness (short_seq re-cut, objective, spans) comes from stateless seeds folded from
(seed, split, k). Resuming at `start_batch` therefore replays nothing. Other seqio tasks
and Mixtures (TFDS corpora) stream through seqio with a fixed seed; they are deterministic
too but resume by skipping batches.
"""

from __future__ import annotations

import functools
from typing import Dict, Iterator, Optional, Tuple

from absl import logging
import gin
import numpy as np
import seqio
import tensorflow as tf

from glm_jax.data import corpus
from glm_jax.data import feature_converter
from glm_jax.data import objectives
from glm_jax.data import samples
from glm_jax.data import tasks as tasks_lib

LAYOUT_KEYS = ("tokens", "positions", "sep", "targets", "loss_weights")


def _split_id(split: str) -> int:
  return sum(split.encode()) * 7919 + len(split)


@functools.lru_cache(maxsize=16)
def _load_table(corpus_spec: tasks_lib.CorpusSpec, vocabulary_spec: str, split: str,
                raw_length: int) -> Tuple[samples.SampleTable, dict]:
  read_counters = corpus.ReadCounters()
  texts = list(tasks_lib.read_split_documents(corpus_spec, split, read_counters))
  sample_counters = samples.SampleCounters()
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  table = samples.build_sample_table(texts, vocab_lib.get_vocabulary(vocabulary_spec),
                                     raw_length, sample_counters)
  counters = {"read": read_counters.as_dict(), "samples": sample_counters.as_dict()}
  logging.info("Sample table %s/%s (raw length %d): %s", corpus_spec.kind, split, raw_length,
               counters)
  return table, counters


def sample_table(task_name: str, split: str, sequence_length: int
                 ) -> Tuple[samples.SampleTable, dict]:
  """The raw samples of an in-memory GLM task split and the read/sample counters."""
  task = tasks_lib.glm_task(task_name)
  if not task.corpus.in_memory:
    raise ValueError(f"Task {task_name!r} streams from {task.corpus.kind}; it has no sample "
                     "table.")
  return _load_table(task.corpus, task.vocabulary_spec, split, task.mix.raw_length(
      sequence_length))


class _Order:
  """Sample index of stream position k: a seeded permutation per epoch (cached)."""

  def __init__(self, num_samples: int, seed: int, split_id: int, shuffle: bool):
    self._n, self._seed, self._split_id, self._shuffle = num_samples, seed, split_id, shuffle
    self._epoch, self._perm = None, None

  def __call__(self, k: np.ndarray) -> np.ndarray:
    if not self._shuffle:
      return k % self._n
    out = np.empty_like(k)
    epochs = k // self._n
    for epoch in np.unique(epochs):
      if epoch != self._epoch:
        rng = np.random.default_rng([self._seed, self._split_id, int(epoch)])
        self._epoch, self._perm = epoch, rng.permutation(self._n)
      sel = epochs == epoch
      out[sel] = self._perm[k[sel] % self._n]
    return out


def example_fn(task: tasks_lib.GLMTask, sequence_length: int):
  """(raw sample [L], example seed [2]) -> GLM layout example, in TF ops."""
  special = task.vocabulary.special
  kwargs = task.mix.objective_kwargs()
  short_seq_prob = task.mix.short_seq_prob

  def make(tokens, seed):
    short_seed, objective_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    tokens = samples.shorten(tokens, short_seed, short_seq_prob)
    return objectives.construct_example(tokens, objective_seed, special,
                                        sequence_length=sequence_length, **kwargs)
  return make


def _in_memory_batches(task: tasks_lib.GLMTask, split: str, *, sequence_length: int,
                       batch_size: int, seed: int, start_batch: int, shard_index: int,
                       num_shards: int, pack: bool, pack_factor: int,
                       num_batches: Optional[int]) -> Iterator[Dict[str, np.ndarray]]:
  table, _ = sample_table(task.name, split, sequence_length)
  n = table.num_samples
  rows = batch_size // num_shards
  per_row = pack_factor if pack else 1
  shuffle = split == "train"
  one_pass = not shuffle and num_batches is None
  if one_pass:
    num_batches = max(0, -(-n // batch_size) - start_batch)
  order = _Order(n, seed, _split_id(split), shuffle)
  base_seed = np.asarray([seed, _split_id(split)], np.int64)

  def positions():
    """Per batch, the stream positions of this shard's examples, then their samples."""
    i = start_batch
    while num_batches is None or i < start_batch + num_batches:
      first = (i * batch_size + shard_index * rows) * per_row
      k = np.arange(first, first + rows * per_row, dtype=np.int64)
      valid = k < n if one_pass else np.ones(len(k), bool)
      idx = order(np.where(valid, k, 0))
      for j in range(len(k)):
        yield k[j], table[idx[j]], valid[j]
      i += 1

  signature = (tf.TensorSpec([], tf.int64), tf.TensorSpec([None], tf.int32),
               tf.TensorSpec([], tf.bool))
  make = example_fn(task, sequence_length)

  def build(k, tokens, valid):
    ex = make(tokens, tf.random.experimental.stateless_fold_in(base_seed, k))
    ex = {key: ex[key] for key in LAYOUT_KEYS}
    ex["valid"] = valid
    return ex

  ds = tf.data.Dataset.from_generator(positions, output_signature=signature)
  ds = ds.map(build, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  converter = feature_converter.GLMFeatureConverter(pack=pack, pad_id=task.vocabulary.special.pad)
  if pack:
    ds = ds.map(lambda ex: dict(ex, length=tf.shape(ex["tokens"])[0]))
    ds = ds.padded_batch(rows * per_row, padding_values={
        "tokens": converter._pad_id, "positions": 0, "sep": 0,  # pylint: disable=protected-access
        "targets": converter._pad_id, "loss_weights": 0.0, "length": 0,  # pylint: disable=protected-access
        "valid": False})
    ds = ds.map(lambda b: _pack_rows(converter, b, sequence_length, rows),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  else:
    ds = ds.map(lambda ex: dict(converter._pad(ex, sequence_length), valid=ex["valid"]),  # pylint: disable=protected-access
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(rows)
  ds = ds.prefetch(4)
  for batch in ds.as_numpy_iterator():
    valid = batch.pop("valid")
    if not valid.all():
      for key, value in batch.items():
        value[~valid] = 0
    yield batch


def _pack_rows(converter, batch, length: int, rows: int) -> dict:
  """Packs a padded batch of examples (in order) into exactly `rows` rows; drops the rest."""
  valid = batch.pop("valid")
  batch = {k: tf.boolean_mask(v, valid) for k, v in batch.items()}
  packed = converter._pack_batch(batch, length)  # pylint: disable=protected-access
  packed = {k: v[:rows] for k, v in packed.items()}
  missing = rows - tf.shape(packed["tokens"])[0]
  out = {}
  for k, v in packed.items():
    padding = [[0, missing]] + [[0, 0]] * (len(v.shape) - 1)
    out[k] = tf.pad(v, padding)
    out[k].set_shape([rows] + ([2, length] if k == "positions" else [length]))
  out["valid"] = tf.ones([rows], tf.bool)
  return out


def _streaming_batches(name: str, split: str, *, sequence_length: int, batch_size: int,
                       seed: int, start_batch: int, shard_index: int, num_shards: int,
                       pack: bool, num_batches: Optional[int]) -> Iterator[Dict[str, np.ndarray]]:
  provider = seqio.get_mixture_or_task(name)
  vocabulary = provider.output_features["targets"].vocabulary
  train = split == "train"
  ds = provider.get_dataset({"targets": sequence_length}, split=split, shuffle=train,
                            seed=seed, num_epochs=None if train else 1)
  converter = feature_converter.GLMFeatureConverter(pack=pack, pad_id=vocabulary.pad_id)
  ds = converter(ds, {"targets": sequence_length}).batch(batch_size).skip(start_batch)
  if num_batches is not None:
    ds = ds.take(num_batches)
  rows = batch_size // num_shards
  for batch in ds.prefetch(2).as_numpy_iterator():
    yield {k: v[shard_index * rows:(shard_index + 1) * rows] for k, v in batch.items()}


@gin.configurable
def get_batches(mixture_or_task_name: str, split: str = "train", *, sequence_length: int,
                batch_size: int, seed: int = 0, start_batch: int = 0, shard_index: int = 0,
                num_shards: int = 1, pack: bool = False, num_batches: Optional[int] = None,
                pack_factor: int = 2) -> Iterator[Dict[str, np.ndarray]]:
  """Numpy model batches (docs/ARCHITECTURE.md) of this process's rows of each global batch.

  `batch_size` is global; this process gets rows [shard_index * b, (shard_index + 1) * b),
  b = batch_size / num_shards. Training streams forever unless `num_batches`; validation is
  one pass (the last batch padded with all-zero rows) unless `num_batches`. With `pack`,
  batch i packs `pack_factor` examples per row in order and drops what does not fit.
  """
  if batch_size <= 0 or num_shards <= 0 or batch_size % num_shards:
    raise ValueError(f"batch_size {batch_size} must be a positive multiple of num_shards "
                     f"{num_shards}.")
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index {shard_index} is not in [0, {num_shards}).")
  if start_batch < 0:
    raise ValueError(f"start_batch {start_batch} must be >= 0.")
  kwargs = dict(sequence_length=sequence_length, batch_size=batch_size, seed=seed,
                start_batch=start_batch, shard_index=shard_index, num_shards=num_shards,
                pack=pack, num_batches=num_batches)
  if tasks_lib.is_glm_task(mixture_or_task_name):
    task = tasks_lib.glm_task(mixture_or_task_name)
    if task.corpus.in_memory:
      return _in_memory_batches(task, split, pack_factor=pack_factor, **kwargs)
  if mixture_or_task_name not in seqio.TaskRegistry.names() | seqio.MixtureRegistry.names():
    raise ValueError(f"Unknown task or mixture {mixture_or_task_name!r}; import "
                     "glm_jax.data.tasks or register it first.")
  return _streaming_batches(mixture_or_task_name, split, **kwargs)


def get_vocabulary_for_task(name: str):
  """The vocabulary of a task or mixture (its `.spec` goes into checkpoints)."""
  if tasks_lib.is_glm_task(name):
    return tasks_lib.glm_task(name).vocabulary
  try:
    provider = seqio.get_mixture_or_task(name)
  except ValueError as e:
    raise ValueError(f"Unknown task or mixture {name!r}; import glm_jax.data.tasks or "
                     "register it first.") from e
  return provider.output_features["targets"].vocabulary
