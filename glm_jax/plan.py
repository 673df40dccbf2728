r"""Ahead-of-time plan of one train step: per-device memory, FLOPs, projected step time and MFU.

  python -m glm_jax.plan --gin_file=configs/models/glm_10b.gin --mesh=data:4,fsdp:64 \
      --batch_size=1024 --seq_len=1024 --microbatches=4 --remat_policy=full --device=v5e

Lowers and compiles the trainer's own jitted, sharded train step (glm_jax.trainer.Trainer) from
abstract shapes only (no parameter is allocated) for a mesh of real devices or of simulated CPU
devices (the CLI sets XLA_FLAGS=--xla_force_host_platform_device_count itself), then reads
XLA's memory and cost analyses. Experiment files (configs/scale/*.gin) may set BATCH_SIZE,
SEQUENCE_LENGTH, NUM_MICROBATCHES and MESH_* macros; flags override them.

  python -m glm_jax.plan --gin_file=configs/scale/glm_large_h100.gin --lower_only \
      --platform=cuda --json --mlir_out=/tmp/step.mlir

lowers the same step for another platform on this machine (cross-platform lowering, no
compile) with the attention kernel that platform gets, and reports the kernel, the fused
kernels' custom calls in the module and the largest attention-score value it holds.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
  # Run the importable module so its flags and gin configurables are registered once.
  from glm_jax import plan as _plan_module  # pylint: disable=import-self
  _plan_module.cli()
  sys.exit(0)

import contextlib
import copy
import dataclasses
import json
import math
import re
import time
import types
from typing import Any, Dict, Optional, Sequence

from absl import flags
import gin

from glm_jax import flops as flops_lib
from glm_jax import gin_utils

FLAGS = flags.FLAGS
GIB = 1024 ** 3
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"

# Accelerators to plan for: HBM bytes per chip. The dense bf16 peak comes from glm_jax.flops,
# so MFU here and in training use the same number.
ACCELERATORS = {
    "v4": 32 * GIB,
    "v5e": 16 * GIB,
    "v5p": 95 * GIB,
    "v6e": 32 * GIB,
    "a100": 80e9,
    "h100": 80e9,
    "h200": 141e9,
}


# The platform each accelerator's steps are lowered for.
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
_DEVICE_PLATFORMS = {"v4": "tpu", "v5e": "tpu", "v5p": "tpu", "v6e": "tpu", "a100": "cuda",
                     "h100": "cuda", "h200": "cuda"}
# The cuDNN version JAX's checks assume when lowering cuDNN attention without its CUDA plugin
# (glm_jax/kernels/cudnn.py, declared_cudnn_version): 9.10; it is not part of the module.
DEFAULT_CUDNN_VERSION = 91000
_TENSOR_TYPE = re.compile(r"tensor<((?:\d+x)+)[a-z]+\d*>")
_CUSTOM_CALL = re.compile(r"custom_call @([\w$.]+)")
_TPU_KERNEL_NAME = re.compile(r'kernel_name = "([^"]+)"')


def accelerator(name: str) -> Dict[str, float]:
  """{'name', 'peak_flops', 'hbm_bytes'} of a named accelerator (v5e, h100, ...)."""
  key = name.lower().replace("tpu", "").replace("-", "").strip()
  if key not in ACCELERATORS:
    raise ValueError(f"Unknown device {name!r}; use one of {', '.join(ACCELERATORS)} or give "
                     "--peak_tflops (and --hbm_gib).")
  kind = {"v5e": "v5 lite", "v6e": "v6"}.get(key, key)
  peak = flops_lib.device_peak_flops(types.SimpleNamespace(device_kind=kind))
  return {"name": key, "peak_flops": peak, "hbm_bytes": ACCELERATORS[key]}


def parse_mesh(text: str):
  """'data:4,fsdp:64' -> MeshConfig(data=4, fsdp=64, tensor=1); unnamed axes have size 1."""
  from glm_jax import partitioning  # pylint: disable=g-import-not-at-top
  sizes = {axis: 1 for axis in partitioning.MESH_AXES}
  for part in filter(None, (p.strip() for p in text.split(","))):
    match = re.fullmatch(r"(\w+)\s*[:=]\s*(\d+)", part)
    if not match or match.group(1) not in sizes or int(match.group(2)) < 1:
      raise ValueError(f"Bad mesh {text!r}; write e.g. data:4,fsdp:64 with axes from "
                       f"{partitioning.MESH_AXES} and positive sizes.")
    sizes[match.group(1)] = int(match.group(2))
  return partitioning.MeshConfig(**sizes)


def mesh_size(mesh_config) -> int:
  sizes = (mesh_config.data, mesh_config.fsdp, mesh_config.tensor)
  if any(s < 1 for s in sizes):
    raise ValueError(f"The plan needs explicit mesh sizes, got data={mesh_config.data}, "
                     f"fsdp={mesh_config.fsdp}, tensor={mesh_config.tensor}; pass --mesh.")
  return math.prod(sizes)


def ensure_host_devices(count: int) -> None:
  """Makes the CPU backend expose `count` devices (before JAX starts its backends)."""
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  if xla_bridge.backends_are_initialized():
    available = len(jax.devices("cpu"))
    if available < count:
      raise ValueError(f"The mesh needs {count} devices but JAX already started with {available} "
                       f"CPU devices; run with XLA_FLAGS={_DEVICE_COUNT_FLAG}={count}.")
    return
  current = os.environ.get("XLA_FLAGS", "")
  found = re.search(_DEVICE_COUNT_FLAG + r"=(\d+)", current)
  if found and int(found.group(1)) >= count:
    return
  current = re.sub(_DEVICE_COUNT_FLAG + r"=\d+", "", current).strip()
  os.environ["XLA_FLAGS"] = f"{current} {_DEVICE_COUNT_FLAG}={count}".strip()


def plan_devices(count: int):
  """`count` devices of the default backend, or of the (simulated) CPU backend if it has fewer."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  if len(devices) < count:
    devices = jax.devices("cpu")
  if len(devices) < count:
    raise ValueError(f"The mesh needs {count} devices but only {len(devices)} exist; set "
                     f"XLA_FLAGS={_DEVICE_COUNT_FLAG}={count} before JAX starts.")
  return devices[:count]


