"""Model FLOPs and device peaks for MFU (the formula of docs/performance.md)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from glm_jax.model import GLMConfig


def matmul_params(config: GLMConfig) -> int:
  """N: every parameter outside the word/position/block tables, plus vocab x hidden.

  The tied output projection is a vocab x hidden matmul, so it counts once; the embedding
  look-ups do no matmul work.
  """
  h, f, layers = config.hidden_size, config.mlp_size, config.num_layers
  per_layer = (3 * h * h + 3 * h) + (h * h + h) + (2 * h * f + f + h) + 4 * h
  return layers * per_layer + 2 * h + config.vocab_size * h


def train_flops_per_token(config: GLMConfig, seq_len: int) -> float:
  """6 N + 12 L T h per token: forward + backward, attention counted as non-causal."""
  return 6.0 * matmul_params(config) + 12.0 * config.num_layers * seq_len * config.hidden_size


def measure_matmul_peak(size: int = 2048, repeats: int = 5, dtype=jnp.float32,
                        device=None) -> float:
  """FLOP/s of the best of `repeats` size x size matmuls on one device (the MFU probe)."""
  device = device or jax.devices()[0]
  a = jax.device_put(jnp.ones((size, size), dtype), device)
  b = jax.device_put(jnp.ones((size, size), dtype), device)
  matmul = jax.jit(jnp.dot)
  matmul(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size ** 3 / best


# Dense bf16 peaks (FLOP/s) per chip from vendor tables; CPU peaks are measured instead.
_PEAKS = (
    ("v6", 918e12), ("v5p", 459e12), ("v5 lite", 197e12), ("v5e", 197e12), ("v4", 275e12),
    ("v3", 123e12), ("v2", 45e12), ("h200", 989e12), ("h100", 989e12), ("a100", 312e12),
    ("l4", 121e12), ("a10", 125e12), ("v100", 125e12),
)


def device_peak_flops(device=None) -> float:
  """Peak FLOP/s of a device: a table value for TPU/GPU, a measured matmul for CPU."""
  device = device or jax.devices()[0]
  kind = getattr(device, "device_kind", "").lower()
  for name, peak in _PEAKS:
    if name in kind:
      return peak
  return measure_matmul_peak(device=device)
