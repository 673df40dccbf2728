"""Raw GLM samples from documents (GLM_SPEC.md section 2).

Each document becomes `[CLS] tokens eos`; consecutive short documents are concatenated up
to the raw sample length L, a document longer than L is cut into windows of at most L
tokens (each window opens with [CLS]), cut after a sentence end where one lies in the
second half of the window. With probability `short_seq_prob` an example is re-cut to a
length uniform in [32, L). One packing rule serves both the in-memory sample table (index
addressable, for deterministic resume) and the streaming seqio preprocessor.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from glm_jax.data.special_tokens import SpecialTokens

MIN_SAMPLE_LENGTH = 4  # [CLS] x y eos: anything shorter cannot hold a blank; dropped.
SHORT_SEQ_MIN = 32


@dataclasses.dataclass
class SampleCounters:
  """What building samples saw, skipped or cut (reported by `inspect`)."""

  documents: int = 0
  empty_documents: int = 0      # tokenized to nothing; skipped
  long_documents: int = 0       # longer than L; windowed
  windows: int = 0              # windows cut from long documents
  sentence_cuts: int = 0        # windows that end at a sentence end
  samples: int = 0
  dropped_samples: int = 0      # shorter than MIN_SAMPLE_LENGTH
  tokens: int = 0               # tokens in the kept samples

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def _window_ends(body: np.ndarray, width: int, is_end: np.ndarray) -> List[int]:
  """Cut points of `body` into pieces of at most `width`, preferring ends after a sentence end."""
  cuts, start, n = [], 0, len(body)
  while n - start > width:
    limit = start + width
    lo = start + width // 2
    ends = np.flatnonzero(is_end[lo:limit])
    cut = lo + int(ends[-1]) + 1 if len(ends) else limit
    # Leave the last window at least MIN_SAMPLE_LENGTH - 1 tokens (+ its [CLS]).
    cut = min(cut, n - (MIN_SAMPLE_LENGTH - 1))
    cuts.append(cut)
    start = cut
  cuts.append(n)
  return cuts


def pack_documents(documents: Iterable[Sequence[int]], raw_length: int, special: SpecialTokens,
                   counters: Optional[SampleCounters] = None) -> Iterator[np.ndarray]:
  """Raw samples (int32, at most `raw_length` long) from token-id documents, in order."""
  if raw_length < MIN_SAMPLE_LENGTH:
    raise ValueError(f"raw_length {raw_length} is too short; use at least {MIN_SAMPLE_LENGTH}.")
  counters = counters if counters is not None else SampleCounters()
  sentence_ends = np.asarray(special.sentence_end_ids or (-1,), np.int32)
  cls = np.asarray([special.cls], np.int32)
  eos = np.asarray([special.eos], np.int32)
  pending: List[np.ndarray] = []
  pending_length = 0

  def emit(parts):
    sample = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if len(sample) < MIN_SAMPLE_LENGTH:
      counters.dropped_samples += 1
      return None
    counters.samples += 1
    counters.tokens += len(sample)
    return sample

  for ids in documents:
    counters.documents += 1
    body = np.asarray(ids, np.int32).reshape(-1)
    if body.size == 0:
      counters.empty_documents += 1
      continue
    document = np.concatenate([cls, body, eos])
    if len(document) > raw_length:
      counters.long_documents += 1
      # Windows of [CLS] + piece; the last piece keeps the eos and may take more documents.
      body = document[1:]
      cuts = _window_ends(body, raw_length - 1, np.isin(body, sentence_ends))
      counters.windows += len(cuts)
      counters.sentence_cuts += sum(1 for c in cuts[:-1] if np.isin(body[c - 1], sentence_ends))
      if pending:
        sample = emit(pending)
        if sample is not None:
          yield sample
      start = 0
      for cut in cuts[:-1]:
        sample = emit([cls, body[start:cut]])
        if sample is not None:
          yield sample
        start = cut
      document = np.concatenate([cls, body[start:]])
      pending, pending_length = [document], len(document)
      continue
    if pending_length + len(document) > raw_length:
      sample = emit(pending)
      if sample is not None:
        yield sample
      pending, pending_length = [], 0
    pending.append(document)
    pending_length += len(document)
  if pending:
    sample = emit(pending)
    if sample is not None:
      yield sample


@dataclasses.dataclass(frozen=True)
class SampleTable:
  """All raw samples of a corpus in one flat array; sample i is flat[offsets[i]:offsets[i+1]]."""

  flat: np.ndarray     # [total_tokens] int32
  offsets: np.ndarray  # [num_samples + 1] int64

  @property
  def num_samples(self) -> int:
    return len(self.offsets) - 1

  def __getitem__(self, i: int) -> np.ndarray:
    return self.flat[self.offsets[i]:self.offsets[i + 1]]


def build_sample_table(texts: Sequence[str], vocabulary, raw_length: int,
                       counters: Optional[SampleCounters] = None) -> SampleTable:
  """Tokenizes `texts` (one document each) and packs them into a `SampleTable`."""
  encode_batch = getattr(vocabulary, "encode_batch", None)
  if encode_batch is not None:
    token_lists = encode_batch(list(texts))
  else:
    token_lists = [vocabulary.encode(t) for t in texts]
  samples = list(pack_documents(token_lists, raw_length, vocabulary.special, counters))
  if not samples:
    raise ValueError("The corpus produced no samples (all documents empty or too short); "
                     "check the input files.")
  offsets = np.zeros(len(samples) + 1, np.int64)
  np.cumsum([len(s) for s in samples], out=offsets[1:])
  return SampleTable(flat=np.concatenate(samples).astype(np.int32), offsets=offsets)


def shorten(tokens: tf.Tensor, seed: tf.Tensor, short_seq_prob: float,
            min_length: int = SHORT_SEQ_MIN) -> tf.Tensor:
  """With probability `short_seq_prob`, the sample's first k tokens, k uniform in [min, L)."""
  if short_seq_prob <= 0:
    return tokens
  length = tf.shape(tokens)[0]
  draws = tf.random.stateless_uniform([2], seed, dtype=tf.float32)
  span = tf.maximum(length - min_length, 0)
  new_length = min_length + tf.cast(draws[1] * tf.cast(span, tf.float32), tf.int32)
  new_length = tf.minimum(new_length, length)
  cut = tf.logical_and(draws[0] < short_seq_prob, length > min_length)
  return tf.cond(cut, lambda: tokens[:new_length], lambda: tokens)


