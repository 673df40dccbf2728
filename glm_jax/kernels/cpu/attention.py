"""The CPU layer's attention core, q [B,N,T,D] x k, v -> out [B,N,T,D], hand-written backward.

Autodiff of softmax(q k^T) v over whole [B, N, T, T] tensors is memory-bound on a CPU (GLM-Base:
50 MB per score tensor, well past the caches) and lets XLA pick slow backward layouts (it
transposes the probabilities for dV = P^T dO and reduces rowsum(dP * P) inside a dot). Here
- the work runs in blocks of one row and a few heads (`heads_per_block`: 2 MiB of scores in the
  forward, 1 MiB in the backward, which keeps three [T, T] temporaries live: one head at
  T = 512, a core's L2), so every [T, T] temporary stays in cache;
- the backward computes dV^T = dO^T P and dK^T = Q^T dS from Q^T and dO^T (small [D, T]
  operands transposed once, outside the block loop, so every dot has the row-major layout
  the fast kernels take) and the softmax correction from rowsum(dO * O) (FlashAttention's D,
  exact with dropout);
- scores are recomputed from q, k and the saved log-sum-exp, and the dropout mask from its hash
  key (dropout.py, indexed by the element's place in the whole tensor, so blocks do not
  change it): only out and lse are kept besides the inputs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from glm_jax.kernels.cpu import dropout as dropout_lib
from glm_jax.kernels.mask import MASK_FILL

# Float32 scores per block. The backward's blocks are half the forward's: measured on a 2-core
# Zen 4 (1 MiB L2 per core), GLM-Base attention forward + backward took 102 ms per layer with
# 2-head backward blocks and 86 ms with 1-head blocks; the forward is the same at 1, 2 or 4.
_FORWARD_BLOCK_SCORES = 1 << 19  # 2 MiB
_BACKWARD_BLOCK_SCORES = 1 << 18  # 1 MiB


def heads_per_block(num_heads: int, length: int, block_scores: int = _FORWARD_BLOCK_SCORES) -> int:
  """Largest divisor of num_heads whose block of [length, length] scores fits block_scores."""
  best = 1
  for g in range(1, num_heads + 1):
    if num_heads % g == 0 and g * length * length <= block_scores:
      best = g
  return best


def _scores(q, k, mask):
  """Masked float32 scores [G, Tq, Tk] of q [G, Tq, D], k [G, Tk, D]; mask [Tq, Tk]."""
  s = jnp.einsum("gqd,gkd->gqk", q, k, preferred_element_type=jnp.float32)
  return jnp.where(mask[None], s, MASK_FILL)


def _block_forward(q, k, v, mask, key, rate, row_offset):
  s = _scores(q, k, mask)
  m = jnp.max(s, axis=-1, keepdims=True)
  e = jnp.exp(s - m)
  total = jnp.sum(e, axis=-1, keepdims=True)
  p = dropout_lib.hash_dropout(e / total, key, rate, row_offset)
  out = jnp.einsum("gqk,gkd->gqd", p.astype(v.dtype), v)
  return out, m + jnp.log(total)  # lse [G, Tq, 1]


def _block_backward(q, q_t, k, v, mask, key, rate, row_offset, lse, correction, d_out,
                    d_out_t):
  """One block's dq [G,Tq,D], dk, dv; q_t, d_out_t are q, d_out as [G, D, T].

  correction [G, Tq, 1] is rowsum(dO * O) = rowsum(dP * P), FlashAttention's D.
  """
  dtype = v.dtype
  p = jnp.exp(_scores(q, k, mask) - lse)  # float32 [G, Tq, Tk]
  d_out = d_out.astype(dtype)
  # dV^T = dO^T P and dK^T = Q^T dS from transposed [T, D] operands: both dots then contract
  # the left operand's last axis and the right one's first, the layout the fast kernels take.
  dv = jnp.einsum("gdq,gqk->gdk", d_out_t, dropout_lib.hash_dropout(p, key, rate, row_offset).astype(dtype))
  dp = jnp.einsum("gqd,gkd->gqk", d_out, v, preferred_element_type=jnp.float32)
  dp = dropout_lib.hash_dropout(dp, key, rate, row_offset)  # the forward's mask and scale
  ds = (p * (dp - correction)).astype(dtype)
  dq = jnp.einsum("gqk,gkd->gqd", ds, k)
  dk = jnp.einsum("gdq,gqk->gdk", q_t, ds)
  return dq, jnp.swapaxes(dk, -1, -2), jnp.swapaxes(dv, -1, -2)


def _blocks(x, group):
  """[B, N, ...] -> [B * N / group, group, ...]."""
  return x.reshape(x.shape[0] * x.shape[1] // group, group, *x.shape[2:])


def _unblocks(x, batch):
  return x.reshape(batch, x.shape[0] * x.shape[1] // batch, *x.shape[2:])


def _block_args(num_heads, length, group, mask, index):
  """The mask row and the dropout row offset of block `index`."""
  blocks_per_row = num_heads // group
  row = index // blocks_per_row
  offset = (index * group * length).astype(jnp.uint32)  # (b * N + first head) * T
  return jax.lax.dynamic_index_in_dim(mask, row, keepdims=False), offset


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def attention_core(q, k, v, mask, key, rate: float):
  """softmax(q k^T masked) (hash dropout with `key`) v; q, k, v [B, N, T, D], mask [B, T, T]."""
  return _forward(q, k, v, mask, key, rate)[0]


def _forward(q, k, v, mask, key, rate):
  batch, heads, length, _ = q.shape
  group = heads_per_block(heads, length, _FORWARD_BLOCK_SCORES)

  def block(args):
    qb, kb, vb, index = args
    mask_b, offset = _block_args(heads, length, group, mask, index)
    return _block_forward(qb, kb, vb, mask_b, key, rate, offset)

  indices = jnp.arange(batch * heads // group)
  out, lse = jax.lax.map(block, (_blocks(q, group), _blocks(k, group), _blocks(v, group),
                                 indices))
  out = checkpoint_name(_unblocks(out, batch), "attention_out")
  lse = checkpoint_name(_unblocks(lse, batch), "attention_lse")
  return out, (q, k, v, mask, key, out, lse)


def _backward(rate, residuals, d_out):
  q, k, v, mask, key, out, lse = residuals
  batch, heads, length, _ = q.shape
  group = heads_per_block(heads, length, _BACKWARD_BLOCK_SCORES)

  def block(args):
    qb, qtb, kb, vb, lb, cb, db, dtb, index = args
    mask_b, offset = _block_args(heads, length, group, mask, index)
    return _block_backward(qb, qtb, kb, vb, mask_b, key, rate, offset, lb, cb, db, dtb)

  d_out = d_out.astype(v.dtype)
  # Computed once for all blocks (a [B, N, T, D] multiply-reduce): one input fewer to slice.
  correction = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1,
                       keepdims=True)  # [B, N, T, 1]
  q_t, d_out_t = jnp.swapaxes(q, -1, -2), jnp.swapaxes(d_out, -1, -2)  # [B, N, D, T]
  blocked = [_blocks(x, group) for x in (q, q_t, k, v, lse, correction, d_out, d_out_t)]
  indices = jnp.arange(batch * heads // group)
  dq, dk, dv = jax.lax.map(block, (*blocked, indices))
  return _unblocks(dq, batch), _unblocks(dk, batch), _unblocks(dv, batch), None, None


attention_core.defvjp(_forward, _backward)

