"""Blank-infilling objectives: exact layout (GLM_SPEC section 1) and reference statistics."""

import dataclasses
import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from glm_jax.data import objectives
from glm_jax.data.special_tokens import BERT_WORDPIECE, FIXTURE_TINY
from conftest import shipped_fixture

# The reference collator's statistics and literal examples, and the first 300 of its 2000
# inputs (tests/fixtures/README.md); the full inputs in ../shared are not needed.
STATS = pathlib.Path(shipped_fixture("glm_reference", "collator_stats_glm_tiny_a.json"))
INPUTS = pathlib.Path(shipped_fixture("glm_reference", "collator_inputs_glm_tiny_a_300.npz"))
# BERT ids of `. ? ! ; :` (the sentence ends of the fixture's synthetic data).
BERT = dataclasses.replace(BERT_WORDPIECE, sentence_end_ids=(1012, 1029, 999, 1025, 1024))
NUM_STATS_SAMPLES = 300


def _compiled(fn, special, **kwargs):
  return tf.function(lambda t, s: fn(t, s, special, **kwargs), input_signature=[
      tf.TensorSpec([None], tf.int32), tf.TensorSpec([2], tf.int64)])


def _np(out):
  return {k: v.numpy() for k, v in out.items()}


def reassemble(ex, special, mask_id):
  """Checks the section-1 layout of `ex`; returns (original tokens, spans [(start, end)])."""
  tok, tgt, pos, blk = ex["tokens"], ex["targets"], ex["positions"][0], ex["positions"][1]
  sep, w = int(ex["sep"]), ex["loss_weights"]
  n = len(tok)
  assert pos.shape == blk.shape == tgt.shape == w.shape == (n,)
  np.testing.assert_array_equal(pos[:sep], np.arange(sep))
  np.testing.assert_array_equal(blk[:sep], 0)
  np.testing.assert_array_equal(tgt[:sep], tok[:sep])
  np.testing.assert_array_equal(w[:sep], 0)
  segments = {}  # Part A mask position -> span tokens
  suffix = bool(ex["suffix_layout"])
  starts = [i for i in range(sep, n) if blk[i] == 1]
  assert n == sep or starts[0] == sep
  for k, s in enumerate(starts):
    e = starts[k + 1] if k + 1 < len(starts) else n
    assert tok[s] == special.sop
    np.testing.assert_array_equal(blk[s:e], np.arange(1, e - s + 1))
    assert np.all(pos[s:e] == pos[s]) and tok[pos[s]] == mask_id and pos[s] not in segments
    if suffix:
      span = tgt[s:e]
      np.testing.assert_array_equal(w[s:e], tgt[s:e] != special.cls)
    else:
      assert tgt[e - 1] == special.eop
      span = tgt[s:e - 1]
      np.testing.assert_array_equal(w[s:e], 1)
    if not (ex.get("block_masked") and not suffix):
      np.testing.assert_array_equal(tok[s + 1:e], span[:e - s - 1])
    segments[int(pos[s])] = span
  assert set(segments) == set(np.flatnonzero(tok[:sep] == mask_id)), "mask without span"
  original, spans = [], []
  for i in range(sep):
    if i in segments:
      spans.append((len(original), len(original) + len(segments[i])))
      original.extend(segments[i].tolist())
    else:
      original.append(int(tok[i]))
  return np.array(original), spans


def _forbidden(raw, special):
  """Positions no span may cover: eos, a document's [CLS], the last token."""
  after_eos = np.concatenate([[True], raw[:-1] == special.eos])
  bad = (raw == special.eos) | ((raw == special.cls) & after_eos)
  bad[-1] = True
  return bad


def _check_spans(raw, spans, special, min_gap):
  bad = _forbidden(raw, special)
  for s, e in spans:
    assert e > s and not bad[s:e].any(), f"span {(s, e)} covers [CLS]/eos/last token"
  for (_, e0), (s1, _) in zip(spans, spans[1:]):
    assert s1 - e0 >= min_gap


def _samples(rng, n, length, eos_every=None):
  """Synthetic [CLS] doc eos [CLS] doc ... samples with small-vocabulary ids."""
  out = []
  for _ in range(n):
    toks = rng.randint(8, 996, size=length)
    toks[rng.rand(length) < 0.08] = rng.choice([5, 6, 7])
    toks[0] = FIXTURE_TINY.cls
    if eos_every:
      pos = 1
      while True:
        pos += rng.randint(2, eos_every)
        if pos + 1 >= length:
          break
        toks[pos], toks[pos + 1] = FIXTURE_TINY.eos, FIXTURE_TINY.cls
        pos += 1
    out.append(toks.astype(np.int32))
  return out


