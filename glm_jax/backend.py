"""Where the CPU-specific kernels apply: XLA:CPU with a mesh of at most one device."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import jax

_TARGET: Optional[str] = None  # set by tracing_for(): the platform a plan compiles for


def single_device_cpu() -> bool:
  """True when tracing for XLA:CPU outside a multi-device mesh.

  glm_jax/attention.py's blocked core and glm_jax/matmul.py's weight-gradient layouts are
  written for XLA:CPU's kernels and for unsharded arrays: the core merges the batch and head
  axes into blocks, and the barriers keep the SPMD partitioner from sharding what they hold,
  so on a sharded mesh they gather whole activations (a GLM-10B plan on 256 devices grew
  from 11 to 192 GiB per device). GPU and TPU compilers choose these layouts themselves.
  """
  platform = _TARGET or jax.default_backend()
  return platform == "cpu" and jax.sharding.get_abstract_mesh().size <= 1


@contextlib.contextmanager
def tracing_for(platform: str) -> Iterator[None]:
  """Traces as for `platform` ('cpu', 'gpu', 'tpu'): glm_jax.plan compiles a GPU or TPU
  step on simulated CPU devices and must build the step that platform would run."""
  global _TARGET
  previous, _TARGET = _TARGET, platform
  try:
    yield
  finally:
    _TARGET = previous