def abstract_batch(batch_size: int, seq_len: int, sharding, packed: bool = False):
  """ShapeDtypeStructs of a model batch (docs/ARCHITECTURE.md), rows sharded like the trainer's."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)  # pylint: disable=unnecessary-lambda-assignment
  b, t = batch_size, seq_len
  batch = {
      "tokens": spec((b, t), jnp.int32),
      "positions": spec((b, 2, t), jnp.int32),
      "sep": spec((b, t) if packed else (b,), jnp.int32),
      "targets": spec((b, t), jnp.int32),
      "loss_weights": spec((b, t), jnp.float32),
  }
  if packed:
    batch["segment_ids"] = spec((b, t), jnp.int32)
  return batch


def bytes_per_device(tree) -> int:
  """Largest per-device footprint of sharded ShapeDtypeStructs (shard shape x itemsize)."""
  import jax  # pylint: disable=g-import-not-at-top
  total = 0
  for leaf in jax.tree_util.tree_leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * leaf.dtype.itemsize
  return total


def bytes_global(tree) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def recompute_flops_per_token(config, seq_len: int) -> float:
  """Extra forward FLOPs per token that the remat policy recomputes in the backward pass."""
  h, f, layers = config.hidden_size, config.mlp_size, config.num_layers
  weight_matmuls = 2.0 * layers * (4 * h * h + 2 * h * f)  # qkv + out + mlp, forward
  attention = 4.0 * layers * seq_len * h  # q k^T and probs v, forward
  return {"none": 0.0, "dots": 0.0, "dots_no_batch": attention,
          "full": weight_matmuls + attention}[config.remat_policy]


def _cost(compiled) -> Dict[str, float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return dict(cost or {})


@dataclasses.dataclass(frozen=True)
class Hardware:
  """What the projection assumes per device."""

  name: str
  peak_flops: float
  hbm_bytes: Optional[float] = None
  utilization: float = 1.0  # fraction of the peak the matmuls actually sustain


def local_platform() -> str:
  """This process's platform as a lowering platform name ('cpu', 'cuda', 'rocm', 'tpu')."""
  from glm_jax.kernels import select  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  platform = jax.default_backend()
  return select.current_target().platform if platform == "gpu" else platform


