"""WikiText perplexity with overlapping windows, as the reference's zero_wikitext.sh runs it.

The file is detokenized (`detokenize.wikitext`) and encoded as one token stream t_0 ... t_{L-1}.
Window w covers `W` tokens starting at w * overlap; every token but t_0 is scored exactly once:

  window 0      Part A = `[CLS] t_0 MASK`, Part B = `sop t_1 ... t_{W-2}`, all scored
  window w > 0  Part A = `[CLS]` + the window's first W - overlap tokens + `MASK`, Part B =
                `sop` + the last `overlap` tokens but one, scored: those `overlap` tokens
  unidirectional: Part A is always `[CLS] first MASK`; the loss is on the same tokens.

MASK is `special.mask_for('document')` (`[gMASK]` with task masks, else `[MASK]`); there is no
eos after it. Word perplexity divides the summed loss by the reference's word count,
`len(raw.strip().split(" ")) - 1` (`num_original_tokens - 1`), token perplexity by L - 1.

Two conventions (docs/eval_reference.md):
  'glm_jax'    rows are `sequence_length` long (W = sequence_length - 2), the detokenizer runs
               line by line, and the window is clipped to the model's position table.
  'reference'  W = sequence_length - 1, so rows are sequence_length + 1 long; the detokenizer
               runs over the whole file (its quote / bracket rules pair across lines); a
               window beyond the model's positions is an error.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from glm_jax import paths, sizes
from glm_jax.lm_eval import blank_rows, detokenize

SPLIT_FILES = {"test": "test.txt", "validation": "valid.txt"}
CONVENTIONS = ("glm_jax", "reference")
SEQUENCE_LENGTH = 1024  # config_tasks/zero_wikitext.sh --seq-length
OVERLAP = 256  # --overlapping-eval: the tokens each window (after the first) scores


def check_convention(convention: str) -> str:
  if convention not in CONVENTIONS:
    raise ValueError(f"WikiText convention must be one of {CONVENTIONS}, got {convention!r}.")
  return convention


def split_path(directory: str, split: str) -> str:
  if split not in SPLIT_FILES:
    raise ValueError(f"Unknown WikiText split {split!r}; use one of {sorted(SPLIT_FILES)}.")
  return str(paths.resolve(directory) / SPLIT_FILES[split])


def read(path: str) -> str:
  """The file's text exactly (bytes decoded as UTF-8, line ends kept)."""
  p = paths.resolve(path)
  if not p.exists():
    raise FileNotFoundError(f"WikiText file {path} does not exist; set WIKITEXT_DIR to a "
                            "directory with test.txt / valid.txt (wiki.test.tokens renamed).")
  return p.read_bytes().decode("utf-8")


def num_original_tokens(raw: str) -> int:
  """The reference's word count of the raw file: `len(raw.strip().split(" "))`."""
  return len(raw.strip().split(" "))


def word_count(raw: str) -> int:
  """The word perplexity's denominator, `num_original_tokens - 1` (the reference's)."""
  return num_original_tokens(raw) - 1


def detokenized(raw: str, convention: str = "glm_jax") -> str:
  """The text that is encoded: the whole file at once ('reference') or line by line."""
  if check_convention(convention) == "reference":
    return detokenize.wikitext(raw)
  # Line by line; the spaces the whole-file rules strip around line breaks go too.
  return "\n".join(detokenize.wikitext(line).strip(" ") for line in raw.split("\n"))


def tokenize(raw: str, vocabulary, convention: str = "glm_jax") -> np.ndarray:
  """The file as one token stream [L] (int32)."""
  return np.asarray(vocabulary.encode(detokenized(raw, convention)), np.int32)


def window_length(sequence_length: int, convention: str = "glm_jax") -> int:
  """W, the document tokens per window: sequence_length - 1 ('reference') or - 2."""
  return sequence_length - (1 if check_convention(convention) == "reference" else 2)


def row_length(sequence_length: int, convention: str = "glm_jax") -> int:
  """[CLS] + W tokens + MASK (sop takes the last token's place): W + 2."""
  return window_length(sequence_length, convention) + 2


def num_windows(num_tokens: int, window: int, overlap: int) -> int:
  """ceil((L - W) / overlap) + 1 windows (one for a stream of at most W tokens)."""
  if not 0 < overlap < window:
    raise ValueError(f"Need 0 < overlap < window tokens, got overlap {overlap}, "
                     f"window {window}.")
  return max(sizes.ceil_div(max(num_tokens - window, 0), overlap) + 1, 1)


def window_span(index: int, num_tokens: int, window: int, overlap: int) -> Tuple[int, int, int]:
  """(start, first scored, end) of window `index`: tokens [start, end), scored [first, end)."""
  start = index * overlap
  end = min(start + window, num_tokens)
  first = start + 1 if index == 0 else start + window - overlap
  return start, first, end


def window_row(tokens: np.ndarray, index: int, special, *, sequence_length: int,
               overlap: int = OVERLAP, bidirectional: bool = True,
               convention: str = "glm_jax") -> Dict[str, object]:
  """The model row of window `index` (see the module docstring)."""
  window = window_length(sequence_length, convention)
  start, first, end = window_span(index, len(tokens), window, overlap)
  split = start + 1 if (index == 0 or not bidirectional) else first  # Part A / Part B cut
  part_a = [special.cls] + tokens[start:split].tolist() + [special.mask_for("document")]
  scored = tokens[split:end].tolist()
  weights = [0.0] * (first - split) + [1.0] * (end - first)
  return blank_rows.infill_row(part_a, len(part_a) - 1, [special.sop] + scored[:-1], scored,
                               row_length(sequence_length, convention), weights)


def build_rows(tokens: np.ndarray, special, *, sequence_length: int, overlap: int = OVERLAP,
               bidirectional: bool = True, convention: str = "glm_jax"
               ) -> List[Dict[str, object]]:
  count = num_windows(len(tokens), window_length(sequence_length, convention), overlap)
  return [window_row(tokens, i, special, sequence_length=sequence_length, overlap=overlap,
                     bidirectional=bidirectional, convention=convention) for i in range(count)]


def positions_needed(sequence_length: int, convention: str = "glm_jax") -> int:
  """The largest position id a row uses (block positions of window 0 run to W - 1)."""
  return window_length(sequence_length, convention) - 1
