"""GLM vocabularies, rebuilt from the spec string that every checkpoint stores (`vocab_spec`).

  builtin                  our 8k SentencePiece (tests, quickstart)
  spm:PATH                 a SentencePiece model from `python -m glm_jax.data.train_vocab`
  wordpiece:PATH[@NAME]    BERT uncased vocab.txt (GLM-Base, GLM-Large)
  gpt2:DIR[@NAME]          GPT-2 BPE folder (GLM-2B, GLM-10B)
  roberta:DIR[@NAME]       RoBERTa BPE folder (GLM-RoBERTa)
  chinese_sp:PATH[@NAME]   cog-pretrain.model (GLM-Large-Chinese, GLM-10B-Chinese)

`@NAME` picks the family's configuration: which command tokens exist, so whether the model was
trained with task masks (`vocab.special.task_mask`, `special.mask_for(objective)`); without it
the configuration the released models are fine-tuned and evaluated with. Every vocabulary is a
`seqio.Vocabulary` with the role ids in `.special`, `vocab_size` = `padded_vocab_size` (a
multiple of 128, the reference's) and `.spec`, which names the configuration explicitly.
Paths may be local or `gs://`.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import gin
import seqio

from glm_jax.data import corpus
from glm_jax.data.vocab.base import (  # pylint: disable=g-multiple-import
    PAD_MULTIPLE, SENTENCE_END_CHARS, CommandToken, CommandTokenVocabulary, Configuration,
    GLMRolesVocabulary, padded_size)
from glm_jax.data.vocab.bpe import BPEVocabulary
from glm_jax.data.vocab.chinese_sp import ChineseSPVocabulary
from glm_jax.data.vocab.sentencepiece_glm import GLMVocabulary, ROLE_PIECES, USER_DEFINED_ROLES
from glm_jax.data.vocab.wordpiece import WordPieceVocabulary
from glm_jax.data.vocab import bpe as _bpe
from glm_jax.data.vocab import chinese_sp as _chinese_sp
from glm_jax.data.vocab import wordpiece as _wordpiece

KINDS = ("builtin", "spm", "wordpiece", "gpt2", "roberta", "chinese_sp")
# Each family's configurations (name -> Configuration) and the default one.
CONFIGURATIONS = {
    "wordpiece": (_wordpiece.CONFIGURATIONS, _wordpiece.DEFAULT_CONFIGURATION),
    "gpt2": (_bpe.CONFIGURATIONS["gpt2"], _bpe.DEFAULT_CONFIGURATION["gpt2"]),
    "roberta": (_bpe.CONFIGURATIONS["roberta"], _bpe.DEFAULT_CONFIGURATION["roberta"]),
    "chinese_sp": (_chinese_sp.CONFIGURATIONS, _chinese_sp.DEFAULT_CONFIGURATION),
}
_USAGE = ("use 'builtin', 'spm:PATH', 'wordpiece:PATH', 'gpt2:DIR', 'roberta:DIR' or "
          "'chinese_sp:PATH', optionally with '@CONFIGURATION'")


def parse_spec(spec: str) -> Tuple[str, str, Optional[str]]:
  """'KIND:PATH[@NAME]' -> (kind, path, configuration name or None); 'builtin' -> ('builtin', '', None)."""
  if spec == "builtin":
    return "builtin", "", None
  kind, sep, rest = spec.partition(":")
  if not sep or not rest or kind not in KINDS or kind == "builtin":
    raise ValueError(f"Unknown vocabulary spec {spec!r}; {_USAGE}.")
  path, at, name = rest.rpartition("@")
  if not at or not path or "/" in name or kind not in CONFIGURATIONS:
    return kind, rest, None
  return kind, path, name


def make_spec(kind: str, path: str, configuration: Optional[str] = None) -> str:
  """The spec string of a vocabulary of `kind` at `path` (the inverse of `parse_spec`)."""
  if kind == "builtin":
    return "builtin"
  spec = f"{kind}:{path}"
  return f"{spec}@{configuration}" if configuration else spec


@functools.lru_cache(maxsize=None)
def get_vocabulary(spec: str) -> seqio.Vocabulary:
  """A spec string (see the module docstring) -> the vocabulary (cached per spec)."""
  kind, path, name = parse_spec(spec)
  if kind == "builtin":
    return GLMVocabulary(corpus.BUILTIN_SPM_MODEL, spec="builtin")
  if kind == "spm":
    return GLMVocabulary(path, spec=spec)
  canonical = make_spec(kind, path, name or CONFIGURATIONS[kind][1])
  if kind == "wordpiece":
    return WordPieceVocabulary(path, spec=canonical, configuration=name)
  if kind in ("gpt2", "roberta"):
    return BPEVocabulary(kind, path, spec=canonical, configuration=name)
  return ChineseSPVocabulary(path, spec=canonical, configuration=name)


def vocabulary_spec(vocabulary: seqio.Vocabulary) -> str:
  """The spec string that `get_vocabulary` turns back into `vocabulary`."""
  spec = getattr(vocabulary, "spec", None)
  if spec is None:
    raise ValueError(f"{vocabulary!r} is not a GLM vocabulary; build it with get_vocabulary().")
  return spec


# The gin macro each family's path is set with in configs/models/*.gin.
PATH_MACROS = {"wordpiece": "BERT_VOCAB_FILE", "gpt2": "GPT2_VOCAB_DIR",
               "roberta": "ROBERTA_VOCAB_DIR", "chinese_sp": "CHINESE_SP_MODEL"}


@gin.configurable(module="glm_jax.data.vocab")
def spec(kind: str, path: Optional[str] = None, configuration: Optional[str] = None) -> str:
  """Gin helper for presets: VOCABULARY = @vocab.spec() with kind, path and configuration."""
  if not path:
    raise ValueError(f"The {kind} vocabulary path is not set; pass "
                     f"--gin.{PATH_MACROS.get(kind, 'VOCABULARY_PATH')}=PATH (or a whole "
                     "--gin.VOCABULARY=SPEC).")
  if configuration is not None and kind in CONFIGURATIONS:
    configurations, _ = CONFIGURATIONS[kind]
    if configuration not in configurations:
      raise ValueError(f"Unknown {kind} vocabulary configuration {configuration!r}; use one of "
                       f"{sorted(configurations)}.")
  return make_spec(kind, path, configuration)


__all__ = [
    "BPEVocabulary", "ChineseSPVocabulary", "CommandToken", "CommandTokenVocabulary",
    "Configuration", "CONFIGURATIONS", "GLMRolesVocabulary", "GLMVocabulary", "KINDS",
    "PAD_MULTIPLE", "PATH_MACROS", "ROLE_PIECES", "SENTENCE_END_CHARS", "USER_DEFINED_ROLES",
    "WordPieceVocabulary", "get_vocabulary", "make_spec", "padded_size", "parse_spec", "spec",
    "vocabulary_spec",
]
