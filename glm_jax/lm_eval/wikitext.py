"""WikiText perplexity with overlapping windows (GLM_SPEC.md section 7).

The token stream is cut into windows of `window` tokens every `stride` tokens; each token is
predicted once. Bidirectional: Part A = `[CLS] earlier tokens [gMASK]`, Part B = the window's
new tokens (the last `stride`; all but the first in the first window). Unidirectional:
Part A = `[CLS] first [gMASK]`, everything after the first token in Part B, loss on the new
tokens. Word-level perplexity divides the same total loss by the file's whitespace words.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from glm_jax import paths
from glm_jax.lm_eval import blank_rows, detokenize

SPLIT_FILES = {"test": "test.txt", "validation": "valid.txt"}


def split_path(directory: str, split: str) -> str:
  if split not in SPLIT_FILES:
    raise ValueError(f"Unknown WikiText split {split!r}; use one of {sorted(SPLIT_FILES)}.")
  return str(paths.resolve(directory) / SPLIT_FILES[split])


def read(path: str) -> str:
  if not paths.resolve(path).is_file():
    raise FileNotFoundError(f"WikiText file {path} does not exist; set WIKITEXT_DIR to a "
                            "directory with test.txt / valid.txt (../shared/data/wikitext-2).")
  return paths.read_text(path)


def num_words(raw: str) -> int:
  """Whitespace words of the tokenized file (the usual word-level perplexity unit)."""
  return len(raw.split())


def tokenize(raw: str, vocabulary, detokenized: bool = True) -> np.ndarray:
  """The whole file as one token stream (line by line; empty lines dropped)."""
  ids: List[int] = []
  for line in raw.split("\n"):
    if not line.strip():
      continue
    text = detokenize.wikitext(line.strip()) if detokenized else line.strip()
    ids.extend(int(t) for t in vocabulary.encode(text))
  return np.asarray(ids, np.int32)


def window_spans(num_tokens: int, window: int, stride: int) -> List[Tuple[int, int, int]]:
  """(start, first_predicted, end) per window; every token but the first predicted once."""
  if not 0 < stride <= window - 1:
    raise ValueError(f"Need 0 < stride < window, got stride {stride}, window {window}.")
  spans, start, done = [], 0, 1
  while done < num_tokens:
    end = min(start + window, num_tokens)
    spans.append((start, done, end))
    done = end
    start += stride
  return spans


def row_length(window: int) -> int:
  return window + 2  # [CLS] and [gMASK] join the window's tokens (sop replaces the last)


def build_rows(tokens: np.ndarray, special, *, window: int, stride: int,
               bidirectional: bool = True) -> List[Dict[str, object]]:
  length = row_length(window)
  rows = []
  for start, first, end in window_spans(len(tokens), window, stride):
    new = tokens[first:end].tolist()
    if bidirectional:
      part_a = [special.cls] + tokens[start:first].tolist() + [special.gmask]
      part_b = [special.sop] + new[:-1]
      rows.append(blank_rows.infill_row(part_a, len(part_a) - 1, part_b, new, length))
    else:
      part_a = [special.cls, int(tokens[start]), special.gmask]
      seq = tokens[start + 1:end].tolist()
      weights = [0.0] * (first - start - 1) + [1.0] * len(new)
      rows.append(blank_rows.infill_row(part_a, len(part_a) - 1, [special.sop] + seq[:-1],
                                        seq, length, weights))
  return rows
