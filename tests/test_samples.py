"""Raw samples: [CLS] doc eos layout, concatenation, windowing, short_seq, bad input."""

import numpy as np
import pytest
import tensorflow as tf

from glm_jax.data import corpus
from glm_jax.data import samples
from glm_jax.data import vocab as vocab_lib
from glm_jax.data.special_tokens import FIXTURE_TINY as SPECIAL

CLS, EOS = SPECIAL.cls, SPECIAL.eos  # 1, 0; sentence ends 5 6 7


def _docs(lengths, start=10):
  return [list(range(start + 100 * i, start + 100 * i + n)) for i, n in enumerate(lengths)]


def _strip(sample):
  """Document bodies of a sample: split at [CLS], drop eos."""
  return [s for s in sample.tolist() if s not in (CLS, EOS)]


def test_short_documents_concatenated_in_order():
  counters = samples.SampleCounters()
  out = list(samples.pack_documents(_docs([3, 4, 5, 20]), 20, SPECIAL, counters))
  assert [s.tolist() for s in out[:1]] == [
      [CLS, 10, 11, 12, EOS, CLS, 110, 111, 112, 113, EOS, CLS, 210, 211, 212, 213, 214, EOS]]
  assert all(len(s) <= 20 for s in out)
  assert counters.samples == len(out) and counters.documents == 4
  assert counters.long_documents == 1  # 20 + 2 > 20


def test_long_document_windowed_at_sentence_ends():
  body = list(range(10, 40))
  body[14] = 5      # a sentence end in the second half of the first window
  counters = samples.SampleCounters()
  out = list(samples.pack_documents([body], 20, SPECIAL, counters))
  assert all(s[0] == CLS and len(s) <= 20 for s in out)
  assert out[0].tolist()[-1] == 5            # cut right after the sentence end
  assert out[-1].tolist()[-1] == EOS
  assert sum((_strip(s) for s in out), []) == [t for t in body]
  assert counters.windows == len(out) and counters.sentence_cuts == 1


def test_long_document_without_sentence_end_cut_at_width():
  out = list(samples.pack_documents([list(range(10, 60))], 16, SPECIAL))
  assert [len(s) for s in out[:-1]] == [16] * (len(out) - 1)
  assert sum((_strip(s) for s in out), []) == list(range(10, 60))


def test_stream_is_lossless_and_bounded():
  rng = np.random.default_rng(0)
  lengths = rng.integers(3, 90, size=200) * (rng.random(200) > 0.1)  # 10% empty
  docs = [rng.integers(8, 900, size=n).tolist() for n in lengths]
  counters = samples.SampleCounters()
  out = list(samples.pack_documents(docs, 64, SPECIAL, counters))
  assert all(len(s) <= 64 and s[0] == CLS for s in out)
  kept = [t for d in docs for t in d]
  assert counters.dropped_samples == 0
  assert sum((_strip(s) for s in out), []) == kept
  assert counters.empty_documents == int((lengths == 0).sum())
  assert counters.tokens == sum(len(s) for s in out)


def test_tiny_corpus_dropped_and_counted():
  counters = samples.SampleCounters()
  out = list(samples.pack_documents([[], [9]], 32, SPECIAL, counters))
  assert out == [] and counters.dropped_samples == 1 and counters.empty_documents == 1
  with pytest.raises(ValueError, match="too short"):
    list(samples.pack_documents([[9]], 2, SPECIAL))


def test_shorten_probability_and_range():
  tokens = tf.range(100, dtype=tf.int32)
  assert samples.shorten(tokens, tf.constant([1, 2], tf.int64), 0.0).shape == (100,)
  lengths = {int(samples.shorten(tokens, tf.constant([s, 0], tf.int64), 1.0).shape[0])
             for s in range(50)}
  assert min(lengths) >= samples.SHORT_SEQ_MIN and max(lengths) < 100 and len(lengths) > 10
  again = samples.shorten(tokens, tf.constant([3, 0], tf.int64), 1.0)
  assert samples.shorten(tokens, tf.constant([3, 0], tf.int64), 1.0).shape == again.shape
  cut = sum(int(samples.shorten(tokens, tf.constant([s, 1], tf.int64), 0.1).shape[0]) < 100
            for s in range(400))
  assert 15 < cut < 70
  short = tf.range(20, dtype=tf.int32)  # shorter than the minimum: left alone
  assert samples.shorten(short, tf.constant([0, 0], tf.int64), 1.0).shape == (20,)


def test_bad_files_build_a_table(tmp_path):
  path = tmp_path / "messy.txt"
  path.write_bytes(b"\n\nA first sentence. And a second one!\n\xff\xfeBroken bytes here.\n"
                   b"   \n" + b"word " * 3000 + b"\nShort.\n")
  read = corpus.ReadCounters()
  texts = list(corpus.read_documents([str(path)], counters=read))
  assert read.empty_lines == 3 and read.invalid_utf8 == 1
  vocabulary = vocab_lib.get_vocabulary("builtin")
  counters = samples.SampleCounters()
  table = samples.build_sample_table(texts, vocabulary, 64, counters)
  assert counters.long_documents == 1 and table.num_samples > 40
  for i in range(table.num_samples):
    assert table[i][0] == vocabulary.special.cls and len(table[i]) <= 64
  assert counters.tokens == len(table.flat)


def test_empty_corpus_is_a_clear_error():
  vocabulary = vocab_lib.get_vocabulary("builtin")
  with pytest.raises(ValueError, match="no samples"):
    samples.build_sample_table(["", ""], vocabulary, 64)


def test_streaming_preprocessor_matches_pack_documents():
  docs = _docs([3, 30, 7, 12, 50, 2])
  ds = tf.data.Dataset.from_generator(
      lambda: ({"targets": np.asarray(d, np.int32)} for d in docs),
      output_signature={"targets": tf.TensorSpec([None], tf.int32)})
  out = samples.concatenate_documents(ds, {"targets": 40}, special_tokens=SPECIAL,
                                      raw_length_fn=lambda t: t - 8)
  got = [ex["targets"].tolist() for ex in out.as_numpy_iterator()]
  assert got == [s.tolist() for s in samples.pack_documents(docs, 32, SPECIAL)]
