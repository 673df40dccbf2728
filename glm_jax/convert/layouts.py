"""A checkpoint path in any layout users meet -> one state dict, read tensor by tensor.

  DIR/latest_checkpointed_iteration.txt -> DIR/<tag>/mp_rank_XX_model_states.pt   (reference)
  DIR/latest -> DIR/<tag>/mp_rank_XX_model_states.pt                             (DeepSpeed)
  DIR/<tag>/ or one mp_rank_XX file                  (the step folder itself; all ranks merged)
  DIR with config.json + model.safetensors[.index.json] | pytorch_model.bin[.index.json] (HF)
  FILE.safetensors | FILE.bin | FILE.pt | FILE.npz | FILE.index.json

Model-parallel ranks are merged as the reference's mpu splits them (`model_parallel.py`).
Paths may be local or gs:// (remote files are copied to a temp dir first, as torch maps them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Dict, Iterator, List, Optional, Tuple

from absl import logging
from etils import epath
import numpy as np

from glm_jax.convert import model_parallel, readers
from glm_jax.convert.readers import CheckpointError

TRACKERS = ("latest_checkpointed_iteration.txt", "latest")
HF_WEIGHTS = ("model.safetensors.index.json", "model.safetensors",
              "pytorch_model.bin.index.json", "pytorch_model.bin")
_RANK_FILE = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")


class OfficialCheckpoint(Mapping):
  """The state dict of a reference / DeepSpeed / Hugging Face checkpoint (a read-on-access Mapping).

  Keys are the names as stored (prefixes and heads included; model-parallel ranks merged);
  `checkpoint[name]` reads that one tensor. `layout` names what was found, `hf_config` is the
  hub config.json (or None) and `vocabulary` the spec the folder names (or None).
  """

  def __init__(self, path: str, tag: Optional[str] = None):
    self.path = path
    self._files = readers.LocalFiles()
    self.hf_config: Optional[dict] = None
    self.vocabulary: Optional[str] = None
    root = epath.Path(path)
    if not root.exists():
      raise FileNotFoundError(f"{path} does not exist; pass a checkpoint directory or file.")
    try:
      self.layout, groups = self._resolve(root, tag)
      # groups: one list of files per model-parallel rank (one entry without model parallel).
      self._ranks = [self._open_shards(files) for files in groups]
    except BaseException:
      self._files.close()
      raise
    self.model_parallel = len(self._ranks)
    first = self._ranks[0]
    self._order = list(first)
    if self.model_parallel > 1:
      self._shapes = model_parallel.merged_shapes(
          [{k: r[k][0].shapes[k] for k in r} for r in self._ranks], path)
    else:
      self._shapes = {k: first[k][0].shapes[k] for k in first}
    self._dtypes = {k: first[k][0].dtypes[k] for k in first}
    self._last_reader = None

  # --- resolution --------------------------------------------------------------------------
  def _resolve(self, root: epath.Path, tag: Optional[str]) -> Tuple[str, List[List[epath.Path]]]:
    if not root.is_dir():
      return self._resolve_file(root)
    if any((root / name).exists() for name in HF_WEIGHTS):
      return self._resolve_hf(root)
    trackers = [root / t for t in TRACKERS if (root / t).exists()]
    if tag is None and trackers:
      tag = trackers[0].read_text().strip()
      if not tag:
        raise CheckpointError(f"{trackers[0]} is empty; pass --tag=<the step folder's name>.")
    if tag is not None:
      step = root / tag
      if not step.is_dir():
        raise FileNotFoundError(f"{root} names step {tag!r} but {step} is not a folder; pass "
                                "--tag=<an existing step folder>.")
      kind = "deepspeed" if trackers and trackers[0].name == "latest" else "megatron"
      return self._resolve_step(step, kind)
    if self._rank_files(root):
      return self._resolve_step(root, "megatron")
    raise FileNotFoundError(
        f"No checkpoint found in {root}: expected latest_checkpointed_iteration.txt or latest "
        "(a reference / DeepSpeed run), mp_rank_XX_model_states.pt (a step folder), or "
        "config.json with model.safetensors / pytorch_model.bin (Hugging Face).")

  @staticmethod
  def _rank_files(folder: epath.Path) -> List[epath.Path]:
    ranks = sorted(((int(m.group(1)), p) for p in folder.iterdir()
                    if (m := _RANK_FILE.match(p.name))), key=lambda rp: rp[0])
    if ranks and [r for r, _ in ranks] != list(range(len(ranks))):
      raise CheckpointError(f"{folder} has model-parallel ranks {[r for r, _ in ranks]}; "
                            "every rank file 0..N-1 is needed to merge them.")
    return [p for _, p in ranks]

  def _resolve_step(self, step: epath.Path, kind: str):
    ranks = self._rank_files(step)
    if not ranks:
      pipeline = [p.name for p in step.iterdir() if p.name.startswith("layer_")]
      what = ("DeepSpeed pipeline-parallel layer files" if pipeline
              else "no mp_rank_XX_model_states.pt")
      raise CheckpointError(f"{step} holds {what}; pass a reference or DeepSpeed model-"
                            "parallel checkpoint (or merge the pipeline stages first).")
    name = kind if len(ranks) == 1 else f"{kind} (model parallel {len(ranks)})"
    return name, [[r] for r in ranks]

  def _resolve_file(self, path: epath.Path):
    if path.name.endswith(".index.json"):
      return "hf sharded", [self._index_shards(path)]
    if _RANK_FILE.match(path.name):
      ranks = self._rank_files(path.parent)
      if len(ranks) > 1:
        logging.info("Merging the %d model-parallel ranks beside %s.", len(ranks), path)
        return self._resolve_step(path.parent, "megatron")
    kind = path.suffix.lstrip(".") or "torch"
    return kind, [[path]]

  def _resolve_hf(self, root: epath.Path):
    if (root / "config.json").exists():
      self.hf_config = json.loads((root / "config.json").read_text())
    # Imported here: hf.py also writes this layout and depends on the vocabulary package.
    from glm_jax.convert import hf  # pylint: disable=g-import-not-at-top
    self.vocabulary = hf.vocabulary_spec_of_folder(root, self.hf_config)
    for name in HF_WEIGHTS:  # safetensors first
      if (root / name).exists():
        if name.endswith(".index.json"):
          return "hf sharded", [self._index_shards(root / name)]
        return "hf", [[root / name]]
    raise AssertionError("unreachable")

  @staticmethod
  def _index_shards(index: epath.Path) -> List[epath.Path]:
    weight_map = json.loads(index.read_text()).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise CheckpointError(f"{index} has no weight_map; pass a Hugging Face index file.")
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not (index.parent / s).exists()]
    if missing:
      raise FileNotFoundError(f"{index} names {missing[0]}, which is not beside it; download "
                              "every shard of the checkpoint.")
    return [index.parent / s for s in shards]

  def _open_shards(self, files: List[epath.Path]) -> Dict[str, Tuple[readers.Reader, str]]:
    """name -> (reader, name) over the shards of one rank; a name in two shards is refused."""
    out: Dict[str, Tuple[readers.Reader, str]] = {}
    for f in files:
      reader = readers.open_reader(self._files.local(f))
      for name in reader.shapes:
        if name in out:
          raise CheckpointError(f"{name} is in two shards ({out[name][0].path}, {reader.path}).")
        out[name] = (reader, name)
    return out

  # --- Mapping -----------------------------------------------------------------------------
  def __getitem__(self, name: str) -> np.ndarray:
    if name not in self._shapes:
      raise KeyError(name)
    if self.model_parallel > 1:
      parts = [rank[name][0].read(name) for rank in self._ranks]
      return model_parallel.merge(name, parts)
    reader = self._ranks[0][name][0]
    if self._last_reader is not None and self._last_reader is not reader:
      self._last_reader.close()  # shards are read one after another: drop the last mapping
    self._last_reader = reader
    return reader.read(name)

  def __iter__(self) -> Iterator[str]:
    return iter(self._order)

  def __len__(self) -> int:
    return len(self._order)

  def shape(self, name: str) -> Tuple[int, ...]:
    return self._shapes[name]

  def dtype(self, name: str) -> np.dtype:
    return self._dtypes[name]

  @property
  def num_heads(self) -> Optional[int]:
    """Attention heads from the hub config.json (None where the layout does not say)."""
    return int(self.hf_config["num_attention_heads"]) if self.hf_config and (
        "num_attention_heads" in self.hf_config) else None

  def close(self):
    for rank in self._ranks:
      for reader in {id(r): r for r, _ in rank.values()}.values():
        reader.close()
    self._files.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def __repr__(self):
    return f"OfficialCheckpoint({self.path!r}, layout={self.layout!r}, tensors={len(self)})"
