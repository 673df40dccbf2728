"""Released GLM checkpoints (every layout) <-> glm_jax parameters, and export to the HF hub layout.

  load_official(PATH)               the state dict of any layout (layouts.py), read lazily
  from_official_state_dict(sd, n)   -> (GLMConfig, params), sizes from the shapes (keys.py)
  to_official_state_dict(cfg, p)    the exact inverse
  convert_checkpoint(PATH, DIR)     all of it, streamed tensor by tensor, into a params-only
                                    checkpoint that stores the vocabulary spec (and so whether
                                    the family was trained with task masks)
  save_hf(DIR, cfg, params, spec)   the Hugging Face hub layout (hf.py)

  python -m glm_jax.convert --official=PATH --output_dir=DIR [--vocabulary=SPEC] [--num_heads=N]
  python -m glm_jax.convert --checkpoint=CKPT --hf_output_dir=DIR
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional

from glm_jax.convert.hf import save_hf
from glm_jax.convert.keys import (  # pylint: disable=g-multiple-import
    convert_params, convert_state_dict, find_backbone, from_official_state_dict, infer_config,
    to_official_state_dict)
from glm_jax.convert.layouts import OfficialCheckpoint
from glm_jax.convert.readers import CheckpointError
from glm_jax.model import GLMConfig


def load_official(path: str, tag: Optional[str] = None) -> OfficialCheckpoint:
  """The state dict of a checkpoint in any layout (a Mapping that reads each tensor on access).

  `tag` picks a step folder other than the one `latest_checkpointed_iteration.txt` / `latest`
  names. Close it (or use it as a context manager) to drop the file mappings and temp copies.
  """
  return OfficialCheckpoint(path, tag=tag)


@dataclasses.dataclass
class Conversion:
  """What `convert_checkpoint` wrote."""

  output_dir: str
  layout: str
  config: GLMConfig
  vocab_spec: str
  task_mask: bool
  skipped: List[str]


def resolve_vocabulary(checkpoint: OfficialCheckpoint, vocabulary: Optional[str]) -> str:
  """--vocabulary, else the spec the layout names; one line when neither says."""
  if vocabulary:
    return vocabulary
  if checkpoint.vocabulary:
    return checkpoint.vocabulary
  raise ValueError(f"The {checkpoint.layout} layout does not name its vocabulary; pass "
                   "--vocabulary=SPEC (e.g. 'gpt2:DIR' for GLM-2B/10B, 'roberta:DIR', "
                   "'chinese_sp:PATH@10b_chinese', 'wordpiece:PATH' for GLM-Base/Large).")


def check_vocabulary_size(vocabulary, config: GLMConfig, checkpoint: OfficialCheckpoint):
  """The embedding table must have the vocabulary's padded size (refused in one line)."""
  from glm_jax.convert import model_parallel  # pylint: disable=g-import-not-at-top
  expected = vocabulary.padded_vocab_size
  if config.vocab_size == expected:
    return
  # change_mp.py loses `rows % ranks` rows: fewer than one per rank.
  if 0 < expected - config.vocab_size < checkpoint.model_parallel:
    raise ValueError(model_parallel.lost_rows_message(
        checkpoint.path, config.vocab_size, expected, checkpoint.model_parallel))
  raise ValueError(f"{checkpoint.path}: the embedding table has {config.vocab_size} rows but "
                   f"the vocabulary {vocabulary.spec} pads to {expected}; pass the vocabulary "
                   "the model was trained with (or --nocheck_vocab_size for a stand-in "
                   "vocabulary).")


def convert_checkpoint(official: str, output_dir: str, *, vocabulary: Optional[str] = None,
                       num_heads: Optional[int] = None, tag: Optional[str] = None,
                       param_dtype: Optional[str] = None, dtype: Optional[str] = None,
                       check_vocab_size: bool = True, progress: bool = False) -> Conversion:
  """Any layout -> a params-only glm_jax checkpoint in `output_dir`, tensor by tensor."""
  from glm_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from glm_jax.convert import hf  # pylint: disable=g-import-not-at-top
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  with load_official(official, tag=tag) as checkpoint:
    spec = resolve_vocabulary(checkpoint, vocabulary)
    overrides = {}
    if checkpoint.hf_config:
      overrides.update(hf.config_overrides(checkpoint.hf_config, official))
    if param_dtype:
      overrides["param_dtype"] = param_dtype
    if dtype:
      overrides["dtype"] = dtype
    backbone = find_backbone(checkpoint)
    config = infer_config(checkpoint, num_heads or checkpoint.num_heads, backbone, **overrides)
    if checkpoint.hf_config:
      hf.check_config_against_shapes(checkpoint.hf_config, config, official)
    vocab = vocab_lib.describe(spec)  # sizes and roles, without TensorFlow
    spec = vocab.spec  # names the configuration, so the task-mask flag travels with it
    if check_vocab_size:
      check_vocabulary_size(vocab, config, checkpoint)
    bar = _progress_bar(progress, 5 + 12 * config.num_layers, official)
    params = convert_params(checkpoint, config, backbone, progress=bar.update)
    bar.close()
  checkpoints.save_params_checkpoint(output_dir, params, config, spec, stream=True)
  return Conversion(output_dir, checkpoint.layout, config, spec, bool(vocab.special.task_mask),
                    backbone.heads)


class _NoBar:
  def update(self, n):
    del n

  def close(self):
    pass


def _progress_bar(enabled: bool, total: int, name: str):
  if not enabled:
    return _NoBar()
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, desc=f"Converting {name}", unit="tensor")


__all__ = ["CheckpointError", "Conversion", "OfficialCheckpoint", "convert_checkpoint",
           "convert_state_dict", "find_backbone", "from_official_state_dict", "infer_config",
           "load_official", "save_hf", "to_official_state_dict"]
