"""GLMFeatureConverter: padded and packed model batches with the ARCHITECTURE.md keys."""

import numpy as np
import pytest
import tensorflow as tf

from glm_jax.data import objectives
from glm_jax.data.feature_converter import GLMFeatureConverter
from glm_jax.data.special_tokens import FIXTURE_TINY

T = 64


def _task_dataset(lengths, seed=0, probs=(0.5, 0.25, 0.25)):
  """Blank-infilling examples built from raw samples of the given lengths."""
  rng = np.random.RandomState(seed)
  examples = []
  for i, n in enumerate(lengths):
    raw = rng.randint(8, 996, size=n).astype(np.int32)
    raw[rng.rand(n) < 0.1] = 5
    raw[0] = FIXTURE_TINY.cls
    ex = objectives.construct_example(raw, [i, seed], FIXTURE_TINY, objective_probs=probs,
                                      sequence_length=T)
    examples.append({k: v.numpy() for k, v in ex.items()})
  keys = examples[0].keys()
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={k: tf.TensorSpec([2, None] if k == "positions" else
                                         ([] if examples[0][k].ndim == 0 else [None]),
                                         tf.float32 if k == "loss_weights" else tf.int32)
                        for k in keys})
  return ds, examples


def test_padded_batch_has_model_keys_and_padding():
  ds, examples = _task_dataset([40, 20, 55, 9])
  out = list(GLMFeatureConverter(pad_id=0)(ds, {"targets": T}).as_numpy_iterator())
  assert len(out) == len(examples)
  for row, ex in zip(out, examples):
    assert set(row) == {"tokens", "positions", "sep", "targets", "loss_weights"}
    n = len(ex["tokens"])
    assert row["tokens"].shape == (T,) and row["positions"].shape == (2, T)
    assert row["sep"].shape == () and row["sep"] == ex["sep"]
    assert row["loss_weights"].dtype == np.float32
    np.testing.assert_array_equal(row["tokens"][:n], ex["tokens"])
    np.testing.assert_array_equal(row["positions"][:, :n], ex["positions"])
    np.testing.assert_array_equal(row["targets"][:n], ex["targets"])
    np.testing.assert_array_equal(row["loss_weights"][:n], ex["loss_weights"])
    assert np.all(row["tokens"][n:] == 0) and np.all(row["positions"][:, n:] == 0)
    assert np.all(row["loss_weights"][n:] == 0) and np.all(row["targets"][n:] == 0)


def test_packed_rows_keep_segments_apart_and_sep_per_token():
  lengths = [10, 30, 8, 12, 50, 5, 25, 14, 7, 40, 11, 6]
  ds, examples = _task_dataset(lengths, seed=1)
  conv = GLMFeatureConverter(pack=True, pad_id=0, pack_window=8)
  rows = list(conv(ds, {"targets": T}).as_numpy_iterator())
  assert len(rows) < len(examples)
  recovered = []
  for row in rows:
    assert set(row) == {"tokens", "positions", "sep", "targets", "loss_weights", "segment_ids"}
    seg = row["segment_ids"]
    ids = [s for s in np.unique(seg) if s]
    assert ids == list(range(1, len(ids) + 1))
    assert np.all(np.diff(np.flatnonzero(seg)) == 1) and seg[0] == 1  # contiguous, no holes
    for s in ids:
      idx = np.flatnonzero(seg == s)
      start = idx[0]
      ex = {"tokens": row["tokens"][idx], "positions": row["positions"][:, idx],
            "targets": row["targets"][idx], "loss_weights": row["loss_weights"][idx]}
      sep_abs = row["sep"][idx]
      assert np.all(sep_abs == sep_abs[0]), "one sep per segment"
      ex["sep"] = sep_abs[0] - start  # Part B begins at the segment's own sep
      recovered.append(ex)
      # Part A of this segment is exactly the tokens before its sep; Part B after.
      assert np.all(row["positions"][1][start:sep_abs[0]] == 0)
      assert np.all(row["loss_weights"][start:sep_abs[0]] == 0)
    pad = seg == 0
    assert np.all(row["tokens"][pad] == 0) and np.all(row["loss_weights"][pad] == 0)
    assert np.all(row["sep"][pad] == 0) and np.all(row["positions"][:, pad] == 0)
  assert len(recovered) == len(examples)
  for got, ex in zip(recovered, examples):  # in order, nothing lost or truncated
    assert got["sep"] == ex["sep"]
    for k in ("tokens", "positions", "targets", "loss_weights"):
      np.testing.assert_array_equal(got[k], ex[k])


def test_too_long_example_fails_with_clear_error():
  ds, _ = _task_dataset([60])
  conv = GLMFeatureConverter(apply_length_check=True)
  with pytest.raises(tf.errors.InvalidArgumentError, match="expected length of 32"):
    list(conv(ds, {"targets": 32}).as_numpy_iterator())
  # Without seqio's length check (the default) our own check refuses to truncate.
  for pack in (False, True):
    conv = GLMFeatureConverter(pack=pack)
    with pytest.raises(tf.errors.InvalidArgumentError, match="raw_length_for"):
      list(conv(ds, {"targets": 32}).as_numpy_iterator())


def test_missing_layout_features_is_a_clear_error():
  ds = tf.data.Dataset.from_tensor_slices({"targets": np.ones([2, 8], np.int32)})
  with pytest.raises(ValueError, match="blank_infilling"):
    GLMFeatureConverter()(ds, {"targets": T})


def test_model_feature_lengths():
  assert GLMFeatureConverter().get_model_feature_lengths({"targets": 16}) == {
      "tokens": 16, "positions": 16, "sep": 16, "targets": 16, "loss_weights": 16}
  assert "segment_ids" in GLMFeatureConverter(pack=True).get_model_feature_lengths(
      {"targets": 16})


def test_packed_attention_equals_per_sample_attention():
  """Through the model's own mask rule, a packed row is block-diagonal in its samples."""
  from glm_jax.model import attention_mask  # pylint: disable=g-import-not-at-top
  ds, examples = _task_dataset([20, 15, 9, 30, 12], seed=2)
  rows = list(GLMFeatureConverter(pack=True)(ds, {"targets": T}).as_numpy_iterator())
  seen = 0
  for row in rows:
    idx = np.arange(T)
    packed = np.asarray(attention_mask(idx, idx, row["sep"][None], row["segment_ids"][None]))[0]
    seg = row["segment_ids"]
    for s in range(1, seg.max() + 1):
      where = np.flatnonzero(seg == s)
      ex = examples[seen]
      n = len(ex["tokens"])
      own = np.asarray(attention_mask(np.arange(n), np.arange(n), np.array([ex["sep"]])))[0]
      np.testing.assert_array_equal(packed[np.ix_(where, where)], own)
      others = np.flatnonzero((seg != s) & (seg != 0))
      assert not packed[np.ix_(where, others)].any()
      seen += 1
  assert seen == len(examples)
