"""Cached blank filling (GLM_SPEC.md section 7): greedy, sampling and beam search.

Part A is encoded once into the key/value cache; then one compiled `lax.while_loop` feeds
one token per row and step: `sop` at the blank's mask position with block position 1, then
each chosen token with block positions 2, 3, ... . When a row ends a blank (eop or eos) it
moves on to its next mask, so later blanks see every earlier fill. No host work per token;
the cache is updated in place with `dynamic_update_slice` inside the loop.

Inputs are token ids: `context` [B, Tc] (Part A left-aligned, padding after it),
`context_length` [B], `mask_positions` [B, M] (ascending) and `num_blanks` [B]. Outputs are
the chosen tokens of each row, blanks separated by their end token.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np

from glm_jax import losses
from glm_jax import model as model_lib

NEG = -1e10  # "impossible" logit; finite so that score arithmetic never makes NaN
STRATEGIES = ("greedy", "sample", "beam")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """How blanks are filled; lengths count generated tokens of one blank (eop excluded)."""

  strategy: str = "greedy"  # 'greedy', 'sample' or 'beam'
  max_new_tokens: int = 64  # per blank; the blank is closed (eop) when reached
  min_length: int = 0  # per blank; eop/eos are suppressed before it
  temperature: float = 1.0  # 'sample'
  top_k: int = 0  # 'sample'; 0 = off
  top_p: float = 0.0  # 'sample'; 0 or 1 = off
  num_beams: int = 4  # 'beam'
  length_penalty: float = 1.0  # 'beam': score = sum log p / length ** length_penalty
  # 'beam': whether a finished hypothesis' closing end token counts in that length (the
  # reference's BeamSearchScorer divides by the tokens before it: False).
  penalty_counts_end: bool = True
  no_repeat_ngram_size: int = 0  # 0 = off
  stop_at_eos: bool = True  # eos ends a blank like eop (the reference's end tokens)
  max_steps: int = 0  # cap on decode steps over all blanks; 0 = none (benchmarks use it)

  def __post_init__(self):
    if self.strategy not in STRATEGIES:
      raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}.")
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")
    if not 0 <= self.min_length <= self.max_new_tokens:
      raise ValueError(f"min_length must be in [0, max_new_tokens], got {self.min_length}.")
    if self.temperature <= 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}.")
    if self.top_k < 0 or not 0.0 <= self.top_p <= 1.0:
      raise ValueError("top_k must be >= 0 and top_p in [0, 1].")
    if self.num_beams < 1:
      raise ValueError(f"num_beams must be >= 1, got {self.num_beams}.")
    if self.max_steps < 0:
      raise ValueError(f"max_steps must be >= 0, got {self.max_steps}.")

  def replace(self, **changes) -> "DecodeConfig":
    return dataclasses.replace(self, **changes)


class DecodeResult(NamedTuple):
  tokens: Any  # [B, max_out] int32: chosen tokens, each blank closed by its end token
  lengths: Any  # [B] int32: valid entries of `tokens`
  scores: Any  # [B] float32: sum of log-probabilities (beam: length-normalised)
  step_logits: Any = None  # [B, max_out, V] raw logits per step (return_logits=True only)


# ---------------------------------------------------------------------------- parameters


def unstack_layers(params, config: model_lib.GLMConfig):
  """Scanned params -> per-layer params and a scan_layers=False config.

  Decoding runs the layers unrolled so that each layer's cache is its own buffer and the
  while loop updates it in place (a scanned cache is re-stacked, i.e. copied, every step).
  """
  if not config.scan_layers:
    return params, config
  params = dict(params)
  stacked = params.pop("layers")
  for i in range(config.num_layers):
    params[f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
  return params, config.replace(scan_layers=False)


# ----------------------------------------------------------------------- network states
# A "network state" holds what the network needs to produce the next logits: the cache
# (cached) or the whole sequence so far (uncached, the reference check). Both are pytrees
# whose array leaves have the row axis first, so beam search reorders them with one gather.


def _cached_init(params, config, context, context_length, max_out):
  rows, width = context.shape  # width: Tc
  cache = model_lib.init_cache(config, rows, width + max_out)
  positions = jnp.stack([jnp.broadcast_to(jnp.arange(width), (rows, width)),
                         jnp.zeros((rows, width), jnp.int32)], axis=1)
  valid = (jnp.arange(width)[None, :] < context_length[:, None]).astype(jnp.int32)
  # The prefill's logits are unused, so XLA drops the output projection for Part A.
  _, mutated = model_lib.GLM(config).apply(
      {"params": params, "cache": cache}, context, positions, sep=context_length,
      segment_ids=valid, decode=True, mutable=["cache"])
  return mutated["cache"]


def _cached_step(params, config, cache, token, position, valid):
  """token [R], position [R, 2], valid [R] -> logits [R, V], cache."""
  rows = token.shape[0]
  logits, mutated = model_lib.GLM(config).apply(
      {"params": params, "cache": cache}, token[:, None], position[:, :, None],
      sep=jnp.zeros((rows,), jnp.int32), segment_ids=valid[:, None].astype(jnp.int32),
      decode=True, mutable=["cache"])
  return logits[:, 0], mutated["cache"]


def _full_init(params, config, context, context_length, max_out):
  del params, config
  rows, width = context.shape
  total = width + max_out
  tokens = jnp.zeros((rows, total), jnp.int32).at[:, :width].set(context)
  positions = jnp.zeros((rows, 2, total), jnp.int32).at[:, 0, :width].set(jnp.arange(width))
  valid = jnp.arange(total)[None, :] < context_length[:, None]
  return {"tokens": tokens, "positions": positions, "valid": valid, "sep": context_length,
          "index": jnp.asarray(width, jnp.int32)}


def _full_step(params, config, state, token, position, valid):
  """Recomputes the whole sequence (no cache) and returns the newest token's logits."""
  i = state["index"]
  rows = token.shape[0]
  row_ids = jnp.arange(rows)
  state = dict(state)
  state["tokens"] = state["tokens"].at[row_ids, i].set(token)
  state["positions"] = state["positions"].at[row_ids, :, i].set(position)
  state["valid"] = state["valid"].at[row_ids, i].set(valid)
  total = state["tokens"].shape[1]
  index = jnp.arange(total)
  mask = model_lib.attention_mask(index, index, state["sep"], key_valid=state["valid"])
  logits = model_lib.GLM(config).apply({"params": params}, state["tokens"],
                                       state["positions"], mask=mask)
  state["index"] = i + 1
  return jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False), state


