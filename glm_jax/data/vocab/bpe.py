"""Byte-level BPE under GLM's command tokens: `gpt2:DIR[@NAME]` (GLM-2B, GLM-10B) and
`roberta:DIR[@NAME]` (GLM-RoBERTa).

DIR holds `gpt2-vocab.json` + `gpt2-merges.txt` (`roberta-vocab.json` + `roberta-merges.txt`), the
files the reference reads, or Hugging Face's `vocab.json` + `merges.txt`. Text pieces go through
Hugging Face `tokenizers` (GPT-2's byte-level pre-tokenizer regex and merges), so `decode`
inverts `encode` on any text without command-token strings. Ids and configurations:
families.py.
"""

from __future__ import annotations

from typing import Optional, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from glm_jax.data.vocab import base, families


class BPEVocabulary(base.CommandTokenVocabulary):
  """GPT-2 / RoBERTa byte-level BPE with GLM's reference ids (padded size 50304)."""

  def __init__(self, family: str, folder: str, spec: Optional[str] = None,
               configuration: Optional[str] = None):
    if family not in families.BPE_FILE_NAMES:
      raise ValueError(f"Unknown BPE family {family!r}; use 'gpt2' or 'roberta'.")
    loaded = families.load(family, folder, configuration)
    self.family = family
    self._folder = folder
    self.spec = spec or f"{family}:{folder}@{loaded.configuration.name}"
    self._set_command_tokens(loaded)
    self._tokenizer = Tokenizer(models.BPE(loaded.data["encoder"], loaded.data["merges"]))
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
