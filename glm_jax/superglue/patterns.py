"""SuperGLUE as cloze questions: the reference's patterns and verbalizers (GLM_SPEC.md section 6).

`render` turns a flat record (see sources.py) into a `ClozeExample`: pattern pieces with
exactly one mask, in one or two segments, the candidate answers (single-token verbalizers or
multi-token answers) and the gold candidate. `encode` tokenizes it as the reference's PVPs
do: every piece on its own, Part A = `[CLS] pieces eos`, truncation one token at a time from
the end of the last non-empty shortenable piece of the segment with more shortenable tokens
(multi-token answers: per candidate row, counting the answer).

Text preparation as the reference's processors: curly quotes and the en dash become ASCII
(`standardize`) in every task's text but COPA and the WSC spans; nothing else is changed.
Patterns are chosen by id (`pattern_id`; the reference's task scripts: BoolQ 4, CB 3, COPA 0,
MultiRC 0, ReCoRD 0, RTE 0, WiC 1, WSC 2; its 10B script uses 0 everywhere).
"""

from __future__ import annotations

import dataclasses
import string
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from glm_jax.superglue import sources


@dataclasses.dataclass(frozen=True)
class Part:
  """A piece of pattern text; shortenable pieces absorb all truncation.

  `segment` is the reference's text_a (0) / text_b (1) split, which truncation balances.
  """

  text: str
  shortenable: bool = False
  is_mask: bool = False
  segment: int = 0


MASK = Part("", is_mask=True)
MASK_TEXT = "[MASK]"

_NO_YES = (" No", " Yes")
# Labels in candidate order (the reference's label lists) and each pattern's verbalizers.
LABELS = {"boolq": (False, True), "cb": ("entailment", "contradiction", "neutral"),
          "multirc": (0, 1), "rte": ("entailment", "not_entailment"), "wic": (False, True)}
_VERBALIZERS = {
    "boolq": {0: _NO_YES, 1: (" false", " true"), 2: _NO_YES, 3: (" false", " true"),
              4: _NO_YES, 5: (" false", " true")},
    "cb": {p: (" Yes", " No", " Maybe") for p in range(4)},
    "multirc": {p: _NO_YES for p in (0, 1, 2, 4)},
    "rte": {p: (" Yes", " No") for p in range(4)},
    "wic": {p: _NO_YES for p in (0, 1)},
}
MULTI_TOKEN_TASKS = ("copa", "record", "wsc")
# The --pattern-id of the reference's config_tasks/task_<task>.sh.
DEFAULT_PATTERNS = {"boolq": 4, "cb": 3, "copa": 0, "multirc": 0, "record": 0, "rte": 0,
                    "wic": 1, "wsc": 2}
# (label, verbalizer) pairs of the single-token tasks with their default patterns.
VERBALIZERS = {task: tuple(zip(LABELS[task], words[DEFAULT_PATTERNS[task]]))
               for task, words in _VERBALIZERS.items()}
PATTERNS = {**{t: tuple(v) for t, v in _VERBALIZERS.items()}, "copa": (0, 1), "record": (0,),
            "wsc": (0, 1, 2)}
WSC_CANDIDATES = ("heuristic", "record")


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
  answers: Tuple[str, ...] = ()  # ReCoRD: every distinct gold answer
  pattern_id: int = 0


_STANDARD_PUNCTUATION = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2019": "'",
                                       "\u2018": "'", "\u2013": "-"})


def standardize(text: str) -> str:
  """Curly quotes and the en dash as ASCII (the reference's punctuation_standardization)."""
  return text.translate(_STANDARD_PUNCTUATION)


def _strip_punc(text: str) -> str:
  return text.rstrip(string.punctuation)


def _lower_first(text: str) -> str:
  return text[:1].lower() + text[1:]


def _short(text: str, segment: int = 0) -> Part:
  return Part(text, shortenable=True, segment=segment)


def _label_index(values: Sequence[Any], value: Any) -> int:
  return -1 if value is None else list(values).index(value)


def check_pattern(task: str, pattern_id: Optional[int]) -> int:
  """The pattern id to use (the task's default for None); unknown ids are refused."""
  pattern_id = DEFAULT_PATTERNS[task] if pattern_id is None else int(pattern_id)
  if pattern_id not in PATTERNS[task]:
    raise ValueError(f"{task} has no pattern {pattern_id}; use one of {list(PATTERNS[task])} "
                     "(PATTERN_ID).")
  return pattern_id


def _single_token(task: str, record: dict, parts: List[Part], pattern_id: int) -> ClozeExample:
  values, words = LABELS[task], _VERBALIZERS[task][pattern_id]
  return ClozeExample(task, record["idx"], tuple(parts), words, values,
                      _label_index(values, record.get("label")), record.get("label"), False,
                      pattern_id=pattern_id)


