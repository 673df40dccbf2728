"""glm_jax.kernels.cpu.matmul.einsum: the values and gradients of jnp.einsum, with a planned dw layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax.kernels.cpu import matmul
from glm_jax.model import _REMAT_POLICIES

# The network's five projections: (spec, x shape, w shape).
CASES = [
    ("bth,hcnd->btcnd", (2, 5, 8), (8, 3, 2, 4)),  # fused QKV
    ("btnd,ndh->bth", (2, 5, 2, 4), (2, 4, 8)),  # attention output
    ("bth,hf->btf", (2, 5, 8), (8, 12)),  # MLP in
    ("btf,fh->bth", (2, 5, 12), (12, 8)),  # MLP out
    ("bth,vh->btv", (2, 5, 8), (11, 8)),  # tied output layer
]


@pytest.mark.parametrize("spec,x_shape,w_shape", CASES)
def test_values_and_gradients_equal_jnp_einsum(spec, x_shape, w_shape):
  kx, kw, kd = jax.random.split(jax.random.PRNGKey(0), 3)
  x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
  dy = jax.random.normal(kd, jnp.einsum(spec, x, w).shape)

  def loss(fn):
    return lambda x, w: jnp.sum(fn(spec, x, w) * dy)

  ours = jax.jit(jax.value_and_grad(loss(matmul.einsum), argnums=(0, 1)))(x, w)
  ref = jax.jit(jax.value_and_grad(loss(jnp.einsum), argnums=(0, 1)))(x, w)
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5)
  for a, b in zip(ours[1], ref[1]):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bfloat16_operands_give_bfloat16_gradients():
  x = jnp.ones((2, 3, 4), jnp.bfloat16)
  w = jnp.ones((4, 5), jnp.bfloat16)
  dx, dw = jax.grad(lambda x, w: jnp.sum(matmul.einsum("bth,hf->btf", x, w, jnp.float32)),
                    argnums=(0, 1))(x, w)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(dw, np.float32), 6.0)


def test_weight_gradient_transposes_the_smaller_operand():
  # MLP in: x [B,T,768] is smaller than dy [B,T,3072]; MLP out: dy is, and the [h, f]
  # product is transposed to w's [f, h]; the tied output layer never transposes the logits.
  assert matmul.weight_gradient_plan("bth,hf->btf", (4, 512, 768), (768, 3072)) == (
      "x", "hbt", "dy", "btf", "hf")
  assert matmul.weight_gradient_plan("btf,fh->bth", (4, 512, 3072), (3072, 768)) == (
      "dy", "hbt", "x", "btf", "hf")
  assert matmul.weight_gradient_plan("bth,vh->btv", (4, 512, 768), (30592, 768)) == (
      "x", "hbt", "dy", "btv", "hv")
  assert matmul.weight_gradient_plan("btnd,ndh->bth", (4, 512, 12, 64), (12, 64, 768)) == (
      "x", "ndbt", "dy", "bth", "ndh")


def test_dots_remat_policy_saves_the_projection_instead_of_recomputing_it():
  x, w = jnp.ones((2, 3, 4)), jnp.ones((4, 5))

  def dot_count(policy_name):
    f = jax.checkpoint(lambda x, w: jnp.tanh(matmul.einsum("bth,hf->btf", x, w)),
                       policy=_REMAT_POLICIES[policy_name])
    return str(jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(f(x, w)), argnums=(0, 1)))(
        x, w)).count("dot_general")

  # Forward once, then dx and dw; 'full' remat reruns the forward product in the backward.
  assert dot_count("dots_no_batch") == 3
  assert dot_count("dots") == 3
  assert dot_count("full") == 4


def test_an_index_summed_within_one_operand_is_refused():
  with pytest.raises(ValueError, match="each index must appear once"):
    matmul.weight_gradient_plan("bth,hf->bf", (2, 3, 4), (4, 5))
