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
  smask: Optional[int]  # None where the vocabulary's configuration has no task masks
  gmask: Optional[int]
  sop: int
  eop: int
  sep: Optional[int] = None
  dblock: Optional[int] = None
  # Ids of tokens that end a sentence (`. ? ! ; :` and newline-like pieces).
  sentence_end_ids: Tuple[int, ...] = ()
  # Whether the model family was trained with task masks ([sMASK] / [gMASK]); without them
  # the reference uses [MASK] for every objective, in evaluation and in generation.
  task_mask: bool = True

  def __post_init__(self):
    if self.task_mask and (self.smask is None or self.gmask is None):
      raise ValueError("task_mask=True needs [sMASK] and [gMASK] ids; give them, or set "
                       "task_mask=False (every objective then uses [MASK]).")

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


# BERT uncased WordPiece with the task-mask tokens (`wordpiece:PATH@task_mask`), reference ids,
# and [dBLOCK] after them (where the reference's --block-mask-prob would put it). The released
# GLM-Base/Large (`wordpiece:PATH`) have no task masks: see glm_jax/data/vocab/wordpiece.py.
BERT_WORDPIECE = SpecialTokens(
    pad=0, eos=0, cls=101, unk=100, mask=103, smask=30525, gmask=30524,
    sop=30522, eop=30523, sep=102, dblock=30526)

# GPT-2 BPE (GLM-2B / GLM-10B) in the pretraining configuration (`gpt2:DIR@pretrain`), reference ids.
GPT2_BPE = SpecialTokens(
    pad=50256, eos=50256, cls=50259, unk=50262, mask=50260, smask=50264, gmask=50263,
    sop=50257, eop=50258, sep=50261, dblock=50265)

# The small stand-in vocabulary of ../shared/fixtures/glm_reference (only ids matter).
FIXTURE_TINY = SpecialTokens(
    pad=0, eos=0, cls=1, unk=4, mask=2, smask=999, gmask=998, sop=996, eop=997, sep=3,
    dblock=None, sentence_end_ids=(5, 6, 7))
