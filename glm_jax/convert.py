"""Reference (THUDM/GLM, PyTorch) checkpoints <-> glm_jax parameters.

`from_official_state_dict` maps the reference's parameter names (GLM_SPEC.md section 4) to
our parameter tree, inferring sizes from the shapes; `to_official_state_dict` inverts it
exactly. The CLI reads a reference checkpoint directory, a `.pt` or an `.npz` and writes a
params-only checkpoint that the trainer (INIT_CHECKPOINT) and the evaluators load:

  python -m glm_jax.convert --official=PATH --num_heads=16 --output_dir=DIR
"""

from __future__ import annotations

import os
import re
import sys
from typing import Mapping, Tuple

import numpy as np

from glm_jax.model import GLMConfig

_LAYER_KEY = re.compile(r"^transformer\.layers\.(\d+)\.")
# Our per-layer leaves, as paths inside one layer, and their reference names.
_LAYER_LEAVES = (
    (("input_layernorm", "scale"), "input_layernorm.weight"),
    (("input_layernorm", "bias"), "input_layernorm.bias"),
    (("attention", "qkv_kernel"), "attention.query_key_value.weight"),
    (("attention", "qkv_bias"), "attention.query_key_value.bias"),
    (("attention", "out_kernel"), "attention.dense.weight"),
    (("attention", "out_bias"), "attention.dense.bias"),
    (("post_attention_layernorm", "scale"), "post_attention_layernorm.weight"),
    (("post_attention_layernorm", "bias"), "post_attention_layernorm.bias"),
    (("mlp", "wi_kernel"), "mlp.dense_h_to_4h.weight"),
    (("mlp", "wi_bias"), "mlp.dense_h_to_4h.bias"),
    (("mlp", "wo_kernel"), "mlp.dense_4h_to_h.weight"),
    (("mlp", "wo_bias"), "mlp.dense_4h_to_h.bias"),
)
_TOP_LEAVES = (
    (("word_embeddings",), "word_embeddings.weight"),
    (("position_embeddings",), "transformer.position_embeddings.weight"),
    (("block_position_embeddings",), "transformer.block_position_embeddings.weight"),
    (("final_layernorm", "scale"), "transformer.final_layernorm.weight"),
    (("final_layernorm", "bias"), "transformer.final_layernorm.bias"),
)


def _strip_prefix(state_dict: Mapping[str, np.ndarray]) -> dict:
  """Accepts `module.`/`model.` prefixed names as the reference's wrappers save them."""
  out = {}
  for key, value in state_dict.items():
    for prefix in ("module.", "model."):
      if key.startswith(prefix) and key[len(prefix):].split(".")[0] in ("word_embeddings",
                                                                        "transformer"):
        key = key[len(prefix):]
    out[key] = np.asarray(value)
  return out


def _expect(arr: np.ndarray, shape: Tuple[int, ...], key: str) -> np.ndarray:
  if tuple(arr.shape) != tuple(shape):
    raise ValueError(f"{key}: expected shape {tuple(shape)}, got {tuple(arr.shape)}; "
                     "is this a GLM block-LM checkpoint with the given --num_heads?")
  return arr


def _layer_to_ours(sd: dict, i: int, cfg: GLMConfig) -> dict:
  h, n, d, f = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.mlp_size
  p = f"transformer.layers.{i}."
  g = lambda name, shape: _expect(sd[p + name], shape, p + name)
  return {
      "input_layernorm": {"scale": g("input_layernorm.weight", (h,)),
                          "bias": g("input_layernorm.bias", (h,))},
      # [3h, h] (rows [Q | K | V], heads contiguous in each) -> [h, 3, heads, head_dim]
      "attention": {
          "qkv_kernel": g("attention.query_key_value.weight", (3 * h, h)).T.reshape(h, 3, n, d),
          "qkv_bias": g("attention.query_key_value.bias", (3 * h,)).reshape(3, n, d),
          # [h_out, h_in] -> [heads, head_dim, h_out]
          "out_kernel": g("attention.dense.weight", (h, h)).T.reshape(n, d, h),
          "out_bias": g("attention.dense.bias", (h,)),
      },
      "post_attention_layernorm": {"scale": g("post_attention_layernorm.weight", (h,)),
                                   "bias": g("post_attention_layernorm.bias", (h,))},
      "mlp": {
          "wi_kernel": g("mlp.dense_h_to_4h.weight", (f, h)).T,
          "wi_bias": g("mlp.dense_h_to_4h.bias", (f,)),
          "wo_kernel": g("mlp.dense_4h_to_h.weight", (h, f)).T,
          "wo_bias": g("mlp.dense_4h_to_h.bias", (h,)),
      },
  }


