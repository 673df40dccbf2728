"""Raw GLM samples drawn from a prepared corpus split, as the reference's BlockDataset draws them.

A raw sample of length L (GLM_SPEC.md section 2) opens with [CLS]; each document in it ends
with eos. Sample k is drawn with its own RNG (seeded from (seed, split, k) by source.py), so
any sample is built without the ones before it:

1. A document is drawn token-weighted: a uniform token position of the split, and the
   document holding it (P(document) is proportional to its length).
2. A document that does not fit (len + eos > L - 1) gives a window: a uniform start, moved
   left or right (even odds) by up to L // 2 tokens to just after a sentence end; then
   `[CLS] window`, right-stripped to L.
3. A shorter document gives `[CLS] doc eos`, and more documents are drawn and appended as
   `[CLS] doc eos` until the sample reaches L; the last one is right-stripped to the room left.
4. Right-strip to n: keep the longest prefix of at most n tokens that ends at a sentence end,
   unless that is shorter than n // 2; then keep n.
5. With probability `short_seq_prob` the sample is re-cut (the reference's `split_samples`):
   a target length uniform in [32, L - 1), a uniform start moved left to a sentence start,
   its end moved left to a sentence end (unless that halves it), and [CLS] in front.

Sentence ends are the ids whose token contains an end mark (`vocab.special.sentence_end_ids`,
as the reference's `contains_sentence_end`); eos also ends a sentence in step 5, as there.
Differences from the reference: one piece per re-cut sample (the reference cuts each sample
of the micro-batch into (L - 1) // target pieces, so a re-cut batch has more, shorter rows;
ours keeps the batch shape), the re-cut is drawn per sample rather than per micro-batch, and
a window that would hold nothing but an eos is drawn again (the reference returns an empty
sample).
"""

from __future__ import annotations

import dataclasses
import random
from typing import List, Optional

import numpy as np

from glm_jax.data.special_tokens import SpecialTokens

SHORT_SEQ_MIN = 32


@dataclasses.dataclass
class SampleCounters:
  """What drawing samples did (reported by `inspect`)."""

  samples: int = 0
  documents: int = 0        # documents drawn into samples
  windows: int = 0          # long documents cut to a window
  sentence_starts: int = 0  # windows starting just after a sentence end
  sentence_cuts: int = 0    # right-strips that ended at a sentence end
  hard_cuts: int = 0        # right-strips with no sentence end in the second half
  redraws: int = 0          # windows that held only an eos, drawn again
  short_recuts: int = 0     # samples re-cut by short_seq_prob
  tokens: int = 0

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)

  def merge(self, other: "SampleCounters") -> None:
    for field in dataclasses.fields(self):
      setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def sentence_end_table(special: SpecialTokens, vocab_size: int) -> np.ndarray:
  """bool [vocab_size]: whether each id ends a sentence."""
  table = np.zeros(max(vocab_size, 1), bool)
  ids = [i for i in special.sentence_end_ids if 0 <= i < len(table)]
  table[ids] = True
  return table


