"""GLM vocabularies: SentencePiece with the GLM roles, and BERT WordPiece with reference ids.

Both are `seqio.Vocabulary`s that expose the role ids as `.special` (a `SpecialTokens`) and
a `vocab_size` padded to a multiple of 128. `get_vocabulary(spec)` rebuilds one from the spec
string that checkpoints store: 'builtin', 'spm:PATH' or 'wordpiece:PATH'.
"""

from __future__ import annotations

import functools
import os
from typing import Dict, Iterable, List, Optional, Sequence

import seqio
import sentencepiece as spm
import tensorflow as tf

from glm_jax.data import corpus
from glm_jax.data.special_tokens import SpecialTokens

PAD_MULTIPLE = 128
# Pieces that hold the GLM roles in our SentencePiece models (train_vocab reserves them).
ROLE_PIECES: Dict[str, str] = {
    "pad": "<pad>", "eos": "</s>", "unk": "<unk>", "cls": "[CLS]", "mask": "[MASK]",
    "smask": "[sMASK]", "gmask": "[gMASK]", "sop": "<|startofpiece|>",
    "eop": "<|endofpiece|>", "dblock": "[dBLOCK]", "sep": "[SEP]",
}
# Roles given as user-defined symbols, in id order after pad=0, eos=1, unk=2.
USER_DEFINED_ROLES = ("cls", "mask", "smask", "gmask", "sop", "eop", "dblock", "sep")
# A token ends a sentence when it contains one of these (the reference's contains_sentence_end).
SENTENCE_END_CHARS = (".", "?", "!", ";", ":", "\n", "\u3002", "\uff1f", "\uff01", "\uff1b",
                      "\u2026")
# WordPiece ids appended after the BERT vocabulary (GLM_SPEC.md section 3 order).
WORDPIECE_APPENDED = ("<|startofpiece|>", "<|endofpiece|>", "[gMASK]", "[sMASK]", "[dBLOCK]")