def _layer_to_official(layer: dict, i: int, cfg: GLMConfig) -> dict:
  h, f = cfg.hidden_size, cfg.mlp_size
  a, m = layer["attention"], layer["mlp"]
  p = f"transformer.layers.{i}."
  return {
      p + "input_layernorm.weight": layer["input_layernorm"]["scale"],
      p + "input_layernorm.bias": layer["input_layernorm"]["bias"],
      p + "attention.query_key_value.weight": a["qkv_kernel"].reshape(h, 3 * h).T,
      p + "attention.query_key_value.bias": a["qkv_bias"].reshape(3 * h),
      p + "attention.dense.weight": a["out_kernel"].reshape(h, h).T,
      p + "attention.dense.bias": a["out_bias"],
      p + "post_attention_layernorm.weight": layer["post_attention_layernorm"]["scale"],
      p + "post_attention_layernorm.bias": layer["post_attention_layernorm"]["bias"],
      p + "mlp.dense_h_to_4h.weight": m["wi_kernel"].T.reshape(f, h),
      p + "mlp.dense_h_to_4h.bias": m["wi_bias"],
      p + "mlp.dense_4h_to_h.weight": m["wo_kernel"].T.reshape(h, f),
      p + "mlp.dense_4h_to_h.bias": m["wo_bias"],
  }


def from_official_state_dict(state_dict: Mapping[str, np.ndarray], num_heads: int,
                             **overrides) -> Tuple[GLMConfig, dict]:
  """Reference state dict -> (GLMConfig, params); sizes come from the shapes.

  `overrides` set GLMConfig fields that shapes cannot tell (dtype, dropout, scan_layers...).
  A vocabulary that is not a multiple of 128 is kept as is (the reference pads already).
  """
  sd = _strip_prefix(state_dict)
  missing = [name for _, name in _TOP_LEAVES if name not in sd]
  if missing:
    raise ValueError(f"Not a GLM state dict: missing {missing[0]} (and {len(missing) - 1} more).")
  vocab, hidden = sd["word_embeddings.weight"].shape
  max_pos = sd["transformer.position_embeddings.weight"].shape[0] - 1
  layer_ids = sorted({int(m.group(1)) for k in sd if (m := _LAYER_KEY.match(k))})
  if layer_ids != list(range(len(layer_ids))) or not layer_ids:
    raise ValueError(f"Layer indices must be 0..L-1, found {layer_ids[:5]}...")
  ffn_key = "transformer.layers.0.mlp.dense_h_to_4h.weight"
  if ffn_key not in sd:
    raise ValueError(f"Not a GLM state dict: missing {ffn_key}.")
  ffn = sd[ffn_key].shape[0]
  if hidden % num_heads:
    raise ValueError(f"--num_heads={num_heads} does not divide hidden size {hidden}.")
  fields = dict(vocab_size=int(vocab), num_layers=len(layer_ids), hidden_size=int(hidden),
                num_heads=int(num_heads), ffn_size=None if ffn == 4 * hidden else int(ffn),
                max_sequence_length=int(max_pos))
  fields.update(overrides)
  cfg = GLMConfig(**fields)

  known = {name for _, name in _TOP_LEAVES} | {
      f"transformer.layers.{i}.{name}" for i in layer_ids for _, name in _LAYER_LEAVES}
  extra = sorted(set(sd) - known)
  if extra:
    raise ValueError(f"Unexpected parameter {extra[0]} (and {len(extra) - 1} more): this "
                     "converter handles block-LM GLM checkpoints without relative encoding.")

  h = cfg.hidden_size
  params = {
      "word_embeddings": _expect(sd["word_embeddings.weight"], (cfg.vocab_size, h),
                                 "word_embeddings.weight"),
      "position_embeddings": _expect(sd["transformer.position_embeddings.weight"],
                                     (max_pos + 1, h), "transformer.position_embeddings.weight"),
      "block_position_embeddings": _expect(
          sd["transformer.block_position_embeddings.weight"], (max_pos + 1, h),
          "transformer.block_position_embeddings.weight"),
      "final_layernorm": {
          "scale": _expect(sd["transformer.final_layernorm.weight"], (h,),
                           "transformer.final_layernorm.weight"),
          "bias": _expect(sd["transformer.final_layernorm.bias"], (h,),
                          "transformer.final_layernorm.bias")},
  }
  layers = [_layer_to_ours(sd, i, cfg) for i in layer_ids]
  if cfg.scan_layers:
    import jax  # pylint: disable=g-import-not-at-top
    params["layers"] = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *layers)
  else:
    for i, layer in enumerate(layers):
      params[f"layers_{i}"] = layer
  dtype = cfg.parameter_dtype
  import jax  # pylint: disable=g-import-not-at-top
  params = jax.tree_util.tree_map(lambda x: np.asarray(x, dtype=dtype), params)
  return cfg, params


