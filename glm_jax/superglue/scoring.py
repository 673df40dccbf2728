"""Candidate scores of cloze batches from GLM logits (GLM_SPEC.md section 6), batched.

Four batch layouts (built by inputs.py); the first three give scores [B, C]:
- verbalizer: one sequence per example, Part B = [sop]; score = logit at the first Part B
  position (index sep) of each candidate's single verbalizer token.
- separate: one sequence per candidate, tokens [B, C, T]; score = sum of the answer tokens'
  log-probabilities (eop included).
- shared: Part A once, then every candidate's Part B in the same row; an explicit mask lets
  each candidate see Part A and, causally, only itself. Same score as `separate`.
- generative: the gold candidate's row alone, tokens [B, T] with targets (the reference's
  generative WSC): per-row answer NLL, answer length and whether every token is the argmax.
With `length_penalty` > 0 a multi-token score is divided by (answer tokens incl. eop) **
length_penalty, as the reference's GLMForMultiTokenCloze does (its WSC: 1.0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from glm_jax import losses

# Score of padded (absent) candidates: finite, so that softmax and CE never see NaN.
INVALID_SCORE = -1e9


def layout_of(batch) -> str:
  """'verbalizer', 'separate', 'shared' or 'generative', from the keys and ranks of a batch."""
  if "candidate_ids" in batch:
    return "verbalizer"
  if "candidate_index" in batch:
    return "shared"
  if batch["tokens"].ndim == 3:
    return "separate"
  if "targets" in batch:
    return "generative"
  raise ValueError("Not a cloze batch: expected candidate_ids, candidate_index, [B, C, T] "
                   "tokens or [B, T] targets.")


def verbalizer_scores(logits, sep, candidate_ids):
  """logits [B, T, V], sep [B], candidate_ids [B, C] -> logits[b, sep_b, ids_bc], [B, C]."""
  first_b = jnp.take_along_axis(logits, sep[:, None, None].astype(jnp.int32), axis=1)[:, 0]
  return jnp.take_along_axis(first_b, candidate_ids.astype(jnp.int32), axis=-1)


def shared_candidate_mask(sep, candidate_index):
  """Mask [B, T, T] for the shared layout; candidate_index [B, T] is -1 on Part A / padding.

  Key j is visible to query i iff j < sep, or i and j belong to the same candidate and
  j <= i. Part A rows therefore see exactly Part A, as in the sep form.
  """
  length = candidate_index.shape[1]
  index = jnp.arange(length)
  part_a = index[None, None, :] < sep[:, None, None]  # [B, 1, T]
  same = (candidate_index[:, :, None] == candidate_index[:, None, :]) & (
      candidate_index[:, :, None] >= 0)
  causal = index[None, None, :] <= index[None, :, None]
  return part_a | (same & causal)


def shared_scores(logits, targets, loss_weights, candidate_index, num_candidates: int):
  """Sum of answer-token log-probs per candidate of the shared layout, [B, C]."""
  logp = losses.target_log_probs(logits, targets) * loss_weights  # [B, T]
  onehot = jax.nn.one_hot(candidate_index, num_candidates, dtype=jnp.float32)  # [B, T, C]
  return jnp.einsum("bt,btc->bc", logp, onehot)


def _penalized(scores, lengths, length_penalty: float):
  if length_penalty <= 0.0:
    return scores
  return scores / jnp.maximum(lengths, 1.0) ** length_penalty


def generative_outputs(apply_fn, batch, **apply_kwargs):
  """(answer NLL [B], answer tokens [B], every answer token the argmax [B]) of the generative
  layout."""
  logits = apply_fn(batch["tokens"], batch["positions"], sep=batch["sep"], **apply_kwargs)
  w = batch["loss_weights"]
  nll = -jnp.sum(losses.target_log_probs(logits, batch["targets"]) * w, axis=-1)
  hit = (jnp.argmax(logits, axis=-1) == batch["targets"]) | (w == 0)
  return nll, jnp.sum(w, axis=-1), jnp.all(hit, axis=-1)


def candidate_scores(apply_fn, batch, length_penalty: float = 0.0, **apply_kwargs):
  """Scores [B, C] of a batch in any candidate layout; padded candidates get INVALID_SCORE.

  apply_fn(tokens, positions, sep=..., mask=..., **apply_kwargs) -> logits [N, T, V], e.g.
  `functools.partial(GLM(config).apply, {'params': params})`.
  """
  layout = layout_of(batch)
  if layout == "generative":
    raise ValueError("A generative batch has no candidate scores; use generative_outputs.")
  if layout == "verbalizer":
    logits = apply_fn(batch["tokens"], batch["positions"], sep=batch["sep"], **apply_kwargs)
    scores = verbalizer_scores(logits, batch["sep"], batch["candidate_ids"])
  elif layout == "separate":
    b, c, t = batch["tokens"].shape
    logits = apply_fn(batch["tokens"].reshape(b * c, t),
                      batch["positions"].reshape(b * c, 2, t),
                      sep=batch["sep"].reshape(b * c), **apply_kwargs)
    logp = losses.target_log_probs(logits, batch["targets"].reshape(b * c, t))
    weights = batch["loss_weights"].reshape(b * c, t)
    scores = _penalized(jnp.sum(logp * weights, axis=-1),
                        jnp.sum(weights, axis=-1), length_penalty).reshape(b, c)
  else:
    mask = shared_candidate_mask(batch["sep"], batch["candidate_index"])
    logits = apply_fn(batch["tokens"], batch["positions"], mask=mask, **apply_kwargs)
    num_candidates = batch["candidate_mask"].shape[1]
    scores = shared_scores(logits, batch["targets"], batch["loss_weights"],
                           batch["candidate_index"], num_candidates)
    lengths = jnp.einsum("bt,btc->bc", batch["loss_weights"].astype(jnp.float32),
                         jax.nn.one_hot(batch["candidate_index"], num_candidates))
    scores = _penalized(scores, lengths, length_penalty)
  return jnp.where(batch["candidate_mask"] > 0, scores.astype(jnp.float32), INVALID_SCORE)