def _network(use_cache: bool):
  return (_cached_init, _cached_step) if use_cache else (_full_init, _full_step)


def _gather_rows(tree, rows):
  return jax.tree_util.tree_map(lambda x: x[rows] if x.ndim >= 1 else x, tree)


# ------------------------------------------------------------------------ logit shaping


def _end_tokens(special, decode_config: DecodeConfig):
  ends = [special.eop]
  if decode_config.stop_at_eos and special.eos != special.eop:
    ends.append(special.eos)
  return jnp.asarray(ends, jnp.int32)


def _banned_ngrams(out, out_len, n: int, vocab_size: int):
  """[R, V] bool: tokens that would repeat an n-gram already in `out` [R, L]."""
  rows, length = out.shape
  if n < 1 or length < n:
    return jnp.zeros((rows, vocab_size), bool)
  if n == 1:
    seen = jnp.arange(length)[None, :] < out_len[:, None]
    return jnp.zeros((rows, vocab_size), bool).at[
        jnp.arange(rows)[:, None], out].max(seen, mode="drop")
  starts = jnp.arange(length - n + 1)
  windows = jnp.stack([out[:, k:length - n + 1 + k] for k in range(n - 1)], -1)  # [R, W, n-1]
  prefix_idx = jnp.clip(out_len[:, None] - (n - 1) + jnp.arange(n - 1)[None, :], 0, length - 1)
  prefix = jnp.take_along_axis(out, prefix_idx, axis=1)  # [R, n-1]: the latest n-1 tokens
  match = jnp.all(windows == prefix[:, None, :], -1)
  match &= (starts[None, :] + n - 1 < out_len[:, None]) & (out_len[:, None] >= n - 1)
  nexts = out[:, n - 1:]  # [R, W]
  return jnp.zeros((rows, vocab_size), bool).at[jnp.arange(rows)[:, None], nexts].max(
      match, mode="drop")


