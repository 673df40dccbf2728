"""WikiText's tokenized text back to plain text, rule for rule as the reference's evaluation.

The rules are the zero-shot WikiText detokenizer the reference (THUDM/GLM, after Megatron-LM)
applies before tokenizing: `@-@` number separators, spaced punctuation, bracket and quote
pairs, heading markers. They are string rules, so the result depends on what they see at
once: the reference runs them over the whole file, where the bracket and quote patterns pair
symbols across words and lines (`lm_eval/wikitext.py` offers both, see docs/eval_reference.md).
"""

from __future__ import annotations

import re
from typing import Tuple, Union

# (pattern, replacement), applied in this order; a str pattern is a plain substring rule.
_Rule = Tuple[Union[str, "re.Pattern"], str]
_WIKITEXT_RULES: Tuple[_Rule, ...] = (
    ("s '", "s'"),  # plural possessive
    (re.compile(r"/' [0-9]/"), "/'[0-9]/"),  # the reference's literal-slash rule, kept as is
    (" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."),
    (" : ", ": "), (" ; ", "; "), (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", "),
    # brackets and quotes: drop the spaces just inside each (lazy) pair
    (re.compile(r"\(\s*([^\)]*?)\s*\)"), r"(\1)"),
    (re.compile(r"\[\s*([^\]]*?)\s*\]"), r"[\1]"),
    (re.compile(r"{\s*([^}]*?)\s*}"), r"{\1}"),
    (re.compile(r"\"\s*([^\"]*?)\s*\""), r'"\1"'),
    (re.compile(r"'\s*([^']*?)\s*'"), r"'\1'"),
    ("= = = =", "===="), ("= = =", "==="), ("= =", "=="),
    (" \u00b0 ", "\u00b0"),
    (" \n", "\n"), ("\n ", "\n"),
    (" N ", " 1 "), (" 's", "'s"),
)


def wikitext(text: str) -> str:
  """The reference's WikiText detokenization of `text` (a line, or a whole file)."""
  for pattern, replacement in _WIKITEXT_RULES:
    if isinstance(pattern, str):
      text = text.replace(pattern, replacement)
    else:
      text = pattern.sub(replacement, text)
  return text
