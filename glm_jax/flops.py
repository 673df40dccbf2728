"""Model FLOPs and device peaks for MFU (the formula and the method of docs/performance.md)."""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

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


def table_peak_flops(device) -> Optional[float]:
  """The vendor's dense bf16 peak of a TPU / GPU chip, or None (CPU and unknown kinds)."""
  kind = getattr(device, "device_kind", "").lower()
  for name, peak in _PEAKS:
    if name in kind:
      return peak
  return None


def device_peak_flops(device=None) -> float:
  """Peak FLOP/s of a device: a table value for TPU/GPU, a measured matmul for CPU."""
  device = device or jax.devices()[0]
  peak = table_peak_flops(device)
  return peak if peak is not None else measure_matmul_peak(device=device)


# Seconds between CPU re-probes: soon after the start (which is often busy: compilation, the
# input pipeline starting, other jobs), then every 5 minutes.
REPROBE_SECONDS = (30.0, 120.0, 300.0)


class PeakFlops:
  """The peak that MFU divides by, for the devices of a run.

  TPU / GPU: the table value per chip times the number of chips. CPU: a probe (the best of a
  few float32 matmuls) measures it, and since one probe taken while the machine is busy
  reads low, the peak is the running maximum of repeated probes (REPROBE_SECONDS), and never
  below a rate the run itself reached: a window measured faster than every probe so far
  raises the peak to that rate and asks for a new probe. So MFU <= 1 on CPU by construction.
  All CPU devices of a host share its cores: one peak however many there are.
  """

  def __init__(self, devices: Optional[Sequence] = None,
               probe: Callable[..., float] = measure_matmul_peak,
               clock: Callable[[], float] = time.perf_counter,
               reprobe_seconds: Sequence[float] = REPROBE_SECONDS):
    devices = list(devices or jax.devices())
    self._device, self._probe, self._clock = devices[0], probe, clock
    table = table_peak_flops(self._device)
    self.measured = table is None
    self.probes = 0
    if self.measured:
      self._intervals = list(reprobe_seconds)
      self.value = 0.0
      self.reprobe()
    else:
      self.value = table * len(devices)

  def mfu(self, flops_per_second: float) -> float:
    """Model FLOP/s over the peak; on CPU a rate above the peak becomes the peak."""
    if self.measured and flops_per_second > self.value:
      self.value = flops_per_second
      self._next = self._clock()  # probe again at the next maybe_reprobe()
    return flops_per_second / self.value

  def maybe_reprobe(self) -> bool:
    """Re-measures the CPU peak when one is due; returns whether it probed."""
    if not self.measured or self._clock() < self._next:
      return False
    self.reprobe()
    return True

  def reprobe(self) -> None:
    self.value = max(self.value, self._probe(device=self._device))
    self.probes += 1
    interval = self._intervals[0] if len(self._intervals) == 1 else self._intervals.pop(0)
    self._next = self._clock() + interval