class SampleBuilder:
  """Draws raw samples of `raw_length` tokens from one split (a `prepared.Split`)."""

  def __init__(self, split, special: SpecialTokens, raw_length: int, short_seq_prob: float,
               is_end: np.ndarray):
    if raw_length < 4:
      raise ValueError(f"raw_length {raw_length} is too short; use at least 4.")
    if split.num_tokens <= 0:
      raise ValueError("The corpus split has no tokens; check the prepared corpus.")
    self._split = split
    self._length = raw_length
    self._short_seq_prob = short_seq_prob
    self._cls = np.asarray([special.cls], np.int32)
    self._eos = special.eos
    self._is_end = is_end

  def _ends(self, tokens: np.ndarray) -> np.ndarray:
    """bool per token: ends a sentence (ids past the table never do)."""
    inside = tokens < len(self._is_end)
    return np.where(inside, self._is_end[np.where(inside, tokens, 0)], False)

  def _draw(self, rng: random.Random):
    position = min(int(rng.random() * self._split.num_tokens), self._split.num_tokens - 1)
    return self._split.locate(position)

  def _doc_tokens(self, shard: int, start: int, stop: int, lo: int, hi: int) -> np.ndarray:
    """Tokens [lo, hi) of `document + eos` (the eos sits at index stop - start)."""
    n = stop - start
    body = self._split.read(shard, start + lo, start + min(hi, n)) if lo < n else np.zeros(
        [0], np.int32)
    if hi > n:
      body = np.append(body, np.int32(self._eos))
    return body

  def _right_strip(self, tokens: np.ndarray, total: int, room: int,
                   counters: SampleCounters) -> np.ndarray:
    """`tokens` (the first min(total, room) tokens of a piece of `total`) cut to fit `room`."""
    if total <= room:
      return tokens
    ends = np.flatnonzero(self._ends(tokens[1:room])) + 2   # kept lengths ending at an end
    keep = int(ends[-1]) if len(ends) else 1
    if keep < room // 2:
      keep = room
      counters.hard_cuts += 1
    else:
      counters.sentence_cuts += 1
    return tokens[:keep]

  def _window(self, rng, shard, start, stop, counters) -> Optional[np.ndarray]:
    """[CLS] + a sentence-aligned window of a long document, right-stripped to L (None: empty)."""
    length, half = self._length, self._length // 2
    n = stop - start + 1                                           # with eos
    s = int(rng.random() * (n - length + 1))
    left = rng.random() < 0.5
    lo, hi = max(0, s - half - 1), min(n, s + half + length + 1)
    tokens = self._doc_tokens(shard, start, stop, lo, hi)
    ends = self._ends(tokens)
    # A window may start at q when q == 0 or the token before q ends a sentence; the walk
    # goes one way from s and stops there, at the document's end, or after L // 2 moves.
    if left:
      qs = np.arange(s, max(s - half, 0) - 1, -1)
      ok = (qs == 0) | ends[np.maximum(qs - 1 - lo, 0)]
    else:
      # q == 0 looks at the eos (the reference's tokens[-1]), never a sentence end.
      qs = np.arange(s, min(s + half, n) + 1)
      ok = (qs == n) | ((qs > 0) & ends[np.clip(qs - 1 - lo, 0, len(ends) - 1)])
    hits = np.flatnonzero(ok)
    start_at = int(qs[hits[0]]) if len(hits) else int(qs[-1])
    if len(hits) and 0 < start_at < n:
      counters.sentence_starts += 1
    piece = tokens[start_at - lo:start_at - lo + length]
    if not len(piece) or (len(piece) == 1 and piece[0] == self._eos):
      return None
    counters.windows += 1
    sample = np.concatenate([self._cls, piece])
    return self._right_strip(sample, 1 + n - start_at, length, counters)

  def _recut(self, rng, sample: np.ndarray, counters: SampleCounters) -> np.ndarray:
    """The reference's short-sequence re-cut of one sample (one piece)."""
    length = self._length
    if length - 1 <= SHORT_SEQ_MIN:
      return sample
    target = SHORT_SEQ_MIN + int(rng.random() * (length - 1 - SHORT_SEQ_MIN))
    tokens = sample[1:]
    if target < len(tokens):
      boundary = self._ends(tokens) | (tokens == self._eos)
      s = int(rng.random() * (len(tokens) - target))
      while s > 0 and (tokens[s] == self._eos or not boundary[s - 1]):
        s -= 1
      e = s + target
      while e > s and not boundary[e - 1]:
        e -= 1
      if e - s < target // 2:
        e = s + target
      tokens = tokens[s:e]
    counters.short_recuts += 1
    return np.concatenate([self._cls, tokens])

  def sample(self, rng: random.Random, counters: Optional[SampleCounters] = None
             ) -> np.ndarray:
    """One raw sample (int32 [<= L]) drawn with `rng`."""
    counters = counters if counters is not None else SampleCounters()
    length = self._length
    while True:
      shard, start, stop = self._draw(rng)
      counters.documents += 1
      if stop - start + 1 > length - 1:
        sample = self._window(rng, shard, start, stop, counters)
        if sample is None:
          counters.redraws += 1
          continue
        break
      parts: List[np.ndarray] = [self._cls, self._doc_tokens(shard, start, stop, 0,
                                                             stop - start + 1)]
      used = stop - start + 2
      while used < length:
        shard, start, stop = self._draw(rng)
        counters.documents += 1
        total = stop - start + 2                                     # [CLS] doc eos
        room = length - used
        piece = np.concatenate([self._cls, self._doc_tokens(shard, start, stop, 0,
                                                            min(total, room) - 1)])
        piece = self._right_strip(piece, total, room, counters)
        parts.append(piece)
        used += len(piece)
        if total >= room:
          break
      sample = np.concatenate(parts)
      break
    if self._short_seq_prob > 0 and rng.random() < self._short_seq_prob:
      sample = self._recut(rng, sample, counters)
    counters.samples += 1
    counters.tokens += len(sample)
    return sample.astype(np.int32)
