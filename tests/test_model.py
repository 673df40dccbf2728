"""Behaviour of the GLM network that users rely on: masking, packing, dtypes, variants."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax.model import GLM, GLMConfig, abstract_params, attention_mask, init_params

CFG = GLMConfig(vocab_size=128, num_layers=2, hidden_size=32, num_heads=4, max_sequence_length=32,
                initializer_std=0.2)
B, T = 2, 16


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, jax.random.PRNGKey(0))


def _inputs(seed=0):
  rng = np.random.RandomState(seed)
  tokens = rng.randint(0, CFG.vocab_size, size=(B, T)).astype(np.int32)
  positions = np.stack([np.tile(np.arange(T), (B, 1)), rng.randint(0, 4, size=(B, T))], 1)
  return tokens, positions.astype(np.int32)


def _apply(params, tokens, positions, cfg=CFG, **kw):
  return np.asarray(GLM(cfg).apply({"params": params}, tokens, positions, **kw))


def test_mask_rule():
  idx = jnp.arange(5)
  m = np.asarray(attention_mask(idx, idx, jnp.array([2])))[0]
  expected = np.array([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0],
                       [1, 1, 1, 1, 1]], bool)
  np.testing.assert_array_equal(m, expected)


@pytest.mark.parametrize("seed", range(4))
def test_part_b_never_changes_part_a_or_earlier_positions(params, seed):
  tokens, positions = _inputs(seed)
  sep = np.array([6, 10], np.int32)
  base = _apply(params, tokens, positions, sep=sep)
  rng = np.random.RandomState(100 + seed)
  for b in range(B):
    j = rng.randint(sep[b], T)  # a Part B position
    changed = tokens.copy()
    changed[b, j] = (changed[b, j] + 1 + rng.randint(CFG.vocab_size - 1)) % CFG.vocab_size
    out = _apply(params, changed, positions, sep=sep)
    np.testing.assert_array_equal(out[b, :j], base[b, :j])  # Part A and earlier Part B
    assert np.abs(out[b, j:] - base[b, j:]).max() > 1e-4  # causal influence on j and later
    np.testing.assert_array_equal(out[1 - b], base[1 - b])  # rows are independent


def test_part_a_is_bidirectional(params):
  tokens, positions = _inputs(1)
  sep = np.array([8, 8], np.int32)
  base = _apply(params, tokens, positions, sep=sep)
  changed = tokens.copy()
  changed[:, 7] = (changed[:, 7] + 5) % CFG.vocab_size
  out = _apply(params, changed, positions, sep=sep)
  assert np.abs(out[:, 0] - base[:, 0]).max() > 1e-4  # position 0 sees position 7


def test_packed_segments_never_see_each_other(params):
  tokens, positions = _inputs(2)
  segment_ids = np.array([[1] * 7 + [2] * 6 + [0] * 3, [1] * 10 + [2] * 6], np.int32)
  # Per-token sep: where each token's segment's Part B begins (absolute index).
  sep = np.array([[4] * 7 + [10] * 6 + [16] * 3, [6] * 10 + [13] * 6], np.int32)
  base = _apply(params, tokens, positions, sep=sep, segment_ids=segment_ids)
  changed = tokens.copy()
  changed[0, 2] += 1  # segment 1 of row 0
  changed[1, 12] += 1  # segment 2 of row 1
  out = _apply(params, changed, positions, sep=sep, segment_ids=segment_ids)
  np.testing.assert_array_equal(out[0, 7:13], base[0, 7:13])
  np.testing.assert_array_equal(out[1, :10], base[1, :10])
  assert np.abs(out[0, :7] - base[0, :7]).max() > 1e-4
  # A packed segment equals the same sample alone in its own row (positions restart).
  alone = _apply(params, tokens[:1, 7:13], positions[:1, :, 7:13], sep=np.array([3], np.int32))
  np.testing.assert_allclose(base[0, 7:13], alone[0], atol=1e-5)


def test_explicit_mask_equals_sep_form(params):
  tokens, positions = _inputs(3)
  sep = np.array([5, 11], np.int32)
  idx = jnp.arange(T)
  mask = attention_mask(idx, idx, jnp.asarray(sep))
  np.testing.assert_allclose(_apply(params, tokens, positions, mask=mask),
                             _apply(params, tokens, positions, sep=sep), atol=1e-6)


def test_bfloat16_compute_within_tolerance(params):
  tokens, positions = _inputs(4)
  sep = np.array([9, 12], np.int32)
  f32 = _apply(params, tokens, positions, sep=sep)
  bf16 = _apply(params, tokens, positions, cfg=CFG.replace(dtype="bfloat16"), sep=sep)
  assert bf16.dtype == np.float32  # logits stay float32
  # Stated tolerance: bfloat16 has 8 mantissa bits; logits agree to 5% of their spread.
  assert np.abs(bf16 - f32).max() <= 0.05 * (f32.max() - f32.min())
  p32 = jax.nn.softmax(f32, -1)
  p16 = jax.nn.softmax(bf16, -1)
  assert float(jnp.abs(p32 - p16).sum(-1).max()) < 0.05


@pytest.mark.parametrize("variant", [dict(scan_layers=False), dict(remat_policy="full"),
                                     dict(remat_policy="dots"),
                                     dict(remat_policy="full", scan_layers=False)])
def test_variants_compute_the_same_function(params, variant):
  cfg = CFG.replace(**variant)
  p = params
  if not cfg.scan_layers:
    p = dict(params)
    layers = p.pop("layers")
    for i in range(cfg.num_layers):
      p[f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], layers)
  tokens, positions = _inputs(5)
  sep = np.array([7, 3], np.int32)
  np.testing.assert_allclose(_apply(p, tokens, positions, cfg=cfg, sep=sep),
                             _apply(params, tokens, positions, sep=sep), atol=1e-5)
  loss = lambda q: jnp.mean(GLM(cfg).apply({"params": q}, tokens, positions, sep=sep) ** 2)
  grads = jax.grad(loss)(p)
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


def test_dropout_is_seeded_and_active_in_training(params):
  cfg = CFG.replace(embedding_dropout=0.1, attention_dropout=0.1, hidden_dropout=0.1)
  tokens, positions = _inputs(6)
  run = lambda seed: np.asarray(GLM(cfg).apply({"params": params}, tokens, positions,
                                               deterministic=False,
                                               rngs={"dropout": jax.random.PRNGKey(seed)}))
  np.testing.assert_array_equal(run(0), run(0))
  assert np.abs(run(0) - run(1)).max() > 1e-4
  assert np.abs(run(0) - _apply(params, tokens, positions)).max() > 1e-4


def test_every_parameter_has_logical_axes():
  boxed = abstract_params(CFG)
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  allowed = {"vocab", "embed", "qkv", "heads", "kv", "mlp", "layers", "positions"}
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.Partitioned)
    assert len(leaf.names) == leaf.value.ndim
    assert set(leaf.names) <= allowed
  scanned = boxed["layers"]["attention"]["qkv_kernel"]
  assert scanned.names == ("layers", "embed", "qkv", "heads", "kv")


def test_reference_initialisation():
  cfg = GLMConfig(vocab_size=512, num_layers=4, hidden_size=128, num_heads=4,
                  max_sequence_length=64)
  p = init_params(cfg, jax.random.PRNGKey(1))
  std = lambda x: float(np.std(np.asarray(x)))
  assert abs(std(p["word_embeddings"]) - 0.02) < 0.002
  assert abs(std(p["layers"]["mlp"]["wi_kernel"]) - 0.02) < 0.002
  assert abs(std(p["layers"]["mlp"]["wo_kernel"]) - 0.02 / np.sqrt(8)) < 0.001
  assert abs(std(p["layers"]["attention"]["out_kernel"]) - 0.02 / np.sqrt(8)) < 0.001
  assert np.all(np.asarray(p["layers"]["attention"]["qkv_bias"]) == 0)
  assert np.all(np.asarray(p["final_layernorm"]["scale"]) == 1)


def test_config_errors_are_one_line():
  with pytest.raises(ValueError, match="not divisible by num_heads"):
    GLMConfig(hidden_size=30, num_heads=4)
  with pytest.raises(ValueError, match="remat_policy"):
    GLMConfig(remat_policy="sometimes")
