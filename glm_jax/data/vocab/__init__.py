"""GLM vocabularies, rebuilt from the spec string that every checkpoint stores (`vocab_spec`).

  builtin                  our 8k SentencePiece (tests, quickstart)
  spm:PATH                 a SentencePiece model from `python -m glm_jax.data.train_vocab`
  wordpiece:PATH[@NAME]    BERT uncased vocab.txt (GLM-Base, GLM-Large)
  gpt2:DIR[@NAME]          GPT-2 BPE folder (GLM-2B, GLM-10B)
  roberta:DIR[@NAME]       RoBERTa BPE folder (GLM-RoBERTa)
  chinese_sp:PATH[@NAME]   cog-pretrain.model (GLM-Large-Chinese, GLM-10B-Chinese)

`@NAME` picks the family's configuration (families.py): which command tokens exist, so whether
the model was trained with task masks (`vocab.special.task_mask`, `special.mask_for(objective)`);
without it the configuration the released models are fine-tuned and evaluated with. Every
vocabulary is a `seqio.Vocabulary` with the role ids in `.special`, `vocab_size` =
`padded_vocab_size` (a multiple of 128, the reference's) and `.spec`, which names the
configuration explicitly. Paths may be local or `gs://`. `describe(spec)` gives the sizes and
roles without TensorFlow (this package imports seqio only when a vocabulary is built).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Optional, Tuple

import gin

from glm_jax.data import corpus
from glm_jax.data.special_tokens import SpecialTokens
from glm_jax.data.vocab import families
from glm_jax.data.vocab.families import (  # pylint: disable=g-multiple-import
    CONFIGURATIONS, PAD_MULTIPLE, SENTENCE_END_CHARS, CommandToken, Configuration, padded_size)

KINDS = ("builtin", "spm", "wordpiece", "gpt2", "roberta", "chinese_sp")
_USAGE = ("use 'builtin', 'spm:PATH', 'wordpiece:PATH', 'gpt2:DIR', 'roberta:DIR' or "
          "'chinese_sp:PATH', optionally with '@CONFIGURATION'")
# The seqio vocabularies (and what else needs TensorFlow), imported on first use.
_LAZY = {"GLMVocabulary": "sentencepiece_glm", "ROLE_PIECES": "sentencepiece_glm",
         "USER_DEFINED_ROLES": "sentencepiece_glm", "WordPieceVocabulary": "wordpiece",
         "BPEVocabulary": "bpe", "ChineseSPVocabulary": "chinese_sp",
         "GLMRolesVocabulary": "base", "CommandTokenVocabulary": "base"}


def __getattr__(name: str):
  if name in _LAZY:
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_spec(spec: str) -> Tuple[str, str, Optional[str]]:
  """'KIND:PATH[@NAME]' -> (kind, path, configuration or None); 'builtin' -> ('builtin', '', None)."""
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


def canonical_spec(spec: str) -> str:
  """The spec with its configuration named (what checkpoints store)."""
  kind, path, name = parse_spec(spec)
  if kind not in CONFIGURATIONS:
    return spec
  return make_spec(kind, path, families.pick_configuration(kind, name).name)


@functools.lru_cache(maxsize=None)
def get_vocabulary(spec: str):
  """A spec string (see the module docstring) -> the seqio vocabulary (cached per spec)."""
  kind, path, name = parse_spec(spec)
  if kind == "builtin":
    return __getattr__("GLMVocabulary")(corpus.BUILTIN_SPM_MODEL, spec="builtin")
  if kind == "spm":
    return __getattr__("GLMVocabulary")(path, spec=spec)
  canonical = canonical_spec(spec)
  if kind == "wordpiece":
    return __getattr__("WordPieceVocabulary")(path, spec=canonical, configuration=name)
  if kind in ("gpt2", "roberta"):
    return __getattr__("BPEVocabulary")(kind, path, spec=canonical, configuration=name)
  return __getattr__("ChineseSPVocabulary")(path, spec=canonical, configuration=name)


@dataclasses.dataclass(frozen=True)
class Description:
  """What a spec's vocabulary is, without building it (no TensorFlow)."""

  spec: str                         # canonical: the configuration named
  kind: str
  configuration: Optional[str]
  padded_vocab_size: int
  special: SpecialTokens


def describe(spec: str) -> Description:
  """Padded size and roles of a spec's vocabulary (the released families without seqio)."""
  kind, path, name = parse_spec(spec)
  if kind in CONFIGURATIONS:
    loaded = families.load(kind, path, name)
    return Description(canonical_spec(spec), kind, loaded.configuration.name,
                       loaded.padded_vocab_size, loaded.special)
  vocabulary = get_vocabulary(spec)  # our SentencePiece models
  return Description(spec, kind, None, vocabulary.padded_vocab_size, vocabulary.special)


def vocabulary_spec(vocabulary) -> str:
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
    families.pick_configuration(kind, configuration)
  return make_spec(kind, path, configuration)


__all__ = [
    "BPEVocabulary", "ChineseSPVocabulary", "CommandToken", "CommandTokenVocabulary",
    "Configuration", "CONFIGURATIONS", "Description", "GLMRolesVocabulary", "GLMVocabulary",
    "KINDS", "PAD_MULTIPLE", "PATH_MACROS", "ROLE_PIECES", "SENTENCE_END_CHARS",
    "USER_DEFINED_ROLES", "WordPieceVocabulary", "canonical_spec", "describe", "get_vocabulary",
    "make_spec", "padded_size", "parse_spec", "spec", "vocabulary_spec",
]
