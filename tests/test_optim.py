"""AdamW with GLM's decay mask (= torch AdamW), the two schedule conventions and the clip factor."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from glm_jax import optim
from glm_jax.model import GLMConfig, init_params


def _lr(count, **kw):
  return float(optim.learning_rate_schedule(**kw)(count))


def test_warmup_then_cosine_to_floor():
  kw = dict(peak=1.0, warmup_steps=10, decay_steps=110, schedule="cosine", final_fraction=0.05)
  assert _lr(0, **kw) == pytest.approx(0.1)  # the first update already has peak / W
  assert _lr(4, **kw) == pytest.approx(0.5)
  assert _lr(9, **kw) == pytest.approx(1.0) and _lr(10, **kw) == pytest.approx(1.0)
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
  assert _lr(300, **kw) == pytest.approx(0.05)
  assert _lr(37, peak=3e-4, schedule="constant") == pytest.approx(3e-4)
  assert _lr(0, peak=3e-4, warmup_steps=3, schedule="constant") == pytest.approx(1e-4)


def _annealing_lr(n, peak, warmup, decay_iters, style, ratio):
  """THUDM/GLM AnnealingLR.get_lr at counter n, as its fixture README states it."""
  span = decay_iters - warmup
  if warmup > 0 and n <= warmup:
    return peak * n / warmup
  if style == "cosine":
    r = min(1.0, (n - warmup) / span)
    return peak * (ratio + (1 - ratio) * (1 + math.cos(math.pi * r)) / 2)
  if style == "linear":
    return peak - peak * (1 - ratio) * (n - warmup) / span
  return peak


@pytest.mark.parametrize("style,warmup", [("cosine", 4.0), ("cosine", 0.0), ("linear", 6.0),
                                          ("linear", 2.5), ("constant", 3.0)])
def test_reference_convention_is_annealing_lr_in_float64(style, warmup):
  kw = dict(peak=1e-3, warmup_steps=warmup, decay_steps=24, schedule=style, final_fraction=0.1,
            convention="reference")
  schedule = optim.learning_rate_schedule(**kw)
  for n in range(40):  # past decay_steps too: cosine holds the floor, linear goes on down
    expected = _annealing_lr(n, 1e-3, warmup, 24, style, 0.1)
    got = optim.schedule_value(schedule, n)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-18), n
  if warmup:
    assert optim.schedule_value(schedule, 0) == 0.0  # the first update has lr exactly 0
  # In float32 (what the jitted update applies) only to ~1e-7.
  assert float(schedule(5)) == pytest.approx(_annealing_lr(5, 1e-3, warmup, 24, style, 0.1),
                                             rel=1e-6)


def test_warmup_fraction_is_a_fraction_of_the_decay_steps():
  _, lr = optim.create_optimizer(learning_rate=1e-3, warmup_fraction=1 / 6, decay_steps=24,
                                 final_fraction=0.1, convention="reference")
  assert optim.schedule_value(lr, 2) == pytest.approx(0.5e-3, rel=1e-12)  # W = 4
  assert optim.schedule_value(lr, 4) == pytest.approx(1e-3, rel=1e-12)
  _, lr = optim.create_optimizer(learning_rate=1.0, warmup_fraction=0.1, total_steps=50)
  assert _lr(4, peak=1.0, warmup_steps=5, decay_steps=50) == pytest.approx(float(lr(4)))
  with pytest.raises(ValueError, match="WARMUP_FRACTION needs DECAY_STEPS"):
    optim.create_optimizer(warmup_fraction=0.1)


def test_bad_schedule_settings_are_clear_errors():
  with pytest.raises(ValueError, match="schedule must be one of"):
    optim.create_optimizer(schedule="cosin")
  with pytest.raises(ValueError, match="convention must be one of"):
    optim.create_optimizer(convention="torch")
  with pytest.raises(ValueError, match="must exceed the warmup"):
    optim.create_optimizer(warmup_steps=10, decay_steps=10, convention="reference")


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
  tx, _ = optim.create_optimizer(learning_rate=0.1, weight_decay=0.5, schedule="constant")
  state = tx.init(params)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["dense"]["kernel"], 1.0 - 0.1 * 0.5, rtol=1e-6)
  np.testing.assert_array_equal(new["dense"]["bias"], 1.0)
  np.testing.assert_array_equal(new["input_layernorm"]["scale"], 1.0)


def test_adamw_is_torch_adamw_with_the_reference_groups():
  """optax.adamw + decay mask = torch.optim.AdamW with a decay and a no-decay group."""
  torch = pytest.importorskip("torch")
  rng = np.random.RandomState(0)
  params = {"dense": {"kernel": rng.randn(4, 3).astype(np.float32),
                      "bias": rng.randn(3).astype(np.float32)}}
  grads = [jax.tree_util.tree_map(lambda p: rng.randn(*p.shape).astype(np.float32), params)
           for _ in range(4)]
  lrs = [0.0, 1e-2, 3e-2, 2e-2]  # the reference's first update has lr 0
  lr_fn = lambda count: jnp.asarray(lrs)[count]
  tx = optax.adamw(lr_fn, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, mask=optim.decay_mask)
  state, ours = tx.init(params), params
  for g in grads:
    updates, state = tx.update(g, state, ours)
    ours = optax.apply_updates(ours, updates)

  kernel = torch.tensor(params["dense"]["kernel"], requires_grad=True)
  bias = torch.tensor(params["dense"]["bias"], requires_grad=True)
  opt = torch.optim.AdamW([{"params": [kernel], "weight_decay": 0.1},
                           {"params": [bias], "weight_decay": 0.0}],
                          lr=1.0, betas=(0.9, 0.98), eps=1e-6)
  for lr, g in zip(lrs, grads):
    for group in opt.param_groups:
      group["lr"] = lr
    kernel.grad = torch.tensor(g["dense"]["kernel"])
    bias.grad = torch.tensor(g["dense"]["bias"])
    opt.step()
  np.testing.assert_allclose(ours["dense"]["kernel"], kernel.detach().numpy(), rtol=1e-6)  # ulps
  np.testing.assert_allclose(ours["dense"]["bias"], bias.detach().numpy(), rtol=1e-6)


@pytest.mark.parametrize("scale", [0.5, 3.0])  # below and above the clip norm of 1
def test_clip_factor_is_optax_clip_by_global_norm(scale):
  rng = np.random.RandomState(0)
  g = {"a": jnp.asarray(rng.randn(3, 4), jnp.float32), "b": jnp.asarray(rng.randn(5), jnp.float32)}
  g = jax.tree_util.tree_map(lambda x: x * scale / float(optax.global_norm(g)), g)
  expected, _ = optax.clip_by_global_norm(1.0).update(g, optax.EmptyState())
  factor = optim.clip_factor(optax.global_norm(g), 1.0)
  for k in g:
    np.testing.assert_allclose(g[k] * factor, expected[k], rtol=1e-6)


def test_clip_factor_reference_rule_and_edge_cases():
  norm = jnp.float32(3.0)
  assert float(optim.clip_factor(norm, 1.0, eps=1e-6)) == pytest.approx(1 / (3.0 + 1e-6),
                                                                       rel=1e-7)
  # The reference clips only when max / (norm + eps) < 1: a norm just below max is kept.
  assert float(optim.clip_factor(jnp.float32(1.0 - 5e-7), 1.0, eps=1e-6)) < 1.0
  assert float(optim.clip_factor(jnp.float32(1.0 - 5e-7), 1.0)) == 1.0
  assert float(optim.clip_factor(jnp.float32(0.0), 1.0)) == 1.0
  assert float(optim.clip_factor(norm, None)) == 1.0 and float(optim.clip_factor(norm, 0)) == 1.0
  assert float(optim.clip_factor(jnp.float32(np.nan), 1.0)) == 1.0  # the NaN guard decides
