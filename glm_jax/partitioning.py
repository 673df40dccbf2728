"""Device mesh, logical-axis rules and the shardings of parameters, optimizer state and batches.

The network names every parameter and activation axis ('embed', 'mlp', 'activation_batch',
...); one rules table maps those names to the mesh axes ('data', 'fsdp', 'tensor'). Changing
the parallelism means changing the mesh sizes or that table, nothing else.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, Optional, Sequence, Tuple

from absl import logging
import flax.linen as nn
import gin
import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis name -> mesh axis (or axes, or None = replicated). MaxText/T5X style:
# parameters are sharded over 'fsdp' along 'embed' and over 'tensor' Megatron-style
# (heads, mlp, vocab); activations are sharded over the batch axes.
DEFAULT_RULES: Tuple[Tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("qkv", None),
    ("layers", None),
    ("positions", None),
)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the ('data', 'fsdp', 'tensor') mesh axes; one -1 takes the remaining devices."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  def shape(self, num_devices: int) -> Tuple[int, int, int]:
    from glm_jax import settings  # pylint: disable=g-import-not-at-top
    settings.check_types(MeshConfig, dataclasses.asdict(self))
    sizes = [self.data, self.fsdp, self.tensor]
    if any(s == 0 or s < -1 for s in sizes):
      raise ValueError(f"Mesh axis sizes must be positive or -1, got data={self.data}, "
                       f"fsdp={self.fsdp}, tensor={self.tensor}.")
    if sizes.count(-1) > 1:
      raise ValueError("At most one mesh axis may be -1 (the remaining devices); set the others.")
    fixed = math.prod(s for s in sizes if s != -1)
    if fixed > num_devices or num_devices % fixed:
      raise ValueError(
          f"The mesh data={self.data} x fsdp={self.fsdp} x tensor={self.tensor} needs {fixed} "
          f"devices (or a divisor of the device count) but {num_devices} are available; "
          "make the product of the mesh sizes divide the device count.")
    if -1 in sizes:
      sizes[sizes.index(-1)] = num_devices // fixed
    elif fixed != num_devices:
      raise ValueError(
          f"The mesh data={self.data} x fsdp={self.fsdp} x tensor={self.tensor} uses {fixed} of "
          f"{num_devices} devices; set one axis to -1 or make the product equal the device count.")
    return tuple(sizes)


def create_mesh(config: MeshConfig, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A Mesh over all (or the given) devices with axes ('data', 'fsdp', 'tensor')."""
  devices = list(devices if devices is not None else jax.devices())
  shape = config.shape(len(devices))
  try:
    device_array = mesh_utils.create_device_mesh(shape, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES)


# (name, dimension, mesh axes, mesh shape) already reported this run.
_WARNED = set()
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("glm_jax_partitioner", default=None)


def warn_unsharded(name: str, dim: int, size: int, axes: Tuple[str, ...], mesh: Mesh) -> None:
  """Warns once per run that dimension `dim` (of `size`) of `name` cannot be split over `axes`."""
  key = (name, dim, size, axes, tuple(mesh.shape.items()))
  if key in _WARNED:
    return
  _WARNED.add(key)
  logging.warning("%s: dimension %d (size %d) is not divisible by mesh axes %s (%d devices) of "
                  "the mesh %s; it is replicated instead. Change the mesh sizes or the "
                  "logical-axis rules to shard it.", name, dim, size, "/".join(axes),
                  math.prod(mesh.shape[a] for a in axes), mesh_text(mesh))


def active() -> Optional["Partitioner"]:
  """The partitioner of the innermost `with partitioner.activate():`, or None."""
  return _ACTIVE.get()