def _entailment_parts(premise: str, hypothesis: str, pattern_id: int) -> List[Part]:
  """RTE / CB patterns 0-3: segment 0 the hypothesis, segment 1 the answer and premise."""
  hyp = _strip_punc(hypothesis)
  quoted = pattern_id in (0, 2)
  first = [Part('"'), _short(hyp), Part('" ?')] if quoted else [_short(hyp), Part("?")]
  mask = Part("", is_mask=True, segment=1)
  second = {0: [mask, Part(",", segment=1), Part(' "', segment=1), _short(premise, 1),
                Part('"', segment=1)],
            1: [mask, Part(",", segment=1), _short(" " + premise, 1)],
            2: [mask, Part('. "', segment=1), _short(premise, 1), Part('"', segment=1)],
            3: [mask, Part(".", segment=1), _short(" " + premise, 1)]}[pattern_id]
  return first + second


def _boolq_parts(passage: str, question: str, pattern_id: int) -> List[Part]:
  if pattern_id < 2:
    return [_short(passage), Part(" Question:"), _short(" " + question), Part("? Answer:"), MASK,
            Part(".")]
  if pattern_id < 4:
    return [_short(passage), Part(" Based on the previous passage,"), _short(" " + question),
            Part("?"), MASK, Part(".")]
  return [Part("Based on the following passage"), _short(" " + question), Part("?"), MASK,
          Part("."), _short(" " + passage)]


def _multirc_parts(paragraph: str, question: str, answer: str, pattern_id: int) -> List[Part]:
  passage, q = _short(_strip_punc(paragraph.rstrip())), _strip_punc(question.rstrip())
  if pattern_id == 0:
    return [passage, Part("."), Part(" Question:"), Part(" " + q + "?"), Part(" Is it"),
            Part(" " + answer), Part("?"), MASK, Part(".")]
  if pattern_id == 1:
    return [passage, Part("."), Part(" Question:"), Part(" " + q), Part("?"),
            Part(' Is the correct answer "'), Part(answer), Part('"?'), MASK, Part(".")]
  if pattern_id == 2:
    return [passage, Part(". Based on the previous passage,"), Part(" " + q), Part("?"),
            Part(' Is "'), Part(answer), Part('" a correct answer?'), MASK, Part(".")]
  return [passage, Part("."), Part(" Question:"), Part(" " + q), Part("?"), Part(" " + answer),
          Part("?"), MASK, Part(".")]


def wsc_words(text: str, span2_index: int, span2_text: str) -> Tuple[List[str], int]:
  """(words, pronoun index): the reference's repair of the release's pronoun indices.

  An index off by one is moved onto the pronoun; a word that only starts with the pronoun is
  split in two.
  """
  words = text.split()
  index = span2_index
  if words[index] != span2_text:
    for offset in (-1, 1):  # Python indexing, as the reference's (-1 is the last word)
      if -len(words) <= index + offset < len(words) and words[index + offset] == span2_text:
        index += offset
    if words[index] != span2_text and words[index].startswith(span2_text):
      words = (words[:index] + [words[index][:len(span2_text)], words[index][len(span2_text):]]
               + words[index + 1:])
  if words[index] != span2_text:
    raise ValueError(f"WSC example: the pronoun {span2_text!r} is not at word {span2_index} of "
                     f"{text!r}.")
  return words, index


def _wsc(record: dict, pattern_id: int, wsc_candidates: str) -> ClozeExample:
  pronoun = record["span2_text"]
  words, index = wsc_words(standardize(record["text"]), record["span2_index"], pronoun)
  words[index] = "*" + words[index] + "*"
  marked = _short(" ".join(words))
  question = {0: [Part(" The pronoun '*" + pronoun + "*' refers to")],
              1: [Part(" In the previous sentence, the pronoun '*" + pronoun + "*' refers to")],
              2: [Part(" Question: In the passage above, what does the pronoun '*" + pronoun
                       + "*' refer to?"), Part(" Answer:")]}[pattern_id]
  if "candidates" in record:  # WSC with candidate lists (the reference's WSC-negative files)
    rivals = list(record["candidates"])
  elif wsc_candidates == "heuristic":
    rivals = list(record.get("heuristic_candidates", ()))
  else:
    rivals = []
  candidates = tuple(" " + x for x in [record["span1_text"]] + rivals)
  label_value = record.get("label")
  return ClozeExample("wsc", record["idx"], tuple([marked] + question + [MASK, Part(".")]),
                      candidates, (True,) + (False,) * (len(candidates) - 1),
                      0 if label_value else -1, label_value, True, pattern_id=pattern_id)


