"""BERT WordPiece under GLM's command tokens (GLM-Base, GLM-Large): `wordpiece:PATH[@NAME]`.

Text pieces go through Hugging Face `tokenizers` set up as the reference's BertTokenizer: clean
control characters, space out CJK ideographs, lower-case, then NFD and drop the accents (no
NFKC: full-width letters stay unknown), split on whitespace and punctuation, greedy WordPiece
with words over 100 characters as one [UNK]. Literal command strings ([MASK], [CLS], ...) in
text become their ids. Ids and configurations: families.py (default: no task masks).
"""

from __future__ import annotations

from typing import List, Optional

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

from glm_jax.data.vocab import base, families


class WordPieceVocabulary(base.CommandTokenVocabulary):
  """Lower-cased BERT WordPiece with GLM's reference ids.

  With the 30522-token BERT uncased vocab file: pad = eos = 0, unk 100, [CLS] 101, [SEP] 102,
  [MASK] 103, sop 30522, eop 30523 (and with `@task_mask` [gMASK] 30524, [sMASK] 30525);
  padded size 30592.
  """

  def __init__(self, vocab_file: str, spec: Optional[str] = None, lower_case: bool = True,
               configuration: Optional[str] = None):
    loaded = families.load("wordpiece", vocab_file, configuration)
    self._vocab_file = vocab_file
    self._lower_case = lower_case
    self.spec = spec or f"wordpiece:{vocab_file}@{loaded.configuration.name}"
    self._set_command_tokens(loaded)
    self._tokenizer = _bert_tokenizer(loaded.data["index"], lower_case)
    super().__init__(extra_ids=0)

  def __eq__(self, other):
    return (isinstance(other, WordPieceVocabulary) and self._pieces == other._pieces
            and self.configuration == other.configuration
            and self._lower_case == other._lower_case)

  def __hash__(self):
    return hash((len(self._pieces), self.configuration.name))

  def _decode(self, ids) -> str:
    """Word pieces (command ids as their strings) joined by spaces, `##` pieces glued on."""
    words: List[str] = []
    for i in ids:
      piece = self.id_to_piece(int(i))
      if piece.startswith("##") and words:
        words[-1] += piece[2:]
      else:
        words.append(piece)
    return " ".join(words)


def _bert_tokenizer(index: dict, lower_case: bool) -> Tokenizer:
  """The reference's BasicTokenizer + WordpieceTokenizer, as a `tokenizers` pipeline."""
  tokenizer = Tokenizer(models.WordPiece(index, unk_token="[UNK]", max_input_chars_per_word=100))
  steps = [normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                      strip_accents=False, lowercase=lower_case)]
  if lower_case:  # the reference strips accents only when it lower-cases, after lower-casing:
    # NFD, then drop nonspacing marks (Mn) and keep spacing ones (Mc, e.g. Devanagari vowels)
    steps += [normalizers.NFD(), normalizers.Replace(Regex(r"\p{Mn}"), "")]
  tokenizer.normalizer = normalizers.Sequence(steps)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  return tokenizer
