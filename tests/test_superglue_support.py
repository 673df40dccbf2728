"""Shared helpers of the SuperGLUE tests: test data paths and a tiny SentencePiece vocabulary."""

import functools
import glob
import io
import json
import os

import numpy as np
import sentencepiece as spm

from glm_jax.data.special_tokens import SpecialTokens

DATA = os.path.join(os.path.dirname(__file__), "data", "superglue")
SUPERGLUE_DIR = os.path.join(DATA, "superglue")
FEWGLUE_DIR = os.path.join(DATA, "fewglue")
_ROLES = ["[CLS]", "[MASK]", "[sMASK]", "[gMASK]", "<sop>", "<eop>", "[SEP]"]


class TinyVocab:
  """A SentencePiece model trained on the test data, with GLM roles as user symbols."""

  def __init__(self, model_proto: bytes):
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    ids = [self.sp.piece_to_id(r) for r in _ROLES]
    self.special = SpecialTokens(pad=0, eos=2, cls=ids[0], unk=1, mask=ids[1], smask=ids[2],
                                 gmask=ids[3], sop=ids[4], eop=ids[5], sep=ids[6])
    self.vocab_size = self.sp.get_piece_size()

  def encode(self, text):
    return self.sp.encode(text)

  def decode(self, ids):
    return self.sp.decode([int(i) for i in ids])


def _texts():
  for path in sorted(glob.glob(os.path.join(DATA, "*", "*", "*.jsonl"))):
    with open(path, encoding="utf-8") as f:
      for line in f:
        stack = [json.loads(line)]
        while stack:
          x = stack.pop()
          if isinstance(x, dict):
            stack.extend(x.values())
          elif isinstance(x, list):
            stack.extend(x)
          elif isinstance(x, str) and len(x) > 2:
            yield x
  for _ in range(50):  # make the verbalizers single pieces
    yield "Yes No Maybe Yes No Maybe? Yes. No. Maybe."


@functools.lru_cache(maxsize=None)
def tiny_vocab(vocab_size: int = 1000) -> TinyVocab:
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(list(_texts())), model_writer=model, vocab_size=vocab_size,
      model_type="unigram", pad_id=0, unk_id=1, bos_id=-1, eos_id=2,
      user_defined_symbols=_ROLES, character_coverage=1.0, num_threads=1,
      minloglevel=2, seed_sentencepiece_size=100000)
  return TinyVocab(model.getvalue())


def test_tiny_vocab_roles_and_verbalizers():
  vocab = tiny_vocab()
  roles = vocab.special
  assert len({roles.cls, roles.mask, roles.sop, roles.eop, roles.eos}) == 5
  for word in (" Yes", " No", " Maybe"):
    assert len(vocab.encode(word)) == 1, word
  assert np.all(np.array(vocab.encode("The man turned on the faucet.")) < vocab.vocab_size)
