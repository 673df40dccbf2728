"""The Hugging Face hub layout of GLM (`THUDM/glm-*`): config.json both ways, and export.

`save_hf` writes what the hub repositories hold and the hub's GLM code (`modeling_glm.py`,
base_model_prefix 'glm') loads: `config.json` with the hub GLMConfig fields, the 29 reference
tensors without prefix in `model.safetensors` (sharded with an index past `max_shard_bytes`) and
the vocabulary files under the hub's names. config.json also names the vocabulary
(`glm_jax_vocabulary`: family and configuration), so converting the folder back needs no
--vocabulary; a hub snapshot without that entry names it through its tokenizer files.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Dict, List, Optional

from etils import epath
import numpy as np

from glm_jax.convert import keys
from glm_jax.data import corpus
from glm_jax.data import vocab as vocab_lib
from glm_jax.data.vocab import families
from glm_jax.data.vocab import files as vocab_files
from glm_jax.model import GLMConfig

VOCAB_KEY = "glm_jax_vocabulary"
# The hub's tokenizer file names per vocabulary kind.
HUB_VOCAB_FILES = {"gpt2": ("vocab.json", "merges.txt"), "roberta": ("vocab.json", "merges.txt"),
                   "chinese_sp": ("cog-pretrain.model",), "wordpiece": ("vocab.txt",),
                   "spm": ("spm.model",)}
AUTO_MAP = {
    "AutoConfig": "configuration_glm.GLMConfig",
    "AutoModel": "modeling_glm.GLMModel",
    "AutoModelForMultipleChoice": "modeling_glm.GLMForMultipleChoice",
    "AutoModelForSeq2SeqLM": "modeling_glm.GLMForConditionalGeneration",
    "AutoModelForSequenceClassification": "modeling_glm.GLMForSequenceClassification",
}
DEFAULT_MAX_SHARD_BYTES = 5 << 30
# The hub config.json's dropout fields -> ours (read by config_overrides, written by hub_config).
HUB_DROPOUTS = {"embedding_dropout_prob": "embedding_dropout",
                "attention_dropout_prob": "attention_dropout",
                "output_dropout_prob": "hidden_dropout"}


def config_overrides(hf_config: dict, path: str) -> dict:
  """GLMConfig fields a hub config.json fixes (dropouts); variants we do not run are refused."""
  if hf_config.get("relative_encoding"):
    raise ValueError(f"{path}: relative_encoding is on (GLM-XL / Transformer-XL style); this "
                     "converter handles block-LM GLM with learned positions only.")
  if hf_config.get("block_position_encoding") is False:
    raise ValueError(f"{path}: block_position_encoding is off; glm_jax runs the 2-D "
                     "(block) position encoding of the released GLM models only.")
  return {ours: float(hf_config[theirs]) for theirs, ours in HUB_DROPOUTS.items()
          if theirs in hf_config}


def check_config_against_shapes(hf_config: dict, config: GLMConfig, path: str):
  """config.json and the tensors must agree on the sizes both state."""
  pairs = {"num_layers": config.num_layers, "hidden_size": config.hidden_size,
           "vocab_size": config.vocab_size, "max_sequence_length": config.max_sequence_length}
  for name, value in pairs.items():
    if name in hf_config and int(hf_config[name]) != value:
      raise ValueError(f"{path}: config.json says {name}={hf_config[name]} but the weights have "
                       f"{value}; the folder mixes two checkpoints.")


def vocabulary_spec_of_folder(folder: epath.Path, hf_config: Optional[dict]) -> Optional[str]:
  """The spec a hub folder names: config.json's glm_jax_vocabulary, else its tokenizer files."""
  named = (hf_config or {}).get(VOCAB_KEY)
  if isinstance(named, dict) and named.get("kind") in HUB_VOCAB_FILES:
    kind = named["kind"]
    path = folder if kind in ("gpt2", "roberta") else folder / HUB_VOCAB_FILES[kind][0]
    return vocab_lib.make_spec(kind, os.fspath(path), named.get("configuration"))
  if (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
    encoder = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    kind = "roberta" if encoder.get("<s>") == 0 and "<mask>" in encoder else "gpt2"
    return vocab_lib.make_spec(kind, os.fspath(folder))
  if (folder / "cog-pretrain.model").exists():
    # The hub's Chinese checkpoints use the fixed ids ([gMASK] 50009; the reference's converter
    # copies GLM-10B-Chinese's row 50007 there).
    return vocab_lib.make_spec("chinese_sp", os.fspath(folder / "cog-pretrain.model"),
                               "large_chinese")
  if (folder / "vocab.txt").exists():
    return vocab_lib.make_spec("wordpiece", os.fspath(folder / "vocab.txt"))
  return None


def hub_config(config: GLMConfig, vocab_spec: str, torch_dtype: str) -> dict:
  """config.json of the hub's GLMConfig for our config (and the vocabulary it uses)."""
  vocabulary = vocab_lib.describe(vocab_spec)
  named = {"kind": "spm" if vocabulary.kind == "builtin" else vocabulary.kind,
           "configuration": vocabulary.configuration,
           "task_mask": bool(vocabulary.special.task_mask)}
  return {
      "architectures": ["GLMModel"],
      "attention_scale": 1.0,
      "auto_map": dict(AUTO_MAP),
      "block_position_encoding": True,
      "checkpoint_activations": False,
      "checkpoint_num_layers": 1,
      "hidden_size": config.hidden_size,
      "initializer_range": config.initializer_std,
      "max_memory_length": 0,
      "max_sequence_length": config.max_sequence_length,
      "model_type": "glm",
      "num_attention_heads": config.num_heads,
      "num_layers": config.num_layers,
      "output_predict": True,
      "parallel_output": True,
      "pool_token": "cls",
      "relative_encoding": False,
      "spell_func": "lstm",
      "spell_length": None,
      "torch_dtype": torch_dtype,
      "vocab_size": config.vocab_size,
      VOCAB_KEY: named,
      **{theirs: getattr(config, ours) for theirs, ours in HUB_DROPOUTS.items()},
  }


def _vocabulary_files(vocab_spec: str) -> Dict[str, epath.Path]:
  """hub file name -> the vocabulary's own file."""
  kind, path, _ = vocab_lib.parse_spec(vocab_spec)
  if kind in ("gpt2", "roberta"):
    found = vocab_files.first_existing(path, families.BPE_FILE_NAMES[kind], f"{kind} vocabulary")
    return dict(zip(HUB_VOCAB_FILES[kind], found))
  if kind == "builtin":
    return {"spm.model": epath.Path(corpus.BUILTIN_SPM_MODEL)}
  return {HUB_VOCAB_FILES[kind][0]: epath.Path(path)}


def _shards(state: Dict[str, np.ndarray], max_shard_bytes: int) -> List[List[str]]:
  shards: List[List[str]] = [[]]
  size = 0
  for name, value in state.items():
    if shards[-1] and size + value.nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += value.nbytes
  return shards


def save_hf(output_dir: str, config: GLMConfig, params, vocab_spec: str, *,
            dtype: Optional[str] = None,
            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> List[str]:
  """Writes the hub layout of our params into `output_dir`; returns the file names written."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  state = keys.to_official_state_dict(config, params)
  target = np.dtype(dtype) if dtype else None
  if dtype == "bfloat16":
    import ml_dtypes  # pylint: disable=g-import-not-at-top
    target = np.dtype(ml_dtypes.bfloat16)
  state = {k: np.ascontiguousarray(v if target is None else v.astype(target))
           for k, v in state.items()}
  torch_dtype = str(next(iter(state.values())).dtype)
  out = epath.Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  written = []
  with tempfile.TemporaryDirectory(prefix="glm_hf_") as tmp:
    shards = _shards(state, max_shard_bytes)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for shard, name in zip(shards, names):
      local = os.path.join(tmp, name)
      save_file({k: state[k] for k in shard}, local, metadata={"format": "pt"})
      epath.Path(local).copy(out / name, overwrite=True)  # safetensors writes local files only
      written.append(name)
    if len(shards) > 1:
      index = {"metadata": {"total_size": int(sum(v.nbytes for v in state.values()))},
               "weight_map": {k: n for shard, n in zip(shards, names) for k in shard}}
      (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
      written.append("model.safetensors.index.json")
  (out / "config.json").write_text(
      json.dumps(hub_config(config, vocab_spec, torch_dtype), indent=2, sort_keys=True) + "\n")
  written.append("config.json")
  for name, source in _vocabulary_files(vocab_spec).items():
    (out / name).write_bytes(source.read_bytes())
    written.append(name)
  return written

