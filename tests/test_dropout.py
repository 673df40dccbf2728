"""The hash dropout: exact rate, independence across keys and positions, sharding-invariant."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest
from glm_jax.kernels.cpu import dropout


def _key(a, b):
  return jnp.asarray([a, b], jnp.uint32)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_keep_fraction_matches_the_rate(rate):
  keep = np.asarray(dropout.keep_mask(_key(1, 2), (8, 4, 128, 128), rate))
  n = keep.size
  # Binomial standard error at n = 524288 is at most 7e-4; allow 5 of them.
  assert abs(keep.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)


def test_bits_are_uniform_and_decorrelated():
  bits = np.asarray(dropout.hash_bits(_key(7, 11), (64, 4096)), np.float64) / 2.0 ** 32
  assert abs(bits.mean() - 0.5) < 0.002
  assert abs(bits.var() - 1 / 12) < 0.001
  # Neighbouring columns, neighbouring rows and two keys: no linear correlation.
  other = np.asarray(dropout.hash_bits(_key(8, 11), (64, 4096)), np.float64) / 2.0 ** 32
  for a, b in [(bits[:, 1:], bits[:, :-1]), (bits[1:], bits[:-1]), (bits, other)]:
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.01
  # Every 8-bit bucket of the top byte is populated evenly (chi-square, 255 dof).
  counts = np.bincount((bits.ravel() * 256).astype(int), minlength=256)
  expected = bits.size / 256
  assert ((counts - expected) ** 2 / expected).sum() < 350


def test_masks_differ_across_keys_and_repeat_for_the_same_key():
  shape = (4, 256)
  a = np.asarray(dropout.keep_mask(_key(1, 2), shape, 0.5))
  assert np.array_equal(a, np.asarray(dropout.keep_mask(_key(1, 2), shape, 0.5)))
  for key in [_key(2, 2), _key(1, 3)]:
    b = np.asarray(dropout.keep_mask(key, shape, 0.5))
    assert 0.4 < (a != b).mean() < 0.6


def test_module_scales_kept_values_and_is_identity_when_deterministic():
  x = jnp.ones((16, 512))
  layer = dropout.Dropout(0.25)
  assert np.array_equal(np.asarray(layer.apply({}, x, deterministic=True)), np.asarray(x))
  y = np.asarray(layer.apply({}, x, deterministic=False,
                             rngs={"dropout": jax.random.PRNGKey(0)}))
  np.testing.assert_allclose(np.unique(y), [0.0, 4.0 / 3.0], rtol=1e-6)
  assert 0.7 < (y > 0).mean() < 0.8
  z = np.asarray(layer.apply({}, x, deterministic=False,
                             rngs={"dropout": jax.random.PRNGKey(1)}))
  assert not np.array_equal(y, z)


def test_threefry_implementation_drops_with_jax_random():
  x = jnp.ones((64, 64))
  rng = {"dropout": jax.random.PRNGKey(3)}
  threefry = np.asarray(dropout.Dropout(0.5, "threefry").apply({}, x, deterministic=False,
                                                                rngs=rng))
  hashed = np.asarray(dropout.Dropout(0.5, "hash").apply({}, x, deterministic=False, rngs=rng))
  np.testing.assert_allclose(np.unique(threefry), [0.0, 2.0])
  assert 0.4 < (threefry > 0).mean() < 0.6
  assert not np.array_equal(threefry, hashed)


def test_unknown_implementation_is_a_clear_error():
  with pytest.raises(ValueError, match="implementation must be one of"):
    dropout.Dropout(0.1, "philox").apply({}, jnp.ones(3), deterministic=False,
                                         rngs={"dropout": jax.random.PRNGKey(0)})


def test_mask_is_the_same_under_sharding():
  code = textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      from glm_jax.kernels.cpu import dropout
      key = jnp.asarray([5, 6], jnp.uint32)
      shape = (4, 8, 64)
      mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
      sharded = jax.jit(lambda k: dropout.keep_mask(k, shape, 0.3),
                        out_shardings=NamedSharding(mesh, P("data", None, "model")))(key)
      assert len(sharded.addressable_shards) == 4
      plain = jax.jit(lambda k: dropout.keep_mask(k, shape, 0.3))(key)
      np.testing.assert_array_equal(np.asarray(plain), np.asarray(sharded))
      print("same")
  """)
  result = conftest.run_script(code, env=conftest.multi_device_env(4))
  assert result.returncode == 0, result.stderr[-2000:]
  assert "same" in result.stdout
