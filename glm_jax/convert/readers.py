"""One checkpoint file -> its tensors, read one at a time (torch .pt/.bin, safetensors, .npz).

Readers map the file (torch.load(mmap=True), safetensors' mmap) and copy out one tensor per
`read`; every RELEASE_BYTES read they drop the mapping, so the pages already copied leave the
process and peak memory stays near the converted parameters plus one tensor. `.pt` files are
unpickled with torch's weights-only unpickler and an allow-list of the few plain-data globals
GLM checkpoints hold (numpy arrays of the RNG states, argparse.Namespace); a pickle that names
anything else (code) is refused with one line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from typing import Dict, Optional, Tuple

from absl import logging
from etils import epath
import ml_dtypes
import numpy as np

RELEASE_BYTES = 256 << 20
# Tensors of a checkpoint: what the reader finds under these top-level keys, else the dict.
STATE_DICT_KEYS = ("module", "model", "state_dict")


class CheckpointError(ValueError):
  """A checkpoint that cannot be read as given (one line says what to do)."""


def _import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("Reading a .pt/.bin checkpoint needs PyTorch: pip install 'glm_jax[torch]' "
                      "(or pip install torch), or use its safetensors / .npz form.") from e
  return torch


def _safe_globals():
  """The non-tensor globals GLM's .pt files hold: numpy RNG states and argparse.Namespace."""
  reconstruct = np._core.multiarray._reconstruct  # pylint: disable=protected-access
  dtype_classes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
  return [np.ndarray, np.dtype, reconstruct, argparse.Namespace, *dtype_classes,
          (reconstruct, "numpy.core.multiarray._reconstruct")]  # numpy 1.x pickles


def torch_load(path: str):
  """torch.load with weights_only=True, mmap=True and the allow-list; code is refused."""
  torch = _import_torch()
  import pickle  # pylint: disable=g-import-not-at-top
  try:
    with torch.serialization.safe_globals(_safe_globals()):
      return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
  except pickle.UnpicklingError as e:
    raise CheckpointError(f"Refusing {path}: its pickle needs more than tensors and plain data "
                          f"({_unpickling_reason(e)}); only load checkpoints you trust, and "
                          "convert them with the tool that wrote them to safetensors first."
                          ) from None
  except RuntimeError as e:
    if "mmap" in str(e) or "zip" in str(e).lower():
      raise CheckpointError(f"{path} is in torch's legacy (pre-1.6) format, which cannot be "
                            "mapped; re-save it with torch.save under torch >= 1.6.") from None
    raise


def _unpickling_reason(error: Exception) -> str:
  """The line of torch's weights-only error that names what the pickle wanted."""
  skip = ("Weights only load failed", "Check the documentation", "Please file an issue")
  for line in str(error).splitlines():
    line = line.replace("WeightsUnpickler error:", "").strip()
    if line and not line.startswith(skip):
      return line.rstrip(".")
  return "an unsupported global"


def _torch_to_numpy(tensor) -> np.ndarray:
  """A CPU tensor -> an owned numpy array (bfloat16 through ml_dtypes)."""
  torch = _import_torch()
  tensor = tensor.detach()
  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
  return tensor.numpy().copy()


def _numpy_dtype(torch_dtype) -> np.dtype:
  torch = _import_torch()
  if torch_dtype == torch.bfloat16:
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(torch.empty((), dtype=torch_dtype).numpy().dtype)


def _find_state_dict(obj, path: str) -> dict:
  """The tensors of a loaded .pt: under 'module' / 'model' / 'state_dict', or the dict itself."""
  torch = _import_torch()
  if isinstance(obj, dict):
    for key in STATE_DICT_KEYS:
      inner = obj.get(key)
      if isinstance(inner, dict) and inner and all(
          isinstance(v, torch.Tensor) for v in inner.values()):
        return inner
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors and len(tensors) == len(obj):
      return tensors
    keys = ", ".join(sorted(map(str, obj))[:8])
    raise CheckpointError(f"{path} holds no state dict (top-level keys: {keys}); pass the model "
                          "states file (mp_rank_XX_model_states.pt or pytorch_model.bin).")
  raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict.")


