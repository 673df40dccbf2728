"""Our SentencePiece vocabularies (`builtin`, `spm:PATH`): the GLM roles are pieces of the model.

`python -m glm_jax.data.train_vocab` reserves them (ROLE_PIECES); these vocabularies have the
task masks and [dBLOCK]. Encoding runs in SentencePiece, in Python and as TF ops.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import sentencepiece as spm
import tensorflow as tf

from glm_jax.data.special_tokens import SpecialTokens
from glm_jax.data.vocab import base, families, files

# Pieces that hold the GLM roles in our SentencePiece models (train_vocab reserves them).
ROLE_PIECES: Dict[str, str] = {
    "pad": "<pad>", "eos": "</s>", "unk": "<unk>", "cls": "[CLS]", "mask": "[MASK]",
    "smask": "[sMASK]", "gmask": "[gMASK]", "sop": "<|startofpiece|>",
    "eop": "<|endofpiece|>", "dblock": "[dBLOCK]", "sep": "[SEP]",
}
# Roles given as user-defined symbols, in id order after pad=0, eos=1, unk=2.
USER_DEFINED_ROLES = ("cls", "mask", "smask", "gmask", "sop", "eop", "dblock", "sep")


class GLMVocabulary(base.SentencePieceState, base.GLMRolesVocabulary):
  """SentencePiece model with the GLM roles; ids past the model's pieces are padding."""

  def __init__(self, sentencepiece_model_file: str, spec: Optional[str] = None):
    self._model_proto = files.existing(sentencepiece_model_file,
                                       "SentencePiece model").read_bytes()
    self._model_file = sentencepiece_model_file
    self.spec = spec or f"spm:{sentencepiece_model_file}"
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
    skip = set(ids.values()) | {i for i in range(len(pieces)) if self._sp.is_byte(i)}
    self.special = SpecialTokens(sentence_end_ids=families.sentence_end_ids(pieces, skip), **ids)
    super().__init__(extra_ids=0)

  def __eq__(self, other):
    return isinstance(other, GLMVocabulary) and self._model_proto == other._model_proto

  def __hash__(self):
    return hash(self._model_proto)

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

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    ids = tf.where(ids < self.raw_vocab_size, ids, self.unk_id)
    return self.tf_tokenizer.detokenize(ids)
