"""Cached blank filling: equivalence with full recomputation, strategies, several blanks."""

import jax
import numpy as np
import pytest

from glm_jax import decoding
from glm_jax.data.special_tokens import SpecialTokens
from glm_jax.model import GLM, GLMConfig, init_params
import reference_cases as ref

CFG = GLMConfig(vocab_size=64, num_layers=2, hidden_size=32, num_heads=4,
                max_sequence_length=64, initializer_std=0.3)
SPECIAL = SpecialTokens(pad=0, eos=0, cls=1, unk=2, mask=3, smask=4, gmask=5, sop=6, eop=7)

# Row 0: two [MASK] blanks; row 1: one blank and two padding tokens after its Part A.
CONTEXT = np.array([[1, 10, 3, 11, 12, 3, 13, 0], [1, 20, 21, 3, 22, 0, 0, 0]], np.int32)
LENGTHS = np.array([7, 5], np.int32)
MASKS = np.array([[2, 5], [3, 3]], np.int32)
BLANKS = np.array([2, 1], np.int32)


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, jax.random.PRNGKey(0))


def _fill(params, dc, **kw):
  return decoding.fill_blanks(params, CFG, SPECIAL, CONTEXT, LENGTHS, MASKS, BLANKS,
                              decode_config=dc, **kw)


def _full_logits(params, row, fills):
  """One ordinary forward pass over Part A ++ (sop fill) per blank; Part B logits [n, V]."""
  part_a = list(CONTEXT[row, :LENGTHS[row]])
  tokens, pos, block = list(part_a), list(range(len(part_a))), [0] * len(part_a)
  for blank, fill in enumerate(fills):
    seg = [SPECIAL.sop] + list(fill)
    tokens += seg
    pos += [int(MASKS[row, blank])] * len(seg)
    block += list(range(1, len(seg) + 1))
  positions = np.array([[pos, block]], np.int32)
  logits = GLM(CFG).apply({"params": params}, np.array([tokens], np.int32), positions,
                          sep=np.array([len(part_a)], np.int32))
  return np.asarray(logits)[0, len(part_a):]


def test_cached_equals_recomputing_every_step(params):
  dc = decoding.DecodeConfig(max_new_tokens=6)
  cached = _fill(params, dc, return_logits=True)
  full = _fill(params, dc, return_logits=True, use_cache=False)
  np.testing.assert_array_equal(np.asarray(cached.tokens), np.asarray(full.tokens))
  np.testing.assert_array_equal(np.asarray(cached.lengths), np.asarray(full.lengths))
  for row in range(2):
    n = int(cached.lengths[row])
    np.testing.assert_allclose(np.asarray(cached.step_logits)[row, :n],
                               np.asarray(full.step_logits)[row, :n], atol=1e-5, rtol=0)


def test_cached_equals_one_forward_pass_over_the_filled_sequence(params):
  dc = decoding.DecodeConfig(max_new_tokens=5)
  out = _fill(params, dc, return_logits=True)
  for row in range(2):
    fills = decoding.split_blanks(out.tokens[row], out.lengths[row], SPECIAL)
    assert len(fills) == BLANKS[row]
    expected = _full_logits(params, row, fills)  # one logit row per fed token
    n = int(out.lengths[row])
    assert expected.shape[0] == n
    np.testing.assert_allclose(np.asarray(out.step_logits)[row, :n], expected, atol=1e-5)


def test_later_blanks_see_earlier_fills(params):
  dc = decoding.DecodeConfig(max_new_tokens=4)
  out = _fill(params, dc, return_logits=True)
  first, second = decoding.split_blanks(out.tokens[0], out.lengths[0], SPECIAL)
  sop2 = len(first) + 1  # step that fed the second blank's sop
  with_fill = _full_logits(params, 0, [first, second])[sop2]
  other = [(t + 9) % CFG.vocab_size or 9 for t in first]
  without = _full_logits(params, 0, [other, second])[sop2]
  got = np.asarray(out.step_logits)[0, sop2]
  np.testing.assert_allclose(got, with_fill, atol=1e-5)
  assert np.abs(got - without).max() > 1e-3  # a different first fill changes the second
  # Left to right: the first blank's logits do not depend on anything after it.
  np.testing.assert_allclose(np.asarray(out.step_logits)[0, 0],
                             _full_logits(params, 0, [[]])[0], atol=1e-5)


def test_beam_search_with_one_beam_is_greedy(params):
  dc = decoding.DecodeConfig(max_new_tokens=6, length_penalty=0.0)
  greedy = _fill(params, dc)
  beam = _fill(params, dc.replace(strategy="beam", num_beams=1))
  np.testing.assert_array_equal(np.asarray(beam.tokens), np.asarray(greedy.tokens))
  np.testing.assert_array_equal(np.asarray(beam.lengths), np.asarray(greedy.lengths))
  np.testing.assert_allclose(np.asarray(beam.scores), np.asarray(greedy.scores), rtol=1e-5)


def test_wider_beams_score_at_least_greedy(params):
  dc = decoding.DecodeConfig(max_new_tokens=4, length_penalty=0.0)
  greedy = _fill(params, dc)
  beam = _fill(params, dc.replace(strategy="beam", num_beams=4))
  assert np.all(np.asarray(beam.scores) >= np.asarray(greedy.scores) - 1e-4)
  uncached = _fill(params, dc.replace(strategy="beam", num_beams=4), use_cache=False)
  np.testing.assert_array_equal(np.asarray(beam.tokens), np.asarray(uncached.tokens))


