"""GLM blank-infilling objectives as TensorFlow ops (GLM_SPEC.md sections 1-2).

Each objective takes ONE raw sample `[CLS] doc eos [CLS] doc2 eos ...` (int32 [L]), a
stateless seed (int [2]) and a `SpecialTokens`, and returns the layout of section 1:

  tokens        [N] int32    Part A ++ Part B
  positions     [2, N] int32 row 0 positions, row 1 block positions
  sep           [] int32     len(Part A)
  targets       [N] int32    Part A tokens (weight 0), then span tokens shifted left ++ eop
  loss_weights  [N] float32  1 on Part B targets, 0 on Part A
  num_spans     [] int32     spans (blanks) in the example
  num_masked    [] int32     original tokens moved to Part B (sum of span lengths)
  suffix_layout [] int32     1 for the document-level prefix-LM layout (no eop), else 0
  redraws       [] int32     token level: span draws thrown away because they did not fit
  unplaced      [] int32     token level: spans still unplaced after the last redraw (dropped)
  spans_capped  [] int32     1 if `max_spans` stopped the span draw early

Part A's mask token is `special.mask_for(objective)`: [MASK] / [sMASK] / [gMASK] for a
vocabulary with task masks, [MASK] for every objective without (GLM-Base/Large/Doc).

All functions are graph-mode pure functions (usable inside `tf.data.Dataset.map`): the
same (sample, seed) always gives the same example.

Output length. Token and sentence infilling give N = L + 2 * num_spans; document
infilling gives N = L + 1 (suffix layout) or L + 2 (infill layout). With a fixed model
length T the pipeline picks the raw sample length `raw_length_for(T)` and caps spans at
`default_max_spans(L)` = ceil(L * 0.15 / 2) (L = 444 and at most 34 spans for T = 512; the
reference at L = 512 never drew more than 33 token spans or 7 sentences). With
`sequence_length` the preprocessors also cap spans at (T - L) // 2, so an example never
exceeds T and Part B is never truncated; a capped draw is counted in `spans_capped`.

Seqio preprocessors (signatures for the pipeline):

  blank_infilling(dataset, sequence_length=None, output_features=None, *, seeds,
                  objective_probs=(1., 0., 0.), special_tokens, ...)
      `seqio.map_over_dataset(num_seeds=2)`: seeds come from seqio's map seed manager.

It reads feature 'targets' (the raw sample), REPLACES it by the layout targets and adds
tokens, positions, sep, loss_weights, the counters above and `objective`
(0 token, 1 sentence, 2 document). Unlike the reference, which picks one objective per
micro-batch, the objective is drawn per EXAMPLE with `objective_probs`; over a batch the
mix is the same in expectation, and rows of one batch may mix objectives.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import seqio
import tensorflow as tf

from glm_jax.data.special_tokens import SpecialTokens

OBJECTIVES = ("token", "sentence", "document")
_MAX_REDRAWS = 3

Seed = Union[tf.Tensor, Sequence[int]]


def default_max_spans(raw_length: int, mask_ratio: float = 0.15) -> int:
  """Span cap for a raw sample of `raw_length` tokens: ceil(raw_length * mask_ratio / 2)."""
  return int(math.ceil(raw_length * mask_ratio / 2))


def max_output_length(raw_length: int, objective: str, max_spans: Optional[int] = None,
                      mask_ratio: float = 0.15) -> int:
  """Longest example an objective can build from `raw_length` tokens."""
  if objective not in OBJECTIVES:
    raise ValueError(f"Unknown objective {objective!r}; use one of {OBJECTIVES}.")
  if objective == "document":
    return raw_length + 2  # infill layout; the suffix layout is raw_length + 1
  if max_spans is None:
    max_spans = default_max_spans(raw_length, mask_ratio)
  return raw_length + 2 * max_spans


def raw_length_for(sequence_length: int, objectives: Sequence[str] = OBJECTIVES,
                   mask_ratio: float = 0.15) -> int:
  """Largest raw sample length whose examples (default span cap) fit `sequence_length`."""
  for raw in range(sequence_length, 0, -1):
    if all(max_output_length(raw, o, mask_ratio=mask_ratio) <= sequence_length
           for o in objectives):
      return raw
  raise ValueError(f"sequence_length {sequence_length} is too short for any sample.")


# ----------------------------------------------------------------------------- helpers
#
# Performance: per example, CPU time grows with the number of ops run, so each example
# draws all its uniforms with one stateless op, and work that is rarely needed (infill
# layout, redraws, multi-document allocation) sits behind tf.cond / tf.while_loop.


def _uniform(shape, seed) -> tf.Tensor:
  return tf.random.stateless_uniform(shape, tf.cast(seed, tf.int64), dtype=tf.float32)


def _randint(u: tf.Tensor, high: tf.Tensor) -> tf.Tensor:
  """Uniform integers in [0, high] from uniforms `u` in [0, 1)."""
  high = tf.maximum(high, 0)
  return tf.minimum(tf.cast(u * tf.cast(high + 1, tf.float32), tf.int32), high)


def _ratio_count(ratio: float, length: tf.Tensor) -> tf.Tensor:
  """int(ratio * length) as Python computes it (float64)."""
  return tf.cast(tf.floor(ratio * tf.cast(length, tf.float64)), tf.int32)


def _boundaries(tokens: tf.Tensor, special: SpecialTokens):
  """(is_eos, is_doc_cls) [L] bool: eos tokens and the [CLS] that opens each document."""
  is_eos = tf.equal(tokens, special.eos)
  after_eos = tf.concat([[True], is_eos[:-1]], 0)
  is_doc_cls = tf.logical_and(tf.equal(tokens, special.cls), after_eos)
  return is_eos, is_doc_cls


def _resolve_max_spans(max_spans, length, mask_ratio):
  if max_spans is None:
    return tf.cast(tf.math.ceil(tf.cast(length, tf.float64) * (mask_ratio / 2)), tf.int32)
  return tf.cast(max_spans, tf.int32)


def _counters(num_spans, num_masked, suffix=0, redraws=0, unplaced=0, capped=0):
  as_i32 = lambda x: tf.cast(x, tf.int32)
  return {"num_spans": as_i32(num_spans), "num_masked": as_i32(num_masked),
          "suffix_layout": as_i32(suffix), "redraws": as_i32(redraws),
          "unplaced": as_i32(unplaced), "spans_capped": as_i32(capped)}


def _span_layout(tokens: tf.Tensor, starts: tf.Tensor, ends: tf.Tensor, mask_id: int,
                 special: SpecialTokens, order_u: Optional[tf.Tensor] = None,
                 block_u: Optional[tf.Tensor] = None, block_mask_prob: float = 0.0) -> dict:
  """Part A ++ Part B of section 1 for spans [starts, ends) sorted by start.

  Part B takes the spans in the order of `order_u` ([n] uniforms; None keeps text order);
  `block_u` (>= len(Part B) uniforms) drives `block_mask_prob`.
  """
  length = tf.shape(tokens)[0]
  n = tf.shape(starts)[0]
  span_len = ends - starts                                            # [n]
  ones = tf.ones([n], tf.int32)
  delta = (tf.scatter_nd(starts[:, None], ones, [length + 1]) -
           tf.scatter_nd(ends[:, None], ones, [length + 1]))
  in_span = tf.cumsum(delta)[:length] > 0                              # [L]
  is_start = tf.scatter_nd(starts[:, None], ones, [length]) > 0       # [L]
  keep_a = tf.logical_or(tf.logical_not(in_span), is_start)
  a_index = tf.cast(tf.where(keep_a)[:, 0], tf.int32)                  # [len_a]
  a_tokens = tf.gather(tf.where(is_start, mask_id, tokens), a_index)
  len_a = tf.shape(a_index)[0]
  a_position_of = tf.cumsum(tf.cast(keep_a, tf.int32), exclusive=True)  # [L]
  mask_pos = tf.gather(a_position_of, starts)                          # [n]

  order = tf.range(n) if order_u is None else tf.argsort(order_u[:n])
  b_start = tf.gather(starts, order)
  b_len = tf.gather(span_len, order)
  seg_end = tf.cumsum(b_len + 1)                                       # [n] inclusive
  len_b = tf.reduce_sum(b_len + 1)
  p = tf.range(len_b)
  seg = tf.searchsorted(seg_end, p, side="right")                      # [len_b]
  within = p - (tf.gather(seg_end, seg) - tf.gather(b_len, seg) - 1)   # 0 = sop
  src = tf.gather(b_start, seg) + within                               # original index of target
  last = tf.equal(within, tf.gather(b_len, seg))
  b_targets = tf.where(last, special.eop, tf.gather(tokens, tf.minimum(src, length - 1)))
  b_inputs = tf.where(tf.equal(within, 0), special.sop,
                      tf.gather(tokens, tf.maximum(src - 1, 0)))
  if block_mask_prob > 0.0:
    if special.dblock is None:
      raise ValueError("block_mask_prob > 0 needs a vocabulary with a [dBLOCK] token.")
    hit = tf.logical_and(block_u[:len_b] < block_mask_prob, within > 0)
    b_inputs = tf.where(hit, special.dblock, b_inputs)
  positions = tf.stack([
      tf.concat([tf.range(len_a), tf.gather(tf.gather(mask_pos, order), seg)], 0),
      tf.concat([tf.zeros([len_a], tf.int32), within + 1], 0)])
  return {
      "tokens": tf.concat([a_tokens, b_inputs], 0),
      "positions": positions,
      "sep": len_a,
      "targets": tf.concat([a_tokens, b_targets], 0),
      "loss_weights": tf.concat([tf.zeros([len_a]), tf.ones([len_b])], 0),
  }


# ----------------------------------------------------------------------------- token level


def _length_cdf(poisson_lambda: float, max_span_length: int) -> tf.Tensor:
  """CDF of Poisson(lambda) renormalised over 1..max_span_length-1 (reference weights)."""
  pmf = [math.exp(k * math.log(poisson_lambda) - poisson_lambda - math.lgamma(k + 1))
         for k in range(1, max_span_length)]
  total = sum(pmf)
  cdf = np.cumsum(pmf) / total
  cdf[-1] = 1.0
  return tf.constant(cdf, tf.float32)


def _documents(tokens, special):
  """Span-eligible region of every document: (offset [D], length [D])."""
  length = tf.shape(tokens)[0]
  is_eos, is_doc_cls = _boundaries(tokens, special)
  idx = tf.range(length)
  eligible = tf.logical_not(tf.logical_or(is_eos, is_doc_cls))
  eligible = tf.logical_and(eligible, idx < length - 1)
  doc_id = tf.cumsum(tf.cast(is_eos, tf.int32), exclusive=True)
  num_docs = doc_id[-1] + 1
  doc_len = tf.math.unsorted_segment_sum(tf.cast(eligible, tf.int32), doc_id, num_docs)
  doc_offset = tf.math.unsorted_segment_min(tf.where(eligible, idx, length), doc_id, num_docs)
  return doc_offset, doc_len


def _allocate(span_lens, doc_len, mask_ratio):
  """Reference allocation: shortest documents first, each up to int(ratio*len) tokens,
  the longest document takes the rest. Returns span-index bounds [D+1] per sorted doc."""
  n = tf.shape(span_lens)[0]
  num_docs = tf.shape(doc_len)[0]
  csum = tf.concat([[0], tf.cumsum(span_lens)], 0)                     # [n+1]
  with_gaps = csum + tf.range(n + 1)
  budget = _ratio_count(mask_ratio, doc_len)

  def body(d, m, bounds):
    take = tf.searchsorted(csum, [csum[m] + budget[d]], side="right")[0] - 1
    return d + 1, take, bounds.write(d + 1, take)

  bounds = tf.TensorArray(tf.int32, size=num_docs + 1).write(0, 0)
  _, m, bounds = tf.while_loop(lambda d, m, b: d < num_docs - 1, body, (0, 0, bounds))
  last = tf.searchsorted(with_gaps, [with_gaps[m] + doc_len[num_docs - 1] + 1],
                         side="right")[0] - 1
  return bounds.write(num_docs, last).stack()


def _place_token_spans(tokens, special, u, cdf, mask_ratio, max_spans):
  """One draw: lengths until the target, per-document allocation, sorted random offsets.

  `u`: uniforms [3 * k] for k = min(target, max_spans). Returns (starts, ends) sorted by
  start, the number of drawn spans that did not fit, and whether max_spans capped the draw.
  """
  length = tf.shape(tokens)[0]
  target = _ratio_count(mask_ratio, length)
  k = tf.maximum(tf.minimum(target, max_spans), 0)
  lens = tf.searchsorted(cdf, u[:k], side="right") + 1                 # [k]
  before = tf.cumsum(lens, exclusive=True)
  num = tf.reduce_sum(tf.cast(before < target, tf.int32))
  capped = tf.logical_and(tf.equal(num, k), tf.reduce_sum(lens) < target)
  lens = tf.gather(lens[:num], tf.argsort(u[k:k + num]))               # reference shuffles
  doc_offset, doc_len = _documents(tokens, special)
  doc_order = tf.argsort(doc_len, stable=True)
  doc_offset, doc_len = tf.gather(doc_offset, doc_order), tf.gather(doc_len, doc_order)
  bounds = _allocate(lens, doc_len, mask_ratio)                        # [D+1]
  placed = bounds[-1]
  span_lens = lens[:placed]
  idx = tf.range(placed)
  doc = tf.searchsorted(bounds[1:], idx, side="right")                 # [placed]
  first = tf.gather(bounds, doc)
  count = tf.gather(bounds, doc + 1) - first
  before = tf.cumsum(span_lens, exclusive=True)
  doc_sum = tf.math.unsorted_segment_sum(span_lens, doc, tf.shape(doc_len)[0])
  slack = tf.gather(doc_len - doc_sum, doc) - count + 1                # offsets in [0, slack]
  place = _randint(u[2 * k:2 * k + placed], slack)
  key = doc * (length + 1) + place
  place = tf.sort(key) - doc * (length + 1)
  starts = (tf.gather(doc_offset, doc) + place + (before - tf.gather(before, first)) +
            (idx - first))
  order = tf.argsort(starts)
  starts = tf.gather(starts, order)
  return starts, starts + tf.gather(span_lens, order), num - placed, capped


def token_infilling(tokens: tf.Tensor, seed: Seed, special: SpecialTokens, *,
                    mask_ratio: float = 0.15, poisson_lambda: float = 3.0,
                    max_span_length: int = 40, max_spans=None, shuffle_spans: bool = True,
                    block_mask_prob: float = 0.0, max_redraws: int = _MAX_REDRAWS) -> dict:
  """[MASK] spans, Poisson(lambda) lengths over 1..max_span_length-1, until >= mask_ratio.

  Spans never cover the leading [CLS], an eos, the [CLS] after it or the last token;
  multi-document samples get the reference's per-document allocation. A draw whose spans
  do not fit is redrawn up to `max_redraws` times (counted in `redraws`); spans of the last
  draw that still do not fit are dropped and counted in `unplaced`.
  """
  tokens = tf.cast(tokens, tf.int32)
  length = tf.shape(tokens)[0]
  max_spans = _resolve_max_spans(max_spans, length, mask_ratio)
  k = tf.maximum(tf.minimum(_ratio_count(mask_ratio, length), max_spans), 0)
  seed = tf.cast(seed, tf.int64)
  u = _uniform([4 * k + length + 1], seed)
  cdf = _length_cdf(poisson_lambda, max_span_length)
  starts, ends, unplaced, capped = _place_token_spans(tokens, special, u, cdf, mask_ratio,
                                                      max_spans)

  def redraw(i, s, e, n, c):
    u_i = _uniform([3 * k], tf.random.experimental.stateless_fold_in(seed, i))
    s, e, n, c = _place_token_spans(tokens, special, u_i, cdf, mask_ratio, max_spans)
    return i + 1, s, e, n, c

  shapes = (tf.TensorShape([]), tf.TensorShape([None]), tf.TensorShape([None]),
            tf.TensorShape([]), tf.TensorShape([]))
  # Normally zero iterations; a while loop is cheaper per example than a tf.cond.
  tries, starts, ends, unplaced, capped = tf.while_loop(
      lambda i, s, e, n, c: tf.logical_and(i <= max_redraws, n > 0), redraw,
      (1, starts, ends, unplaced, capped), shape_invariants=shapes)
  out = _span_layout(tokens, starts, ends, special.mask_for("token"), special,
                     u[3 * k:4 * k] if shuffle_spans else None, u[4 * k:], block_mask_prob)
  out.update(_counters(tf.shape(starts)[0], tf.reduce_sum(ends - starts),
                       redraws=tries - 1, unplaced=unplaced, capped=capped))
  return out


# ----------------------------------------------------------------------------- sentence level


def _sentences(tokens, special):
  """Whole sentences [start, end) ending at a sentence-end token or a document end.

  Sentences never include eos, a document's [CLS] or the sample's last token (a sentence
  reaching the last token is not a candidate).
  """
  length = tf.shape(tokens)[0]
  is_eos, is_doc_cls = _boundaries(tokens, special)
  if special.sentence_end_ids:
    ids = tf.constant(special.sentence_end_ids, tf.int32)
    is_end = tf.reduce_any(tf.equal(tokens[:, None], ids[None, :]), axis=1)
  else:
    is_end = tf.zeros_like(is_eos)
  valid = tf.logical_not(tf.logical_or(is_eos, is_doc_cls))
  prev_valid = tf.concat([[False], valid[:-1]], 0)
  prev_end = tf.concat([[False], is_end[:-1]], 0)
  next_valid = tf.concat([valid[1:], [False]], 0)
  starts_flag = tf.logical_and(valid, tf.logical_or(tf.logical_not(prev_valid), prev_end))
  ends_flag = tf.logical_and(valid, tf.logical_or(tf.logical_not(next_valid), is_end))
  starts = tf.cast(tf.where(starts_flag)[:, 0], tf.int32)
  ends = tf.cast(tf.where(ends_flag)[:, 0], tf.int32) + 1
  keep = ends < length
  return tf.boolean_mask(starts, keep), tf.boolean_mask(ends, keep)


def sentence_infilling(tokens: tf.Tensor, seed: Seed, special: SpecialTokens, *,
                       mask_ratio: float = 0.15, max_spans=None, shuffle_spans: bool = True,
                       block_mask_prob: float = 0.0) -> dict:
  """[sMASK] (`mask_for('sentence')`) whole sentences in random order until >= mask_ratio.

  Adjacent sentences may both be chosen (two blanks with no token between), as in the
  reference.
  """
  tokens = tf.cast(tokens, tf.int32)
  length = tf.shape(tokens)[0]
  max_spans = _resolve_max_spans(max_spans, length, mask_ratio)
  u = _uniform([4 * length], seed)
  starts, ends = _sentences(tokens, special)
  num = tf.shape(starts)[0]
  perm = tf.argsort(u[:num])
  lens = tf.gather(ends - starts, perm)
  target = _ratio_count(mask_ratio, length)
  before = tf.cumsum(lens, exclusive=True)
  needed = tf.maximum(tf.reduce_sum(tf.cast(before < target, tf.int32)), tf.minimum(num, 1))
  take = tf.minimum(needed, max_spans)
  chosen = tf.sort(perm[:take])
  starts, ends = tf.gather(starts, chosen), tf.gather(ends, chosen)
  out = _span_layout(tokens, starts, ends, special.mask_for("sentence"), special,
                     u[length:2 * length] if shuffle_spans else None, u[2 * length:],
                     block_mask_prob)
  out.update(_counters(take, tf.reduce_sum(ends - starts), capped=needed > take))
  return out


# ----------------------------------------------------------------------------- document level


def _suffix_layout(tokens, gen_len, special):
  """Prefix-LM layout: src [gMASK] sop tgt[:-1]; targets src [gMASK] tgt (no eop)."""
  length = tf.shape(tokens)[0]
  div = length - gen_len
  src, tgt = tokens[:div], tokens[div:]
  mask_sop = tf.constant([special.mask_for("document"), special.sop], tf.int32)
  return {
      "tokens": tf.concat([src, mask_sop, tgt[:-1]], 0),
      "positions": tf.stack([
          tf.concat([tf.range(div + 1), tf.fill([gen_len], div)], 0),
          tf.concat([tf.zeros([div], tf.int32), tf.range(gen_len + 1)], 0)]),
      "sep": div + 1,
      "targets": tf.concat([src, mask_sop[:1], tgt], 0),
      # The reference takes the sample loss mask here: 0 on every [CLS].
      "loss_weights": tf.concat([tf.zeros([div + 1]),
                                 tf.cast(tf.not_equal(tgt, special.cls), tf.float32)], 0),
  }


def document_infilling(tokens: tf.Tensor, seed: Seed, special: SpecialTokens, *,
                       min_ratio: float = 0.5, gpt_infill_prob: float = 0.5) -> dict:
  """[gMASK] (`mask_for('document')`): one span of length uniform in [int(min_ratio*L), L-2].

  With probability `gpt_infill_prob`, and always for multi-document samples, the span is
  the suffix: prefix-LM layout `src [gMASK] sop tgt[:-1]`, targets `src [gMASK] tgt` (no
  eop, weight 0 on [CLS] targets as the reference's sample loss mask). Otherwise it is
  placed at random in the document with the normal layout (with eop).
  """
  tokens = tf.cast(tokens, tf.int32)
  length = tf.shape(tokens)[0]
  u = _uniform([3], seed)
  low = _ratio_count(min_ratio, length)
  gen_len = tf.minimum(tf.maximum(low + _randint(u[0], length - 2 - low), 1), length - 1)
  multi_doc = tf.reduce_any(tf.equal(tokens[:-1], special.eos))
  suffix = tf.logical_and(tf.logical_or(multi_doc, u[1] < gpt_infill_prob), gen_len > 0)

  def infill():
    doc_offset, doc_len = _documents(tokens, special)
    span = tf.minimum(gen_len, doc_len[0])
    start = doc_offset[0] + _randint(u[2], doc_len[0] - span)
    num = tf.cast(span > 0, tf.int32)
    out = _span_layout(tokens, start[None][:num], (start + span)[None][:num],
                       special.mask_for("document"), special)
    out.update(_counters(num, span))
    return out

  def suffix_fn():
    out = _suffix_layout(tokens, gen_len, special)
    out.update(_counters(1, gen_len, suffix=1))
    return out

  return tf.cond(suffix, suffix_fn, infill)


# ----------------------------------------------------------------------------- statistics


MAX_HIST_LENGTH = 40


def part_b_spans(example: Mapping[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Part B spans of one unpadded numpy example: (start, end, original-token length), [S] each.

  A span is its block positions 1..; its inputs are sop + span (sop + span[:-1], no eop, in the
  prefix-LM suffix layout).
  """
  sep = int(example["sep"])
  block = np.asarray(example["positions"])[1, sep:]
  starts = sep + np.flatnonzero(block == 1)
  ends = np.append(starts[1:], sep + len(block))
  return starts, ends, ends - starts - (0 if int(example.get("suffix_layout", 0)) else 1)


def raw_sample_length(example: Mapping[str, np.ndarray]) -> int:
  """Tokens of the raw sample an example was built from: Part A minus its masks plus the spans."""
  lengths = part_b_spans(example)[2]
  return int(example["sep"]) + int(lengths.sum()) - len(lengths)


def layout_statistics(examples) -> dict:
  """Summary of unpadded numpy examples: masked fraction (span tokens / raw sample length),
  span lengths (histogram of 1..40, normalised), spans per sample, lengths."""
  fractions, spans_per, lengths, raw_lengths, all_spans = [], [], [], [], []
  suffix = unplaced = redraws = capped = 0
  for ex in examples:
    lens, raw_length = part_b_spans(ex)[2], raw_sample_length(ex)
    fractions.append(lens.sum() / raw_length)
    spans_per.append(len(lens))
    lengths.append(len(ex["tokens"]))
    raw_lengths.append(raw_length)
    all_spans.append(lens)
    suffix += int(ex.get("suffix_layout", 0))
    unplaced += int(ex.get("unplaced", 0))
    redraws += int(ex.get("redraws", 0))
    capped += int(ex.get("spans_capped", 0))
  n = len(fractions)
  if n == 0:
    raise ValueError("layout_statistics needs at least one example.")
  spans = np.concatenate(all_spans) if all_spans else np.zeros([0], int)
  hist = np.bincount(np.clip(spans, 0, MAX_HIST_LENGTH + 1),
                     minlength=MAX_HIST_LENGTH + 2)[1:MAX_HIST_LENGTH + 1]
  return {
      "num_samples": n,
      "masked_fraction_mean": float(np.mean(fractions)),
      "masked_fraction_std": float(np.std(fractions)),
      "span_length_hist": (hist / max(len(spans), 1)).tolist(),
      "span_length_over_40": int(len(spans) - hist.sum()),
      "span_length_mean": float(spans.mean()) if len(spans) else 0.0,
      "max_span_length": int(spans.max()) if len(spans) else 0,
      "spans_per_sample_mean": float(np.mean(spans_per)),
      "length_mean": float(np.mean(lengths)),
      "length_max": int(np.max(lengths)),
      "raw_length_mean": float(np.mean(raw_lengths)),
      "suffix_fraction": suffix / n,
      "redraws_total": redraws,
      "unplaced_total": unplaced,
      "capped_fraction": capped / n,
  }


# ----------------------------------------------------------------------------- preprocessors


def _check_probs(objective_probs) -> Tuple[float, float, float]:
  probs = tuple(float(p) for p in objective_probs)
  if len(probs) != 3 or min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
    raise ValueError(f"objective_probs {objective_probs} must be 3 non-negative numbers "
                     "(token, sentence, document) that sum to 1.")
  return probs


def construct_example(tokens: tf.Tensor, seed: Seed, special: SpecialTokens, *,
                      objective_probs=(1.0, 0.0, 0.0), sequence_length: Optional[int] = None,
                      mask_ratio: float = 0.15, poisson_lambda: float = 3.0,
                      max_span_length: int = 40, doc_min_ratio: float = 0.5,
                      gpt_infill_prob: float = 0.5, block_mask_prob: float = 0.0,
                      shuffle_spans: bool = True, max_spans=None,
                      pick_seed: Optional[Seed] = None) -> dict:
  """One objective drawn with `objective_probs`, applied to one raw sample.

  `pick_seed` (default: split from `seed`) draws the objective. With `sequence_length` T
  the span cap becomes min(max_spans, (T - L) // 2) and a raw sample too long for T fails
  with an error naming `raw_length_for(T)`.
  """
  probs = _check_probs(objective_probs)
  tokens = tf.cast(tokens, tf.int32)
  length = tf.shape(tokens)[0]
  if pick_seed is None:
    pick_seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), 1)
  max_spans = _resolve_max_spans(max_spans, length, mask_ratio)
  if sequence_length is not None:
    # Too-long raw samples are reported by GLMFeatureConverter (an assert here would
    # cost more than building the example).
    max_spans = tf.maximum(tf.minimum(max_spans, (sequence_length - length) // 2), 0)
  branches = {
      0: lambda: token_infilling(tokens, seed, special, mask_ratio=mask_ratio,
                                 poisson_lambda=poisson_lambda,
                                 max_span_length=max_span_length, max_spans=max_spans,
                                 shuffle_spans=shuffle_spans,
                                 block_mask_prob=block_mask_prob),
      1: lambda: sentence_infilling(tokens, seed, special, mask_ratio=mask_ratio,
                                    max_spans=max_spans, shuffle_spans=shuffle_spans),
      2: lambda: document_infilling(tokens, seed, special, min_ratio=doc_min_ratio,
                                    gpt_infill_prob=gpt_infill_prob),
  }
  used = [i for i, p in enumerate(probs) if p > 0]
  if len(used) == 1:
    out = branches[used[0]]()
    objective = tf.constant(used[0], tf.int32)
  else:
    cum = tf.constant([sum(probs[:i + 1]) for i in used[:-1]], tf.float32)
    pick = tf.reduce_sum(tf.cast(_uniform([], pick_seed) >= cum, tf.int32))
    # Nested tf.cond: cheaper per example than tf.switch_case inside tf.data.
    def choose(i):
      if i == len(used) - 1:
        return branches[used[i]]()
      return tf.cond(tf.equal(pick, i), branches[used[i]], lambda: choose(i + 1))
    out = choose(0)
    objective = tf.gather(tf.constant(used, tf.int32), pick)
  out["objective"] = objective
  return out


def _apply(features, seed, sequence_length, kwargs):
  if "targets" not in features:
    raise ValueError("blank_infilling reads the raw sample from feature 'targets'; "
                     f"the dataset has {sorted(features)}.")
  features = dict(features)
  length = None if not sequence_length else sequence_length.get("targets")
  out = construct_example(features["targets"], seed, sequence_length=length, **kwargs)
  features.update(out)
  return features


@seqio.map_over_dataset(num_seeds=2)
def blank_infilling(features: Mapping[str, tf.Tensor],
                    sequence_length: Optional[Mapping[str, int]] = None,
                    output_features=None, *, seeds, special_tokens: SpecialTokens,
                    **objective_kwargs) -> dict:
  """Seqio preprocessor: raw sample in 'targets' -> GLM layout (see the module docstring).

  seeds[0] picks the objective, seeds[1] builds the example. Seqio draws the seeds from
  `tf.data.Dataset.random`, seeded by `seqio.map_seed_manager` / the Task's `seed`.
  """
  del output_features
  as_seed = lambda s: tf.cast(tf.stack(s), tf.int64)
  return _apply(features, as_seed(seeds[1]), sequence_length,
                dict(objective_kwargs, special=special_tokens, pick_seed=as_seed(seeds[0])))