class Reader:
  """Names, shapes and dtypes of one file's tensors, and `read(name)` of one of them."""

  path: str
  shapes: Dict[str, Tuple[int, ...]]
  dtypes: Dict[str, np.dtype]

  def read(self, name: str) -> np.ndarray:
    raise NotImplementedError

  def close(self):
    pass


class TorchReader(Reader):
  """A torch .pt / .bin file (zip format), mapped and re-mapped every RELEASE_BYTES."""

  def __init__(self, path: str):
    self.path = path
    state = _find_state_dict(torch_load(path), path)
    self.shapes = {k: tuple(v.shape) for k, v in state.items()}
    self.dtypes = {k: _numpy_dtype(v.dtype) for k, v in state.items()}
    self._state, self._since_open = state, 0

  def read(self, name: str) -> np.ndarray:
    if self._state is None or self._since_open > RELEASE_BYTES:
      self._state = None
      self._state, self._since_open = _find_state_dict(torch_load(self.path), self.path), 0
    out = _torch_to_numpy(self._state[name])
    self._since_open += out.nbytes
    return out

  def close(self):
    self._state = None


class SafetensorsReader(Reader):
  """A .safetensors file through the safetensors library (bfloat16 through its flax reader)."""

  def __init__(self, path: str):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    self.path = path
    self._open = lambda: safe_open(path, framework="numpy")
    with self._open() as f:
      self.shapes, self.dtypes, self._bf16 = {}, {}, set()
      for name in f.keys():
        info = f.get_slice(name)
        self.shapes[name] = tuple(info.get_shape())
        kind = info.get_dtype()
        if kind == "BF16":
          self._bf16.add(name)
          self.dtypes[name] = np.dtype(ml_dtypes.bfloat16)
        else:
          self.dtypes[name] = np.dtype(_SAFETENSORS_DTYPES[kind])
    self._handle, self._since_open = None, 0

  def read(self, name: str) -> np.ndarray:
    if name in self._bf16:
      from safetensors import safe_open  # pylint: disable=g-import-not-at-top
      with safe_open(self.path, framework="flax") as f:
        return np.asarray(f.get_tensor(name))
    if self._handle is None or self._since_open > RELEASE_BYTES:
      self.close()
      self._handle, self._since_open = self._open().__enter__(), 0
    out = self._handle.get_tensor(name)
    self._since_open += out.nbytes
    return out

  def close(self):
    if self._handle is not None:
      self._handle.__exit__(None, None, None)
      self._handle = None


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
                       "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                       "BOOL": np.bool_}


class NpzReader(Reader):
  """An .npz of the state dict (numpy reads one member at a time)."""

  def __init__(self, path: str):
    self.path = path
    self._npz = np.load(path, allow_pickle=False)
    self.shapes, self.dtypes = {}, {}
    for name in self._npz.files:  # each member's header only
      with self._npz.zip.open(name + ".npy") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if major == 1
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(f)
      self.shapes[name], self.dtypes[name] = tuple(shape), np.dtype(dtype)

  def read(self, name: str) -> np.ndarray:
    return self._npz[name]

  def close(self):
    self._npz.close()


def open_reader(path: str) -> Reader:
  """The reader for a local file, chosen by its name."""
  if path.endswith(".npz"):
    return NpzReader(path)
  if path.endswith(".safetensors"):
    return SafetensorsReader(path)
  return TorchReader(path)


class LocalFiles:
  """Local paths of checkpoint files; remote (gs://) ones are copied to a temp dir first.

  torch and safetensors map files, which needs a local disk. Copies are removed on close.
  """

  def __init__(self):
    self._tmp: Optional[str] = None
    self._copies: Dict[str, str] = {}

  def local(self, path: epath.Path) -> str:
    if _is_local(path):
      return os.fspath(path)
    key = os.fspath(path)
    if key not in self._copies:
      if self._tmp is None:
        self._tmp = tempfile.mkdtemp(prefix="glm_convert_")
      target = os.path.join(self._tmp, f"{len(self._copies)}_{path.name}")
      logging.info("Copying %s to %s", key, target)
      with path.open("rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 64 << 20)
      self._copies[key] = target
    return self._copies[key]

  def close(self):
    if self._tmp is not None:
      shutil.rmtree(self._tmp, ignore_errors=True)
      self._tmp = None
      self._copies = {}


def _is_local(path: epath.Path) -> bool:
  return "://" not in os.fspath(path)