def attention_report(text: str, scores_shape: Sequence[int]) -> Dict[str, Any]:
  """What a lowered module's attention holds: fused-kernel custom calls, largest score value.

  scores_shape: the xla kernel's per-layer scores [B, N, T, T] (B the microbatch). A value
  counts as attention scores when its shape ends with those four dimensions (the xla kernel's
  scores, probabilities and their gradients, also stacked over layers by remat or scan).
  """
  calls = set()
  for target in _CUSTOM_CALL.findall(text):
    if target.startswith("__cudnn$fmha") or target == "CustomSPMDPartitioning":
      calls.add(target)
  calls.update(name for name in _TPU_KERNEL_NAME.findall(text)
               if name.startswith(("splash", "flash")))
  scores_shape, largest = list(scores_shape), 0
  for dims in _TENSOR_TYPE.findall(text):
    shape = [int(d) for d in dims.rstrip("x").split("x")]
    if shape[-4:] == scores_shape:
      largest = max(largest, math.prod(shape))
  return {"attention_custom_calls": sorted(calls), "max_scores_elements": largest,
          "dense_scores_elements": math.prod(scores_shape)}


def _with_config(model, config):
  """A copy of `model` whose network uses `config`."""
  from glm_jax.model import GLM  # pylint: disable=g-import-not-at-top
  model = copy.copy(model)
  model.config, model.module = config, GLM(config)
  return model