def _shape_logits(logits, progress, ends, special, decode_config: DecodeConfig):
  """Length limits and no-repeat n-grams on raw logits [R, V] (float32)."""
  vocab = logits.shape[-1]
  generated = progress["block_pos"] - 1  # tokens of the current blank so far
  is_end = jnp.zeros((vocab,), bool).at[ends].set(True)
  too_short = (generated < decode_config.min_length)[:, None] & is_end[None, :]
  too_long = ((generated >= decode_config.max_new_tokens)[:, None]
              & (jnp.arange(vocab) != special.eop)[None])
  logits = jnp.where(too_short | too_long, NEG, logits)
  if decode_config.no_repeat_ngram_size > 0:
    banned = _banned_ngrams(progress["out"], progress["out_len"],
                            decode_config.no_repeat_ngram_size, vocab)
    banned &= ~is_end[None, :]  # never ban closing a blank
    logits = jnp.where(banned, NEG, logits)
  return logits


def _sample(logits, key, decode_config: DecodeConfig):
  """Temperature, top-k and top-p (nucleus) sampling from logits [R, V]."""
  logits = logits / decode_config.temperature
  if decode_config.top_k > 0:
    kth_largest = jax.lax.top_k(logits, min(decode_config.top_k, logits.shape[-1]))[0][:, -1:]
    logits = jnp.where(logits < kth_largest, NEG, logits)
  if 0.0 < decode_config.top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
    kept = jnp.where(before < decode_config.top_p, sorted_logits, jnp.inf)
    cutoff = jnp.min(kept, axis=-1, keepdims=True)  # the smallest logit still kept
    logits = jnp.where(logits < cutoff, NEG, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


# ------------------------------------------------------------------------- row progress


def _initial_rows(rows, max_out, special):
  return {
      "token": jnp.full((rows,), special.sop, jnp.int32),  # what is fed next
      "blank": jnp.zeros((rows,), jnp.int32),
      "block_pos": jnp.ones((rows,), jnp.int32),
      "done": jnp.zeros((rows,), bool),
      "out": jnp.zeros((rows, max_out), jnp.int32),
      "out_len": jnp.zeros((rows,), jnp.int32),
  }


def _feed(progress, mask_positions, max_position):
  """Position [R, 2] of the fed token: its blank's mask position and block position."""
  num_masks = mask_positions.shape[1]
  blank = jnp.minimum(progress["blank"], num_masks - 1)
  mask_position = jnp.take_along_axis(mask_positions, blank[:, None], axis=1)[:, 0]
  return jnp.stack([mask_position, jnp.minimum(progress["block_pos"], max_position)], axis=-1)


def _advance(progress, chosen, num_blanks, ends, special):
  """Records `chosen` [R] for every live row and prepares the next fed token."""
  live = ~progress["done"]
  rows, max_out = progress["out"].shape
  is_end = jnp.any(chosen[:, None] == ends[None, :], axis=-1)
  write_at = jnp.where(live, progress["out_len"], max_out)  # out of range: dropped
  blank = progress["blank"] + (is_end & live)
  return {
      "out": progress["out"].at[jnp.arange(rows), write_at].set(chosen, mode="drop"),
      "out_len": progress["out_len"] + live,
      "blank": blank,
      "done": progress["done"] | (is_end & (blank >= num_blanks)),
      "token": jnp.where(is_end, special.sop, chosen).astype(jnp.int32),
      "block_pos": jnp.where(is_end, 1, progress["block_pos"] + 1),
  }


# ------------------------------------------------------------------- greedy / sampling


def _step_limit(max_out: int, decode_config: DecodeConfig) -> int:
  return min(max_out, decode_config.max_steps) if decode_config.max_steps else max_out


def _decode_simple(params, context, context_length, mask_positions, num_blanks, rng, *,
                   config, special, decode_config: DecodeConfig, use_cache: bool,
                   return_logits: bool):
  rows = context.shape[0]
  max_out = mask_positions.shape[1] * (decode_config.max_new_tokens + 1)
  limit = _step_limit(max_out, decode_config)
  init_fn, step_fn = _network(use_cache)
  ends = _end_tokens(special, decode_config)
  network_state = init_fn(params, config, context, context_length, max_out)
  progress = _initial_rows(rows, max_out, special)
  score = jnp.zeros((rows,), jnp.float32)
  record = (jnp.zeros((rows, max_out, config.vocab_size), jnp.float32) if return_logits
            else jnp.zeros((), jnp.float32))

  def cond(carry):
    step, progress = carry[0], carry[1]
    return (step < limit) & ~jnp.all(progress["done"])

  def body(carry):
    step, progress, network_state, score, record = carry
    position = _feed(progress, mask_positions, config.max_sequence_length)
    token = jnp.where(progress["done"], special.pad, progress["token"])
    logits, network_state = step_fn(params, config, network_state, token, position,
                                    ~progress["done"])
    if return_logits:
      record = jax.lax.dynamic_update_index_in_dim(record, logits, step, axis=1)
    shaped = _shape_logits(logits, progress, ends, special, decode_config)
    if decode_config.strategy == "sample":
      chosen = _sample(shaped, jax.random.fold_in(rng, step), decode_config)
    else:
      chosen = jnp.argmax(shaped, axis=-1).astype(jnp.int32)
    score += jnp.where(progress["done"], 0.0, losses.target_log_probs(shaped, chosen))
    progress = _advance(progress, chosen, num_blanks, ends, special)
    return step + 1, progress, network_state, score, record

  _, progress, _, score, record = jax.lax.while_loop(
      cond, body, (jnp.asarray(0, jnp.int32), progress, network_state, score, record))
  return DecodeResult(progress["out"], progress["out_len"], score,
                      record if return_logits else None)


# -------------------------------------------------------------------------- beam search


def _length_norm(score, length, penalty):
  return score / jnp.maximum(length, 1).astype(jnp.float32) ** penalty


def _decode_beam(params, context, context_length, mask_positions, num_blanks, rng, *,
                 config, special, decode_config: DecodeConfig, use_cache: bool,
                 return_logits: bool):
  """Beam search over the whole fill (all blanks); finished = last blank closed."""
  del rng, return_logits
  batch = context.shape[0]
  num_beams = decode_config.num_beams
  rows = batch * num_beams
  vocab = config.vocab_size
  max_out = mask_positions.shape[1] * (decode_config.max_new_tokens + 1)
  limit = _step_limit(max_out, decode_config)
  init_fn, step_fn = _network(use_cache)
  ends = _end_tokens(special, decode_config)
  network_state = init_fn(params, config, context, context_length, max_out)
  beam_rows = jnp.repeat(jnp.arange(batch), num_beams)  # [B*K]: row b*K + j is beam j of item b
  network_state = _gather_rows(network_state, beam_rows)
  mask_positions = mask_positions[beam_rows]
  row_blanks = num_blanks[beam_rows]
  progress = _initial_rows(rows, max_out, special)
  # [B, K] scores of the live beams; one live beam at first.
  live_score = jnp.full((batch, num_beams), NEG, jnp.float32).at[:, 0].set(0.0)
  finished_out = jnp.zeros((batch, num_beams, max_out), jnp.int32)
  finished_len = jnp.zeros((batch, num_beams), jnp.int32)
  finished_score = jnp.full((batch, num_beams), NEG, jnp.float32)
  best_possible_len = jnp.asarray(max_out, jnp.float32)

  def cond(carry):
    step, _, _, live_score, _, _, finished_score = carry
    # Stop early when no live beam can beat the worst finished one (T5X's rule).
    best_live = _length_norm(jnp.max(live_score, -1), best_possible_len,
                             decode_config.length_penalty)
    if decode_config.length_penalty < 0:
      best_live = jnp.max(live_score, -1)
    settled = jnp.all(finished_score > NEG / 2, -1) & (best_live < jnp.min(finished_score, -1))
    return (step < limit) & ~jnp.all(settled)

  def body(carry):
    step, progress, network_state, live_score, finished_out, finished_len, finished_score = carry
    position = _feed(progress, mask_positions, config.max_sequence_length)
    logits, network_state = step_fn(params, config, network_state, progress["token"], position,
                                    jnp.ones((rows,), bool))
    shaped = _shape_logits(logits, progress, ends, special, decode_config)
    log_probs = jax.nn.log_softmax(shaped, axis=-1)
    candidates = (live_score.reshape(rows, 1) + log_probs).reshape(batch, num_beams * vocab)
    top_score, top_idx = jax.lax.top_k(candidates, 2 * num_beams)  # [B, 2K]
    source_row = (top_idx // vocab) + (jnp.arange(batch) * num_beams)[:, None]  # flat source row
    token = (top_idx % vocab).astype(jnp.int32)
    is_end = jnp.any(token[..., None] == ends, -1)
    final = is_end & (progress["blank"][source_row] + 1 >= row_blanks[source_row])
    new_len = progress["out_len"][source_row] + 1
    # Finished hypotheses: merge the new ones with the pool, keep the K best.
    candidate_out = progress["out"][source_row].at[
        jnp.arange(batch)[:, None], jnp.arange(2 * num_beams)[None, :], new_len - 1].set(token)
    penalized_len = new_len - (0 if decode_config.penalty_counts_end else 1)
    candidate_score = jnp.where(
        final & (top_score > NEG / 2),
        _length_norm(top_score, penalized_len, decode_config.length_penalty), NEG)
    pool_score = jnp.concatenate([finished_score, candidate_score], 1)
    pool_out = jnp.concatenate([finished_out, candidate_out], 1)
    pool_len = jnp.concatenate([finished_len, new_len], 1)
    finished_score, keep = jax.lax.top_k(pool_score, num_beams)
    finished_out = jnp.take_along_axis(pool_out, keep[..., None], 1)
    finished_len = jnp.take_along_axis(pool_len, keep, 1)
    # Live beams: the K best candidates that did not finish.
    live_score, pick = jax.lax.top_k(jnp.where(final, NEG, top_score), num_beams)
    source_row = jnp.take_along_axis(source_row, pick, 1).reshape(rows)
    token = jnp.take_along_axis(token, pick, 1).reshape(rows)
    progress = _gather_rows(progress, source_row)
    network_state = _gather_rows(network_state, source_row)
    progress = _advance(progress, token, row_blanks, ends, special)
    # Live beams never stop; the finished ones left for the pool.
    progress["done"] = jnp.zeros((rows,), bool)
    return step + 1, progress, network_state, live_score, finished_out, finished_len, finished_score

  carry = (jnp.asarray(0, jnp.int32), progress, network_state, live_score, finished_out,
           finished_len, finished_score)
  _, progress, _, live_score, finished_out, finished_len, finished_score = jax.lax.while_loop(
      cond, body, carry)
  # Items with no finished hypothesis (length limit) fall back to their live beams.
  none_finished = ~jnp.any(finished_score > NEG / 2, -1)
  live_len = progress["out_len"].reshape(batch, num_beams)
  live_norm = _length_norm(live_score, live_len, decode_config.length_penalty)
  best_beam = jnp.argmax(live_norm, -1)
  out = jnp.where(none_finished[:, None], progress["out"].reshape(batch, num_beams, max_out)[
      jnp.arange(batch), best_beam], finished_out[:, 0])
  length = jnp.where(none_finished, live_len[jnp.arange(batch), best_beam], finished_len[:, 0])
  score = jnp.where(none_finished, live_norm[jnp.arange(batch), best_beam], finished_score[:, 0])
  return DecodeResult(out, length, score, None)


# -------------------------------------------------------------------------------- entry


@functools.lru_cache(maxsize=64)
def _compiled(config, special, decode_config: DecodeConfig, use_cache: bool, return_logits: bool,
              out_sharding=None):
  decode_fn = _decode_beam if decode_config.strategy == "beam" else _decode_simple
  return jax.jit(functools.partial(decode_fn, config=config, special=special,
                                   decode_config=decode_config, use_cache=use_cache,
                                   return_logits=return_logits),
                 out_shardings=out_sharding)


def fill_blanks(params, config: model_lib.GLMConfig, special, context, context_length,
                mask_positions, num_blanks=None, *, decode_config: DecodeConfig = DecodeConfig(),
                seed: int = 0, use_cache: bool = True, return_logits: bool = False,
                partitioner=None) -> DecodeResult:
  """Fills the blanks of a batch of Part A's; one compiled program per shape and config.

  context [B, Tc], context_length [B], mask_positions [B, M] (ascending, padded with any
  valid position), num_blanks [B] (default M). `params` may be scanned (they are unstacked
  here; call `unstack_layers` once yourself to avoid repeating that copy).

  With a partitioner (default: `partitioning.active()`) the decode runs under its mesh and
  rules: params stay in their shardings, the rows are split over the batch axes and the
  result is replicated, so every process (multi-host) gets all of it.
  """
  from glm_jax import partitioning  # pylint: disable=g-import-not-at-top
  partitioner = partitioner or partitioning.active()
  context = np.asarray(context, np.int32)
  context_length = np.asarray(context_length, np.int32)
  mask_positions = np.asarray(mask_positions, np.int32)
  if context.ndim != 2 or mask_positions.ndim != 2 or mask_positions.shape[1] < 1:
    raise ValueError("context must be [batch, length] and mask_positions [batch, masks>=1].")
  if num_blanks is None:
    num_blanks = np.full((context.shape[0],), mask_positions.shape[1], np.int32)
  num_blanks = np.asarray(num_blanks, np.int32)
  if context.shape[1] > config.max_sequence_length:
    raise ValueError(f"Context of {context.shape[1]} tokens exceeds max_sequence_length "
                     f"{config.max_sequence_length}; shorten the prompt.")
  if decode_config.max_new_tokens + 1 > config.max_sequence_length:
    raise ValueError(f"max_new_tokens must be < max_sequence_length "
                     f"({config.max_sequence_length}): block positions run up to it.")
  if decode_config.strategy == "beam" and return_logits:
    raise ValueError("return_logits is only available for greedy and sample decoding.")
  params, config = unstack_layers(params, config)
  inputs = (context, context_length, mask_positions, num_blanks)
  if partitioner is None:
    fn = _compiled(config, special, decode_config, use_cache, return_logits)
    return fn(params, *inputs, jax.random.PRNGKey(seed))
  fn = _compiled(config, special, decode_config, use_cache, return_logits,
                 partitioner.replicated())
  rng = partitioner.put_replicated(np.asarray(jax.random.PRNGKey(seed)))
  with partitioner.under_mesh():
    return fn(params, *partitioner.put_global(inputs, "decoding batch"), rng)


def split_blanks(tokens, length, special, decode_config: Optional[DecodeConfig] = None):
  """One row of DecodeResult -> list of token lists, one per blank, end tokens removed."""
  ends = {special.eop}
  if decode_config is None or decode_config.stop_at_eos:
    ends.add(special.eos)
  blanks, current = [], []
  for token in np.asarray(tokens)[:int(length)].tolist():
    if token in ends:
      blanks.append(current)
      current = []
    else:
      current.append(token)
  if current:
    blanks.append(current)  # cut by the step limit
  return blanks
