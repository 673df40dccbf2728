"""Undo the word tokenization of LAMBADA's plain-text release and of WikiText."""

from __future__ import annotations

import re

_PUNCT = [(" n't", "n't"), (" 's", "'s"), (" 're", "'re"), (" 've", "'ve"), (" 'll", "'ll"),
          (" 'd", "'d"), (" 'm", "'m"), (" ,", ","), (" .", "."), (" ?", "?"), (" !", "!"),
          (" ;", ";"), (" :", ":"), (" )", ")"), ("( ", "(")]


def lambada(text: str) -> str:
  """`` he said , `` i 'll go . '' -> "he said, "i'll go." (quotes become ")."""
  text = text.replace("`` ", '"').replace(" ''", '"').replace("``", '"').replace("''", '"')
  for a, b in _PUNCT:
    text = text.replace(a, b)
  return re.sub(r" +", " ", text).strip()


def wikitext(text: str) -> str:
  """WikiText's ` @-@ `, ` @,@ `, spaced punctuation and headings back to plain text."""
  text = text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
  text = re.sub(r"= = = (.*?) = = =", r"=== \1 ===", text)
  text = re.sub(r"= = (.*?) = =", r"== \1 ==", text)
  for a, b in _PUNCT:
    text = text.replace(a, b)
  text = re.sub(r'" (.*?) "', r'"\1"', text)
  return re.sub(r"[ \t]+", " ", text).replace(" \n", "\n")