@seqio.map_over_dataset(num_seeds=1)
def shorten_samples(features: Mapping[str, tf.Tensor], seed, *,
                    short_seq_prob: float = 0.02) -> dict:
  """Seqio preprocessor: `shorten` on 'targets' with a seqio-managed seed."""
  features = dict(features)
  features["targets"] = shorten(features["targets"], seed, short_seq_prob)
  return features


def concatenate_documents(dataset: tf.data.Dataset, sequence_length=None,
                          output_features=None, *, special_tokens: SpecialTokens,
                          raw_length_fn) -> tf.data.Dataset:
  """Seqio preprocessor: tokenized documents in 'targets' -> raw samples (streaming).

  `raw_length_fn(T)` gives the raw sample length for the task's sequence length T.
  """
  del output_features
  if not sequence_length or not sequence_length.get("targets"):
    raise ValueError("concatenate_documents needs sequence_length={'targets': T}.")
  raw_length = raw_length_fn(sequence_length["targets"])
  docs = dataset.map(lambda ex: ex["targets"])

  def generate():
    yield from pack_documents(docs.as_numpy_iterator(), raw_length, special_tokens)

  samples = tf.data.Dataset.from_generator(
      generate, output_signature=tf.TensorSpec([None], tf.int32))
  return samples.map(lambda s: {"targets": s})