def to_official_state_dict(config: GLMConfig, params) -> dict:
  """Our params -> the reference's state dict (numpy arrays, PyTorch [out, in] layout)."""
  import jax  # pylint: disable=g-import-not-at-top
  params = jax.tree_util.tree_map(np.asarray, params)
  sd = {}
  for path, name in _TOP_LEAVES:
    value = params
    for part in path:
      value = value[part]
    sd[name] = value
  for i in range(config.num_layers):
    if config.scan_layers:
      layer = jax.tree_util.tree_map(lambda x, i=i: x[i], params["layers"])
    else:
      layer = params[f"layers_{i}"]
    sd.update(_layer_to_official(layer, i, config))
  return sd


def load_official(path: str) -> dict:
  """Reads a reference checkpoint: a directory, a `.pt` file or an `.npz` of the state dict."""
  if os.path.isdir(path):
    latest = os.path.join(path, "latest_checkpointed_iteration.txt")
    if os.path.exists(latest):
      with open(latest) as f:
        iteration = f.read().strip()
      path = os.path.join(path, iteration, "mp_rank_00_model_states.pt")
    else:
      path = os.path.join(path, "mp_rank_00_model_states.pt")
    if not os.path.exists(path):
      raise FileNotFoundError(f"No reference checkpoint at {path}; pass the directory holding "
                              "latest_checkpointed_iteration.txt, a .pt file or an .npz.")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist.")
  if path.endswith(".npz"):
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("Reading a .pt checkpoint needs PyTorch: pip install 'glm_jax[torch]' "
                      "(or pip install torch), or convert it to .npz first.") from e
  checkpoint = torch.load(path, map_location="cpu", weights_only=False)
  state = checkpoint.get("module", checkpoint) if isinstance(checkpoint, dict) else checkpoint
  return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from glm_jax import checkpoints  # pylint: disable=g-import-not-at-top
  del argv
  f = flags.FLAGS
  try:
    state_dict = load_official(f.official)
    config, params = from_official_state_dict(state_dict, f.num_heads)
    checkpoints.save_params_checkpoint(f.output_dir, params, config, f.vocabulary)
  except (ValueError, FileNotFoundError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"Wrote {f.output_dir}: {config.num_layers} layers, hidden {config.hidden_size}, "
        f"vocab {config.vocab_size}, max positions {config.max_sequence_length}.")


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top
  from glm_jax import console  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("official", None, "Reference checkpoint: directory, .pt or .npz.")
  flags.DEFINE_integer("num_heads", None, "Attention heads (not inferable from shapes).")
  flags.DEFINE_string("output_dir", None, "Where to write the glm_jax checkpoint.")
  flags.DEFINE_string("vocabulary", "wordpiece:bert-base-uncased-vocab.txt",
                      "Vocabulary spec stored with the checkpoint (see glm_jax.data.vocab).")
  flags.mark_flags_as_required(["official", "num_heads", "output_dir"])
  console.run(main)