def test_seeded_sampling_is_reproducible(params):
  dc = decoding.DecodeConfig(strategy="sample", max_new_tokens=8, temperature=1.5)
  a, b = _fill(params, dc, seed=3), _fill(params, dc, seed=3)
  c = _fill(params, dc, seed=4)
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))
  greedy = _fill(params, decoding.DecodeConfig(max_new_tokens=8))
  for narrow in (dc.replace(top_k=1), dc.replace(top_p=1e-6)):
    np.testing.assert_array_equal(np.asarray(_fill(params, narrow, seed=5).tokens),
                                  np.asarray(greedy.tokens))


def test_top_k_only_draws_from_the_k_best(params):
  dc = decoding.DecodeConfig(strategy="sample", max_new_tokens=8, temperature=3.0, top_k=3)
  out = _fill(params, dc, seed=1, return_logits=True)
  logits = np.asarray(out.step_logits)
  for row in range(2):
    for step in range(int(out.lengths[row])):
      chosen = int(out.tokens[row, step])
      if chosen == SPECIAL.eop and step % (dc.max_new_tokens + 1) == dc.max_new_tokens:
        continue  # a forced close at the length limit
      assert chosen in np.argsort(logits[row, step])[-3:]


def _eop_loving(params):
  """Parameters whose every logit favours eop (final LayerNorm outputs eop's embedding)."""
  p = jax.tree_util.tree_map(np.array, params)
  p["final_layernorm"]["scale"][:] = 0.0
  p["final_layernorm"]["bias"][:] = p["word_embeddings"][SPECIAL.eop] * 3.0
  return p


def test_length_limits(params):
  eager = _eop_loving(params)
  none = _fill(eager, decoding.DecodeConfig(max_new_tokens=6))
  assert [len(b) for b in decoding.split_blanks(none.tokens[0], none.lengths[0], SPECIAL)] == [0, 0]
  at_least = _fill(eager, decoding.DecodeConfig(max_new_tokens=6, min_length=3))
  for row in range(2):
    blanks = decoding.split_blanks(at_least.tokens[row], at_least.lengths[row], SPECIAL)
    assert [len(b) for b in blanks] == [3] * BLANKS[row]
  capped = _fill(params, decoding.DecodeConfig(max_new_tokens=2))
  for row in range(2):
    blanks = decoding.split_blanks(capped.tokens[row], capped.lengths[row], SPECIAL)
    assert len(blanks) == BLANKS[row] and all(len(b) <= 2 for b in blanks)


def test_banned_ngrams():
  out = np.array([[5, 6, 5, 0, 0], [5, 6, 7, 5, 6]], np.int32)
  banned = np.asarray(decoding._banned_ngrams(out, np.array([3, 5]), 2, 10))
  assert set(np.flatnonzero(banned[0])) == {6}  # "5 6" seen, last token 5
  assert set(np.flatnonzero(banned[1])) == {7}  # "6 7" seen, last token 6
  banned3 = np.asarray(decoding._banned_ngrams(out, np.array([3, 5]), 3, 10))
  assert not banned3[0].any() and set(np.flatnonzero(banned3[1])) == {7}


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_no_repeat_ngram(params, strategy):
  dc = decoding.DecodeConfig(strategy=strategy, max_new_tokens=12, no_repeat_ngram_size=2,
                             num_beams=3)
  out = _fill(params, dc)
  for row in range(2):
    seq = [int(t) for t in np.asarray(out.tokens)[row, :int(out.lengths[row])]]
    bigrams = [tuple(seq[i:i + 2]) for i in range(len(seq) - 1)
               if SPECIAL.eop not in seq[i:i + 2]]
    assert len(bigrams) == len(set(bigrams))


def test_bad_config_is_a_clear_error():
  with pytest.raises(ValueError, match="strategy"):
    decoding.DecodeConfig(strategy="nucleus")
  with pytest.raises(ValueError, match="min_length"):
    decoding.DecodeConfig(max_new_tokens=4, min_length=5)


@pytest.mark.parity
@pytest.mark.parametrize("variant", ref.VARIANTS)
def test_reference_incremental_decoding(variant):
  from glm_jax import convert  # pylint: disable=g-import-not-at-top
  stress, full = variant
  config, ref_params = convert.from_official_state_dict(ref.state_dict(stress), num_heads=4)
  cases, columns = ref.cases(stress, full)
  c = {k.split("/", 1)[1]: v for k, v in cases.items() if k.startswith("incremental_mems/")}
  ref_params, config = decoding.unstack_layers(ref_params, config)
  sep = c["context_attention_mask"]
  s = int(sep[0])
  context = c["context_input_ids"][:, :s]
  steps = c["step_input_ids"].shape[1]
  cache = decoding._cached_init(ref_params, config, context, sep, steps + 1)
  got = []
  feed = [(c["context_input_ids"][:, s], c["context_position_ids"][:, :, s])]
  feed += [(c["step_input_ids"][:, k], c["step_position_ids"][:, :, k]) for k in range(steps)]
  for token, position in feed:
    logits, cache = decoding._cached_step(ref_params, config, cache, token, position,
                                          np.ones(token.shape, bool))
    got.append(np.asarray(logits))
  tol = 5e-5 if stress else 1e-5
  np.testing.assert_allclose(ref.columns_of(got[0], columns), c["context_logits"][:, s],
                             atol=tol)
  np.testing.assert_allclose(ref.columns_of(np.stack(got[1:], 1), columns), c["step_logits"],
                             atol=tol)
