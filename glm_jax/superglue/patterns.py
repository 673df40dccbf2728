"""SuperGLUE as cloze questions: one pattern and verbalizer per task (GLM_SPEC.md section 6).

`render` turns a flat record (see sources.py) into a `ClozeExample`: pattern parts with
exactly one mask, the candidate answers (single-token verbalizers or multi-token answers)
and the gold candidate. `encode` tokenizes it into Part A = [CLS] pattern eos, truncating
only the shortenable parts (passages, sentences), never the pattern words or the mask.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Any, Callable, List, Optional, Sequence, Tuple

from glm_jax.superglue import sources


@dataclasses.dataclass(frozen=True)
class Part:
  """A piece of pattern text; shortenable pieces absorb all truncation."""

  text: str
  shortenable: bool = False
  is_mask: bool = False


MASK = Part("", is_mask=True)
MASK_TEXT = "[MASK]"

# Labels in candidate order and their verbalizers, for the single-token tasks.
VERBALIZERS = {
    "boolq": ((False, " No"), (True, " Yes")),
    "cb": (("entailment", " Yes"), ("contradiction", " No"), ("neutral", " Maybe")),
    "multirc": ((0, " No"), (1, " Yes")),
    "rte": (("entailment", " Yes"), ("not_entailment", " No")),
    "wic": ((False, " No"), (True, " Yes")),
}
MULTI_TOKEN_TASKS = ("copa", "record", "wsc")


@dataclasses.dataclass(frozen=True)
class ClozeExample:
  """One rendered example.

  `label` is the index of the gold candidate (-1 when unknown or, for WSC, when the queried
  span is not the referent); `candidate_values` are the dataset's label values that each
  candidate stands for (COPA 0/1, CB strings, ReCoRD entity texts...).
  """

  task: str
  idx: Any
  parts: Tuple[Part, ...]
  candidates: Tuple[str, ...]
  candidate_values: Tuple[Any, ...]
  label: int
  label_value: Any
  multi_token: bool
  answers: Tuple[str, ...] = ()  # ReCoRD: every gold entity text


def _strip_punc(text: str) -> str:
  return text.rstrip(string.punctuation)


def _lower_first(text: str) -> str:
  return text[:1].lower() + text[1:]


def _label_index(values: Sequence[Any], value: Any) -> int:
  return -1 if value is None else list(values).index(value)


def _single_token(task: str, record: dict, parts: List[Part]) -> ClozeExample:
  values, words = zip(*VERBALIZERS[task])
  return ClozeExample(task, record["idx"], tuple(parts), words, values,
                      _label_index(values, record.get("label")), record.get("label"), False)


def render(task: str, record: dict) -> ClozeExample:
  """The cloze form of one flat record of `task`."""
  task = sources.check_task(task)
  c = sources.clean
  if task == "rte":  # "hypothesis" ? _ , "premise"
    parts = [Part('"'), Part(_strip_punc(c(record["hypothesis"])), True), Part('" ?'), MASK,
             Part(', "'), Part(c(record["premise"]), True), Part('"')]
    return _single_token(task, record, parts)
  if task == "cb":  # hypothesis? _. premise
    parts = [Part(_strip_punc(c(record["hypothesis"])), True), Part("?"), MASK, Part("."),
             Part(" " + c(record["premise"]), True)]
    return _single_token(task, record, parts)
  if task == "boolq":  # Based on the following passage question? _. passage
    parts = [Part("Based on the following passage"), Part(" " + c(record["question"]), True),
             Part("?"), MASK, Part("."), Part(" " + c(record["passage"]), True)]
    return _single_token(task, record, parts)
  if task == "wic":  # s1 s2 Does w have the same meaning in both sentences? _
    parts = [Part(c(record["sentence1"]), True), Part(" " + c(record["sentence2"]), True),
             Part(f" Does {record['word']} have the same meaning in both sentences?"), MASK]
    return _single_token(task, record, parts)
  if task == "multirc":  # passage. Question: q? Is it answer? _.
    parts = [Part(_strip_punc(c(record["paragraph"])), True), Part(". Question:"),
             Part(" " + _strip_punc(c(record["question"]))), Part("? Is it"),
             Part(" " + c(record["answer"])), Part("?"), MASK, Part(".")]
    return _single_token(task, record, parts)
  if task == "copa":  # "choice1" or "choice2"? premise because/so _.
    choices = [_strip_punc(_lower_first(c(record[k]))) for k in ("choice1", "choice2")]
    joiner = " because" if record["question"] == "cause" else ", so"
    parts = [Part('"'), Part(choices[0]), Part('" or "'), Part(choices[1]), Part('"?'),
             Part(" " + _strip_punc(c(record["premise"])), True), Part(joiner), MASK, Part(".")]
    return ClozeExample(task, record["idx"], tuple(parts), tuple(" " + x for x in choices),
                        (0, 1), _label_index((0, 1), record.get("label")), record.get("label"),
                        True)
  if task == "wsc":
    # text Question: In the passage above, what does the pronoun '*p*' refer to? Answer: _.
    words = c(record["text"]).split(" ")
    index = _pronoun_index(words, record["span2_index"], record["span2_text"])
    words[index] = "*" + words[index] + "*"
    parts = [Part(" ".join(words), True),
             Part(" Question: In the passage above, what does the pronoun '*"
                  f"{record['span2_text']}*' refer to? Answer:"), MASK, Part(".")]
    candidates = tuple(" " + c(x) for x in record["candidates"])
    label_value = record.get("label")
    return ClozeExample(task, record["idx"], tuple(parts), candidates,
                        (True,) + (False,) * (len(candidates) - 1),
                        0 if label_value else -1, label_value, True)
  # ReCoRD: passage query-left _ query-right
  passage = c(record["passage"].replace("@highlight\n", "- "))
  left, _, right = record["query"].partition("@placeholder")
  if not _:
    raise ValueError(f"ReCoRD query {record['idx']} has no @placeholder: {record['query']!r}.")
  parts = [Part(passage, True), Part(" " + c(left)), MASK, Part(right.rstrip())]
  entities = tuple(record["entities"])
  answers = tuple(record.get("answers") or ())
  gold = next((i for i, e in enumerate(entities) if e in answers), -1)
  return ClozeExample(task, record["idx"], tuple(parts), tuple(" " + e for e in entities),
                      entities, gold, list(answers), True, answers)


def _pronoun_index(words: List[str], index: int, pronoun: str) -> int:
  """The word index of the WSC pronoun (the release is off by one in a few examples)."""
  for i in (index, index - 1, index + 1):
    if 0 <= i < len(words) and words[i].lower().strip(string.punctuation) == pronoun.lower():
      return i
  for i in (index, index - 1, index + 1):
    if 0 <= i < len(words) and words[i].lower().startswith(pronoun.lower()):
      return i
  return min(max(index, 0), len(words) - 1)


def pattern_text(example: ClozeExample) -> str:
  """The rendered pattern with the mask shown as [MASK] (for inspection and tests)."""
  return "".join(MASK_TEXT if p.is_mask else p.text for p in example.parts)


@dataclasses.dataclass(frozen=True)
class EncodedCloze:
  """Token ids of one example: Part A and each candidate's answer.

  part_a = [CLS] pattern eos with one mask at `mask_position`. For single-token scoring
  `answers[c] = (verbalizer id,)`; for multi-token scoring `answers[c]` = answer ids + eop,
  the targets of Part B (whose inputs are [sop] + answer[:-1]).
  """

  part_a: Tuple[int, ...]
  mask_position: int
  answers: Tuple[Tuple[int, ...], ...]
  multi_token: bool
  truncated: bool
  sop: int


def _encoder(vocab) -> Callable[[str], List[int]]:
  cache = {}

  def encode(text: str) -> List[int]:
    if text not in cache:
      cache[text] = [int(t) for t in vocab.encode(text)] if text else []
    return cache[text]
  return encode


def verbalizer_ids(task: str, vocab) -> Optional[Tuple[int, ...]]:
  """Token ids of a single-token task's verbalizers, or None if one is not a single token."""
  ids = []
  for _, word in VERBALIZERS[task]:
    tokens = list(vocab.encode(word))
    if len(tokens) != 1:
      return None
    ids.append(int(tokens[0]))
  return tuple(ids)