def _record(record: dict, pattern_id: int) -> ClozeExample:
  text = standardize(record["passage"])
  entities = tuple(sorted({standardize(e) for e in record["entities"]}))
  answers = tuple(dict.fromkeys(standardize(a) for a in record.get("answers") or ()))
  query = standardize(record["query"])
  pieces = query.split("@placeholder")
  if len(pieces) != 2:
    raise ValueError(f"ReCoRD query {record['idx']} needs one @placeholder: {query!r}.")
  parts = [_short(text.replace("@highlight\n", "- ")), Part(" " + pieces[0].rstrip()), MASK,
           Part(pieces[1])]
  gold = next((i for i, e in enumerate(entities) if e in answers), -1)
  return ClozeExample("record", record["idx"], tuple(parts), tuple(" " + e for e in entities),
                      entities, gold, list(answers), True, answers, pattern_id=pattern_id)


def render(task: str, record: dict, *, pattern_id: Optional[int] = None,
           wsc_candidates: str = "heuristic") -> ClozeExample:
  """The cloze form of one flat record of `task` with pattern `pattern_id`.

  WSC candidates: a record's own `candidates` list (the reference's WSC-negative data) when
  it has one; else 'heuristic' adds `heuristic_candidates` (sources.add_wsc_candidates) and
  'record' keeps the gold span alone, as the reference does with the public WSC.
  """
  task = sources.check_task(task)
  pattern_id = check_pattern(task, pattern_id)
  if wsc_candidates not in WSC_CANDIDATES:
    raise ValueError(f"wsc_candidates must be one of {WSC_CANDIDATES}, got {wsc_candidates!r}.")
  s = standardize
  if task in ("rte", "cb"):
    parts = _entailment_parts(s(record["premise"]), s(record["hypothesis"]), pattern_id)
    return _single_token(task, record, parts, pattern_id)
  if task == "boolq":
    parts = _boolq_parts(s(record["passage"]), s(record["question"]), pattern_id)
    return _single_token(task, record, parts, pattern_id)
  if task == "wic":
    a, b, word = s(record["sentence1"]), s(record["sentence2"]), record["word"]
    if pattern_id == 0:
      parts = [_short('"' + a + '" / "' + b + '"'), Part(' Similar sense of "' + word + '"?'),
               MASK, Part(".")]
    else:
      parts = [_short(a), _short(" " + b),
               Part(" Does " + word + " have the same meaning in both sentences?"), MASK]
    return _single_token(task, record, parts, pattern_id)
  if task == "multirc":
    parts = _multirc_parts(s(record["paragraph"]), s(record["question"]), s(record["answer"]),
                           pattern_id)
    return _single_token(task, record, parts, pattern_id)
  if task == "copa":  # no punctuation standardization here, as in the reference
    c1, c2 = (_strip_punc(_lower_first(record[k])) for k in ("choice1", "choice2"))
    premise = _short(_strip_punc(" " + record["premise"]))
    joiner = Part(" because" if record["question"] == "cause" else ", so")
    if pattern_id == 0:
      parts = [Part('"'), Part(c1), Part('" or "'), Part(c2), Part('"?'), premise, joiner, MASK,
               Part(".")]
    else:
      parts = [Part(c1), Part(" or"), Part(" " + c2), Part("?"), premise, joiner, MASK, Part(".")]
    return ClozeExample(task, record["idx"], tuple(parts), (" " + c1, " " + c2), (0, 1),
                        _label_index((0, 1), record.get("label")), record.get("label"), True,
                        pattern_id=pattern_id)
  if task == "wsc":
    return _wsc(record, pattern_id, wsc_candidates)
  return _record(record, pattern_id)


def pattern_text(example: ClozeExample) -> str:
  """The rendered pattern with the mask shown as [MASK] (for inspection and tests)."""
  return "".join(MASK_TEXT if p.is_mask else p.text for p in example.parts)


