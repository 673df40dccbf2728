"""The CPU layer's blocked attention core with its hand-written backward equals the xla kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax.kernels import xla
from glm_jax.kernels.cpu import attention
from glm_jax.kernels.cpu import dropout
from glm_jax.model import GLM, GLMConfig, attention_mask, init_params

B, N, T, D = 2, 4, 48, 16


def _inputs(seed=0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  q, k, v, d_out = (jax.random.normal(key, (B, N, T, D)) for key in ks)
  index = jnp.arange(T)
  mask = attention_mask(index, index, jnp.asarray([30, 7], jnp.int32))  # [B, T, T]
  return q, k, v, d_out, mask


def _xla_reference(q, k, v, mask, key, rate):
  """The xla kernel (autodiff) on heads-major q, k, v [B, N, T, D], the same hash dropout."""
  heads_major = lambda t: jnp.swapaxes(t, 1, 2)  # pylint: disable=unnecessary-lambda-assignment
  drop = lambda p: dropout.hash_dropout(p, key, rate)  # pylint: disable=unnecessary-lambda-assignment
  return heads_major(xla.attention(heads_major(q), heads_major(k), heads_major(v), mask, drop))


@pytest.mark.parametrize("rate", [0.0, 0.3])
@pytest.mark.parametrize("forward_scores,backward_scores",
                         [(T * T, T * T), (2 * T * T, T * T), (1 << 19, 2 * T * T)])  # heads
def test_values_and_gradients_match_autodiff(rate, forward_scores, backward_scores, monkeypatch):
  monkeypatch.setattr(attention, "_FORWARD_BLOCK_SCORES", forward_scores)
  monkeypatch.setattr(attention, "_BACKWARD_BLOCK_SCORES", backward_scores)
  q, k, v, d_out, mask = _inputs()
  key = jnp.asarray([11, 12], jnp.uint32)

  def loss(fn):
    return lambda q, k, v: jnp.sum(fn(q, k, v, mask, key, rate) * d_out)

  ours = jax.jit(jax.value_and_grad(loss(attention.attention_core), argnums=(0, 1, 2)))(q, k, v)
  ref = jax.jit(jax.value_and_grad(loss(_xla_reference), argnums=(0, 1, 2)))(
      q, k, v)
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5)
  for a, b in zip(ours[1], ref[1]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_heads_per_block_keeps_a_block_within_its_budget():
  assert attention.heads_per_block(12, 512) == 2  # forward: 2 MiB
  assert attention.heads_per_block(4, 512) == 2
  assert attention.heads_per_block(12, 512, 1 << 18) == 1  # backward: 1 MiB
  assert attention.heads_per_block(16, 1024) == 1
  assert attention.heads_per_block(12, 64) == 12
  assert attention.heads_per_block(7, 300) == 1  # only divisors of the head count


def test_masked_keys_get_no_gradient_and_no_weight():
  q, k, v, d_out, mask = _inputs(1)
  key = jnp.zeros((2,), jnp.uint32)
  # Row 1 has sep 7: key 40 is visible only to queries >= 40.
  out = attention.attention_core(q, k, v, mask, key, 0.0)
  v2 = v.at[1, :, 40].add(100.0)
  out2 = attention.attention_core(q, k, v2, mask, key, 0.0)
  np.testing.assert_allclose(out[1, :, :40], out2[1, :, :40], atol=1e-6)
  assert np.abs(np.asarray(out[1, :, 40:] - out2[1, :, 40:])).max() > 1.0


@pytest.mark.parametrize("remat_policy", ["none", "dots_no_batch", "full"])
def test_model_gradients_equal_for_the_blocked_and_plain_cores(remat_policy):
  cfg = GLMConfig(vocab_size=64, num_layers=2, hidden_size=32, num_heads=4,
                  max_sequence_length=32, embedding_dropout=0.1, attention_dropout=0.2,
                  hidden_dropout=0.1, remat_policy=remat_policy)
  params = init_params(cfg, jax.random.PRNGKey(0))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 24), 0, 64)
  positions = jnp.stack([jnp.tile(jnp.arange(24), (2, 1)), jnp.zeros((2, 24), jnp.int32)], 1)
  sep = jnp.asarray([10, 16], jnp.int32)

  def grads(kernel):
    model = GLM(cfg.replace(attention_kernel=kernel))

    def loss(p):
      logits = model.apply({"params": p}, tokens, positions, sep=sep, deterministic=False,
                           rngs={"dropout": jax.random.PRNGKey(2)})
      return jnp.mean(jax.nn.log_softmax(logits)[..., 3])

    return jax.jit(jax.value_and_grad(loss))(params)

  (loss_a, grad_a), (loss_b, grad_b) = grads("cpu_blocked"), grads("xla")
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(grad_a), jax.tree_util.tree_leaves(grad_b)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_unknown_kernel_is_a_clear_error():
  with pytest.raises(ValueError, match="attention_kernel must be one of"):
    GLMConfig(attention_kernel="flash")


def test_configs_saved_with_attention_implementation_still_load():
  assert GLMConfig.from_dict({"attention_implementation": "autodiff"}).attention_kernel == "xla"
  assert GLMConfig.from_dict({"attention_implementation": "manual_vjp"}).attention_kernel == "auto"


def test_a_saved_platform_kernel_loads_as_auto_anywhere():
  # A checkpoint of a GPU run (attention_kernel 'cudnn') evaluated on a CPU picks its kernel.
  for kernel in ("cudnn", "splash", "cpu_blocked"):
    assert GLMConfig.from_dict({"attention_kernel": kernel}).attention_kernel == "auto"
  assert GLMConfig.from_dict({"attention_kernel": "xla"}).attention_kernel == "xla"