@pytest.mark.parametrize("eos_every", [None, 12, 60])
def test_token_layout_many_seeds(eos_every):
  rng = np.random.RandomState(0 if eos_every is None else eos_every)
  fn = _compiled(objectives.token_infilling, FIXTURE_TINY)
  for i, raw in enumerate(_samples(rng, 30, 96, eos_every) + _samples(rng, 15, 17)):
    ex = _np(fn(raw, tf.constant([i, 7], tf.int64)))
    original, spans = reassemble(ex, FIXTURE_TINY, FIXTURE_TINY.mask)
    np.testing.assert_array_equal(original, raw)
    _check_spans(raw, spans, FIXTURE_TINY, min_gap=1)
    lengths = [e - s for s, e in spans]
    target = int(0.15 * len(raw))
    assert ex["num_spans"] == len(spans) and ex["num_masked"] == sum(lengths)
    assert len(ex["tokens"]) == len(raw) + 2 * len(spans) and ex["sep"] == len(raw) - sum(
        lengths) + len(spans)
    assert all(1 <= l <= 39 for l in lengths)
    if ex["unplaced"] == 0 and not ex["spans_capped"]:
      assert sum(lengths) >= target and (not lengths or sum(lengths) - max(lengths) < target)
    assert ex["unplaced"] == 0 or ex["redraws"] == objectives._MAX_REDRAWS


def test_sentence_layout_many_seeds():
  rng = np.random.RandomState(1)
  fn = _compiled(objectives.sentence_infilling, FIXTURE_TINY)
  ends = set(FIXTURE_TINY.sentence_end_ids)
  for i, raw in enumerate(_samples(rng, 30, 120, 50) + _samples(rng, 20, 80)):
    ex = _np(fn(raw, tf.constant([i, 3], tf.int64)))
    original, spans = reassemble(ex, FIXTURE_TINY, FIXTURE_TINY.smask)
    np.testing.assert_array_equal(original, raw)
    _check_spans(raw, spans, FIXTURE_TINY, min_gap=0)
    bad = _forbidden(raw, FIXTURE_TINY)
    for s, e in spans:  # whole sentences: bounded by a sentence end / document boundary
      assert raw[e - 1] in ends or bad[e]
      assert s == 0 or raw[s - 1] in ends or bad[s - 1]
      assert not any(t in ends for t in raw[s:e - 1])
    if spans and not ex["spans_capped"]:
      lengths = [e - s for s, e in spans]
      assert sum(lengths) - max(lengths) < int(0.15 * len(raw))


def test_document_layout_many_seeds():
  rng = np.random.RandomState(2)
  fn = _compiled(objectives.document_infilling, FIXTURE_TINY)
  raws = _samples(rng, 40, 64) + _samples(rng, 40, 64, 30)
  suffix = 0
  for i, raw in enumerate(raws):
    ex = _np(fn(raw, tf.constant([i, 5], tf.int64)))
    original, spans = reassemble(ex, FIXTURE_TINY, FIXTURE_TINY.gmask)
    multi = (raw[:-1] == FIXTURE_TINY.eos).any()
    gen = ex["num_masked"]
    assert int(0.5 * len(raw)) <= gen <= len(raw) - 2 and len(spans) == 1
    assert len(ex["tokens"]) == len(raw) + 2 - ex["suffix_layout"]
    assert ex["sep"] == len(raw) - gen + 1
    if ex["suffix_layout"]:
      suffix += 1
      np.testing.assert_array_equal(original, raw)
      assert spans[0][1] == len(raw)
    else:
      assert not multi, "multi-document samples always take the suffix layout"
      np.testing.assert_array_equal(original, raw)
      _check_spans(raw, spans, FIXTURE_TINY, min_gap=1)
  assert 50 < suffix < 75  # 40 multi-document + about half of 40 single-document


@pytest.mark.parity
def test_fixture_examples_layout():
  """The reference's literal examples satisfy the same checker (checker sanity)."""
  stats = json.loads(STATS.read_text())
  masks = {"bert": BERT.mask, "sentence": BERT.smask, "gpt": BERT.gmask}
  for mode, mask_id in masks.items():
    for e in stats["modes"][mode]["examples"]:
      ex = {"tokens": np.array(e["tokens"]), "targets": np.array(e["targets"]),
            "positions": np.array([e["position_ids"], e["block_position_ids"]]),
            "sep": e["sep"], "loss_weights": np.array(e["loss_mask"], np.float32),
            "suffix_layout": e["targets"][-1] != BERT.eop}
      original, _ = reassemble(ex, BERT, mask_id)
      np.testing.assert_array_equal(original, e["original_tokens"])


