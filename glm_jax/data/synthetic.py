"""TF-free synthetic blank-infilling batches (tests, parity runs): no files, no vocabulary."""

from __future__ import annotations

from typing import Dict, Iterator, Optional

import gin
import numpy as np

SYNTHETIC_VOCABULARY = "synthetic"  # ids of no text vocabulary (synthetic_batches, fixtures): unchecked


@gin.configurable
def synthetic_batches(mixture_or_task_name: str, split: str, *, sequence_length: int,
                      batch_size: int, seed: int, start_batch: int = 0, shard_index: int = 0,
                      num_shards: int = 1, pack: bool = False, num_batches: Optional[int] = None,
                      vocab_size: int = 128, vocabulary: Optional[str] = None
                      ) -> Iterator[Dict[str, np.ndarray]]:
  """Blank-infilling batches of arithmetic-progression 'documents' (tests; no TF, no files).

  Same contract as glm_jax.data.pipeline.get_batches: batch i is a pure function of
  (seed, split, i); this process gets rows [shard_index * B / num_shards, ...) of each global
  batch. Each row: `[CLS] doc` with one span replaced by [MASK] (Part A), then sop + span
  (Part B) with targets span + eop; ids 0 pad, 1 cls, 2 mask, 3 sop, 4 eop.
  """
  del mixture_or_task_name, pack, vocabulary
  if batch_size % num_shards:
    raise ValueError(f"batch_size {batch_size} is not divisible by {num_shards} shards.")
  if sequence_length < 8 or vocab_size < 8:
    raise ValueError("synthetic_batches needs sequence_length >= 8 and vocab_size >= 8.")
  rows = batch_size // num_shards
  split_id = sum(split.encode())
  index = start_batch
  while num_batches is None or index < start_batch + num_batches:
    examples = [_synthetic_row(np.random.default_rng([seed, split_id, index, r]),
                               sequence_length, vocab_size)
                for r in range(shard_index * rows, (shard_index + 1) * rows)]
    yield {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    index += 1


def _synthetic_row(rng, length: int, vocab: int) -> Dict[str, np.ndarray]:
  doc_len = length - 2 - int(rng.integers(0, length // 4))  # [CLS] + words
  start_word, stride = int(rng.integers(0, vocab - 5)), int(rng.integers(1, 4))
  doc = np.concatenate([[1], 5 + (start_word + stride * np.arange(doc_len - 1)) % (vocab - 5)])
  span = int(rng.integers(1, max(2, doc_len // 4)))
  begin = int(rng.integers(1, doc_len - span + 1))
  part_a = np.concatenate([doc[:begin], [2], doc[begin + span:]])
  sep = len(part_a)
  inputs = np.concatenate([part_a, [3], doc[begin:begin + span]])
  used = len(inputs)
  tokens = np.zeros(length, np.int32)
  tokens[:used] = inputs
  targets = np.zeros(length, np.int32)
  targets[sep:used] = np.concatenate([doc[begin:begin + span], [4]])
  weights = np.zeros(length, np.float32)
  weights[sep:used] = 1.0
  positions = np.zeros((2, length), np.int32)
  positions[0, :sep] = np.arange(sep)
  positions[0, sep:used] = begin
  positions[1, sep:used] = np.arange(1, span + 2)
  return {"tokens": tokens, "positions": positions, "sep": np.int32(sep), "targets": targets,
          "loss_weights": weights}
