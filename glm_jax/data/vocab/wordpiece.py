"""BERT WordPiece under GLM's command tokens (GLM-Base, GLM-Large): `wordpiece:PATH[@NAME]`.

Text pieces go through Hugging Face `tokenizers` set up as the reference's BertTokenizer: clean
control characters, space out CJK ideographs, lower-case, then NFD and drop the accents (no
NFKC: full-width letters stay unknown), split on whitespace and punctuation, greedy WordPiece
with words over 100 characters as one [UNK]. Literal command strings ([MASK], [CLS], ...) in
text become their ids.
"""

from __future__ import annotations

from typing import List, Optional

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

from glm_jax.data.vocab import base, files

# The reference's BERT runs: GLM-Base/Large have no task masks (config_tasks/model_blocklm_
# large.sh); `@task_mask` adds [gMASK] and [sMASK] after <|startofpiece|> and <|endofpiece|>.
CONFIGURATIONS = {
    "finetune_eval": base.Configuration(
        "finetune_eval", task_mask=False,
        note="GLM-Base / GLM-Large: [MASK] only (the released models, pretraining and tasks)"),
    "task_mask": base.Configuration(
        "task_mask", task_mask=True,
        note="--task-mask: [gMASK] and [sMASK] after the block symbols"),
}
DEFAULT_CONFIGURATION = "finetune_eval"
_REQUIRED = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def command_tokens(index: dict, num_text: int, cfg: base.Configuration):
  """(command tokens, number of ids) of the reference's BertWordPieceTokenizer."""
  c = base.CommandToken
  tokens = [c("pad", "[PAD]", index["[PAD]"]), c("ENC", "[CLS]", index["[CLS]"]),
            c("MASK", "[MASK]", index["[MASK]"]), c("unk", "[UNK]", index["[UNK]"]),
            c("sep", "[SEP]", index["[SEP]"]), c("eos", "[PAD]", index["[PAD]"]),
            c("sop", "<|startofpiece|>", num_text), c("eop", "<|endofpiece|>", num_text + 1)]
  n = num_text + 2
  if cfg.task_mask:
    tokens += [c("gMASK", "[gMASK]", n), c("sMASK", "[sMASK]", n + 1)]
    n += 2
  if cfg.decoder_mask:
    tokens.append(c("dBLOCK", "[dBLOCK]", n))
    n += 1
  return tokens, n


class WordPieceVocabulary(base.CommandTokenVocabulary):
  """Lower-cased BERT WordPiece with GLM's reference ids.

  With the 30522-token BERT uncased vocab file: pad = eos = 0, unk 100, [CLS] 101, [SEP] 102,
  [MASK] 103, sop 30522, eop 30523 (and with `@task_mask` [gMASK] 30524, [sMASK] 30525);
  padded size 30592.
  """

  def __init__(self, vocab_file: str, spec: Optional[str] = None, lower_case: bool = True,
               configuration: Optional[str] = None):
    cfg = base.pick_configuration("wordpiece", CONFIGURATIONS, DEFAULT_CONFIGURATION,
                                  configuration)
    text = files.existing(vocab_file, "WordPiece vocab file").read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and not lines[-1]:
      lines.pop()  # the newline after the last token
    index = {line.strip(): i for i, line in enumerate(lines)}
    missing = [t for t in _REQUIRED if t not in index]
    if missing:
      raise ValueError(f"WordPiece vocab {vocab_file} lacks {missing}; use a BERT vocab.txt.")
    self._vocab_file = vocab_file
    self._lower_case = lower_case
    self._pieces = [line.strip() for line in lines]
    self.spec = spec or f"wordpiece:{vocab_file}@{cfg.name}"
    tokens, num_tokens = command_tokens(index, len(index), cfg)
    self._set_command_tokens(tokens, num_tokens, cfg, self._pieces)
    self._tokenizer = _bert_tokenizer(index, lower_case)
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
