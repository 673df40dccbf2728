"""LAMBADA: predict a passage's last word (GLM_SPEC.md section 7), as the reference builds it.

Input files: the OpenAI `lambada_test.jsonl` (one `{"text": ...}` per line, cased and
detokenized: what the reference reads) or the original plain-text release (one lower-cased,
tokenized passage per line); `read` takes either. The last whitespace word is the answer,
`encode(" " + word)`; the context is the text before it, stripped.

Bidirectional: Part A = `[CLS] context MASK eos`, Part B = `sop answer[:-1]`, loss on the
answer. Unidirectional: Part A = `[CLS] c_1 MASK eos`, Part B = `sop c_2 ... c_n answer[:-1]`,
loss on the answer only. MASK is `special.mask_for('document')`: `[gMASK]` for a model with
task masks, `[MASK]` otherwise. The context is cut from the left to fit `sequence_length`
(512 in the reference's zero_lambada.sh). Correct iff every answer token is the argmax.
"""

from __future__ import annotations

import json
from typing import Dict, List, Sequence, Tuple

from glm_jax import paths
from glm_jax.lm_eval import blank_rows

SEQUENCE_LENGTH = 512  # config_tasks/zero_lambada.sh


def read(path: str) -> List[str]:
  """The passages of a LAMBADA file: `.jsonl` ({"text": ...} per line) or plain text."""
  p = paths.resolve(path)
  if not p.exists():
    raise FileNotFoundError(f"LAMBADA file {path} does not exist; set LAMBADA_PATH to "
                            "lambada_test.jsonl (OpenAI) or lambada_test_plain_text.txt.")
  lines = [line for line in p.read_text(encoding="utf-8").split("\n") if line.strip()]
  if not (p.name.endswith((".jsonl", ".json")) or (lines and lines[0].lstrip()[:1] == "{")):
    return lines
  passages = []
  for number, line in enumerate(lines, 1):
    try:
      record = json.loads(line)
      passages.append(record["text"])
    except (ValueError, KeyError, TypeError):
      raise ValueError(f"{path} line {number} is not a {{\"text\": ...}} JSON object; give the "
                       "OpenAI lambada_test.jsonl or the plain-text release.") from None
  return passages


def split_passage(text: str) -> Tuple[str, str]:
  """(context, last word): the context is the text before the last word, stripped."""
  words = text.split()
  if len(words) < 2:
    raise ValueError(f"A LAMBADA passage needs a context and a last word: {text!r}.")
  word = words[-1]
  return text[:text.rfind(word)].strip(), word


def encode_passage(text: str, vocabulary) -> Tuple[List[int], List[int]]:
  """(context ids, answer ids): `encode(context)` and `encode(" " + last word)`."""
  context, word = split_passage(text)
  context_ids, answer = vocabulary.encode(context), vocabulary.encode(" " + word)
  if not len(answer):
    raise ValueError(f"The last word {word!r} encodes to no tokens.")
  return [int(t) for t in context_ids], [int(t) for t in answer]


def build_row(context: Sequence[int], answer: Sequence[int], special, *, sequence_length: int,
              bidirectional: bool = True) -> Dict[str, object]:
  """The model row of one passage (see the module docstring); also `answer_ids`."""
  mask = special.mask_for("document")
  context, answer = list(context), list(answer)
  if bidirectional:
    prompt, scored = context, answer
  else:  # Part A keeps the first context token, Part B the rest of the passage
    prompt, scored = context[:1], context[1:] + answer
  # [CLS] prompt MASK eos | sop scored[:-1]: 3 + len(prompt) + len(scored) tokens.
  excess = 3 + len(prompt) + len(scored) - sequence_length
  if excess > 0:  # drop the oldest context tokens
    room = len(prompt) if bidirectional else len(scored) - len(answer)
    if excess > room:
      raise ValueError(f"sequence_length {sequence_length} is too short for a LAMBADA answer "
                       f"of {len(answer)} tokens.")
    if bidirectional:
      prompt = prompt[excess:]
    else:
      scored = scored[excess:]
  part_a = [special.cls] + prompt + [mask, special.eos]
  weights = [0.0] * (len(scored) - len(answer)) + [1.0] * len(answer)
  row = blank_rows.infill_row(part_a, len(part_a) - 2, [special.sop] + scored[:-1], scored,
                              sequence_length, weights)
  row["answer_ids"] = answer
  return row


def build_rows(passages: Sequence[str], vocabulary, special, *,
               sequence_length: int = SEQUENCE_LENGTH,
               bidirectional: bool = True) -> List[Dict[str, object]]:
  return [build_row(*encode_passage(p, vocabulary), special, sequence_length=sequence_length,
                    bidirectional=bidirectional) for p in passages]
