"""Special-token roles of a GLM vocabulary (GLM_SPEC.md section 3)."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  """Token ids of every GLM role; shared by vocabularies, objectives and decoding."""

  pad: int
  eos: int
  cls: int
  unk: int
  mask: int
  smask: int
  gmask: int
  sop: int
  eop: int
  sep: Optional[int] = None
  dblock: Optional[int] = None
  # Ids of tokens that end a sentence (`. ? ! ; :` and newline-like pieces).
  sentence_end_ids: Tuple[int, ...] = ()
  # Whether the model family was trained with task masks ([sMASK] / [gMASK]); without them
  # the reference uses [MASK] for every objective, in evaluation and in generation.
  task_mask: bool = True

  def mask_for(self, objective: str) -> int:
    """The Part A mask token of an objective ('token', 'sentence', 'document').

    'document' is also the mask of open generation, LAMBADA and WikiText; 'sentence' that of
    seq2seq (XSum). Without task masks every objective uses [MASK].
    """
    if objective not in ("token", "sentence", "document"):
      raise ValueError(f"Unknown objective {objective!r}; use 'token', 'sentence' or "
                       "'document'.")
    if not self.task_mask:
      return self.mask
    return {"token": self.mask, "sentence": self.smask, "document": self.gmask}[objective]

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


# BERT uncased WordPiece (GLM-Base / GLM-Large), reference ids. The reference has no
# [dBLOCK] for this vocabulary; we place it in the padding, after [sMASK].
BERT_WORDPIECE = SpecialTokens(
    pad=0, eos=0, cls=101, unk=100, mask=103, smask=30525, gmask=30524,
    sop=30522, eop=30523, sep=102, dblock=30526)

# GPT-2 BPE (GLM-2B / GLM-10B), reference ids.
GPT2_BPE = SpecialTokens(
    pad=50256, eos=50256, cls=50259, unk=50262, mask=50260, smask=50264, gmask=50263,
    sop=50257, eop=50258, sep=50261, dblock=50265)

# The small stand-in vocabulary of ../shared/fixtures/glm_reference (only ids matter).
FIXTURE_TINY = SpecialTokens(
    pad=0, eos=0, cls=1, unk=4, mask=2, smask=999, gmask=998, sop=996, eop=997, sep=3,
    dblock=None, sentence_end_ids=(5, 6, 7))
