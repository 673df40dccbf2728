"""Trainer-facing input pipeline: numpy model batches where batch i = f(seed, split, i).

GLM tasks and mixtures read their prepared corpora through the index-addressable source
(`source.py`): row r of global batch i is stream position k = i * B + r (times `pack_factor`
plus the slot when packing), and example k is a pure function of (seed, split, k). A process
builds only the rows of its shard, and `start_batch` resumes at any batch without replay.
Other seqio tasks and mixtures (not GLM corpora) stream through seqio with `shard_info`;
they resume by skipping batches.
"""

from __future__ import annotations

from typing import Dict, Iterator, Optional

from absl import logging
import gin
import numpy as np
import seqio
import tensorflow as tf

from glm_jax import sizes
from glm_jax.data import corpus
from glm_jax.data import feature_converter
from glm_jax.data import source as source_lib
from glm_jax.data import tasks as tasks_lib

LAYOUT_KEYS = ("tokens", "positions", "sep", "targets", "loss_weights")


def stream_positions(batch: int, batch_size: int, shard_index: int, num_shards: int,
                     per_row: int = 1) -> np.ndarray:
  """Stream positions of this shard's rows of global batch `batch` ([rows * per_row])."""
  rows = batch_size // num_shards
  first = (batch * batch_size + shard_index * rows) * per_row
  return np.arange(first, first + rows * per_row, dtype=np.int64)


def _glm_batches(source, split: str, *, sequence_length: int, batch_size: int, seed: int,
                 start_batch: int, shard_index: int, num_shards: int, pack: bool,
                 pack_factor: int, num_batches: Optional[int],
                 num_threads: Optional[int]) -> Iterator[Dict[str, np.ndarray]]:
  name = source.name
  rows = batch_size // num_shards
  per_row = pack_factor if pack else 1
  one_pass = split != "train" and num_batches is None
  n = source.num_samples(split, sequence_length) if one_pass else None
  if one_pass:
    num_batches = max(0, sizes.ceil_div(n, batch_size * per_row) - start_batch)
  logging.info("Input %s/%s: process rows [%d, %d) of every global batch of %d (stream "
               "positions (i * %d + r) * %d + j), from batch %d.", name, split,
               shard_index * rows, (shard_index + 1) * rows, batch_size, batch_size, per_row,
               start_batch)

  # Element m of this process's stream: slot j of global batch i, stream position k.
  per_batch = rows * per_row
  stop = (1 << 62) if num_batches is None else (start_batch + num_batches) * per_batch

  def features(m):
    i, j = m // per_batch, m % per_batch
    k = (i * batch_size + shard_index * rows) * per_row + j   # = stream_positions(i, ...)[j]
    valid = tf.constant(True) if n is None else k < n
    return dict(source_lib.index_features(split, seed, tf.where(valid, k, 0)), valid=valid)

  ds = tf.data.Dataset.range(start_batch * per_batch, stop).map(features)
  ds = source.examples(ds, sequence_length).map(
      lambda ex: dict({key: ex[key] for key in LAYOUT_KEYS}, valid=ex["valid"]))
  converter = feature_converter.GLMFeatureConverter(pack=pack, pad_id=source.special.pad)
  if pack:
    ds = ds.map(lambda ex: dict(ex, length=tf.shape(ex["tokens"])[0]))
    ds = ds.padded_batch(rows * per_row, padding_values=dict(converter.padding_values,
                                                              length=0, valid=False))
    ds = ds.map(lambda b: _pack_rows(converter, b, sequence_length, rows),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  else:
    ds = ds.map(lambda ex: dict(converter._pad(ex, sequence_length), valid=ex["valid"]),  # pylint: disable=protected-access
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(rows)
  ds = ds.prefetch(4)
  if num_threads:
    options = tf.data.Options()
    options.threading.private_threadpool_size = num_threads
    options.threading.max_intra_op_parallelism = 1
    ds = ds.with_options(options)
  for batch in ds.as_numpy_iterator():
    valid = batch.pop("valid")
    if not valid.all():
      batch = {k: np.where(valid.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0).astype(v.dtype)
               for k, v in batch.items()}
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
  """Other seqio tasks: this process's shard of the stream, batched; resume skips batches."""
  provider = seqio.get_mixture_or_task(name)
  vocabulary = provider.output_features["targets"].vocabulary
  train = split == "train"
  ds = provider.get_dataset({"targets": sequence_length}, split=split, shuffle=train,
                            seed=seed, num_epochs=None if train else 1,
                            shard_info=seqio.ShardInfo(shard_index, num_shards))
  converter = feature_converter.GLMFeatureConverter(pack=pack, pad_id=vocabulary.pad_id)
  ds = converter(ds, {"targets": sequence_length}).batch(batch_size // num_shards)
  ds = ds.skip(start_batch)
  if num_batches is not None:
    ds = ds.take(num_batches)
  yield from ds.prefetch(2).as_numpy_iterator()


@gin.configurable
def get_batches(mixture_or_task_name: str, split: str = "train", *, sequence_length: int,
                batch_size: int, seed: int = 0, start_batch: int = 0, shard_index: int = 0,
                num_shards: int = 1, pack: bool = False, num_batches: Optional[int] = None,
                pack_factor: int = 2, vocabulary: Optional[str] = None,
                data_dir: Optional[str] = None, num_threads: Optional[int] = None,
                max_dropped_fraction: float = corpus.DEFAULT_MAX_DROPPED_FRACTION
                ) -> Iterator[Dict[str, np.ndarray]]:
  """Numpy model batches (docs/ARCHITECTURE.md) of this process's rows of each global batch.

  `batch_size` is global; this process gets rows [shard_index * b, (shard_index + 1) * b),
  b = batch_size / num_shards. Training streams forever unless `num_batches`; validation is
  one pass (the last batch padded with all-zero rows) unless `num_batches`. With `pack`,
  batch i packs `pack_factor` examples per row in order and drops what does not fit.
  `vocabulary` (a spec; default the task's) tokenizes the corpus; `data_dir` holds the named
  prepared corpora (default $GLM_JAX_DATA_DIR); `num_threads` caps the input's tf.data
  threads (None: TF's default, every core). A corpus prepared on first use (built-in,
  `text:`) stops the call when one of its files has more than `max_dropped_fraction` bad
  lines (gin MAX_DROPPED_FRACTION).
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
  if tasks_lib.is_glm(mixture_or_task_name):
    if split not in tasks_lib.SPLITS:
      raise ValueError(f"Unknown split {split!r}; use one of {tasks_lib.SPLITS}.")
    # Resolved now, so a missing corpus or another vocabulary fails at the call, not at the
    # first batch.
    source = tasks_lib.get_source(mixture_or_task_name, vocabulary, data_dir,
                                  max_dropped_fraction)
    source.check_split(split)
    return _glm_batches(source, split, pack_factor=pack_factor, num_threads=num_threads,
                        **kwargs)
  if mixture_or_task_name not in seqio.TaskRegistry.names() | seqio.MixtureRegistry.names():
    raise ValueError(f"Unknown task or mixture {mixture_or_task_name!r}; import "
                     "glm_jax.data.tasks or register it first.")
  return _streaming_batches(mixture_or_task_name, split, **kwargs)