def padded_size(size: int, multiple: int = PAD_MULTIPLE) -> int:
  """`size` rounded up to a multiple of `multiple`."""
  return -(-size // multiple) * multiple


def _sentence_end_ids(pieces: Sequence[str], skip: Iterable[int]) -> tuple:
  skip = set(skip)
  return tuple(i for i, p in enumerate(pieces)
               if i not in skip and any(c in p for c in SENTENCE_END_CHARS))


class _GLMRolesVocabulary(seqio.Vocabulary):
  """Ids of the roles from `self.special`; size padded to a multiple of 128."""

  special: SpecialTokens

  @property
  def padded_vocab_size(self) -> int:
    return padded_size(self.raw_vocab_size)

  @property
  def _base_vocab_size(self) -> int:
    return self.padded_vocab_size

  @property
  def eos_id(self) -> int:
    return self.special.eos

  @property
  def pad_id(self) -> int:
    return self.special.pad

  @property
  def unk_id(self) -> int:
    return self.special.unk


class GLMVocabulary(_GLMRolesVocabulary):
  """SentencePiece model with the GLM roles; ids past the model's pieces are padding."""

  def __init__(self, sentencepiece_model_file: str, spec: Optional[str] = None):
    if not os.path.exists(sentencepiece_model_file):
      raise FileNotFoundError(f"SentencePiece model {sentencepiece_model_file} does not exist; "
                              "train one with `python -m glm_jax.data.train_vocab`.")
    self._model_file = sentencepiece_model_file
    self.spec = spec or f"spm:{sentencepiece_model_file}"
    with open(sentencepiece_model_file, "rb") as f:
      self._model_proto = f.read()
    self._sp = spm.SentencePieceProcessor(model_proto=self._model_proto)
    pieces = [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())]
    ids = {}
    for role, piece in ROLE_PIECES.items():
      index = self._sp.piece_to_id(piece)
      if pieces[index] != piece:
        raise ValueError(f"SentencePiece model {sentencepiece_model_file} has no {piece!r} "
                         f"piece for the {role} role; train it with "
                         "`python -m glm_jax.data.train_vocab`.")
      ids[role] = index
    special_ids = set(ids.values())
    skip = special_ids | {i for i in range(len(pieces)) if self._sp.is_byte(i)}
    self.special = SpecialTokens(sentence_end_ids=_sentence_end_ids(pieces, skip), **ids)
    super().__init__(extra_ids=0)

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_sp"] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._sp = spm.SentencePieceProcessor(model_proto=self._model_proto)

  def __eq__(self, other):
    return isinstance(other, GLMVocabulary) and self._model_proto == other._model_proto

  def __hash__(self):
    return hash(self._model_proto)

  def __repr__(self):
    return f"GLMVocabulary({self.spec!r}, vocab_size={self.vocab_size})"

  @property
  def sentencepiece_model_file(self) -> str:
    return self._model_file

  @property
  def raw_vocab_size(self) -> int:
    """Pieces in the SentencePiece model (before padding)."""
    return self._sp.get_piece_size()

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i)) if 0 <= i < self.raw_vocab_size else "<unk>"

  def _encode(self, s: str) -> List[int]:
    return self._sp.encode(s)

  def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> List[List[int]]:
    """Encodes many strings at once (SentencePiece's threaded batch encoder)."""
    return self._sp.encode(list(texts), num_threads=num_threads)

  def decode(self, ids: Iterable[int]) -> str:
    """Detokenizes ids; unlike seqio's default it does not stop at eos (samples hold many)."""
    if isinstance(ids, tf.Tensor):
      ids = ids.numpy()
    return self._decode([int(i) for i in ids])

  def _decode(self, ids) -> str:
    raw = self.raw_vocab_size
    return self._sp.decode([int(i) if 0 <= i < raw else self.unk_id for i in ids])

  @property
  def tf_tokenizer(self):
    """A new TF tokenizer (not cached: its resources belong to the graph that makes it)."""
    import tensorflow_text as tf_text  # pylint: disable=g-import-not-at-top
    return tf_text.SentencepieceTokenizer(model=self._model_proto, out_type=tf.int32)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    return self.tf_tokenizer.tokenize(s)

  def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    return self._decode_tf(ids)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    ids = tf.where(ids < self.raw_vocab_size, ids, self.unk_id)
    return self.tf_tokenizer.detokenize(ids)