def test_same_seed_same_example_and_seed_matters():
  raw = _samples(np.random.RandomState(3), 1, 200, 70)[0]
  for fn in (objectives.token_infilling, objectives.sentence_infilling,
             objectives.document_infilling):
    f = _compiled(fn, FIXTURE_TINY)
    a, b = _np(f(raw, tf.constant([1, 2], tf.int64))), _np(f(raw, tf.constant([1, 2], tf.int64)))
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
    others = [_np(f(raw, tf.constant([s, 2], tf.int64)))["tokens"] for s in range(2, 6)]
    assert any(len(o) != len(a["tokens"]) or (o != a["tokens"]).any() for o in others)


def test_block_mask_and_sorted_spans():
  special = dataclasses.replace(FIXTURE_TINY, dblock=995)
  raw = _samples(np.random.RandomState(4), 1, 400)[0]
  ex = _np(objectives.token_infilling(raw, [0, 1], special, block_mask_prob=0.5,
                                      shuffle_spans=False))
  ex["block_masked"] = True
  original, _ = reassemble(ex, special, special.mask)
  np.testing.assert_array_equal(original, raw)
  b_tok, b_blk = ex["tokens"][ex["sep"]:], ex["positions"][1][ex["sep"]:]
  frac = np.mean(b_tok[b_blk > 1] == 995)
  assert 0.35 < frac < 0.65 and np.all(b_tok[b_blk == 1] == special.sop)
  b_pos = ex["positions"][0][ex["sep"]:][b_blk == 1]
  assert np.all(np.diff(b_pos) > 0), "shuffle_spans=False keeps spans in text order"
  with pytest.raises(ValueError, match="dBLOCK"):
    objectives.token_infilling(raw, [0, 1], FIXTURE_TINY, block_mask_prob=0.1)


def test_redraw_counted_when_spans_do_not_fit():
  # Many two-token documents plus one long one: allocation often overflows the longest.
  toks = [FIXTURE_TINY.cls]
  for _ in range(12):
    toks += [20, 21, FIXTURE_TINY.eos, FIXTURE_TINY.cls]
  toks += list(range(30, 42))
  raw = np.array(toks, np.int32)
  fn = _compiled(objectives.token_infilling, FIXTURE_TINY)
  exs = [_np(fn(raw, tf.constant([s, 0], tf.int64))) for s in range(30)]
  assert any(e["redraws"] > 0 for e in exs)
  for e in exs:
    original, spans = reassemble(e, FIXTURE_TINY, FIXTURE_TINY.mask)
    np.testing.assert_array_equal(original, raw)
    _check_spans(raw, spans, FIXTURE_TINY, min_gap=1)


def test_max_spans_cap_and_output_length_rule():
  raw = _samples(np.random.RandomState(5), 1, 300)[0]
  ex = _np(objectives.token_infilling(raw, [3, 3], FIXTURE_TINY, max_spans=4))
  assert ex["num_spans"] <= 4 and ex["spans_capped"] == 1
  assert objectives.raw_length_for(512) == 444
  assert objectives.max_output_length(444, "token") == 512
  assert objectives.max_output_length(444, "document") == 446
  assert objectives.raw_length_for(512, ("document",)) == 510
  with pytest.raises(ValueError, match="Unknown objective"):
    objectives.max_output_length(10, "span")


def test_construct_example_respects_sequence_length_and_mix():
  rng = np.random.RandomState(6)
  f = tf.function(lambda t, s: objectives.construct_example(
      t, s, FIXTURE_TINY, objective_probs=(0.4, 0.3, 0.3), sequence_length=128),
      input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([2], tf.int64)])
  seen = set()
  for i, raw in enumerate(_samples(rng, 60, 110, 40)):
    ex = _np(f(raw, tf.constant([i, 9], tf.int64)))
    assert len(ex["tokens"]) <= 128
    seen.add(int(ex["objective"]))
    mask_id = FIXTURE_TINY.mask_for(objectives.OBJECTIVES[ex["objective"]])
    np.testing.assert_array_equal(reassemble(ex, FIXTURE_TINY, mask_id)[0], raw)
  assert seen == {0, 1, 2}
  with pytest.raises(ValueError, match="objective_probs"):
    objectives.construct_example(raw, [0, 0], FIXTURE_TINY, objective_probs=(0.5, 0.2, 0.2))
  # A raw sample too long for T gets no room for spans (GLMFeatureConverter rejects it).
  ex = objectives.construct_example(np.arange(8, 208, dtype=np.int32), [0, 0], FIXTURE_TINY,
                                    sequence_length=128)
  assert ex["num_spans"] == 0 and ex["spans_capped"] == 1


# ----------------------------------------------------------------------------- reference stats


@pytest.fixture(scope="module")
def reference():
  stats = json.loads(STATS.read_text())
  with np.load(INPUTS) as inputs:
    return stats["modes"], inputs["text"][:NUM_STATS_SAMPLES], inputs["multi_doc"]


