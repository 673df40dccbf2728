"""Reading vocabulary files through etils.epath, so `gs://` folders work like local ones."""

from __future__ import annotations

from typing import Sequence

from etils import epath


def existing(path: str, what: str) -> epath.Path:
  """`path` as an epath.Path; a one-line FileNotFoundError naming `what` if it is missing."""
  p = epath.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"{what} {path} does not exist; {_HINTS.get(what, 'check the path')}.")
  return p


def first_existing(folder: str, names: Sequence[Sequence[str]], what: str):
  """The first group of `names` that all exist in `folder`, as paths (one line if none does)."""
  root = existing(folder, what)
  for group in names:
    paths = [root / n for n in group]
    if all(p.exists() for p in paths):
      return paths
  wanted = " or ".join(" + ".join(g) for g in names)
  raise FileNotFoundError(f"{what} {folder} holds no {wanted}; pass the folder with those files.")


_HINTS = {
    "WordPiece vocab file": "pass the BERT vocab.txt (one token per line)",
    "SentencePiece model": "train one with `python -m glm_jax.data.train_vocab`",
    "Chinese SentencePiece model": "pass the reference's cog-pretrain.model",
    "GPT-2 vocabulary folder": "pass the folder with gpt2-vocab.json + gpt2-merges.txt",
    "RoBERTa vocabulary folder": "pass the folder with roberta-vocab.json + roberta-merges.txt",
}
