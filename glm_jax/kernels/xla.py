"""GLM attention as plain einsums over a dense boolean mask: the reference path on any platform.

Autodiff keeps the float32 [B, N, T, T] probabilities for the backward; the fused kernels
(cudnn.py, splash.py) and the CPU layer's blocked core (cpu/attention.py) do not.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from glm_jax.kernels.mask import MASK_FILL


def _softmax(scores, mask, dropout):
  scores = jnp.where(mask[:, None, :, :], scores, MASK_FILL)
  probs = jax.nn.softmax(scores, axis=-1)  # float32
  return probs if dropout is None else dropout(probs)


def attention(q, k, v, mask, dropout: Optional[Callable] = None):
  """softmax(q k^T) v: q, k, v [B, T, N, D], mask [B, Tq, Tk]; dropout maps the probabilities."""
  scores = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32)
  probs = _softmax(scores, mask, dropout)
  return jnp.einsum("bnqk,bknd->bqnd", probs.astype(v.dtype), v)


def cached_attention(q, cached_key, cached_value, mask, dropout: Optional[Callable] = None):
  """Decoding: q [B, T, N, D] against a cache of keys [B, N, D, S] and values [B, N, S, D].

  The cache keeps each operand in the layout its dot reads, so no step re-lays-out the cache.
  """
  scores = jnp.einsum("bqnd,bndk->bnqk", q, cached_key, preferred_element_type=jnp.float32)
  probs = _softmax(scores, mask, dropout)
  return jnp.einsum("bnqk,bnkd->bqnd", probs.astype(cached_value.dtype), cached_value)
