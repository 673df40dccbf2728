"""Two-operand einsums whose weight gradient is a plain row-major matmul.

The weight gradient of `einsum('bth,hf->btf', x, w)` contracts the batch and length axes,
which lead both operands. XLA:CPU then either runs it as a transposed-operand Eigen dot or
copies one operand and still contracts a leading axis; on a 2-core Zen 4 those products ran
at half the speed of the forward's. Here the backward transposes one operand itself, so the
contraction is over the trailing axes of the left operand and the leading axes of the right
one (the layout the fast matmul kernels take), behind an optimization barrier so that XLA
cannot fold the transpose back into the dot. Values and gradients are those of jnp.einsum.
"""

from __future__ import annotations

import functools

import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

# The outputs carry this name so that the 'dots' remat policies save them, as they save a
# plain dot_general's output (a custom_vjp call is not a dot to those policies).
OUTPUT_NAME = "matmul_out"


def _parse(spec: str):
  inputs, out = spec.replace(" ", "").split("->")
  x, w = inputs.split(",")
  if len(set(x)) != len(x) or len(set(w)) != len(w) or any(
      name not in out and (name not in x or name not in w) for name in set(x) | set(w)):
    raise ValueError(f"einsum {spec!r}: each index must appear once per operand and be "
                     "either contracted between the operands or kept in the output.")
  return x, w, out


def weight_gradient_plan(spec: str):
  """How dw is computed: (lhs, lhs_order, rhs, rhs_order, dw_spec) for 'x,w->y'.

  lhs / rhs name the operands ('x' or 'dy'); *_order is the axis order each is transposed to
  (contracted axes last for lhs, first for rhs); dw_spec is the einsum on the transposed pair.
  """
  x, w, out = _parse(spec)
  batch = "".join(name for name in out if name not in w)  # contracted in dw: [b, t]
  from_x = [name for name in w if name in x]
  # w's leading axis decides which operand comes first, so dw needs no final transpose.
  if w[0] in x:
    lhs, lhs_axes = "x", "".join(from_x) + batch
    rhs, rhs_axes = "dy", batch + "".join(name for name in w if name not in x)
  else:
    lhs, lhs_axes = "dy", "".join(name for name in w if name not in x) + batch
    rhs, rhs_axes = "x", batch + "".join(from_x)
  return lhs, lhs_axes, rhs, rhs_axes, f"{lhs_axes},{rhs_axes}->{w}"


def _transposed(array, axes: str, order: str):
  if axes == order:
    return array
  return jnp.transpose(array, [axes.index(name) for name in order])


def einsum(spec: str, x, w, preferred_element_type=None):
  """jnp.einsum(spec, x, w) with the weight-gradient layout described above."""
  return checkpoint_name(_einsum(spec, x, w, preferred_element_type), OUTPUT_NAME)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _einsum(spec: str, x, w, preferred_element_type=None):
  return jnp.einsum(spec, x, w, preferred_element_type=preferred_element_type)


def _forward(spec, x, w, preferred_element_type):
  return _einsum(spec, x, w, preferred_element_type), (x, w)


def _backward(spec, preferred_element_type, residuals, dy):
  del preferred_element_type
  x, w = residuals
  x_axes, w_axes, out_axes = _parse(spec)
  dy = dy.astype(x.dtype)
  dx = jnp.einsum(f"{out_axes},{w_axes}->{x_axes}", dy, w)
  lhs, lhs_order, rhs, rhs_order, dw_spec = weight_gradient_plan(spec)
  operands = {"x": (x, x_axes), "dy": (dy, out_axes)}
  a = _transposed(*operands[lhs], lhs_order)
  b = _transposed(*operands[rhs], rhs_order)
  a, b = jax.lax.optimization_barrier((a, b))
  dw = jnp.einsum(dw_spec, a, b, preferred_element_type=jnp.float32).astype(w.dtype)
  return dx, dw


_einsum.defvjp(_forward, _backward)