@dataclasses.dataclass(frozen=True)
class EncodedCloze:
  """Token ids of one example: Part A of each row and each candidate's answer.

  Single-token scoring (and the shared layout) has one Part A; `answers[c] = (verbalizer
  id,)`. Multi-token scoring has one row per candidate, each with its own Part A (the
  reference truncates per row, counting the answer), `answers[c]` = answer ids + eop, the
  targets of Part B (whose inputs are [sop] + answer[:-1]). Part A = [CLS] pieces eos; its
  mask is the last mask id in it (a literal [MASK] in the text counts, as in the reference).
  """

  parts_a: Tuple[Tuple[int, ...], ...]
  mask_positions: Tuple[int, ...]
  answers: Tuple[Tuple[int, ...], ...]
  multi_token: bool
  truncated: bool
  sop: int

  def part_a_of(self, candidate: int) -> Tuple[int, ...]:
    return self.parts_a[candidate if len(self.parts_a) > 1 else 0]

  def mask_position_of(self, candidate: int) -> int:
    return self.mask_positions[candidate if len(self.mask_positions) > 1 else 0]

  @property
  def part_a(self) -> Tuple[int, ...]:
    """The (first row's) Part A."""
    return self.parts_a[0]

  @property
  def mask_position(self) -> int:
    return self.mask_positions[0]

  @property
  def longest_part_a(self) -> int:
    return max(map(len, self.parts_a))


def _encoder(vocab) -> Callable[[str], List[int]]:
  cache: Dict[str, List[int]] = {}

  def encode(text: str) -> List[int]:
    if text not in cache:
      cache[text] = [int(t) for t in vocab.encode(text)] if text.strip() else []
    return cache[text]
  return encode


def verbalizer_ids(task: str, vocab, pattern_id: Optional[int] = None
                   ) -> Optional[Tuple[int, ...]]:
  """Token ids of a single-token task's verbalizers, or None if one is not a single token."""
  ids = []
  for word in _VERBALIZERS[task][check_pattern(task, pattern_id)]:
    tokens = list(vocab.encode(word))
    if len(tokens) != 1:
      return None
    ids.append(int(tokens[0]))
  return tuple(ids)


def _truncated(parts: Sequence[Part], pieces: Sequence[List[int]], excess: int, example,
               max_length: int) -> List[List[int]]:
  """The reference's truncation: `excess` tokens off the end of shortenable pieces."""
  pieces = [list(x) for x in pieces]
  short = [0, 0]
  for p, x in zip(parts, pieces):
    if p.shortenable:
      short[p.segment] += len(x)
  for _ in range(excess):
    segment = 0 if short[0] > short[1] else 1
    last = [i for i, (p, x) in enumerate(zip(parts, pieces))
            if p.shortenable and p.segment == segment and x]
    if not last:
      raise ValueError(
          f"{example.task} example {example.idx}: the pattern and answer alone need more than "
          f"sequence_length {max_length} tokens; raise it.")
    pieces[last[-1]].pop()
    short[segment] -= 1
  return pieces


def encode(example: ClozeExample, vocab, max_length: int, *, max_answer_length: int = 0,
           shared_candidates: bool = False, force_multi_token: bool = False) -> EncodedCloze:
  """Tokenizes `example` so that each row (Part A plus Part B) fits in `max_length` tokens.

  Single-token tasks whose verbalizers are not single tokens in `vocab` (or with
  `force_multi_token`) are scored as multi-token answers. `shared_candidates` (all candidates
  behind one Part A, our layout) truncates once for all answers together. A positive
  `max_answer_length` cuts answers to that many tokens including eop (the reference: none).
  """
  special = vocab.special
  enc = _encoder(vocab)
  single = None if example.multi_token or force_multi_token else verbalizer_ids(
      example.task, vocab, example.pattern_id)
  pieces = [[special.mask] if p.is_mask else enc(p.text) for p in example.parts]
  base = sum(map(len, pieces))
  if single is not None:
    answers = tuple((i,) for i in single)
    needs = [base + 3]  # [CLS] pieces eos sop
  else:
    answers = []
    for a in example.candidates:
      ids = enc(a)[:max_answer_length - 1] if max_answer_length > 0 else enc(a)
      answers.append(tuple(ids) + (special.eop,))
    answers = tuple(answers)
    if not answers:
      raise ValueError(f"{example.task} example {example.idx} has no candidate answers.")
    if shared_candidates:
      needs = [base + 2 + sum(map(len, answers))]
    else:
      needs = [base + 2 + len(a) for a in answers]
  by_need: Dict[int, Tuple[Tuple[int, ...], int]] = {}
  for need in needs:
    if need not in by_need:
      rows = _truncated(example.parts, pieces, need - max_length, example, max_length) if (
          need > max_length) else pieces
      part_a = (special.cls,) + tuple(t for x in rows for t in x) + (special.eos,)
      if special.mask not in part_a:
        raise ValueError(f"{example.task} example {example.idx}: no mask left in Part A.")
      by_need[need] = part_a, len(part_a) - 1 - part_a[::-1].index(special.mask)
  rows = [by_need[n] for n in needs]
  return EncodedCloze(tuple(a for a, _ in rows), tuple(m for _, m in rows), answers,
                      single is None, max(needs) > max_length, special.sop)