@gin.configurable
class Partitioner:
  """Maps logical axis names to shardings on one mesh."""

  def __init__(self, mesh_config: MeshConfig = MeshConfig(),
               rules: Optional[Sequence[Tuple[str, Any]]] = None,
               devices: Optional[Sequence[jax.Device]] = None):
    self.mesh = create_mesh(mesh_config, devices)
    self.rules = tuple(tuple(r) for r in (rules if rules is not None else DEFAULT_RULES))

  @property
  def data_parallel_size(self) -> int:
    """Number of distinct batch shards (product of the batch mesh axes)."""
    return math.prod(self.mesh.shape[a] for a in BATCH_AXES)

  def axis_rules(self):
    """Context manager that activates the rules for nn.with_logical_constraint."""
    return nn.logical_axis_rules(self.rules)

  @contextlib.contextmanager
  def activate(self):
    """Makes this the partitioner `partitioning.active()` returns inside the body."""
    token = _ACTIVE.set(self)
    try:
      yield self
    finally:
      _ACTIVE.reset(token)

  @contextlib.contextmanager
  def under_mesh(self):
    """This mesh and its logical-axis rules, for tracing and calling jitted functions."""
    with jax.set_mesh(self.mesh), self.axis_rules():
      yield

  def _fit(self, spec: PartitionSpec, shape, name: str = "an array") -> PartitionSpec:
    """Drops mesh axes that do not divide a dimension (replicated, with a warning once)."""
    fitted = []
    for dim, (size, axes) in enumerate(
        zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)))):
      names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
      if names and size % math.prod(self.mesh.shape[a] for a in names):
        warn_unsharded(name, dim, size, names, self.mesh)
        axes = None
      fitted.append(axes)
    return PartitionSpec(*fitted)

  def logical_to_sharding(self, logical_spec: PartitionSpec, shape,
                          name: str = "an array") -> NamedSharding:
    mesh_spec = nn.logical_to_mesh_axes(tuple(logical_spec), self.rules)
    return NamedSharding(self.mesh, self._fit(mesh_spec, shape, name))

  def param_shardings(self, boxed_abstract_params):
    """Shardings of the (unboxed) parameter tree from its logical axis metadata."""
    logical = nn.get_partition_spec(boxed_abstract_params)
    shapes = nn.meta.unbox(boxed_abstract_params)
    return jax.tree_util.tree_map_with_path(
        lambda path, spec, s: self.logical_to_sharding(
            spec, s.shape, "parameter " + _param_name(path)), logical, shapes,
        is_leaf=lambda x: isinstance(x, PartitionSpec))

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  def batch_sharding(self, ndim: int = 1) -> NamedSharding:
    """Rows over the batch axes; other dimensions replicated."""
    del ndim
    return NamedSharding(self.mesh, PartitionSpec(BATCH_AXES))

  def rows_sharding(self, shape, name: str = "batch") -> NamedSharding:
    """Rows over the batch axes when they divide shape[0], else replicated (warned once)."""
    return NamedSharding(self.mesh, self._fit(PartitionSpec(BATCH_AXES), shape, name))

  def put_global(self, tree, name: str = "batch"):
    """Host arrays every process holds in full -> global arrays, rows over the batch axes.

    For inputs computed identically on every process (evaluation rows, prompts); a row
    count the batch axes do not divide is replicated instead (warned once).
    """

    def put(x):
      x = np.asarray(x)
      sharding = self.rows_sharding(x.shape, name) if x.ndim else self.replicated()
      return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(put, tree)

  def put_replicated(self, tree):
    """Host arrays every process holds in full -> global arrays replicated on the mesh."""
    sharding = self.replicated()

    def put(x):
      x = np.asarray(x)
      return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(put, tree)

  def check_batch_size(self, batch_size: int, num_microbatches: int = 1) -> None:
    if num_microbatches < 1 or batch_size % num_microbatches:
      raise ValueError(f"BATCH_SIZE {batch_size} is not divisible by NUM_MICROBATCHES "
                       f"{num_microbatches}; pick a batch size that is a multiple of it.")
    micro = batch_size // num_microbatches
    if micro % self.data_parallel_size:
      raise ValueError(
          f"Microbatch size {micro} (BATCH_SIZE {batch_size} / {num_microbatches} "
          f"microbatches) is not divisible by the data-parallel mesh size "
          f"{self.data_parallel_size} (data x fsdp); use a multiple of it.")

  def local_batch_slice(self, global_batch_size: int) -> Tuple[int, int]:
    """(shard_index, num_shards) of this process's contiguous block of batch rows."""
    sharding = self.batch_sharding()
    index_map = sharding.addressable_devices_indices_map((global_batch_size,))
    starts = sorted({(idx[0].start or 0, idx[0].stop or global_batch_size)
                     for idx in index_map.values()})
    start, stop = starts[0][0], starts[-1][1]
    rows = stop - start
    if global_batch_size % rows or start % rows:
      raise ValueError("This process's batch rows are not a contiguous equal block; use a mesh "
                       "whose batch axes follow the process order.")
    return start // rows, global_batch_size // rows

  def shard_batch(self, local_batch, global_batch_size: int):
    """Global jax.Arrays from this process's rows (numpy dict) of a global batch."""
    sharding = self.batch_sharding()

    def put(x):
      x = np.asarray(x)
      global_shape = (global_batch_size,) + x.shape[1:]
      return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return {k: put(v) for k, v in local_batch.items()}


def mesh_text(mesh: Mesh) -> str:
  """'data:1 x fsdp:2 x tensor:1'."""
  return " x ".join(f"{axis}:{size}" for axis, size in mesh.shape.items())


def placement(params) -> str:
  """How much of the parameters one device holds, e.g. '0.25 of 0.50 MiB per device'."""
  leaves = jax.tree_util.tree_leaves(params)
  total = sum(x.nbytes for x in leaves)
  local = sum(x.addressable_shards[0].data.nbytes for x in leaves)
  return f"{local / 2**20:.2f} of {total / 2**20:.2f} MiB of parameters per device"


def _param_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
