"""GLM attention as Pallas splash attention (jax.experimental.pallas.ops.tpu.splash_attention).

Splash masks are static (block sparsity is planned at trace time) while GLM's sep changes per
example, so the rule is expressed with two calls and segment ids (mask.py):
  Part A call: a full mask with query segment 2 s for Part A tokens of segment s (else -1) and
               key segment 2 s for Part A keys (else -2): Part A rows see their segment's keys
               j < sep, Part B rows nothing (they are taken from the other call);
  Part B call: the causal mask with the segment ids: key j <= i of the same segment;
each row is taken from the call of its kind. Padding (segment 0, sep 0) is Part B: it sees
earlier padding, as the dense mask says. Per-example sep, packed rows and fully bidirectional
rows (one call) need no [B, T, T] value. The Part A call cannot skip blocks (its sparsity is
dynamic), so the kernels do 1.5x the FLOPs of one dense pass. Lengths are padded to a multiple
of 128 (padded keys match no segment; causal keeps them from real rows). No dropout.

On a TPU the kernels compile with Mosaic; on other platforms (tests on a CPU) they run in
Pallas interpret mode: jax.lax.platform_dependent picks while lowering. On a mesh of several
devices the kernels run under shard_map over the batch and heads axes of the logical rules.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec

from glm_jax import sizes
from glm_jax.kernels import mask as mask_lib
from glm_jax.kernels.select import SPLASH_BLOCK

# Block sizes (tokens) tried largest first: 512 is MaxText's default on v5e / v5p.
_BLOCKS = (512, 256, 128)
# The network's remat policies save values of this name (glm_jax/model.py).
_RESIDUAL_NAME = "attention_out"


def _block_sizes(length: int) -> splash.BlockSizes:
  block = next(b for b in _BLOCKS if length % b == 0)
  return splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                           block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                           use_fused_bwd_kernel=True)


def _kernel(kind: str, heads: int, length: int, interpret: bool):
  shape = (length, length)
  head_mask = splash.CausalMask(shape) if kind == "causal" else splash.FullMask(shape)
  return splash.make_splash_mha_single_device(
      splash.MultiHeadMask([head_mask] * heads), block_sizes=_block_sizes(length),
      residual_checkpoint_name=_RESIDUAL_NAME, interpret=interpret)


def _run(kind: str, q, k, v, q_segments=None, kv_segments=None):
  """One splash call over a batch: q, k, v [B, N, T, D], segments [B, T] (or None)."""
  heads, length = q.shape[1], q.shape[2]

  def call(interpret, q, k, v, *segments):
    kernel = _kernel(kind, heads, length, interpret)
    if not segments:
      return jax.vmap(kernel)(q, k, v)
    return jax.vmap(lambda q, k, v, qs, ks: kernel(q, k, v, segment_ids=splash.SegmentIds(
        qs, ks)))(q, k, v, *segments)

  args = (q, k, v) + (() if q_segments is None else (q_segments, kv_segments))
  return jax.lax.platform_dependent(*args, tpu=functools.partial(call, False),
                                    default=functools.partial(call, True))


def _local_attention(q, k, v, sep, segment_ids):
  """GLM attention of one shard: q, k, v [B, N, Tp, D]; sep, segment_ids [B, Tp] or None."""
  if sep is None:
    return _run("full", q, k, v, segment_ids, segment_ids)
  part_a = mask_lib.part_a_rows(sep)  # [B, Tp]
  segments = jnp.zeros_like(sep) if segment_ids is None else segment_ids
  out_a = _run("full", q, k, v, jnp.where(part_a, 2 * segments, -1),
               jnp.where(part_a, 2 * segments, -2))
  out_b = _run("causal", q, k, v, segment_ids, segment_ids)
  return jnp.where(part_a[:, None, :, None], out_a, out_b)


def _sharded(fn, q, k, v, sep, segment_ids):
  """fn under shard_map over the mesh axes the logical rules give batch and heads (if any)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size <= 1:
    return fn(q, k, v, sep, segment_ids)
  spec = nn.logical_to_mesh_axes(("activation_batch", "activation_heads", "activation_length",
                                  "activation_kv"))
  spec = tuple(spec) + (None,) * (4 - len(spec))
  if spec[2] is not None:
    raise ValueError("attention_kernel='splash' does not split the sequence; map "
                     "'activation_length' to no mesh axis.")
  qkv_spec = PartitionSpec(spec[0], spec[1], None, None)
  row_spec = PartitionSpec(spec[0], None)
  optional = lambda x: None if x is None else row_spec  # pylint: disable=unnecessary-lambda-assignment
  return jax.shard_map(fn, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, optional(sep),
                                                optional(segment_ids)),
                       out_specs=qkv_spec, check_vma=False)(q, k, v, sep, segment_ids)


def attention(q, k, v, sep=None, segment_ids=None):
  """GLM attention, q, k, v [B, T, N, D] -> [B, T, N, D]; sep [B] or [B, T], segment_ids [B, T]."""
  batch, length = q.shape[0], q.shape[1]
  padded = sizes.round_up(length, SPLASH_BLOCK)
  pad = padded - length
  heads_major = lambda t: jnp.pad(jnp.swapaxes(t, 1, 2), ((0, 0), (0, 0), (0, pad), (0, 0)))  # pylint: disable=unnecessary-lambda-assignment
  if sep is None and segment_ids is None and pad:
    sep = jnp.full((batch,), length, jnp.int32)  # padded keys must stay out of every row
  token_sep = None if sep is None else jnp.pad(mask_lib.token_sep(sep, batch, length),
                                               ((0, 0), (0, pad)))  # padding: sep 0, Part B
  if segment_ids is not None:
    # Padded tokens get a segment of their own, so no real row sees them.
    segment_ids = jnp.pad(jnp.asarray(segment_ids, jnp.int32), ((0, 0), (0, pad)),
                          constant_values=jnp.iinfo(jnp.int32).min // 2)
  out = _sharded(_local_attention, heads_major(q), heads_major(k), heads_major(v), token_sep,
                 segment_ids)
  return jnp.swapaxes(out[:, :, :length], 1, 2)
