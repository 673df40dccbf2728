"""What every GLM vocabulary shares: role ids, padding to 128, TF ops, command-token splitting.

The reference's tokenizers (THUDM/GLM `data_utils/tokenization.py`) put *command tokens*
([CLS], [MASK], <|startofpiece|>, ...) on top of a text tokenizer. `encode(text)` first cuts the
text at every command-token string, drops the whitespace before the ones that strip it
([MASK], [gMASK], [sMASK] in the BPE and Chinese vocabularies) and runs the text tokenizer on
each piece in between; text that is empty or only whitespace gives no ids.
"""

from __future__ import annotations

import re
from typing import Iterable, List, Sequence

import numpy as np
import seqio
import sentencepiece as spm
import tensorflow as tf

from glm_jax.data.special_tokens import SpecialTokens
from glm_jax.data.vocab import families

class GLMRolesVocabulary(seqio.Vocabulary):
  """Ids of the roles from `self.special`; size padded to a multiple of 128; TF ops.

  Subclasses set `special`, `spec` and implement `raw_vocab_size`, `_encode`, `_decode`.
  `decode` does not stop at eos (samples hold many documents).
  """

  special: SpecialTokens
  spec: str

  @property
  def raw_vocab_size(self) -> int:
    raise NotImplementedError

  @property
  def padded_vocab_size(self) -> int:
    return families.padded_size(self.raw_vocab_size)

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

  def __repr__(self):
    return f"{type(self).__name__}({self.spec!r}, vocab_size={self.vocab_size})"

  def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
    """Encodes many strings (subclasses batch the text tokenizer)."""
    return [list(self._encode(t)) for t in texts]

  def decode(self, ids: Iterable[int]) -> str:
    """Detokenizes ids; unlike seqio's default it does not stop at eos."""
    if isinstance(ids, tf.Tensor):
      ids = ids.numpy()
    return self._decode([int(i) for i in ids])

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """A scalar string -> int32 ids [n], through the Python tokenizer."""
    def encode(text: bytes) -> np.ndarray:
      return np.asarray(self._encode(text.decode("utf-8")), np.int32)
    ids = tf.numpy_function(encode, [tf.ensure_shape(s, [])], tf.int32, stateful=False)
    return tf.ensure_shape(ids, [None])

  def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    return self._decode_tf(ids)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """ids [n] -> a scalar string; [B, n] -> [B] strings."""
    def decode(batch: np.ndarray) -> np.ndarray:
      rows = batch.reshape(-1, batch.shape[-1]) if batch.ndim else batch.reshape(1, 1)
      return np.asarray([self._decode([int(i) for i in row]).encode("utf-8") for row in rows],
                        dtype=object).reshape(batch.shape[:-1])
    out = tf.numpy_function(decode, [ids], tf.string, stateful=False)
    return tf.ensure_shape(out, ids.shape[:-1])


class SentencePieceState:
  """Pickles a SentencePiece processor (`_sp`) as its model proto (`_model_proto`)."""

  _model_proto: bytes
  _model_file: str

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_sp"] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._sp = spm.SentencePieceProcessor(model_proto=self._model_proto)

  @property
  def sentencepiece_model_file(self) -> str:
    return self._model_file


class CommandTokenVocabulary(GLMRolesVocabulary):
  """A text tokenizer under the reference's command tokens (see the module docstring).

  Subclasses call `_set_command_tokens` with what `families.load` read, set `_tokenizer` (a
  Hugging Face `tokenizers` pipeline, or override `_encode_pieces`) and implement
  `_decode_text` (a run of text ids -> str).
  """

  def _set_command_tokens(self, loaded: families.Loaded):
    """Roles, id -> string (the last token of an id wins, as in the reference) and the splitter."""
    self.configuration = loaded.configuration
    self.command_tokens = tuple(loaded.command_tokens)
    self.special = loaded.special
    self._pieces = loaded.pieces
    self._num_tokens = int(loaded.num_tokens)
    self._command_text = {t.id: t.text for t in loaded.command_tokens}
    self._token_of_text = {t.text: t for t in loaded.command_tokens}
    strings = sorted(self._token_of_text, key=len, reverse=True)
    self._splitter = re.compile("(" + "|".join(re.escape(s) for s in strings) + ")")

  @property
  def raw_vocab_size(self) -> int:
    """Ids the reference assigns (text tokens and command tokens), before padding."""
    return self._num_tokens

  def split(self, text: str) -> List[object]:
    """Text -> [str piece or int command id, ...] as the reference's EncodeAsIds cuts it."""
    if not text.strip():
      return []
    parts = self._splitter.split(text)  # [text, token, text, token, ..., text]
    out: List[object] = []
    for i in range(0, len(parts), 2):
      piece = parts[i]
      following = self._token_of_text[parts[i + 1]] if i + 1 < len(parts) else None
      if following is not None and following.lstrip:
        piece = piece.rstrip()
      if piece:
        out.append(piece)
      if following is not None:
        out.append(following.id)
    return out

  def _encode_pieces(self, pieces: Sequence[str]) -> List[List[int]]:
    """Text pieces -> ids, in one batched call of the text tokenizer."""
    return [e.ids for e in self._tokenizer.encode_batch(list(pieces), add_special_tokens=False)]

  def _decode_text(self, ids: Sequence[int]) -> str:
    raise NotImplementedError

  def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
    """Encodes many strings with one batched call of the text tokenizer."""
    splits = [self.split(t) for t in texts]
    pieces = [p for s in splits for p in s if isinstance(p, str)]
    encoded = iter(self._encode_pieces(pieces) if pieces else [])
    out = []
    for s in splits:
      ids: List[int] = []
      for p in s:
        ids.extend(next(encoded) if isinstance(p, str) else [p])
      out.append(ids)
    return out

  def _encode(self, s: str) -> List[int]:
    return self.encode_batch([s])[0]

  def id_to_piece(self, i: int) -> str:
    """The command string of a command id, else the text tokenizer's piece."""
    i = int(i)
    if i in self._command_text:
      return self._command_text[i]
    return self._text_piece(i)

  def _is_text_id(self, i: int) -> bool:
    return 0 <= i < len(self._pieces)

  def _text_piece(self, i: int) -> str:
    return self._pieces[i] if self._is_text_id(i) else "[UNK]"

  def _decode(self, ids) -> str:
    """Runs of text ids decoded by the text tokenizer, command ids as their strings, joined."""
    out, run = [], []
    for i in ids:
      i = int(i)
      if i in self._command_text or not self._is_text_id(i):
        if run:
          out.append(self._decode_text(run))
          run = []
        out.append(self._command_text.get(i, self._command_text[self.special.unk]))
      else:
        run.append(i)
    if run:
      out.append(self._decode_text(run))
    return "".join(out)
