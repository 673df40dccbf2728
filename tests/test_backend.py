"""The CPU kernels apply on a single-device CPU only; elsewhere the plain ops run, same values."""

import jax
import jax.numpy as jnp
import numpy as np

from glm_jax import backend, matmul
from glm_jax.model import GLM, GLMConfig, init_params


def test_single_device_cpu_only_outside_sharded_meshes_and_accelerator_plans():
  assert backend.single_device_cpu()
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((2,), ("data",))):
    assert not backend.single_device_cpu()
  with backend.tracing_for("tpu"):
    assert not backend.single_device_cpu()
  assert backend.single_device_cpu()  # restored


def _grad_jaxpr_and_value(platform):
  cfg = GLMConfig(vocab_size=64, num_layers=2, hidden_size=32, num_heads=4,
                  max_sequence_length=32, embedding_dropout=0.1, attention_dropout=0.2,
                  hidden_dropout=0.1, remat_policy="dots_no_batch")
  params = init_params(cfg, jax.random.PRNGKey(0))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 24), 0, 64)
  positions = jnp.stack([jnp.tile(jnp.arange(24), (2, 1)), jnp.zeros((2, 24), jnp.int32)], 1)
  sep = jnp.asarray([10, 16], jnp.int32)

  def loss(p):
    logits = GLM(cfg).apply({"params": p}, tokens, positions, sep=sep, deterministic=False,
                            rngs={"dropout": jax.random.PRNGKey(2)})
    return jnp.mean(jax.nn.log_softmax(logits)[..., 3])

  with backend.tracing_for(platform):
    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
    value = jax.jit(jax.value_and_grad(loss))(params)
  return jaxpr, value


def test_accelerator_trace_uses_plain_ops_with_the_same_values():
  cpu_jaxpr, (cpu_loss, cpu_grads) = _grad_jaxpr_and_value("cpu")
  tpu_jaxpr, (tpu_loss, tpu_grads) = _grad_jaxpr_and_value("tpu")
  # The blocked attention core and the planned weight gradients are custom_vjp calls.
  assert "custom_vjp_call" in cpu_jaxpr and "custom_vjp_call" not in tpu_jaxpr
  np.testing.assert_allclose(cpu_loss, tpu_loss, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(cpu_grads), jax.tree_util.tree_leaves(tpu_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_matmul_einsum_is_plain_on_a_sharded_mesh():
  x, w = jnp.ones((2, 3, 4)), jnp.ones((4, 5))
  f = lambda x, w: jnp.sum(matmul.einsum("bth,hf->btf", x, w))  # pylint: disable=unnecessary-lambda-assignment
  assert "custom_vjp_call" in str(jax.make_jaxpr(jax.grad(f))(x, w))
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((2,), ("data",))):
    assert "custom_vjp_call" not in str(jax.make_jaxpr(jax.grad(f))(x, w))
