"""GLM's attention mask: as a dense [B, Tq, Tk] array, and per token for the fused kernels.

Query i sees key j iff j < sep or j <= i (GLM_SPEC.md section 4), within its segment. Per query
that is a key prefix of length max(i + 1, sep), so every row is one of two kinds:
- Part A rows (i < sep) see exactly the keys j < sep: padding attention of length sep;
- Part B rows (i >= sep) see exactly the keys j <= i: causal attention.
The fused kernels (cudnn.py, splash.py) run one call of each kind and take each row from the
call of its kind (`part_a_rows`), which is exact: no row mixes the two.
"""

from __future__ import annotations

import jax.numpy as jnp

# The reference fills masked scores with the fp16 minimum, not -inf: a fully masked row
# becomes a uniform distribution instead of NaN.
MASK_FILL = -65504.0


def attention_mask(query_index, key_index, sep=None, segment_ids=None, key_valid=None):
  """Boolean GLM mask [B, Tq, Tk]: key j visible to query i iff j < sep or j <= i.

  query_index [Tq] / key_index [Tk]: absolute indices. sep: [B] (one sample per row) or
  [B, Tk] (per key: where that key's segment's Part B begins). segment_ids [B, T] restrict
  attention to the same segment; key_valid [B, Tk] removes keys (decoding).
  """
  mask = key_index[None, None, :] <= query_index[None, :, None]  # [1, Tq, Tk]
  if sep is not None:
    if sep.ndim == 1:
      bidirectional = key_index[None, :] < sep[:, None]  # [B, Tk]
    else:
      bidirectional = key_index[None, :] < sep
    mask = mask | bidirectional[:, None, :]
  if segment_ids is not None:
    mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
  if key_valid is not None:
    mask = mask & key_valid[:, None, :]
  return mask


def token_sep(sep, batch: int, length: int):
  """sep [B] or [B, T] (packed: per token, its segment's Part B start) -> int32 [B, T]."""
  sep = jnp.asarray(sep, jnp.int32)
  return jnp.broadcast_to(sep[:, None] if sep.ndim == 1 else sep, (batch, length))


def part_a_rows(sep_tokens):
  """[B, T] True where token i is in Part A (i < its sep): the rows that attend bidirectionally."""
  return jnp.arange(sep_tokens.shape[1])[None, :] < sep_tokens
