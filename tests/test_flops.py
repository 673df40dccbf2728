"""MFU's denominator: table peaks on TPU/GPU; on CPU re-probed, never below an observed rate."""

import types

import jax
import pytest

from glm_jax import flops

CPU = types.SimpleNamespace(device_kind="cpu", platform="cpu")
V5E = types.SimpleNamespace(device_kind="TPU v5 lite", platform="tpu")


class FakeClock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def _probes(*values):
  readings = list(values)
  calls = []

  def probe(device):
    calls.append(device)
    return readings.pop(0)
  return probe, calls


def test_table_peak_times_chips_and_no_probe():
  probe, calls = _probes()
  peak = flops.PeakFlops([V5E] * 4, probe=probe)
  assert not peak.measured and peak.value == 4 * 197e12 and not calls
  assert peak.mfu(197e12) == pytest.approx(0.25)
  assert not peak.maybe_reprobe()


def test_busy_start_is_corrected_by_later_probes():
  clock = FakeClock()
  # The first probe ran while the machine was busy (50), the later ones on a quiet one.
  probe, calls = _probes(50e9, 200e9, 190e9, 210e9)
  peak = flops.PeakFlops([CPU] * 8, probe=probe, clock=clock, reprobe_seconds=(30, 120, 300))
  assert peak.value == 50e9 and len(calls) == 1  # one peak for all CPU devices of a host
  clock.now = 10
  assert not peak.maybe_reprobe()
  clock.now = 31
  assert peak.maybe_reprobe() and peak.value == 200e9
  clock.now = 100  # the next probe is due 120 s after that one
  assert not peak.maybe_reprobe()
  clock.now = 152
  assert peak.maybe_reprobe() and peak.value == 200e9  # a lower reading never lowers it
  clock.now = 152 + 299
  assert not peak.maybe_reprobe()
  clock.now = 152 + 301
  assert peak.maybe_reprobe() and peak.value == 210e9
  assert peak.probes == 4


def test_a_rate_above_the_peak_caps_mfu_at_one_and_asks_for_a_probe():
  clock = FakeClock()
  probe, calls = _probes(60e9, 180e9)
  peak = flops.PeakFlops([CPU], probe=probe, clock=clock)
  assert peak.mfu(30e9) == pytest.approx(0.5)
  assert peak.mfu(120e9) == 1.0  # the busy-start probe read below what the run reached
  assert peak.value == 120e9
  assert peak.maybe_reprobe() and len(calls) == 2  # at once, not 30 s later
  assert peak.value == 180e9 and peak.mfu(90e9) == pytest.approx(0.5)
  for rate in (1e9, 1e11, 1e12, 5e12):
    assert peak.mfu(rate) <= 1.0


def test_real_probe_on_this_cpu():
  peak = flops.PeakFlops(jax.devices())
  assert peak.measured and peak.value > 1e9 and peak.probes == 1
