"""Fixed-length GLM model batches from blank-infilling task output (docs/ARCHITECTURE.md).

Task features (from `objectives.blank_infilling`): tokens [N], positions [2, N], sep [],
targets [N], loss_weights [N]; `task_feature_lengths = {"targets": T}`.

Model features, padded to T with pad id / position 0 / block position 0 / weight 0:
  tokens [T], positions [2, T], sep [], targets [T], loss_weights [T] (float32).
With `pack=True` several examples share a row: `segment_ids` [T] (1..k, 0 on padding),
positions restart per segment, and `sep` becomes per token [T]: the absolute index where
the token's segment's Part B begins (0 on padding).

An example longer than T fails with an error (Part B is never truncated); pick the raw
sample length with `objectives.raw_length_for(T)`.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

_Spec = seqio.FeatureConverter.FeatureSpec
_LAYOUT_KEYS = ("tokens", "positions", "sep", "targets", "loss_weights")


def padding_values(pad_id: int) -> dict:
  """The pad value of each layout feature: the pad id for tokens and targets, else 0."""
  return {"tokens": pad_id, "positions": 0, "sep": 0, "targets": pad_id, "loss_weights": 0.0}


def _model_features(pack: bool) -> dict:
  return {
      "tokens": _Spec(dtype=tf.int32),
      "positions": _Spec(dtype=tf.int32, rank=2, sequence_dim=1),
      "sep": _Spec(dtype=tf.int32, rank=1 if pack else 0),
      "targets": _Spec(dtype=tf.int32),
      "loss_weights": _Spec(dtype=tf.float32),
  }


class GLMFeatureConverter(seqio.FeatureConverter):
  """Pads (or packs) GLM examples into rows of `task_feature_lengths['targets']` tokens."""

  TASK_FEATURES = {"targets": _Spec(dtype=tf.int32)}
  MODEL_FEATURES = _model_features(pack=False)
  PACKING_FEATURE_DTYPES = {"segment_ids": tf.int32}

  def __init__(self, pack: bool = False, pad_id: int = 0, pack_window: int = 64,
               apply_length_check: bool = False, **kwargs):
    """`pack_window`: consecutive examples packed together (greedily, in order).

    Over-long examples always fail (our own check, one per example); seqio's extra
    validation maps run only with `apply_length_check=True`.
    """
    kwargs.pop("use_custom_packing_ops", None)
    # Our packing handles the rank-2 `positions`; seqio only allows that with this flag.
    super().__init__(pack=pack, use_custom_packing_ops=pack,
                     apply_length_check=apply_length_check, **kwargs)
    self.MODEL_FEATURES = _model_features(pack)
    self.padding_values = padding_values(pad_id)
    self._pack_window = pack_window

  def _check_and_select(self, ex: Mapping[str, tf.Tensor], length: int) -> dict:
    missing = [k for k in _LAYOUT_KEYS if k not in ex]
    if missing:
      raise ValueError(f"GLMFeatureConverter needs features {missing}; apply "
                       "objectives.blank_infilling to the task first.")
    n = tf.shape(ex["tokens"])[0]
    # String-only data gives a plain Assert op (no tf.cond guard): cheap per example.
    check = tf.debugging.Assert(tf.less_equal(n, length), [
        f"example longer than the model length {length}; build raw samples of at most "
        f"objectives.raw_length_for({length}) tokens"])
    with tf.control_dependencies([check]):
      out = {k: tf.identity(ex[k]) for k in _LAYOUT_KEYS}
    out["loss_weights"] = tf.cast(out["loss_weights"], tf.float32)
    return out

  def _pad(self, ex: Mapping[str, tf.Tensor], length: int) -> dict:
    pad = length - tf.shape(ex["tokens"])[0]
    values = self.padding_values
    out = {"sep": ex["sep"], "positions": tf.pad(ex["positions"], [[0, 0], [0, pad]],
                                                 constant_values=values["positions"])}
    for k in ("tokens", "targets", "loss_weights"):
      out[k] = tf.pad(ex[k], [[0, pad]], constant_values=values[k])
    for k, v in out.items():
      v.set_shape([2, length] if k == "positions" else ([] if k == "sep" else [length]))
    return out

  def _pack_batch(self, batch: Mapping[str, tf.Tensor], length: int) -> dict:
    """Greedy in-order packing of a padded batch [K, Lmax] into rows [R, T]."""
    lengths = batch["length"]                                          # [K]

    def step(state, n):
      row, fill, segment = state
      new_row = fill + n > length
      row = tf.where(new_row, row + 1, row)
      offset = tf.where(new_row, 0, fill)
      segment = tf.where(new_row, 1, segment + 1)
      return row, offset + n, segment

    rows, ends, segments = tf.scan(step, lengths, initializer=(0, length + 1, 0))
    # The initial fill of `length + 1` makes example 0 open row 1; shift to 0-based rows.
    rows = rows - 1
    offsets = ends - lengths                                           # [K] start in row
    num_rows = rows[-1] + 1
    # Valid tokens of the batch as one flat stream; row r is a contiguous slice of it.
    lmax = tf.shape(batch["tokens"])[1]
    valid = tf.reshape(tf.range(lmax)[None, :] < lengths[:, None], [-1])
    flat_index = tf.cast(tf.where(valid)[:, 0], tf.int32)              # [M]
    total = tf.shape(flat_index)[0]
    example_start = tf.cumsum(lengths, exclusive=True)                 # [K] in the stream
    first_example = tf.searchsorted(rows, tf.range(num_rows), side="left")  # [R]
    row_start = tf.gather(example_start, first_example)
    row_end = tf.concat([row_start[1:], [total]], 0)
    src = row_start[:, None] + tf.range(length)[None, :]               # [R, T]
    inside = src < row_end[:, None]
    src = tf.minimum(src, total - 1)
    example_of = tf.reshape(tf.searchsorted(example_start, tf.reshape(src, [-1]),
                                            side="right") - 1, tf.shape(src))  # [R, T]

    def pack(values, fill):                                            # [K, Lmax] -> [R, T]
      flat = tf.gather(tf.reshape(values, [-1]), flat_index)
      return tf.where(inside, tf.gather(flat, src), tf.cast(fill, values.dtype))

    per_token = lambda per_example: tf.where(inside, tf.gather(per_example, example_of), 0)
    values = self.padding_values
    positions = [pack(batch["positions"][:, i], values["positions"]) for i in range(2)]
    return {
        "tokens": pack(batch["tokens"], values["tokens"]),
        "positions": tf.stack(positions, 1),                          # [R, 2, T]
        "sep": per_token(offsets + batch["sep"]),
        "targets": pack(batch["targets"], values["targets"]),
        "loss_weights": pack(batch["loss_weights"], values["loss_weights"]),
        "segment_ids": per_token(segments),
    }

  def _pack_rows(self, ds: tf.data.Dataset, length: int) -> tf.data.Dataset:
    def select(ex):
      ex = self._check_and_select(ex, length)
      ex["length"] = tf.shape(ex["tokens"])[0]
      return ex

    def pack(batch):
      rows = self._pack_batch(batch, length)
      for k, v in rows.items():  # static shapes survive unbatch
        v.set_shape([None, 2, length] if k == "positions" else [None, length])
      return rows

    ds = ds.map(select, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.padded_batch(self._pack_window, padding_values=dict(self.padding_values, length=0))
    return ds.map(pack, num_parallel_calls=tf.data.AUTOTUNE).unbatch()

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    length = task_feature_lengths["targets"]
    if self.pack:
      return self._pack_rows(ds, length)
    return ds.map(lambda ex: self._pad(self._check_and_select(ex, length), length),
                  num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict:
    length = task_feature_lengths["targets"]
    lengths = {k: length for k in _LAYOUT_KEYS}
    if self.pack:
      lengths["segment_ids"] = length
    return lengths
