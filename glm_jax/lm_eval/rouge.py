"""ROUGE of generated summaries, prepared as the reference's seq2seq evaluation does.

The reference (THUDM/GLM tasks/seq2seq) scores strings in the tokenizer's own spelling:
  reference   decode(encode(summary)), split at `[SEP]`, each part re-tokenized
              (`fix_tokenization`, for WordPiece vocabularies), joined by newlines
  prediction  decode(generated tokens without eop / pad), split at `[SEP]`, re-tokenized,
              parts of at most 4 words dropped, parts sharing more than 70% of their words
              with earlier parts dropped, joined by newlines
then rouge-score's ROUGE-1, ROUGE-2 and ROUGE-Lsum (summary-level LCS over the newline-split
parts) F-measures with the Porter stemmer, averaged over examples; we report them x 100.
"""

from __future__ import annotations

import string
from typing import Dict, List, Sequence

import numpy as np

METRICS = {"rouge1": "rouge1", "rouge2": "rouge2", "rougeL": "rougeLsum"}
SENTENCE_SEPARATOR = "[SEP]"
MIN_WORDS = 5  # parts of a prediction with fewer words are dropped
DUPLICATE_RATE = 0.7


def _is_number_piece(word: str) -> bool:
  return all(ch.isdigit() or ch == "," for ch in word)


def _letter(word: str) -> bool:
  return len(word) == 1 and word.isalpha()


def fix_tokenization(text: str) -> str:
  """WordPiece-decoded text (`he didn ' t say " yes "`) in PTB-like tokens (`didn't`, ``)."""
  words = text.split()
  out: List[str] = []
  double_open = single_open = False
  after_dash = False
  i, n = 0, len(words)
  while i < n:
    w, glued_dash = words[i], False
    nxt = words[i + 1] if i + 1 < n else None
    if w == '"':  # alternate opening and closing double quotes
      out.append("''" if double_open else "``")
      double_open = not double_open
      i += 1
    elif w == "'" and out and out[-1].endswith("n") and nxt == "t":  # didn ' t -> did n't
      out[-1] = out[-1][:-1]
      out.append("n't")
      i += 2
    elif w == "'" and nxt in ("s", "d", "ll"):  # ' s -> 's
      out.append("'" + nxt)
      i += 2
    elif w == "'":
      out.append("'" if single_open else "`")
      single_open = not single_open
      i += 1
    elif w == "." and i + 2 < n and words[i + 1] == "." and words[i + 2] == ".":
      out.append("...")
      i += 3
    elif w == "," and out and _is_number_piece(out[-1]) and nxt is not None and (
        _is_number_piece(nxt)):  # 3 , 000 -> 3,000
      out[-1] += "," + nxt
      i += 2
    elif w == "." and out and out[-1].isdigit() and nxt is not None and nxt.isdigit():
      out[-1] += "." + nxt  # 3 . 03 -> 3.03
      i += 2
    elif (w == "." and out and _letter(out[-1]) and i + 2 < n and _letter(words[i + 1])
          and words[i + 2] == "."):  # u . n . -> u.n.
      k = i + 3
      while k + 2 < n and _letter(words[k + 1]) and words[k + 2] == ".":
        k += 2
      out[-1] += "".join(words[i:k])
      i = k
    elif w == "-":
      if nxt == "-":
        out.append("--")
        i += 2
      elif nxt is None or i == 0:
        out.append("-")
        i += 1
      elif out[-1] not in string.punctuation and nxt[0] not in string.punctuation:
        out[-1] += "-"  # well - known -> well-known
        glued_dash = True
        i += 1
      else:
        out.append("-")
        i += 1
    elif after_dash and out and w[0] not in string.punctuation:
      out[-1] += w
      i += 1
    else:
      out.append(w)
      i += 1
    after_dash = glued_dash
  return " ".join(out)


def _without_repeats(parts: Sequence[str], rate: float) -> List[str]:
  """Drops each part whose share of words already seen in earlier parts exceeds `rate`."""
  kept, seen = [], set()
  for part in parts:
    words = set(part.lower().split())
    if len(words & seen) / len(words) <= rate:
      kept.append(part)
    seen |= words
  return kept


def reference_text(reference: str, fix: bool = True) -> str:
  """A decoded reference summary as the reference scores it."""
  parts = reference.strip().split(SENTENCE_SEPARATOR)
  return "\n".join(fix_tokenization(p) if fix else p for p in parts)


def prediction_text(prediction: str, fix: bool = True) -> str:
  """A decoded prediction as the reference scores it (short and repeated parts dropped)."""
  parts = [fix_tokenization(p) if fix else p
           for p in prediction.strip().split(SENTENCE_SEPARATOR)]
  parts = [p for p in parts if len(p.split()) >= MIN_WORDS]
  return "\n".join(_without_repeats(parts, DUPLICATE_RATE))


def rouge(predictions: Sequence[str], references: Sequence[str], *,
          fix: bool = True) -> Dict[str, float]:
  """Mean ROUGE-1 / ROUGE-2 / ROUGE-Lsum F x 100, keys rouge1, rouge2, rougeL.

  `fix` re-tokenizes WordPiece output (the reference does for BERT vocabularies only).
  """
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  if len(predictions) != len(references) or not predictions:
    raise ValueError(f"Need as many predictions as references (got {len(predictions)} and "
                     f"{len(references)}), at least one.")
  scorer = rouge_scorer.RougeScorer(list(METRICS.values()), use_stemmer=True)
  # The reference passes (prediction, reference) as rouge-score's (target, prediction); the
  # F-measures of a one-part summary do not depend on the order, Lsum's of several may.
  scores = [scorer.score(prediction_text(p, fix), reference_text(r, fix))
            for p, r in zip(predictions, references)]
  return {name: 100.0 * float(np.mean([s[key].fmeasure for s in scores]))
          for name, key in METRICS.items()}
