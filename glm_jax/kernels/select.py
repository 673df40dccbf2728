"""Which attention kernel (and whether the CPU layer) a trace uses: GLMConfig + the mesh's platform.

The choice is made while tracing, from the config (part of the jitted function) and the
platform of the mesh the step is traced under (`jax.set_mesh`; outside any mesh, the default
backend), so two traces that differ in either are two different programs. glm_jax.plan lowers
for another platform by resolving 'auto' for it first (`choose` with its own Target) and
handing the network the explicit kernel.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from absl import logging
import jax

KERNELS = ("auto", "xla", "cudnn", "splash", "cpu_blocked")
FUSED = ("cudnn", "splash")
# cuDNN flash attention (jax.nn.dot_product_attention): half-precision operands, head
# dimensions that are multiples of 8 up to 128 (256 from Hopper on), Ampere or newer.
_CUDNN_DTYPES = ("bfloat16", "float16")
_CUDNN_MAX_HEAD_DIM = 128
_CUDNN_MIN_COMPUTE_CAPABILITY = (8, 0)
# Splash attention's blocks are multiples of 128 tokens: other lengths are padded.
SPLASH_BLOCK = 128


@dataclasses.dataclass(frozen=True)
class Target:
  """The platform a step is traced for: 'cpu', 'cuda', 'rocm', 'tpu' (or another name).

  `local`: the platform's devices are this process's own, so kernel support can be probed
  (False when glm_jax.plan lowers for a platform that is not here).
  """

  platform: str
  num_devices: int = 1
  local: bool = True


@dataclasses.dataclass(frozen=True)
class Choice:
  """What runs: `attention` in ('xla', 'cudnn', 'splash', 'cpu_blocked'); `cpu_layer`: the
  projections use glm_jax/kernels/cpu/matmul.py's weight-gradient layouts."""

  attention: str
  cpu_layer: bool


def _gpu_flavour() -> str:
  from jax.extend import backend  # pylint: disable=g-import-not-at-top
  try:
    version = backend.get_backend("gpu").platform_version.lower()
  except RuntimeError:
    return "cuda"
  return "rocm" if "rocm" in version else "cuda"


def current_target() -> Target:
  """The platform and device count of the mesh being traced under (else the default backend)."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else mesh.abstract_device
  platform = device.platform if device is not None else jax.default_backend()
  if platform == "gpu":
    platform = _gpu_flavour()
  return Target(platform=platform, num_devices=1 if mesh.empty else mesh.size)


def _local_cudnn_problem() -> Optional[str]:
  """Why this process cannot run cuDNN flash attention, or None."""
  from glm_jax.kernels import cudnn  # pylint: disable=g-import-not-at-top
  if cudnn.cudnn_version() is None:
    return "JAX's CUDA plugin (cuDNN) is not installed"
  capability = getattr(jax.devices()[0], "compute_capability", None)
  if capability is not None:
    major_minor = tuple(int(x) for x in str(capability).split(".")[:2])
    if major_minor < _CUDNN_MIN_COMPUTE_CAPABILITY:
      return f"compute capability {capability} is below 8.0 (Ampere)"
  return None


def _cudnn_problem(config, target: Target, seq_len: int, packed: bool) -> Optional[str]:
  if config.dtype not in _CUDNN_DTYPES:
    return f"cuDNN takes bfloat16 or float16, the compute dtype is {config.dtype}"
  if config.head_dim % 8 or config.head_dim > _CUDNN_MAX_HEAD_DIM:
    return f"head_dim {config.head_dim} is not a multiple of 8 up to {_CUDNN_MAX_HEAD_DIM}"
  if packed and seq_len % 2:
    return f"packed rows pass a mask bias, which needs an even length (got {seq_len})"
  return _local_cudnn_problem() if target.local else None


def _splash_problem(seq_len: int, dense_mask: bool) -> Optional[str]:
  if dense_mask:
    return "an explicit [B, T, T] mask was passed (splash takes sep / segment_ids)"
  if seq_len % SPLASH_BLOCK:
    return f"length {seq_len} is not a multiple of {SPLASH_BLOCK} (it would be padded)"
  return None


def choose(config, target: Target, *, seq_len: int, attention_dropout: bool,
           dense_mask: bool = False, packed: bool = False, log: bool = True) -> Choice:
  """The kernel for one call of the network.

  attention_dropout: attention dropout is applied in this call (training with a rate > 0);
  dense_mask: the caller passed an explicit [B, T, T] mask; packed: segment_ids / per-token sep.
  'auto' picks cudnn on CUDA GPUs and splash on TPUs where they apply (never with attention
  dropout: neither kernel takes a per-step dropout seed), the CPU layer on one CPU device,
  xla otherwise. An explicit kernel that cannot run this call is an error, except that
  splash hands explicit [B, T, T] masks (SuperGLUE scoring) to xla.
  """
  name = config.attention_kernel
  hash_dropout = config.dropout_implementation == "hash"
  single_cpu = target.platform == "cpu" and target.num_devices <= 1
  if name == "auto":
    if single_cpu:
      # The blocked core draws hash dropout; threefry dropout keeps the plain core.
      kernel = "cpu_blocked" if hash_dropout or not attention_dropout else "xla"
      why = "one CPU device" if kernel == "cpu_blocked" else "threefry attention dropout"
    elif attention_dropout and target.platform in ("cuda", "tpu"):
      kernel, why = "xla", "attention dropout is on (the fused kernels take none)"
    elif target.platform == "cuda":
      problem = _cudnn_problem(config, target, seq_len, packed)
      kernel, why = ("xla", problem) if problem else ("cudnn", "CUDA GPU")
    elif target.platform == "tpu":
      problem = _splash_problem(seq_len, dense_mask)
      kernel, why = ("xla", problem) if problem else ("splash", "TPU")
    else:
      kernel, why = "xla", f"platform {target.platform}, {target.num_devices} device(s)"
    if log:
      logging.info("attention_kernel 'auto' -> %r on %s x %d: %s", kernel, target.platform,
                   target.num_devices, why)
    return Choice(attention=kernel, cpu_layer=single_cpu)

  if name in FUSED and attention_dropout:
    raise ValueError(
        f"attention_kernel={name!r} takes no attention dropout (attention_dropout="
        f"{config.attention_dropout} while training); set model.GLMConfig.attention_dropout "
        "= 0.0, or attention_kernel = 'xla' to keep it.")
  if name == "cpu_blocked":
    if attention_dropout and not hash_dropout:
      raise ValueError("attention_kernel='cpu_blocked' draws hash dropout; set model.GLMConfig."
                       "dropout_implementation = 'hash' or attention_kernel = 'xla'.")
    if target.num_devices > 1:
      raise ValueError(
          f"attention_kernel='cpu_blocked' is for one device, the mesh has "
          f"{target.num_devices} (its blocks would gather whole activations); use 'auto'.")
  kernel = name
  if name == "splash" and dense_mask:
    kernel = "xla"
  if log:
    logging.info("attention_kernel %r -> %r on %s x %d", name, kernel, target.platform,
                 target.num_devices)
  return Choice(attention=kernel, cpu_layer=name == "cpu_blocked")