class WordPieceVocabulary(_GLMRolesVocabulary):
  """Lower-cased BERT WordPiece with GLM's reference ids (sop, eop, gMASK, sMASK, dBLOCK appended).

  With the 30522-token BERT uncased vocab file the ids equal `special_tokens.BERT_WORDPIECE`
  and the padded size is 30592, the ids the reference GLM-Base/Large were trained with.
  """

  def __init__(self, vocab_file: str, spec: Optional[str] = None, lower_case: bool = True):
    if not os.path.exists(vocab_file):
      raise FileNotFoundError(f"WordPiece vocab file {vocab_file} does not exist; pass the "
                              "BERT vocab.txt (one token per line).")
    self._vocab_file = vocab_file
    self._lower_case = lower_case
    self.spec = spec or f"wordpiece:{vocab_file}"
    with open(vocab_file, encoding="utf-8") as f:
      tokens = [line.rstrip("\n") for line in f]
    while tokens and not tokens[-1]:
      tokens.pop()
    index = {t: i for i, t in enumerate(tokens)}
    missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t not in index]
    if missing:
      raise ValueError(f"WordPiece vocab {vocab_file} lacks {missing}; use a BERT vocab.txt.")
    n = len(tokens)
    self._tokens = tokens + list(WORDPIECE_APPENDED)
    bracketed = {i for i, t in enumerate(tokens) if t.startswith("[") and t.endswith("]")}
    self.special = SpecialTokens(
        pad=index["[PAD]"], eos=index["[PAD]"], cls=index["[CLS]"], unk=index["[UNK]"],
        mask=index["[MASK]"], sep=index["[SEP]"], sop=n, eop=n + 1, gmask=n + 2,
        smask=n + 3, dblock=n + 4,
        sentence_end_ids=_sentence_end_ids(tokens, bracketed))
    super().__init__(extra_ids=0)

  def __eq__(self, other):
    return isinstance(other, WordPieceVocabulary) and self._tokens == other._tokens

  def __hash__(self):
    return hash(tuple(self._tokens))

  def __repr__(self):
    return f"WordPieceVocabulary({self.spec!r}, vocab_size={self.vocab_size})"

  @property
  def raw_vocab_size(self) -> int:
    """WordPiece tokens plus the appended GLM tokens."""
    return len(self._tokens)

  def id_to_piece(self, i: int) -> str:
    return self._tokens[i] if 0 <= i < len(self._tokens) else "[UNK]"

  @property
  def tokenizer(self):
    """A new TF BertTokenizer (not cached: its table belongs to the graph that makes it)."""
    import tensorflow_text as tf_text  # pylint: disable=g-import-not-at-top
    table = tf.lookup.StaticVocabularyTable(
        tf.lookup.KeyValueTensorInitializer(
            self._tokens[:self.special.sop], tf.range(self.special.sop, dtype=tf.int64)),
        num_oov_buckets=1)
    return tf_text.BertTokenizer(table, token_out_type=tf.int64, lower_case=self._lower_case,
                                 unknown_token="[UNK]")

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    pieces = self.tokenizer.tokenize(tf.reshape(s, [-1]))  # [1, words, wordpieces]
    return tf.cast(pieces.flat_values, tf.int32)

  def _encode(self, s: str) -> List[int]:
    return self._encode_tf(tf.constant(s)).numpy().tolist()

  def decode(self, ids: Iterable[int]) -> str:
    """Joins word pieces (no stop at eos: pad = eos = 0 here and samples hold many)."""
    if isinstance(ids, tf.Tensor):
      ids = ids.numpy()
    return self._decode([int(i) for i in ids if int(i) != self.special.pad])

  def _decode(self, ids) -> str:
    text = " ".join(self.id_to_piece(int(i)) for i in ids)
    return text.replace(" ##", "")

  def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    return self._decode_tf(ids)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    table = tf.constant(self._tokens)
    ids = tf.where((ids >= 0) & (ids < len(self._tokens)), ids, self.special.unk)
    pieces = tf.where(ids == self.special.pad, "", tf.gather(table, ids))
    text = tf.strings.reduce_join(pieces, axis=-1, separator=" ")
    text = tf.strings.regex_replace(text, " ##", "")
    return tf.strings.strip(tf.strings.regex_replace(text, " +", " "))


@functools.lru_cache(maxsize=None)
def get_vocabulary(spec: str) -> seqio.Vocabulary:
  """'builtin' | 'spm:PATH' | 'wordpiece:PATH' -> the vocabulary (cached per spec)."""
  if spec == "builtin":
    return GLMVocabulary(corpus.BUILTIN_SPM_MODEL, spec="builtin")
  kind, _, path = spec.partition(":")
  if kind == "spm" and path:
    return GLMVocabulary(path, spec=spec)
  if kind == "wordpiece" and path:
    return WordPieceVocabulary(path, spec=spec)
  raise ValueError(f"Unknown vocabulary spec {spec!r}; use 'builtin', 'spm:PATH' or "
                   "'wordpiece:PATH'.")


def vocabulary_spec(vocabulary: seqio.Vocabulary) -> str:
  """The spec string that `get_vocabulary` turns back into `vocabulary`."""
  spec = getattr(vocabulary, "spec", None)
  if spec is None:
    raise ValueError(f"{vocabulary!r} is not a GLM vocabulary; build it with get_vocabulary().")
  return spec