def encode(example: ClozeExample, vocab, max_length: int, *, max_answer_length: int = 16,
           shared_candidates: bool = False, force_multi_token: bool = False) -> EncodedCloze:
  """Tokenizes `example` so that Part A plus Part B fit in `max_length` tokens.

  Single-token tasks whose verbalizers are not single tokens in `vocab` (or with
  `force_multi_token`) are scored as multi-token answers. Part B needs 1 token (sop) for
  single-token scoring, max(len(answer)) per candidate sequence, or sum(len(answer)) when all
  candidates share one sequence (`shared_candidates`). Answers are cut to max_answer_length
  tokens including eop.
  """
  special = vocab.special
  enc = _encoder(vocab)
  single = None if example.multi_token or force_multi_token else verbalizer_ids(example.task,
                                                                               vocab)
  if single is not None:
    answers = tuple((i,) for i in single)
    part_b = 1
  else:
    answers = tuple(tuple(enc(a)[:max_answer_length - 1]) + (special.eop,)
                    for a in example.candidates)
    if not answers:
      raise ValueError(f"{example.task} example {example.idx} has no candidate answers.")
    part_b = sum(map(len, answers)) if shared_candidates else max(map(len, answers))

  pieces = [[special.mask] if p.is_mask else list(enc(p.text)) for p in example.parts]
  excess = 2 + sum(map(len, pieces)) + part_b - max_length
  truncated = excess > 0
  while excess > 0:
    lengths = [len(x) if p.shortenable else 0 for p, x in zip(example.parts, pieces)]
    longest = max(range(len(pieces)), key=lambda i: (lengths[i], i))
    if lengths[longest] == 0:
      raise ValueError(
          f"{example.task} example {example.idx}: the pattern and answers alone need "
          f"{max_length + excess} tokens, more than sequence_length {max_length}; raise it.")
    cut = min(excess, lengths[longest] - max(
        [l for i, l in enumerate(lengths) if i != longest] + [0]) or 1)
    pieces[longest] = pieces[longest][:-cut]
    excess -= cut
  part_a = [special.cls] + [t for x in pieces for t in x] + [special.eos]
  mask_position = 1 + sum(len(x) for x in pieces[:[p.is_mask for p in example.parts].index(True)])
  return EncodedCloze(tuple(part_a), mask_position, answers, single is None, truncated,
                      special.sop)