def _run_stats(fn, texts, **kwargs):
  f = _compiled(fn, BERT, **kwargs)
  ds = tf.data.Dataset.from_tensor_slices(texts).enumerate().map(
      lambda i, t: f(t, tf.stack([i, tf.constant(11, tf.int64)])))
  return objectives.layout_statistics(ds.as_numpy_iterator())


@pytest.mark.parity
def test_token_statistics_match_reference(reference):
  modes, texts, _ = reference
  ours = _run_stats(objectives.token_infilling, texts)
  ref = modes["bert"]
  hist = np.array(ours["span_length_hist"])
  tvd = 0.5 * np.abs(hist - np.array(ref["span_length"]["histogram_1_to_40_normalized"])).sum()
  assert tvd <= 0.03, tvd
  assert abs(ours["masked_fraction_mean"] - ref["masked_fraction_of_original_length"]["mean"]) \
      <= 0.01
  assert abs(ours["spans_per_sample_mean"] - ref["spans_per_sample"]["mean"]) <= 1.0
  assert ours["unplaced_total"] == 0 and ours["max_span_length"] <= 39


@pytest.mark.parity
def test_sentence_statistics_match_reference(reference):
  modes, texts, _ = reference
  ours = _run_stats(objectives.sentence_infilling, texts)
  ref = modes["sentence"]
  assert abs(ours["masked_fraction_mean"] - ref["masked_fraction_of_original_length"]["mean"]) \
      <= 0.02
  assert abs(ours["spans_per_sample_mean"] - ref["spans_per_sample"]["mean"]) <= 0.3
  assert abs(ours["span_length_mean"] - ref["span_length"]["mean"]) <= 1.5


@pytest.mark.parity
def test_document_statistics_match_reference(reference):
  modes, texts, _ = reference
  ours = _run_stats(objectives.document_infilling, texts)
  ref = modes["gpt"]
  assert abs(ours["masked_fraction_mean"] - ref["masked_fraction_of_original_length"]["mean"]) \
      <= 0.02
  assert abs(ours["suffix_fraction"] - ref["fraction_samples_suffix_layout"]) <= 0.06
  assert ours["spans_per_sample_mean"] == 1.0
  assert abs(ours["length_mean"] - ref["sequence_length_after_construction_unpadded"]["mean"]) \
      <= 0.5


# ----------------------------------------------------------------------------- seqio preprocessors


def _raw_dataset(n=8):
  raws = _samples(np.random.RandomState(8), n, 100, 45)
  return tf.data.Dataset.from_tensor_slices({"targets": np.stack(raws)}).enumerate().map(
      lambda i, f: dict(f, index=i)), raws


def _collect(ds):
  return [{k: v for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


def test_blank_infilling_preprocessor_deterministic_under_seed_manager():
  import seqio
  ds, raws = _raw_dataset()
  kwargs = dict(sequence_length={"targets": 128}, special_tokens=FIXTURE_TINY,
                objective_probs=(0.4, 0.3, 0.3))
  with seqio.map_seed_manager(5):
    ds5 = objectives.blank_infilling(ds, **kwargs)
  with seqio.map_seed_manager(6):
    ds6 = objectives.blank_infilling(ds, **kwargs)
  runs = [_collect(ds5), _collect(ds5), _collect(ds6)]
  for a, b in zip(runs[0], runs[1]):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
  assert any(len(a["tokens"]) != len(c["tokens"]) or (a["tokens"] != c["tokens"]).any()
             for a, c in zip(runs[0], runs[2]))
  for ex, raw in zip(runs[0], raws):
    assert len(ex["tokens"]) <= 128 and ex["index"] >= 0
    mask_id = FIXTURE_TINY.mask_for(objectives.OBJECTIVES[ex["objective"]])
    np.testing.assert_array_equal(reassemble(ex, FIXTURE_TINY, mask_id)[0], raw)
  with pytest.raises(ValueError, match="'targets'"), seqio.map_seed_manager(5):
    objectives.blank_infilling(ds.map(lambda f: {"index": f["index"]}), **kwargs)


@pytest.mark.parametrize("raw", [[1], [1, 9], [1, 9, 10], [9, 10, 11], [0, 0, 0, 0], [1, 0],
                                 [1, 0, 1], [1, 9, 10, 11, 5, 0]])
def test_tiny_and_odd_samples_keep_a_valid_layout(raw):
  raw = np.array(raw, np.int32)
  for name, fn in zip(objectives.OBJECTIVES, (objectives.token_infilling,
                                              objectives.sentence_infilling,
                                              objectives.document_infilling)):
    for seed in range(3):
      ex = _np(fn(raw, [seed, 1], FIXTURE_TINY))
      original, spans = reassemble(ex, FIXTURE_TINY, FIXTURE_TINY.mask_for(name))
      np.testing.assert_array_equal(original, raw)
      if not ex["suffix_layout"]:
        _check_spans(raw, spans, FIXTURE_TINY, min_gap=0)
