"""XSum summarization in GLM's seq2seq layout (GLM_SPEC.md section 7).

Part A = `[CLS] [sMASK] " Content:" source`, Part B = `sop target`, targets `target eop`,
so the summary fills the [sMASK] at index 1. Only a 1,000-row sample of the XSum test split
is available here (../shared/data/xsum), so the splits below are slices of it, for sanity
runs only: validation rows 0-99, test rows 100-199, train rows 200-999.
"""

from __future__ import annotations

import functools
import json
from typing import Dict, Iterator, List, Optional, Tuple

import gin
import numpy as np

from glm_jax import paths
from glm_jax.lm_eval import blank_rows

SPLITS = {"validation": (0, 100), "test": (100, 200), "train": (200, 1000)}
CONTENT_PROMPT = " Content:"


def read(path: str, split: Optional[str] = None) -> List[Tuple[str, str]]:
  """(document, summary) pairs of a jsonl file, optionally one of SPLITS."""
  if not paths.resolve(path).is_file():
    raise FileNotFoundError(f"XSum file {path} does not exist; set XSUM_PATH to a jsonl of "
                            "{document, summary} rows (../shared/data/xsum).")
  rows = [json.loads(line) for line in paths.read_text(path).splitlines() if line.strip()]
  pairs = [(r["document"], r["summary"]) for r in rows]
  if split is None:
    return pairs
  if split not in SPLITS:
    raise ValueError(f"Unknown XSum split {split!r}; use one of {sorted(SPLITS)}.")
  lo, hi = SPLITS[split]
  return pairs[lo:hi]


def part_a(document: str, vocabulary, source_length: int) -> List[int]:
  """`[CLS] [sMASK] " Content:" source` truncated to `source_length` tokens."""
  special = vocabulary.special
  head = [special.cls, special.smask] + [int(t) for t in vocabulary.encode(CONTENT_PROMPT)]
  source = [int(t) for t in vocabulary.encode(" ".join(document.split()))]
  return (head + source)[:source_length]


def target_ids(summary: str, vocabulary, target_length: int) -> List[int]:
  return [int(t) for t in vocabulary.encode(" ".join(summary.split()))][:target_length]


def train_row(document: str, summary: str, vocabulary, *, sequence_length: int,
              target_length: int = 60) -> Dict[str, object]:
  """Teacher-forced row: Part B = sop target, targets = target eop."""
  special = vocabulary.special
  target = target_ids(summary, vocabulary, target_length)
  source_length = sequence_length - len(target) - 1
  a = part_a(document, vocabulary, source_length)
  return blank_rows.infill_row(a, 1, [special.sop] + target, target + [special.eop],
                               sequence_length)


@functools.lru_cache(maxsize=8)
def _split_rows(path: str, split: str, vocab_spec: str, sequence_length: int,
                target_length: int):
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  vocabulary = vocab_lib.get_vocabulary(vocab_spec)
  return tuple(train_row(d, s, vocabulary, sequence_length=sequence_length,
                         target_length=target_length) for d, s in read(path, split))


@gin.configurable
def get_batches(name: str, split: str, *, sequence_length: int, batch_size: int,
                seed: int = 0, start_batch: int = 0, shard_index: int = 0, num_shards: int = 1,
                path: str = gin.REQUIRED, vocab_spec: str = "builtin", target_length: int = 60,
                num_examples: int = 0, num_batches: Optional[int] = None,
                **unused) -> Iterator[Dict[str, np.ndarray]]:
  """XSum model batches for the trainer; batch i is a pure function of (seed, split, i).

  Rows are drawn epoch by epoch in a seeded order; this process gets rows
  [shard_index * B / num_shards, ...) of each global batch. `num_examples` > 0 keeps only
  the first examples of the split (a sanity fine-tune on a few dozen).
  """
  del name, unused
  if batch_size % num_shards:
    raise ValueError(f"batch_size {batch_size} is not divisible by {num_shards} shards.")
  rows = _split_rows(path, split, vocab_spec, sequence_length, target_length)
  if num_examples:
    rows = rows[:num_examples]
  n, per_shard = len(rows), batch_size // num_shards
  index = start_batch
  while num_batches is None or index < start_batch + num_batches:
    picked = []
    for r in range(shard_index * per_shard, (shard_index + 1) * per_shard):
      g = index * batch_size + r
      order = np.random.default_rng([seed, g // n]).permutation(n)
      picked.append(rows[order[g % n]])
    yield blank_rows.stack_rows(picked)
    index += 1