def plan_train_step(model, mesh_config, batch_size: int, seq_len: int, *,
                    num_microbatches: int = 1, optimizer=None, learning_rate_fn=None,
                    packed: bool = False, devices: Optional[Sequence[Any]] = None,
                    hardware: Optional[Hardware] = None, platform: Optional[str] = None,
                    lower_only: bool = False, mlir_out: Optional[str] = None,
                    cudnn_version: int = DEFAULT_CUDNN_VERSION) -> Dict[str, Any]:
  """Compiles Trainer's train step for `mesh_config` from abstract shapes; returns the report.

  platform: where the step runs ('cpu', 'cuda', 'rocm', 'tpu'; None: an accelerator, the xla
  kernel), which decides the attention kernel. With lower_only the step is lowered for that
  platform and not compiled (any platform, on any machine); otherwise it is compiled here,
  with the xla kernel standing in for a fused kernel this machine cannot compile.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from glm_jax import optim, partitioning  # pylint: disable=g-import-not-at-top
  from glm_jax import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from glm_jax.kernels import cudnn, select  # pylint: disable=g-import-not-at-top

  config = model.config
  if seq_len > config.max_sequence_length:
    raise ValueError(f"seq_len {seq_len} exceeds the model's max_sequence_length "
                     f"{config.max_sequence_length}; lower it.")
  if platform is not None and platform not in PLATFORMS:
    raise ValueError(f"Unknown platform {platform!r}; use one of {', '.join(PLATFORMS)}.")
  if lower_only and platform is None:
    raise ValueError("--lower_only lowers for a platform: pass --platform=cuda|tpu|cpu.")
  num_devices = mesh_size(mesh_config)
  devices = list(devices) if devices is not None else plan_devices(num_devices)
  partitioner = partitioning.Partitioner(mesh_config, devices=devices[:num_devices])
  partitioner.check_batch_size(batch_size, num_microbatches)

  # The kernel the step gets on `platform` (the network resolves 'auto' from the mesh it is
  # traced under, which here is this machine's: so the plan resolves it for the target).
  here = local_platform()
  target = select.Target(platform=platform or "accelerator", num_devices=num_devices,
                         local=platform == here)
  kernel = select.choose(config, target, seq_len=seq_len,
                         attention_dropout=config.attention_dropout > 0, packed=packed).attention
  traced_kernel = kernel
  if not lower_only and kernel in select.FUSED and platform != here:
    traced_kernel = "xla"  # cannot be compiled here; the memory analysis is the xla kernel's
  if platform != here or traced_kernel != kernel:
    model = _with_config(model, config.replace(attention_kernel=traced_kernel))

  if optimizer is None:
    optimizer, learning_rate_fn = optim.create_optimizer(total_steps=1000)
  # Every trace of the network (parameter shapes, the step) may reach the cuDNN calls.
  declared = (cudnn.declared_cudnn_version(cudnn_version)
              if traced_kernel == "cudnn" and cudnn.cudnn_version() is None
              else contextlib.nullcontext())
  with declared:
    trainer = trainer_lib.Trainer(model, partitioner, optimizer, learning_rate_fn,
                                  num_microbatches=num_microbatches)
    state = trainer.abstract_state
    batch = abstract_batch(batch_size, seq_len, partitioner.batch_sharding(), packed)
    start = time.perf_counter()
    # The trainer's jitted step with its shardings and donation, traced as Trainer.train_step
    # traces it (under the mesh and the logical-axis rules).
    lowered = trainer.lower_train_step(
        state, batch, lowering_platforms=(platform,) if lower_only else None)
    lower_s = time.perf_counter() - start
  text = lowered.as_text()
  if mlir_out:
    with open(mlir_out, "w") as f:
      f.write(text)
  micro = batch_size // num_microbatches
  attention = {"attention_kernel": traced_kernel, "platform": platform or "accelerator",
               **attention_report(text, (micro, config.num_heads, seq_len, seq_len))}
  if traced_kernel != kernel:
    attention["attention_kernel_on_platform"] = kernel
  tokens = batch_size * seq_len
  model_flops = flops_lib.train_flops_per_token(config, seq_len) * tokens
  hardware_flops = model_flops + recompute_flops_per_token(config, seq_len) * tokens
  report = {
      "model": model.config.to_dict(),
      "num_params": sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(state.params)),
      "mesh": dict(zip(partitioning.MESH_AXES, partitioner.mesh.devices.shape)),
      "num_devices": num_devices,
      "device_kind": devices[0].device_kind,
      "batch_size": batch_size,
      "seq_len": seq_len,
      "num_microbatches": num_microbatches,
      "packed": packed,
      "tokens_per_step": tokens,
      **attention,
      "lower_seconds": round(lower_s, 2),
  }
  if lower_only:
    report["lowered_for"] = platform
    report["memory_per_device"] = {
        "params_bytes": bytes_per_device(state.params),
        "optimizer_bytes": bytes_per_device(state.opt_state),
        "batch_bytes": bytes_per_device(batch)}
    report["flops"] = {"model_flops_per_step": model_flops,
                       "hardware_flops_per_step": hardware_flops,
                       "hardware_flops_per_device": hardware_flops / num_devices}
    return report

  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start

  memory = compiled.memory_analysis()
  xla = {
      "argument_bytes": int(memory.argument_size_in_bytes),
      "output_bytes": int(memory.output_size_in_bytes),
      "alias_bytes": int(memory.alias_size_in_bytes),
      "temp_bytes": int(memory.temp_size_in_bytes),
      "generated_code_bytes": int(memory.generated_code_size_in_bytes),
  }
  # Donated state aliases its output: live bytes are arguments + new outputs + temporaries.
  xla["peak_bytes"] = (xla["argument_bytes"] + xla["output_bytes"] - xla["alias_bytes"]
                       + xla["temp_bytes"] + xla["generated_code_bytes"])
  params = bytes_per_device(state.params)
  grads = params  # gradients take the parameters' shapes, dtypes and shardings
  memory_report = {
      "params_bytes": params,
      "optimizer_bytes": bytes_per_device(state.opt_state),
      "gradients_bytes": grads,
      "batch_bytes": bytes_per_device(batch),
      # XLA's temporaries hold the gradients plus activations and workspace.
      "activations_temp_bytes": max(xla["temp_bytes"] - grads, 0),
      "params_global_bytes": bytes_global(state.params),
      "optimizer_global_bytes": bytes_global(state.opt_state),
      "xla": xla,
  }

  cost = _cost(compiled)
  flops_report = {
      "model_flops_per_step": model_flops,  # 6 N + 12 L T h per token
      "hardware_flops_per_step": hardware_flops,  # plus remat recomputation
      "hardware_flops_per_device": hardware_flops / num_devices,
      # XLA counts each while-loop body (scanned layers, microbatches) once: a lower bound.
      "xla_flops_per_device": float(cost.get("flops", 0.0)),
      "xla_bytes_accessed_per_device": float(cost.get("bytes accessed", 0.0)),
  }
  report.update(memory_per_device=memory_report, flops=flops_report,
                compile_seconds=round(compile_s, 2))
  if hardware is not None:
    report["projection"] = project(report, hardware)
  return report


def project(report: Dict[str, Any], hardware: Hardware) -> Dict[str, Any]:
  """Step time = hardware FLOPs per device / (peak x utilization); MFU = model FLOPs / time."""
  flops = report["flops"]
  sustained = hardware.peak_flops * hardware.utilization
  step_s = flops["hardware_flops_per_device"] / sustained
  result = {
      "device": hardware.name,
      "peak_tflops": hardware.peak_flops / 1e12,
      "utilization": hardware.utilization,
      "step_seconds": step_s,
      "tokens_per_second": report["tokens_per_step"] / step_s,
      "mfu": flops["model_flops_per_step"] / (step_s * hardware.peak_flops
                                              * report["num_devices"]),
  }
  if hardware.hbm_bytes:
    peak = report["memory_per_device"]["xla"]["peak_bytes"]
    result["hbm_gib"] = hardware.hbm_bytes / GIB
    result["fits"] = bool(peak <= hardware.hbm_bytes)
    result["hbm_used_fraction"] = peak / hardware.hbm_bytes
  return result


def _gib(n: float) -> str:
  return f"{n / GIB:10.3f} GiB"


def _attention_lines(report: Dict[str, Any]):
  on_platform = report.get("attention_kernel_on_platform")
  kernel = report["attention_kernel"] + (
      f" (on {report['platform']}: {on_platform}, not compilable here)" if on_platform else "")
  return [
      f"attention kernel      {kernel}",
      f"  fused custom calls  {', '.join(report['attention_custom_calls']) or 'none'}",
      f"  largest scores      {report['max_scores_elements']:.4g} elements (0: no [B, N, T, T] "
      f"value; one is {report['dense_scores_elements']:.4g})",
  ]


def _header(report: Dict[str, Any]):
  cfg = report["model"]
  mesh = " x ".join(f"{k}:{v}" for k, v in report["mesh"].items())
  return [
      f"GLM {cfg['num_layers']} layers, hidden {cfg['hidden_size']}, heads {cfg['num_heads']}, "
      f"vocab {cfg['vocab_size']}: {report['num_params'] / 1e6:.1f}M parameters "
      f"({cfg['param_dtype']} params, {cfg['dtype']} compute, remat {cfg['remat_policy']})",
      f"mesh {mesh} = {report['num_devices']} x {report['device_kind']}; batch "
      f"{report['batch_size']} x seq {report['seq_len']} in {report['num_microbatches']} "
      f"microbatch(es)",
  ]


def format_report(report: Dict[str, Any]) -> str:
  """A readable table of a plan."""
  if "lowered_for" in report:
    m = report["memory_per_device"]
    return "\n".join(_header(report) + [
        f"lowered for {report['lowered_for']} in {report['lower_seconds']:.1f} s (not compiled)",
        "", *_attention_lines(report), "",
        f"parameters            {_gib(m['params_bytes'])} per device",
        f"optimizer state       {_gib(m['optimizer_bytes'])} per device",
        f"model FLOPs per step  {report['flops']['model_flops_per_step']:.4g}",
    ])
  m, x, f = report["memory_per_device"], report["memory_per_device"]["xla"], report["flops"]
  lines = _header(report) + [
      f"lower {report['lower_seconds']:.1f} s, compile {report['compile_seconds']:.1f} s",
      "",
      *_attention_lines(report),
      "",
      "per-device memory",
      f"  parameters            {_gib(m['params_bytes'])}   (global {_gib(m['params_global_bytes'])})",
      f"  optimizer state       {_gib(m['optimizer_bytes'])}   (global "
      f"{_gib(m['optimizer_global_bytes'])})",
      f"  gradients             {_gib(m['gradients_bytes'])}",
      f"  batch                 {_gib(m['batch_bytes'])}",
      f"  activations + temps   {_gib(m['activations_temp_bytes'])}   (XLA temp minus gradients)",
      "  XLA memory analysis",
      f"    arguments           {_gib(x['argument_bytes'])}",
      f"    outputs             {_gib(x['output_bytes'])}",
      f"    aliased (donated)   {_gib(x['alias_bytes'])}",
      f"    temporaries         {_gib(x['temp_bytes'])}",
      f"    generated code      {_gib(x['generated_code_bytes'])}",
      f"    peak (arg+out-alias+temp+code) {_gib(x['peak_bytes'])}",
      "",
      "FLOPs per step",
      f"  model (6N + 12LTh)    {f['model_flops_per_step']:.4g}",
      f"  with remat recompute  {f['hardware_flops_per_step']:.4g}  "
      f"({f['hardware_flops_per_device']:.4g} per device)",
      f"  XLA cost analysis     {f['xla_flops_per_device']:.4g} per device (loop bodies "
      "counted once)",
  ]
  p = report.get("projection")
  if p:
    lines += [
        "",
        f"projection on {p['device']} ({p['peak_tflops']:.0f} TFLOP/s peak, "
        f"{p['utilization']:.0%} sustained)",
        f"  step time             {p['step_seconds']:.4g} s",
        f"  tokens / s            {p['tokens_per_second']:.4g}",
        f"  MFU                   {p['mfu']:.1%}",
    ]
    if "fits" in p:
      lines.append(f"  HBM                   {x['peak_bytes'] / GIB:.2f} of {p['hbm_gib']:.2f} GiB "
                   f"({p['hbm_used_fraction']:.0%}): {'fits' if p['fits'] else 'DOES NOT FIT'}")
  return "\n".join(lines)


def _macro(name: str, default=None):
  try:
    value = gin.query_parameter(f"%{name}")
  except ValueError:
    return default
  return default if isinstance(value, gin.config.ConfigurableReference) or value is None else value


def _hardware() -> Optional[Hardware]:
  if FLAGS.device:
    acc = accelerator(FLAGS.device)
    name, peak, hbm = acc["name"], acc["peak_flops"], acc["hbm_bytes"]
  else:
    name, peak, hbm = "custom", None, None
  if FLAGS.peak_tflops:
    peak = FLAGS.peak_tflops * 1e12
  if FLAGS.hbm_gib:
    hbm = FLAGS.hbm_gib * GIB
  if peak is None:
    return None
  if not 0 < FLAGS.utilization <= 1:
    raise ValueError(f"--utilization must be in (0, 1], got {FLAGS.utilization}.")
  return Hardware(name, peak, hbm, FLAGS.utilization)


def run_plan() -> Dict[str, Any]:
  """The CLI without flag parsing: gin -> model, mesh, shapes -> report."""
  for name in ("batch_size", "seq_len", "microbatches", "num_devices"):
    if getattr(FLAGS, name) is not None and getattr(FLAGS, name) < 1:
      raise ValueError(f"--{name} must be at least 1, got {getattr(FLAGS, name)}.")
  gin_utils.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
  if FLAGS.mesh:
    mesh_config = parse_mesh(FLAGS.mesh)
  else:
    from glm_jax import partitioning  # pylint: disable=g-import-not-at-top
    mesh_config = partitioning.MeshConfig(data=_macro("MESH_DATA", 1),
                                          fsdp=_macro("MESH_FSDP", 1),
                                          tensor=_macro("MESH_TENSOR", 1))
    if -1 in (mesh_config.data, mesh_config.fsdp, mesh_config.tensor):
      if not FLAGS.num_devices:
        raise ValueError("The gin mesh has an axis of size -1 (all remaining devices); pass "
                         "--num_devices=N or an explicit --mesh.")
      data, fsdp, tensor = mesh_config.shape(FLAGS.num_devices)
      mesh_config = partitioning.MeshConfig(data=data, fsdp=fsdp, tensor=tensor)
  num_devices = mesh_size(mesh_config)
  ensure_host_devices(num_devices)

  from glm_jax import model as model_lib, model_api, optim  # pylint: disable=g-import-not-at-top
  batch_size = FLAGS.batch_size or _macro("BATCH_SIZE")
  seq_len = FLAGS.seq_len or _macro("SEQUENCE_LENGTH")
  microbatches = FLAGS.microbatches or _macro("NUM_MICROBATCHES", 1)
  if not isinstance(batch_size, int) or not isinstance(seq_len, int):
    raise ValueError("Give --batch_size and --seq_len (or BATCH_SIZE and SEQUENCE_LENGTH in a "
                     "gin file).")
  config = model_lib.GLMConfig()
  overrides = {k: v for k, v in (("remat_policy", FLAGS.remat_policy), ("dtype", FLAGS.dtype),
                                 ("param_dtype", FLAGS.param_dtype)) if v}
  config = config.replace(**overrides)
  train_steps = _macro("TRAIN_STEPS", 1000)
  optimizer, lr_fn = optim.create_optimizer(
      total_steps=train_steps if isinstance(train_steps, int) else 1000)
  return plan_train_step(model_api.BlankInfillingModel(config), mesh_config, batch_size, seq_len,
                         num_microbatches=microbatches, optimizer=optimizer,
                         learning_rate_fn=lr_fn, packed=FLAGS.packed, hardware=_hardware(),
                         platform=_platform(config), lower_only=FLAGS.lower_only,
                         mlir_out=FLAGS.mlir_out, cudnn_version=FLAGS.cudnn_version)


def _platform(config) -> Optional[str]:
  """--platform, else that of --device, else that of a fused attention_kernel (cudnn: cuda,
  splash: tpu); None: an accelerator (the xla kernel)."""
  if FLAGS.platform:
    return FLAGS.platform
  if FLAGS.device:
    return _DEVICE_PLATFORMS.get(accelerator(FLAGS.device)["name"])
  return {"cudnn": "cuda", "splash": "tpu"}.get(config.attention_kernel)


def main(argv):
  gin_utils.begin_cli(argv, "--gin_file, --mesh, --batch_size")
  report = run_plan()
  text = json.dumps(report, indent=2, sort_keys=True)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      f.write(text + "\n")
  print(text if FLAGS.json else format_report(report), flush=True)


def define_flags():
  gin_utils.define_flags()
  flags.DEFINE_string("mesh", None, "Mesh sizes, e.g. data:4,fsdp:64 (default: MESH_* macros).")
  flags.DEFINE_integer("num_devices", None, "Device count that resolves a -1 MESH_* macro.")
  flags.DEFINE_integer("batch_size", None, "Global batch (default: BATCH_SIZE macro).")
  flags.DEFINE_integer("seq_len", None, "Sequence length (default: SEQUENCE_LENGTH macro).")
  flags.DEFINE_integer("microbatches", None, "Gradient-accumulation microbatches "
                       "(default: NUM_MICROBATCHES macro, else 1).")
  flags.DEFINE_string("remat_policy", None, "Override GLMConfig.remat_policy: none, full, dots, "
                      "dots_no_batch.")
  flags.DEFINE_string("dtype", None, "Override the compute dtype (float32, bfloat16).")
  flags.DEFINE_string("param_dtype", None, "Override the parameter dtype.")
  flags.DEFINE_bool("packed", False, "Plan packed batches ([B, T] sep and segment_ids).")
  flags.DEFINE_string("device", None, f"Accelerator to project onto: {', '.join(ACCELERATORS)}.")
  flags.DEFINE_float("peak_tflops", None, "Peak TFLOP/s per device (overrides --device's).")
  flags.DEFINE_float("hbm_gib", None, "Memory per device in GiB (overrides --device's).")
  flags.DEFINE_float("utilization", 1.0, "Fraction of the peak the step sustains (projection).")
  flags.DEFINE_enum("platform", None, list(PLATFORMS), "Platform the step runs on; decides "
                    "the attention kernel (default: that of --device).")
  flags.DEFINE_bool("lower_only", False, "Lower the step for --platform (on any machine) and "
                    "report its attention; no compile, no memory analysis.")
  flags.DEFINE_string("mlir_out", None, "Write the lowered module's text (StableHLO) here.")
  flags.DEFINE_integer("cudnn_version", DEFAULT_CUDNN_VERSION, "cuDNN version JAX's checks "
                       "assume when lowering cuDNN attention without JAX's CUDA plugin.")
  flags.DEFINE_bool("json", False, "Print the report as JSON instead of a table.")
  flags.DEFINE_string("output", None, "Also write the JSON report to this file.")


def cli():
  define_flags()
  gin_utils.run(main)
