"""Reference parameter names (GLM_SPEC.md section 4) <-> our parameter tree.

`convert_state_dict` reads a state dict (any Mapping, e.g. a lazy `OfficialCheckpoint`) one
tensor at a time into preallocated arrays of our tree, in the checkpoint's dtype unless told;
`to_official_state_dict` inverts it exactly. Names may carry a wrapper prefix (`module.`,
`model.`, `glm.`); parameters outside the backbone (fine-tuning heads) are skipped and named.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, List, Mapping, Optional, Tuple

from absl import logging
from flax import linen as nn
import jax
import ml_dtypes
import numpy as np

from glm_jax import model as model_lib
from glm_jax.model import GLMConfig

_LAYER_KEY = re.compile(r"^transformer\.layers\.(\d+)\.(.+)$")
_EMBEDDINGS = "word_embeddings.weight"
_DTYPE_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16",
                np.dtype(ml_dtypes.bfloat16): "bfloat16"}


@dataclasses.dataclass(frozen=True)
class Leaf:
  """One parameter: our path, the reference name, its reference shape and both mappings."""

  path: Tuple[str, ...]
  name: str
  shape: Callable[[GLMConfig], Tuple[int, ...]]                    # reference shape
  to_ours: Callable[[np.ndarray, GLMConfig], np.ndarray] = lambda x, c: x
  to_ref: Callable[[np.ndarray, GLMConfig], np.ndarray] = lambda x, c: x


def _h(c):
  return (c.hidden_size,)


# Per layer. PyTorch Linear weights are [out, in]; ours [in, out] with heads split out.
LAYER_LEAVES = (
    Leaf(("input_layernorm", "scale"), "input_layernorm.weight", _h),
    Leaf(("input_layernorm", "bias"), "input_layernorm.bias", _h),
    # [3h, h] (rows [Q | K | V], heads contiguous in each) <-> [h, 3, heads, head_dim]
    Leaf(("attention", "qkv_kernel"), "attention.query_key_value.weight",
         lambda c: (3 * c.hidden_size, c.hidden_size),
         lambda x, c: x.T.reshape(c.hidden_size, 3, c.num_heads, c.head_dim),
         lambda x, c: x.reshape(c.hidden_size, 3 * c.hidden_size).T),
    Leaf(("attention", "qkv_bias"), "attention.query_key_value.bias",
         lambda c: (3 * c.hidden_size,),
         lambda x, c: x.reshape(3, c.num_heads, c.head_dim),
         lambda x, c: x.reshape(3 * c.hidden_size)),
    # [h_out, h_in] <-> [heads, head_dim, h_out]
    Leaf(("attention", "out_kernel"), "attention.dense.weight",
         lambda c: (c.hidden_size, c.hidden_size),
         lambda x, c: x.T.reshape(c.num_heads, c.head_dim, c.hidden_size),
         lambda x, c: x.reshape(c.hidden_size, c.hidden_size).T),
    Leaf(("attention", "out_bias"), "attention.dense.bias", _h),
    Leaf(("post_attention_layernorm", "scale"), "post_attention_layernorm.weight", _h),
    Leaf(("post_attention_layernorm", "bias"), "post_attention_layernorm.bias", _h),
    Leaf(("mlp", "wi_kernel"), "mlp.dense_h_to_4h.weight",
         lambda c: (c.mlp_size, c.hidden_size), lambda x, c: x.T, lambda x, c: x.T),
    Leaf(("mlp", "wi_bias"), "mlp.dense_h_to_4h.bias", lambda c: (c.mlp_size,)),
    Leaf(("mlp", "wo_kernel"), "mlp.dense_4h_to_h.weight",
         lambda c: (c.hidden_size, c.mlp_size), lambda x, c: x.T, lambda x, c: x.T),
    Leaf(("mlp", "wo_bias"), "mlp.dense_4h_to_h.bias", _h),
)
_POSITIONS = lambda c: (c.max_sequence_length + 1, c.hidden_size)  # pylint: disable=unnecessary-lambda-assignment
TOP_LEAVES = (
    Leaf(("word_embeddings",), _EMBEDDINGS, lambda c: (c.vocab_size, c.hidden_size)),
    Leaf(("position_embeddings",), "transformer.position_embeddings.weight", _POSITIONS),
    Leaf(("block_position_embeddings",), "transformer.block_position_embeddings.weight",
         _POSITIONS),
    Leaf(("final_layernorm", "scale"), "transformer.final_layernorm.weight", _h),
    Leaf(("final_layernorm", "bias"), "transformer.final_layernorm.bias", _h),
)
_LAYER_NAMES = {leaf.name for leaf in LAYER_LEAVES}


@dataclasses.dataclass
class Backbone:
  """Where the GLM backbone sits in a state dict: its key prefix, layers, and the other keys."""

  prefix: str
  num_layers: int
  heads: List[str]        # keys outside the backbone (fine-tuning heads): skipped


def _shape(state_dict: Mapping, key: str) -> Tuple[int, ...]:
  shape_of = getattr(state_dict, "shape", None)
  return tuple(shape_of(key)) if callable(shape_of) else tuple(np.shape(state_dict[key]))


def _dtype(state_dict: Mapping, key: str) -> np.dtype:
  dtype_of = getattr(state_dict, "dtype", None)
  if callable(dtype_of):
    return np.dtype(dtype_of(key))
  return _as_numpy(state_dict[key]).dtype


def _as_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    from glm_jax.convert import readers  # pylint: disable=g-import-not-at-top
    return readers._torch_to_numpy(value)  # pylint: disable=protected-access
  return np.asarray(value)


def find_backbone(state_dict: Mapping) -> Backbone:
  """The prefix before `word_embeddings.weight` (shortest wins), the layers and the heads."""
  prefixes = sorted((k[:-len(_EMBEDDINGS)] for k in state_dict if k.endswith(_EMBEDDINGS)),
                    key=len)
  prefixes = [p for p in prefixes if p == "" or p.endswith(".")]
  if not prefixes:
    raise ValueError(f"Not a GLM state dict: no {_EMBEDDINGS} among its {len(state_dict)} keys "
                     f"({', '.join(list(state_dict)[:3])}, ...).")
  prefix = prefixes[0]
  layers, heads, unknown = set(), [], []
  top = {leaf.name for leaf in TOP_LEAVES}
  for key in state_dict:
    if not key.startswith(prefix):
      heads.append(key)
      continue
    name = key[len(prefix):]
    match = _LAYER_KEY.match(name)
    if name in top or (match and match.group(2) in _LAYER_NAMES):
      if match:
        layers.add(int(match.group(1)))
    elif name.startswith(("transformer.", "word_embeddings")):
      unknown.append(key)
    else:
      heads.append(key)
  if unknown:
    raise ValueError(f"Unexpected parameter {unknown[0]} (and {len(unknown) - 1} more): this "
                     "converter handles block-LM GLM checkpoints without relative encoding.")
  missing = [leaf.name for leaf in TOP_LEAVES if prefix + leaf.name not in state_dict]
  if missing:
    raise ValueError(f"Not a GLM state dict: missing {prefix}{missing[0]} (and "
                     f"{len(missing) - 1} more).")
  layers = sorted(layers)
  if not layers or layers != list(range(len(layers))):
    raise ValueError(f"Layer indices must be 0..L-1, found {layers[:5]}...")
  return Backbone(prefix, len(layers), sorted(heads))


def infer_config(state_dict: Mapping, num_heads: int, backbone: Optional[Backbone] = None,
                 **overrides) -> GLMConfig:
  """GLMConfig from the shapes (no tensor is read); `overrides` set what shapes cannot tell.

  param_dtype defaults to the checkpoint's own dtype.
  """
  b = backbone or find_backbone(state_dict)
  vocab, hidden = _shape(state_dict, b.prefix + _EMBEDDINGS)
  max_pos = _shape(state_dict, b.prefix + "transformer.position_embeddings.weight")[0] - 1
  ffn_key = b.prefix + "transformer.layers.0.mlp.dense_h_to_4h.weight"
  if ffn_key not in state_dict:
    raise ValueError(f"Not a GLM state dict: missing {ffn_key}.")
  ffn = _shape(state_dict, ffn_key)[0]
  if not num_heads:
    raise ValueError("The number of attention heads is not in this layout; pass --num_heads "
                     "(GLM-Base 12, Large/RoBERTa 16, 2B 32, 10B 64).")
  if hidden % num_heads:
    raise ValueError(f"--num_heads={num_heads} does not divide hidden size {hidden}.")
  fields = dict(vocab_size=int(vocab), num_layers=b.num_layers, hidden_size=int(hidden),
                num_heads=int(num_heads), ffn_size=None if ffn == 4 * hidden else int(ffn),
                max_sequence_length=int(max_pos),
                param_dtype=_DTYPE_NAMES.get(_dtype(state_dict, b.prefix + _EMBEDDINGS),
                                             "float32"))
  fields.update(overrides)
  return GLMConfig(**fields)


def _expect(arr: np.ndarray, shape: Tuple[int, ...], key: str) -> np.ndarray:
  if tuple(arr.shape) != tuple(shape):
    raise ValueError(f"{key}: expected shape {tuple(shape)}, got {tuple(arr.shape)}; "
                     "is this a GLM block-LM checkpoint with the given --num_heads?")
  return arr


def convert_params(state_dict: Mapping, config: GLMConfig,
                   backbone: Optional[Backbone] = None, progress: Callable = lambda n: None):
  """Our params (numpy, config.param_dtype), each tensor read once into its place.

  Layer-major order (the order shards are written in); `progress(k)` after each tensor.
  """
  b = backbone or find_backbone(state_dict)
  dtype, cfg = config.parameter_dtype, config

  def read(name: str, shape) -> np.ndarray:
    value = _as_numpy(state_dict[b.prefix + name])
    return _expect(value, shape, b.prefix + name)

  # Our tree, allocated once in the final dtype; every tensor is written into its slot.
  params = jax.tree_util.tree_map(lambda s: np.empty(s.shape, dtype),
                                  nn.meta.unbox(model_lib.abstract_params(cfg)))
  for leaf in TOP_LEAVES:
    _get(params, leaf.path)[...] = read(leaf.name, leaf.shape(cfg))
    progress(1)
  for i in range(cfg.num_layers):
    for leaf in LAYER_LEAVES:
      value = leaf.to_ours(read(f"transformer.layers.{i}.{leaf.name}", leaf.shape(cfg)), cfg)
      if cfg.scan_layers:
        _get(params["layers"], leaf.path)[i] = value
      else:
        _get(params[f"layers_{i}"], leaf.path)[...] = value
      del value
      progress(1)
  return params


@dataclasses.dataclass
class Converted:
  config: GLMConfig
  params: dict
  skipped: List[str]   # keys outside the backbone (fine-tuning heads), not converted


def convert_state_dict(state_dict: Mapping, num_heads: int, progress: Callable = lambda n: None,
                       **overrides) -> Converted:
  """Config from the shapes, then the params; heads are skipped and logged in one line."""
  backbone = find_backbone(state_dict)
  config = infer_config(state_dict, num_heads, backbone, **overrides)
  if backbone.heads:
    logging.warning("%s", skipped_line(backbone.heads))
  return Converted(config, convert_params(state_dict, config, backbone, progress),
                   backbone.heads)


def skipped_line(heads: List[str]) -> str:
  shown = ", ".join(heads[:4]) + (", ..." if len(heads) > 4 else "")
  return (f"Skipped {len(heads)} parameters outside the GLM backbone (a fine-tuning head: "
          f"{shown}); only the backbone is converted.")


def from_official_state_dict(state_dict: Mapping, num_heads: int, **overrides):
  """Reference state dict -> (GLMConfig, params); sizes come from the shapes.

  `overrides` set GLMConfig fields that shapes cannot tell (dtype, param_dtype, dropout,
  scan_layers...). A vocabulary that is not a multiple of 128 is kept as is.
  """
  converted = convert_state_dict(state_dict, num_heads, **overrides)
  return converted.config, converted.params


def to_official_state_dict(config: GLMConfig, params) -> dict:
  """Our params -> the reference's state dict (numpy arrays, PyTorch [out, in] layout)."""
  params = jax.tree_util.tree_map(np.asarray, params)
  sd = {leaf.name: leaf.to_ref(_get(params, leaf.path), config) for leaf in TOP_LEAVES}
  for i in range(config.num_layers):
    for leaf in LAYER_LEAVES:
      if config.scan_layers:
        value = _get(params["layers"], leaf.path)[i]
      else:
        value = _get(params[f"layers_{i}"], leaf.path)
      sd[f"transformer.layers.{i}.{leaf.name}"] = leaf.to_ref(value, config)
  return sd


def _get(tree, path: Tuple[str, ...]):
  for part in path:
    tree = tree[part]
  return tree
