"""GLM attention as cuDNN flash attention, through jax.nn.dot_product_attention.

One sample per row (sep [B], no segment_ids): two calls and no [B, T, T] value (mask.py):
  Part A rows: query_seq_lengths = key_value_seq_lengths = sep (padding mask; cuDNN skips
               the tiles past sep);
  Part B rows: is_causal=True;
and each row is taken from the call of its kind. Fully bidirectional rows (sep=None): one
call without a mask. Packed rows (segment_ids or a per-token sep) and explicit masks: one call
with the dense mask, which JAX hands to cuDNN as a [B, 1, T, T] bias (the public API has no
per-segment form of GLM's rule). No attention dropout: the API takes no per-step seed.

`implementation='xla'` runs the very same calls through JAX's XLA implementation: that is
how the decomposition is tested on a CPU.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import jax
import jax.numpy as jnp

from glm_jax.kernels import mask as mask_lib

# cuDNN's flash attention takes half-precision operands only.
_DTYPES = (jnp.bfloat16, jnp.float16)
# jax.nn.dot_product_attention's implementation when none is passed: the tests set 'xla' to run
# the network's cuDNN calls on a CPU.
IMPLEMENTATION = "cudnn"


def cudnn_version() -> Optional[int]:
  """The cuDNN version JAX uses (e.g. 90800), or None without JAX's CUDA plugin."""
  from jax._src.cudnn import fused_attention_stablehlo  # pylint: disable=g-import-not-at-top
  try:
    return int(fused_attention_stablehlo.check_cudnn_version())
  except RuntimeError:
    return None


@contextlib.contextmanager
def declared_cudnn_version(version: int) -> Iterator[None]:
  """Lowers cuDNN attention on a machine without JAX's CUDA plugin (glm_jax.plan --lower_only).

  jax.nn.dot_product_attention asks the CUDA plugin for the cuDNN version while tracing, to
  gate features; nothing of it enters the lowered module. Within this context that lookup
  answers `version`, the cuDNN of the machine the module is lowered for. It changes no
  kernel choice, only lets the trace proceed where the plugin is absent.
  """
  from jax._src.cudnn import fused_attention_stablehlo  # pylint: disable=g-import-not-at-top
  previous = fused_attention_stablehlo.check_cudnn_version
  fused_attention_stablehlo.check_cudnn_version = lambda: version
  try:
    yield
  finally:
    fused_attention_stablehlo.check_cudnn_version = previous


def _check(q, implementation: Optional[str]) -> str:
  implementation = implementation or IMPLEMENTATION
  if implementation != "cudnn":
    return implementation
  if q.dtype not in _DTYPES:
    raise ValueError(f"attention_kernel='cudnn' takes bfloat16 or float16 activations, got "
                     f"{q.dtype}; set model.GLMConfig.dtype = 'bfloat16' or attention_kernel = "
                     "'xla'.")
  if cudnn_version() is None:
    raise ValueError(
        "attention_kernel='cudnn' needs JAX's CUDA plugin with cuDNN (a CUDA GPU); use "
        "attention_kernel='auto' here (glm_jax.plan --lower_only --platform=cuda lowers a GPU "
        "step on any machine).")
  return implementation


def _call(q, k, v, implementation, **kwargs):
  # The keys are pre-scaled (the reference's q (k / sqrt(d))^T): scale 1.
  return jax.nn.dot_product_attention(q, k, v, scale=1.0, implementation=implementation,
                                      **kwargs)


def attention(q, k, v, sep=None, segment_ids=None, *, implementation: Optional[str] = None):
  """GLM attention, q, k, v [B, T, N, D] -> [B, T, N, D]; sep [B] or [B, T], segment_ids [B, T]."""
  implementation = _check(q, implementation)
  batch, length = q.shape[0], q.shape[1]
  if sep is None and segment_ids is None:
    return _call(q, k, v, implementation)  # every key visible to every query
  if segment_ids is not None or sep.ndim == 2:
    index = jnp.arange(length)
    full = sep if sep is not None else jnp.full((batch,), length, jnp.int32)
    return masked_attention(q, k, v, mask_lib.attention_mask(index, index, full, segment_ids),
                            implementation=implementation)
  sep = jnp.asarray(sep, jnp.int32)
  # A row with sep 0 has no Part A row: its Part A call is unused, length 1 keeps it finite.
  lengths = jnp.clip(sep, 1, length)
  part_a = _call(q, k, v, implementation, query_seq_lengths=lengths,
                 key_value_seq_lengths=lengths)
  part_b = _call(q, k, v, implementation, is_causal=True)
  rows = mask_lib.part_a_rows(mask_lib.token_sep(sep, batch, length))  # [B, T]
  return jnp.where(rows[:, :, None, None], part_a, part_b)


def masked_attention(q, k, v, mask, *, implementation: Optional[str] = None):
  """q, k, v [B, T, N, D] under a dense boolean mask [B, Tq, Tk] (one bias for all heads)."""
  implementation = _check(q, implementation)
  return _call(q, k, v, implementation, mask=mask[:, None, :, :])
