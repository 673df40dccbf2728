"""Digests of saved arrays: verified when a checkpoint is restored, whatever its sharding.

The digest of an array is two 32-bit sums over its elements of a hash of (element bits, flat
index), wrapping mod 2**32. A sum does not depend on the order it is taken in, so the value is
the same for any sharding and any number of hosts (one jitted reduction on the devices, no
gather); for a fixed index the hash is a bijection of the bits, so any single changed element
changes both sums. `host_digest` computes the same value with numpy, in chunks (converted
weights that live on the host). `finite` comes from the same pass.
"""

from __future__ import annotations

from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

# Lane constants (golden ratio, murmur3's multipliers) and the chunk of host_digest.
_K1, _K2 = 0x9E3779B9, 0x7FEB352D
_M1, _M2 = 0x85EBCA6B, 0xC2B2AE35
_HOST_CHUNK = 1 << 22


def _fmix(h, xp):
  """murmur3's 32-bit finaliser (a bijection) in numpy or jax.numpy uint32 arithmetic."""
  h = h ^ (h >> xp.uint32(16))
  h = h * xp.uint32(_M1)
  h = h ^ (h >> xp.uint32(13))
  h = h * xp.uint32(_M2)
  return h ^ (h >> xp.uint32(16))


def _lanes(bits, index, xp):
  """Two hashes of (bits, index) per element: bijective in bits for a fixed index."""
  first = _fmix(bits ^ _fmix(index ^ xp.uint32(_K1), xp), xp)
  second = _fmix((bits + index * xp.uint32(_K2)) ^ xp.uint32(0x68E31DA4), xp)
  return first, second


_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _bits32(x, xp):
  """The element bits as uint32 (8/16-bit types widened; 64-bit types folded)."""
  size = np.dtype(x.dtype).itemsize
  if x.dtype == xp.bool_:
    return x.astype(xp.uint32)
  bits = x.view(_UINT[size]) if xp is np else jax.lax.bitcast_convert_type(x, _UINT[size])
  if size == 8:
    return (bits ^ (bits >> 32)).astype(xp.uint32)
  return bits.astype(xp.uint32)


def _flat_index(shape):
  """uint32 flat (row-major) index of every element, mod 2**32, from per-axis iotas."""
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    iota = jax.lax.broadcasted_iota(jnp.uint32, shape, axis)
    index = index + iota * jnp.uint32(stride % (1 << 32))
    stride *= shape[axis]
  return index


def _device_digest(x) -> Tuple[jax.Array, jax.Array]:
  """([2] uint32 digest, finite) of one array, traced."""
  if x.ndim == 0:
    x = x.reshape((1,))
  first, second = _lanes(_bits32(x, jnp), _flat_index(x.shape), jnp)
  digest = jnp.stack([jnp.sum(first, dtype=jnp.uint32), jnp.sum(second, dtype=jnp.uint32)])
  finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)
  return digest, finite


_jitted = jax.jit(lambda leaves: [_device_digest(x) for x in leaves])


def _text(digest) -> str:
  return "".join(f"{int(v):08x}" for v in np.asarray(digest))


def tree_digests(tree) -> Tuple[Dict[str, str], Dict[str, bool]]:
  """({leaf path: digest hex}, {leaf path: all finite}) of a pytree of jax arrays.

  One jitted pass on the arrays' own devices; every process gets the same answer.
  """
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  if not leaves:
    return {}, {}
  keys = [jax.tree_util.keystr(path) for path, _ in leaves]
  results = jax.device_get(_jitted([leaf for _, leaf in leaves]))
  return ({k: _text(d) for k, (d, _) in zip(keys, results)},
          {k: bool(f) for k, (_, f) in zip(keys, results)})


def host_digest(x: np.ndarray) -> Tuple[str, bool]:
  """(digest hex, all finite) of a host array: the value tree_digests gives on devices."""
  flat = np.ascontiguousarray(x).reshape(-1)
  sums = [np.uint32(0), np.uint32(0)]
  finite = True
  inexact = np.issubdtype(flat.dtype, np.inexact) or flat.dtype.name == "bfloat16"
  with np.errstate(over="ignore"):
    for start in range(0, max(flat.size, 1), _HOST_CHUNK):
      chunk = flat[start:start + _HOST_CHUNK]
      index = (np.arange(start, start + chunk.size, dtype=np.uint64)
               & np.uint64(0xFFFFFFFF)).astype(np.uint32)
      first, second = _lanes(_bits32(chunk, np), index, np)
      sums[0] = np.uint32((int(sums[0]) + int(first.sum(dtype=np.uint64))) & 0xFFFFFFFF)
      sums[1] = np.uint32((int(sums[1]) + int(second.sum(dtype=np.uint64))) & 0xFFFFFFFF)
      if inexact:
        finite = finite and bool(np.isfinite(chunk.astype(np.float32)).all())
  return _text(sums), finite


def host_tree_digests(tree) -> Tuple[Dict[str, str], Dict[str, bool]]:
  """tree_digests of a pytree of numpy arrays, computed on the host."""
  digests, finite = {}, {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    key = jax.tree_util.keystr(path)
    digests[key], finite[key] = host_digest(np.asarray(leaf))
  return digests, finite


def mismatches(expected: Dict[str, str], found: Dict[str, str]) -> list:
  """Leaf paths whose digest differs (or that one side lacks)."""
  return sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
