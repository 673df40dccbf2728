"""AdamW with GLM's decay mask, the learning-rate schedules and clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from glm_jax import optim
from glm_jax.model import GLMConfig, init_params


def _lr(step, **kw):
  return float(optim.learning_rate_schedule(step, **kw))


def test_warmup_then_cosine_to_floor():
  kw = dict(peak=1.0, warmup_steps=10, decay_steps=110, schedule="cosine", final_fraction=0.05)
  assert _lr(0, **kw) == pytest.approx(0.1)
  assert _lr(4, **kw) == pytest.approx(0.5)
  assert _lr(10, **kw) == pytest.approx(1.0)
  assert _lr(60, **kw) == pytest.approx(0.05 + 0.95 * 0.5, rel=1e-5)  # half way
  assert _lr(110, **kw) == pytest.approx(0.05)
  assert _lr(500, **kw) == pytest.approx(0.05)  # constant floor after decay_steps
  values = [_lr(s, **kw) for s in range(10, 111)]
  assert all(a >= b for a, b in zip(values, values[1:]))


def test_linear_decay_and_constant():
  kw = dict(peak=2.0, warmup_steps=0, decay_steps=100, schedule="linear", final_fraction=0.025)
  assert _lr(0, **kw) == pytest.approx(2.0)
  assert _lr(50, **kw) == pytest.approx(2.0 - 0.5 * 2.0 * 0.975)
  assert _lr(100, **kw) == pytest.approx(0.05)
  assert _lr(37, peak=3e-4, schedule="constant") == pytest.approx(3e-4)


def test_unknown_schedule_is_a_clear_error():
  with pytest.raises(ValueError, match="schedule must be one of"):
    optim.create_optimizer(schedule="cosin")


def test_decay_mask_excludes_biases_and_layernorm():
  cfg = GLMConfig(vocab_size=64, num_layers=2, hidden_size=16, num_heads=2,
                  max_sequence_length=16)
  params = init_params(cfg, jax.random.PRNGKey(0))
  mask = optim.decay_mask(params)
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
  decayed = sorted(k for k, v in flat.items() if v)
  kept = sorted(k for k, v in flat.items() if not v)
  assert any("word_embeddings" in k for k in decayed)
  assert any("position_embeddings" in k for k in decayed)
  assert any("qkv_kernel" in k for k in decayed) and any("wo_kernel" in k for k in decayed)
  assert all("bias" in k or "layernorm" in k for k in kept)
  assert any("final_layernorm']['scale" in k for k in kept)
  assert any("qkv_bias" in k for k in kept) and any("wi_bias" in k for k in kept)
  assert not any("bias" in k or "layernorm" in k for k in decayed)


def test_weight_decay_applies_only_where_masked():
  params = {"dense": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones((3,))},
            "input_layernorm": {"scale": jnp.ones((3,))}}
  tx, _ = optim.create_optimizer(learning_rate=0.1, weight_decay=0.5, schedule="constant",
                                 clip_norm=None)
  state = tx.init(params)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["dense"]["kernel"], 1.0 - 0.1 * 0.5, rtol=1e-6)
  np.testing.assert_array_equal(new["dense"]["bias"], 1.0)
  np.testing.assert_array_equal(new["input_layernorm"]["scale"], 1.0)


def test_gradient_clipping_runs_before_adam():
  """Clipping rescales the raw gradient, so Adam's moments see the clipped one."""
  params = {"w": jnp.zeros((2,))}
  g = {"w": jnp.array([30.0, 40.0])}
  tx, _ = optim.create_optimizer(learning_rate=1.0, weight_decay=0.0, schedule="constant",
                                 clip_norm=1.0)
  _, state = tx.update(g, tx.init(params), params)
  adam_state = state[1][0]  # chain(clip, adamw) -> adamw's ScaleByAdamState
  np.testing.assert_allclose(adam_state.mu["w"], 0.1 * np.array([0.6, 0.8]), rtol=1e-6)
  tx_free, _ = optim.create_optimizer(learning_rate=1.0, weight_decay=0.0, clip_norm=None)
  _, state_free = tx_free.update(g, tx_free.init(params), params)
  np.testing.assert_allclose(state_free[0][0].mu["w"], [3.0, 4.0], rtol=1e-6)


@pytest.mark.parametrize("scale", [0.5, 3.0])  # below and above the clip norm of 1
def test_clip_matches_optax_and_takes_a_precomputed_norm(scale):
  rng = np.random.RandomState(0)
  g = {"a": jnp.asarray(rng.randn(3, 4), jnp.float32), "b": jnp.asarray(rng.randn(5), jnp.float32)}
  g = jax.tree_util.tree_map(lambda x: x * scale / float(optax.global_norm(g)), g)
  expected, _ = optax.clip_by_global_norm(1.0).update(g, optax.EmptyState())
  clip = optim.clip_by_global_norm(1.0)
  state = clip.init(g)
  computed, _ = clip.update(g, state)
  given, _ = clip.update(g, state, global_norm=optax.global_norm(g))
  for out in (computed, given):
    for k in g:
      np.testing.assert_allclose(out[k], expected[k], rtol=1e-6)
  np.testing.assert_allclose(optax.global_norm(given), min(scale, 1.0), rtol=1e-5)
  # The norm passed in is the one used: twice the true norm (>= 1 here) halves the result.
  halved, _ = clip.update(g, state, global_norm=2.0 * optax.global_norm(g))
  np.testing.assert_allclose(optax.global_norm(halved), 0.5, rtol=1e-5)
