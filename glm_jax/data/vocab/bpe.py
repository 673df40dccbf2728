"""Byte-level BPE under GLM's command tokens: `gpt2:DIR[@NAME]` (GLM-2B, GLM-10B) and
`roberta:DIR[@NAME]` (GLM-RoBERTa).

DIR holds `gpt2-vocab.json` + `gpt2-merges.txt` (`roberta-vocab.json` + `roberta-merges.txt`), the
files the reference reads, or Hugging Face's `vocab.json` + `merges.txt`. Text pieces go through
Hugging Face `tokenizers` (GPT-2's byte-level pre-tokenizer regex and merges), so `decode`
inverts `encode` on any text without command-token strings.
"""

from __future__ import annotations

import json
from typing import List, Optional, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from glm_jax.data.vocab import base, files

# Names and flags of the reference runs (../shared/fixtures/glm_vocab/<family>.json).
CONFIGURATIONS = {
    "gpt2": {
        "finetune_eval": base.Configuration(
            "finetune_eval", task_mask=True,
            note="GLM-2B / GLM-10B fine-tuning and evaluation (--task-mask)"),
        "pretrain": base.Configuration(
            "pretrain", task_mask=True, decoder_mask=True,
            note="GLM-10B pretraining (--task-mask --block-mask-prob 0.1: adds [dBLOCK])"),
    },
    "roberta": {
        "finetune_eval": base.Configuration(
            "finetune_eval", task_mask=False,
            note="GLM-RoBERTa fine-tuning and evaluation (no --task-mask: [MASK] only)"),
        "pretrain_task_mask": base.Configuration(
            "pretrain_task_mask", task_mask=True,
            note="GLM-RoBERTa pretraining (ds_blockta_large.sh passes --task-mask)"),
    },
}
DEFAULT_CONFIGURATION = {"gpt2": "finetune_eval", "roberta": "finetune_eval"}
FILE_NAMES = {
    "gpt2": (("gpt2-vocab.json", "gpt2-merges.txt"), ("vocab.json", "merges.txt")),
    "roberta": (("roberta-vocab.json", "roberta-merges.txt"), ("vocab.json", "merges.txt")),
}
_FOLDER = {"gpt2": "GPT-2 vocabulary folder", "roberta": "RoBERTa vocabulary folder"}


def _need(encoder: dict, token: str, family: str, folder: str) -> int:
  if token not in encoder:
    raise ValueError(f"{folder} is not a {family} vocabulary: its vocab json has no {token!r}; "
                     f"use {'roberta:' if family == 'gpt2' else 'gpt2:'} or the right folder.")
  return encoder[token]


def command_tokens(family: str, encoder: dict, cfg: base.Configuration, folder: str):
  """(command tokens, number of ids) of the reference's GPT2BPETokenizer for `family`."""
  c = base.CommandToken
  n = len(encoder)
  if family == "roberta":
    eos, cls = _need(encoder, "</s>", family, folder), _need(encoder, "<s>", family, folder)
    mask, unk = _need(encoder, "<mask>", family, folder), _need(encoder, "<unk>", family, folder)
    tokens = [c("pad", "<|endoftext|>", eos), c("eos", "<|endoftext|>", eos),
              c("sep", "[SEP]", eos), c("ENC", "[CLS]", cls), c("MASK", "[MASK]", mask, True),
              c("unk", "[UNK]", unk), c("sop", "<|startofpiece|>", n),
              c("eop", "<|endofpiece|>", n + 1)]
    n += 2
  else:
    if encoder.get("<s>") == 0 and "<mask>" in encoder:
      raise ValueError(f"{folder} holds a RoBERTa vocabulary (<s> = 0, <mask>); use "
                       f"'roberta:{folder}'.")
    eot = _need(encoder, "<|endoftext|>", family, folder)
    tokens = [c("pad", "<|endoftext|>", eot), c("eos", "<|endoftext|>", eot),
              c("sop", "<|startofpiece|>", n), c("eop", "<|endofpiece|>", n + 1),
              c("ENC", "[CLS]", n + 2), c("MASK", "[MASK]", n + 3, True), c("sep", "[SEP]", n + 4),
              c("unk", "[UNK]", n + 5)]
    n += 6
  if cfg.task_mask:
    tokens += [c("gMASK", "[gMASK]", n, True), c("sMASK", "[sMASK]", n + 1, True)]
    n += 2
  if cfg.decoder_mask:
    tokens.append(c("dBLOCK", "[dBLOCK]", n))
    n += 1
  return tokens, n


def read_merges(text: str) -> List[tuple]:
  """merges.txt -> [(left, right)]: a `#version` header and blank lines are skipped."""
  lines = text.split("\n")
  if lines and lines[0].startswith("#version"):
    lines = lines[1:]
  return [tuple(line.split()) for line in lines if line.strip()]


class BPEVocabulary(base.CommandTokenVocabulary):
  """GPT-2 / RoBERTa byte-level BPE with GLM's reference ids (padded size 50304)."""

  def __init__(self, family: str, folder: str, spec: Optional[str] = None,
               configuration: Optional[str] = None):
    if family not in CONFIGURATIONS:
      raise ValueError(f"Unknown BPE family {family!r}; use 'gpt2' or 'roberta'.")
    cfg = base.pick_configuration(family, CONFIGURATIONS[family], DEFAULT_CONFIGURATION[family],
                                  configuration)
    vocab_path, merges_path = files.first_existing(folder, FILE_NAMES[family], _FOLDER[family])
    encoder = json.loads(vocab_path.read_text(encoding="utf-8"))
    merges = read_merges(merges_path.read_text(encoding="utf-8"))
    self.family = family
    self._folder = folder
    self.spec = spec or f"{family}:{folder}@{cfg.name}"
    self._pieces = [""] * (max(encoder.values()) + 1)
    for token, i in encoder.items():
      self._pieces[i] = token
    tokens, num_tokens = command_tokens(family, encoder, cfg, folder)
    self._set_command_tokens(tokens, num_tokens, cfg, self._pieces)
    self._tokenizer = Tokenizer(models.BPE(encoder, merges))
    self._tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                             use_regex=True)
    self._tokenizer.decoder = decoders.ByteLevel()
    super().__init__(extra_ids=0)

  def __eq__(self, other):
    return (isinstance(other, BPEVocabulary) and self.family == other.family
            and self._pieces == other._pieces and self.configuration == other.configuration)

  def __hash__(self):
    return hash((self.family, len(self._pieces), self.configuration.name))

  @property
  def folder(self) -> str:
    return self._folder

  def _decode_text(self, ids: Sequence[int]) -> str:
    return self._tokenizer.decode(list(ids), skip_special_tokens=False)
