"""Parity with the reference PyTorch GLM (fixture set glm_reference, tests/reference_cases.py)."""

import numpy as np
import pytest

from glm_jax import convert
from glm_jax import losses
from glm_jax.model import GLM
import reference_cases as ref

pytestmark = pytest.mark.parity

SEP_CASES = ("blank_infill", "gpt_generation", "gap_sentence", "bidirectional", "near_causal")
MASK_CASES = ("mask2d_equiv", "mask2d_seq2seq", "mask2d_packed_choices", "mask2d_random_zero_row")


@pytest.fixture(scope="module", params=ref.VARIANTS)
def reference(request):
  """(config, params, cases, logits at the kept columns, tolerance) of one variant."""
  stress, full = request.param
  config, params = convert.from_official_state_dict(ref.state_dict(stress), num_heads=4)
  cases, columns = ref.cases(stress, full)
  tolerance = 3e-6 if stress else 1e-6  # float32 rounding of the reference's 5e-7 / 2.4e-6
  return config, params, cases, lambda logits: ref.columns_of(logits, columns), tolerance


def test_config_inferred_from_shapes(reference):
  config, _, _, _, _ = reference
  assert (config.num_layers, config.hidden_size, config.num_heads) == (2, 64, 4)
  assert (config.vocab_size, config.max_sequence_length, config.mlp_size) == (1000, 64, 256)


@pytest.mark.parametrize("case", SEP_CASES)
def test_sep_form_logits_and_loss(reference, case):
  config, params, cases, kept, tol = reference
  c = lambda f: cases[f"{case}/{f}"]
  logits = GLM(config).apply({"params": params}, c("input_ids"), c("position_ids"),
                             sep=c("attention_mask"))
  np.testing.assert_allclose(kept(logits), c("logits"), atol=tol, rtol=0)
  loss_sum, weight_sum, _ = losses.weighted_cross_entropy(logits, c("targets"), c("loss_mask"))
  np.testing.assert_allclose(float(loss_sum / weight_sum), float(c("loss")), rtol=1e-5)
  per_token = -losses.target_log_probs(logits, c("targets"))
  np.testing.assert_allclose(np.asarray(per_token), c("per_token_loss"), atol=2 * tol)


@pytest.mark.parametrize("case", MASK_CASES)
def test_explicit_mask_form(reference, case):
  config, params, cases, kept, tol = reference
  c = lambda f: cases[f"{case}/{f}"]
  mask = c("attention_mask_2d")[:, 0].astype(bool)  # [B, T, T]
  logits = GLM(config).apply({"params": params}, c("input_ids"), c("position_ids"), mask=mask)
  assert np.all(np.isfinite(np.asarray(logits)))
  np.testing.assert_allclose(kept(logits), c("logits"), atol=tol, rtol=0)
  loss_sum, weight_sum, _ = losses.weighted_cross_entropy(logits, c("targets"), c("loss_mask"))
  np.testing.assert_allclose(float(loss_sum / weight_sum), float(c("loss")), rtol=1e-5)


def test_unscanned_layers_match(reference):
  config, params, cases, kept, tol = reference
  state = convert.to_official_state_dict(config, params)
  config2, params2 = convert.from_official_state_dict(state, num_heads=4, scan_layers=False)
  assert "layers_1" in params2
  c = lambda f: cases[f"blank_infill/{f}"]
  logits = GLM(config2).apply({"params": params2}, c("input_ids"), c("position_ids"),
                              sep=c("attention_mask"))
  np.testing.assert_allclose(kept(logits), c("logits"), atol=tol, rtol=0)


@pytest.mark.parametrize("stress", [False, True], ids=["normal", "stress"])
def test_round_trip_is_exact(stress):
  state = ref.state_dict(stress)
  config, params = convert.from_official_state_dict(state, num_heads=4)
  back = convert.to_official_state_dict(config, params)
  assert sorted(back) == sorted(state)
  for key, value in state.items():
    assert back[key].shape == value.shape, key
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_shape_mismatch_names_the_key():
  state = ref.state_dict()
  state["transformer.layers.1.mlp.dense_4h_to_h.weight"] = np.zeros((64, 128), np.float32)
  with pytest.raises(ValueError, match=r"transformer\.layers\.1\.mlp\.dense_4h_to_h\.weight"):
    convert.from_official_state_dict(state, num_heads=4)


def test_cached_decoding_matches_reference_incremental(reference):
  from glm_jax.model import init_cache  # pylint: disable=g-import-not-at-top
  config, params, cases, kept, tol = reference
  c = lambda f: cases[f"incremental_mems/{f}"]
  model = GLM(config)
  steps = c("step_input_ids").shape[1]
  cache = init_cache(config, batch_size=2, max_length=c("full_input_ids").shape[1])
  logits, state = model.apply({"params": params, "cache": cache}, c("context_input_ids"),
                              c("context_position_ids"), sep=c("context_attention_mask"),
                              decode=True, mutable=["cache"])
  np.testing.assert_allclose(kept(logits), c("context_logits"), atol=tol, rtol=0)
  step_logits = []
  for t in range(steps):
    logits, state = model.apply({"params": params, "cache": state["cache"]},
                                c("step_input_ids")[:, t:t + 1],
                                c("step_position_ids")[:, :, t:t + 1], decode=True,
                                mutable=["cache"])
    step_logits.append(np.asarray(logits)[:, 0])
  np.testing.assert_allclose(kept(np.stack(step_logits, 1)), c("step_logits"), atol=tol,
                             rtol=0)
