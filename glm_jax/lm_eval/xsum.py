"""XSum summarization in GLM's seq2seq layout, as the reference's seq_xsum.sh builds it.

Part A is always `source_length` (608) tokens: `[CLS] MASK` + encode(" Content:") +
encode(" " + source) cut to fit, then `[PAD]` up to source_length, *inside* Part A (sep =
source_length; the padding is visible to every position and has positions too). MASK is
`special.mask_for('sentence')`: `[sMASK]` for a model with task masks, else `[MASK]`; the
summary fills it at index 1.

  training row    Part A + `sop target[:-1]`, target = (encode(" " + summary) + eop) cut to
                  `target_length` (60) and padded with 0; loss on the real target tokens;
                  Part B positions 1, block positions 1..target_length (padding included)
  generation      Part A is the decoder's context (`source_part`); the reference's context
                  pass is Part A + `sop` (`context_row`)

Source and summary are the reference's reading of the raw BBC files: every line stripped,
empty lines dropped, the rest joined with single spaces. Only a 1,000-row sample of the
XSum test split is at hand (../shared/data/xsum): `SPLITS` slices it for sanity runs.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Dict, Iterator, List, Optional, Tuple

import gin
import numpy as np

from glm_jax import paths, sizes
from glm_jax import task_mask as task_mask_lib
from glm_jax.lm_eval import blank_rows

SPLITS = {"validation": (0, 100), "test": (100, 200), "train": (200, 1000)}
CONTENT_PROMPT = " Content:"
SOURCE_LENGTH = 608  # config_tasks/seq_xsum.sh --src-seq-length
TARGET_LENGTH = 60  # --tgt-seq-length
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def join_lines(text: str) -> str:
  """Each line stripped, empty ones dropped, joined by single spaces (the reference's reader)."""
  return " ".join(line.strip() for line in _LINE_BREAK.split(text) if line.strip())


def read(path: str, split: Optional[str] = None) -> List[Tuple[str, str]]:
  """(source, summary) pairs of a jsonl file of {document, summary} rows, optionally one of SPLITS."""
  p = paths.resolve(path)
  if not p.is_file():
    raise FileNotFoundError(f"XSum file {path} does not exist; set XSUM_PATH to a jsonl of "
                            "{document, summary} rows (../shared/data/xsum).")
  rows = [json.loads(line) for line in p.read_text(encoding="utf-8").split("\n") if line.strip()]
  pairs = [(join_lines(r["document"]), join_lines(r["summary"])) for r in rows]
  if split is None:
    return pairs
  if split not in SPLITS:
    raise ValueError(f"Unknown XSum split {split!r}; use one of {sorted(SPLITS)}.")
  lo, hi = SPLITS[split]
  return pairs[lo:hi]


def source_part(source: str, vocabulary, special, source_length: int = SOURCE_LENGTH
                ) -> Tuple[List[int], int]:
  """(Part A of exactly `source_length` tokens, the index of its mask)."""
  prompt = [special.cls, special.mask_for("sentence")] + [
      int(t) for t in vocabulary.encode(CONTENT_PROMPT)]
  room = source_length - len(prompt)
  if room < 0:
    raise ValueError(f"source_length {source_length} is shorter than the XSum prompt.")
  ids = prompt + [int(t) for t in vocabulary.encode(" " + source)][:room]
  return ids + [special.pad] * (source_length - len(ids)), 1


def target_ids(summary: str, vocabulary, special, target_length: int = TARGET_LENGTH
               ) -> List[int]:
  """encode(" " + summary) + eop, cut to `target_length` (the eop goes first)."""
  return ([int(t) for t in vocabulary.encode(" " + summary)] + [special.eop])[:target_length]


def train_row(source: str, summary: str, vocabulary, special, *,
              source_length: int = SOURCE_LENGTH,
              target_length: int = TARGET_LENGTH) -> Dict[str, object]:
  """Teacher-forced row of source_length + target_length tokens."""
  part_a, mask_index = source_part(source, vocabulary, special, source_length)
  target = target_ids(summary, vocabulary, special, target_length)
  padded = target + [special.pad] * (target_length - len(target))
  weights = [1.0] * len(target) + [0.0] * (target_length - len(target))
  return blank_rows.infill_row(part_a, mask_index, [special.sop] + padded[:-1], padded,
                               source_length + target_length, weights)


def context_row(source: str, vocabulary, special, *,
                source_length: int = SOURCE_LENGTH) -> Dict[str, object]:
  """The reference's generation input: Part A + sop (source_length + 1 tokens)."""
  part_a, mask_index = source_part(source, vocabulary, special, source_length)
  return blank_rows.infill_row(part_a, mask_index, [special.sop], [0], source_length + 1,
                               [0.0])


@functools.lru_cache(maxsize=8)
def _split_rows(path: str, split: str, vocab_spec: str, task_mask: Optional[bool],
                source_length: int, target_length: int):
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  vocabulary = vocab_lib.get_vocabulary(vocab_spec)
  special = task_mask_lib.special_tokens(vocabulary, task_mask)
  return tuple(train_row(s, t, vocabulary, special, source_length=source_length,
                         target_length=target_length) for s, t in read(path, split))


@gin.configurable
def source_length(sequence_length: int, target_length: int = TARGET_LENGTH) -> int:
  """The Part A length of rows of `sequence_length` tokens: sequence_length - target_length."""
  if sequence_length <= target_length:
    raise ValueError(f"SEQUENCE_LENGTH {sequence_length} must exceed TARGET_LENGTH "
                     f"{target_length} (it is source + target; the reference's is 608 + 60).")
  return sequence_length - target_length


@gin.configurable
def num_train_steps(path: str = gin.REQUIRED, split: str = "train", *, epochs: int,
                    batch_size: int, num_examples: int = 0) -> int:
  """epochs * ceil(examples / batch_size): the reference's epochs as optimizer updates."""
  n = len(read(path, split))
  n = min(n, num_examples) if num_examples else n
  return int(epochs * sizes.ceil_div(n, batch_size))


@gin.configurable
def get_batches(name: str, split: str, *, sequence_length: int, batch_size: int,
                seed: int = 0, start_batch: int = 0, shard_index: int = 0, num_shards: int = 1,
                path: str = gin.REQUIRED, vocab_spec: str = "builtin",
                target_length: int = TARGET_LENGTH, num_examples: int = 0,
                num_batches: Optional[int] = None, **unused) -> Iterator[Dict[str, np.ndarray]]:
  """XSum model batches for the trainer; batch i is a pure function of (seed, split, i).

  Rows are sequence_length = source_length + target_length tokens. They are drawn epoch by
  epoch in a seeded order; this process gets rows [shard_index * B / num_shards, ...) of each
  global batch. `num_examples` > 0 keeps only the first examples of the split. The mask
  follows the vocabulary's task-mask flag (or TASK_MASK).
  """
  del name, unused
  if batch_size % num_shards:
    raise ValueError(f"batch_size {batch_size} is not divisible by {num_shards} shards.")
  source = source_length(sequence_length, target_length)
  rows = _split_rows(path, split, vocab_spec, task_mask_lib.override(), source, target_length)
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
