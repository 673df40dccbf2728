"""Raw samples as the reference's BlockDataset draws them: weighting, windows, strips, re-cut."""

import random

import numpy as np
import pytest

from glm_jax.data import prepared
from glm_jax.data import samples
from glm_jax.data import vocab as vocab_lib
from glm_jax.data.special_tokens import FIXTURE_TINY as SPECIAL

CLS, EOS = SPECIAL.cls, SPECIAL.eos  # 1, 0; sentence ends 5 6 7
IS_END = samples.sentence_end_table(SPECIAL, 1000)


def _split(tmp_path, docs):
  writer = prepared.ShardWriter(tmp_path / "train", "part-00000-of-00001", np.uint16)
  for doc in docs:
    writer.add(doc)
  return prepared.Split(tmp_path, "train", [writer.commit()], np.dtype("<u2"))


def _builder(tmp_path, docs, length, short_seq_prob=0.0):
  return samples.SampleBuilder(_split(tmp_path, docs), SPECIAL, length, short_seq_prob, IS_END)


def _pieces(sample):
  """The [CLS]-opened pieces of a sample, without their [CLS]."""
  cuts = [i for i, t in enumerate(sample) if t == CLS] + [len(sample)]
  return [sample[a + 1:b].tolist() for a, b in zip(cuts[:-1], cuts[1:])]


def _is_slice(piece, doc):
  n = len(piece)
  return any(doc[i:i + n] == piece for i in range(len(doc) - n + 1))


def test_documents_are_drawn_token_weighted(tmp_path):
  docs = [[10] * 10, [11] * 20, [12] * 70]
  builder = _builder(tmp_path, docs, 64)
  rng = random.Random(0)
  counts = np.bincount([builder._draw(rng)[1] for _ in range(4000)], minlength=100)  # pylint: disable=protected-access
  firsts = np.asarray([counts[0], counts[10], counts[30]]) / 4000
  assert np.abs(firsts - [0.1, 0.2, 0.7]).max() < 0.03


def test_short_documents_are_concatenated_to_the_length(tmp_path):
  rng = np.random.default_rng(1)
  docs = [[100 + 10 * i + j for j in range(n)] for i, n in enumerate(rng.integers(3, 15, 40))]
  for d in docs[::3]:
    d[len(d) // 2] = 5  # a sentence end inside some documents
  builder = _builder(tmp_path, docs, 48)
  by_first = {d[0]: d for d in docs}
  for k in range(200):
    sample = builder.sample(random.Random(k))
    assert sample[0] == CLS and len(sample) <= 48
    pieces = _pieces(sample)
    for piece in pieces[:-1]:  # whole documents, each closed by eos
      assert piece[-1] == EOS and piece[:-1] == by_first[piece[0]]
    last = pieces[-1]
    if not last:  # room for a [CLS] only: the reference appends it alone too
      continue
    doc = by_first[last[0]] + [EOS]
    assert doc[:len(last)] == last  # the last one is a prefix (right-stripped to the room)
    if len(sample) < 48:  # stripped short of the length: at a sentence end or its eos
      assert last[-1] in (5, EOS)


def test_long_document_gives_a_sentence_aligned_window(tmp_path):
  body = [200 + (i % 700) for i in range(1000)]
  for i in range(16, 1000, 17):
    body[i] = 6  # a sentence end every 17 tokens (< L // 2)
  counters = samples.SampleCounters()
  builder = _builder(tmp_path, [body], 64)
  lengths = set()
  for k in range(100):
    sample = builder.sample(random.Random(k), counters)
    piece = sample[1:].tolist()
    lengths.add(len(sample))
    assert sample[0] == CLS and len(sample) <= 64 and _is_slice(piece, body + [EOS])
    start = next(i for i in range(len(body)) if body[i:i + len(piece)] == piece)
    assert start == 0 or body[start - 1] == 6  # starts just after a sentence end
    assert piece[-1] in (6, EOS)  # right-stripped at a sentence end (found in the 2nd half)
  assert counters.windows == 100 and counters.hard_cuts == 0 and counters.sentence_cuts > 90
  assert lengths == {1 + 3 * 17}  # [CLS] + the whole sentences that fit 63 tokens


def test_long_document_without_sentence_ends_is_cut_hard(tmp_path):
  body = list(range(200, 1200))
  counters = samples.SampleCounters()
  builder = _builder(tmp_path, [body], 64)
  for k in range(30):
    sample = builder.sample(random.Random(k), counters)
    assert len(sample) == 64 and _is_slice(sample[1:].tolist(), body + [EOS])
  assert counters.hard_cuts == 30 and counters.sentence_starts == 0


def test_right_strip_rule():
  builder = samples.SampleBuilder.__new__(samples.SampleBuilder)
  builder._is_end = IS_END  # pylint: disable=protected-access
  strip = lambda tokens, total, room: builder._right_strip(  # pylint: disable=protected-access
      np.asarray(tokens), total, room, samples.SampleCounters()).tolist()
  assert strip([1, 9, 9, 5, 9, 9, 9, 9], 20, 8) == [1, 9, 9, 5]       # end at 4 >= 8 // 2
  assert strip([1, 9, 5, 9, 9, 9, 9, 9], 20, 8) == [1, 9, 5, 9, 9, 9, 9, 9]  # 3 < 4: hard cut
  assert strip([1, 9, 9], 3, 8) == [1, 9, 9]                          # fits: untouched


def test_short_seq_recut(tmp_path):
  body = [300 + (i % 500) for i in range(5000)]
  for i in range(9, 5000, 10):
    body[i] = 7
  builder = _builder(tmp_path, [body], 200, short_seq_prob=1.0)
  counters = samples.SampleCounters()
  lengths = []
  for k in range(60):
    sample = builder.sample(random.Random(k), counters)
    piece = sample[1:].tolist()
    lengths.append(len(sample))
    assert sample[0] == CLS and _is_slice(piece, body + [EOS])
    assert len(sample) <= 199
  assert counters.short_recuts == 60
  assert min(lengths) >= 1 + samples.SHORT_SEQ_MIN // 2 and len(set(lengths)) > 10
  never = _builder(tmp_path / "b", [body], 200, short_seq_prob=0.0)
  assert all(len(never.sample(random.Random(k))) > 150 for k in range(20))


def test_same_rng_same_sample_and_bounded_reads(tmp_path):
  docs = [[20 + (i + j) % 50 for j in range(5 + i % 40)] for i in range(3000)]
  split = _split(tmp_path, docs)
  builder = samples.SampleBuilder(split, SPECIAL, 128, 0.02, IS_END)
  a = builder.sample(random.Random(123))
  before = split.reads
  counters = samples.SampleCounters()
  b = builder.sample(random.Random(123), counters)
  assert a.tolist() == b.tolist()
  # Each drawn document costs at most one index-block read and one token read.
  assert split.reads - before <= 2 * counters.documents


def test_sentence_ends_contain_an_end_mark(bert_vocab_file):
  v = vocab_lib.get_vocabulary("wordpiece:" + bert_vocab_file)
  ends = set(v.special.sentence_end_ids)
  pieces = {v.id_to_piece(i) for i in ends}
  assert {".", "?", "!", ";", ":", "...", "##.", "\u2026"} <= pieces
  assert v.special.cls not in ends and v.special.mask not in ends
  assert all(any(c in p for c in vocab_lib.SENTENCE_END_CHARS) for p in pieces)
  with pytest.raises(ValueError, match="too short"):
    samples.SampleBuilder(None, SPECIAL, 3, 0.0, IS_END)
