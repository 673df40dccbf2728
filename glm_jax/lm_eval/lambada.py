"""LAMBADA (original plain-text release): predict a passage's last word (GLM_SPEC.md section 7).

Bidirectional: Part A = `[CLS] context [gMASK]`, Part B = `sop word[:-1]`, targets the word's
tokens. Unidirectional: Part A = `[CLS] [gMASK]`, Part B holds the whole passage, loss on the
word only. An example is correct only if every token of the word is the argmax.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from glm_jax import paths
from glm_jax.lm_eval import blank_rows, detokenize


def read(path: str) -> List[str]:
  """One passage per non-empty line."""
  if not paths.resolve(path).is_file():
    raise FileNotFoundError(f"LAMBADA file {path} does not exist; set LAMBADA_PATH to "
                            "lambada_test_plain_text.txt (../shared/data/lambada).")
  return [line.strip() for line in paths.read_text(path).splitlines() if line.strip()]


def split_last_word(passage: str) -> Tuple[str, str]:
  context, _, word = passage.rpartition(" ")
  return context, word


def build_row(passage: str, vocabulary, *, sequence_length: int, bidirectional: bool = True,
              mask: str = "gmask", add_cls: bool = True,
              detokenized: bool = True) -> Dict[str, object]:
  """The model row of one passage (context truncated from the left to fit)."""
  special = vocabulary.special
  context, word = split_last_word(passage)
  if detokenized:
    context = detokenize.lambada(context)
  mask_id = {"gmask": special.gmask, "mask": special.mask}[mask]
  ctx = [int(t) for t in vocabulary.encode(context)]
  answer = [int(t) for t in vocabulary.encode(word)]
  if not answer:
    raise ValueError(f"The last word {word!r} encodes to no tokens.")
  head = [special.cls] if add_cls else []
  room = sequence_length - len(head) - 1 - len(answer)  # tokens left for the context
  if room < 1:
    raise ValueError(f"sequence_length {sequence_length} is too short for LAMBADA passages.")
  ctx = ctx[-room:]
  if bidirectional:
    part_a = head + ctx + [mask_id]
    part_b = [special.sop] + answer[:-1]
    return blank_rows.infill_row(part_a, len(part_a) - 1, part_b, answer, sequence_length)
  part_a = head + [mask_id]
  seq = ctx + answer
  weights = [0.0] * len(ctx) + [1.0] * len(answer)
  return blank_rows.infill_row(part_a, len(part_a) - 1, [special.sop] + seq[:-1], seq,
                               sequence_length, weights)


def build_rows(passages, vocabulary, **kwargs) -> List[Dict[str, object]]:
  return [build_row(p, vocabulary, **kwargs) for p in passages]
