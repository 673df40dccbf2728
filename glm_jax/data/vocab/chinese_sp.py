"""The reference's Chinese SentencePiece (`cog-pretrain.model`: GLM-Large-Chinese, GLM-10B-Chinese)
under GLM's command tokens: `chinese_sp:PATH[@NAME]`.

Text pieces go through the SentencePiece model itself (its nmt_nfkc normalizer, dummy prefix,
no byte fallback: characters outside it become piece 0, not [UNK]). The command tokens follow
the 50,000 pieces; GLM-10B-Chinese was trained without --fix-command-token, so its [gMASK] has
the id of <|endofpiece|> (50007), while GLM-Large-Chinese and the Hugging Face hub's Chinese
checkpoints (whose converter copies row 50007 to 50009) use [sMASK] 50008, [gMASK] 50009.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import sentencepiece as spm

from glm_jax.data.vocab import base, files

CONFIGURATIONS = {
    "large_chinese": base.Configuration(
        "large_chinese", task_mask=True, fix_command_token=True,
        note="GLM-Large-Chinese fine-tuning/eval, and every Hugging Face hub Chinese checkpoint"),
    "large_chinese_pretrain": base.Configuration(
        "large_chinese_pretrain", task_mask=True, decoder_mask=True, fix_command_token=True,
        note="GLM-Large-Chinese pretraining (adds [dBLOCK])"),
    "10b_chinese": base.Configuration(
        "10b_chinese", task_mask=True,
        note="GLM-10B-Chinese fine-tuning/eval from the reference's own checkpoint "
             "([gMASK] = eop = 50007)"),
    "10b_chinese_pretrain": base.Configuration(
        "10b_chinese_pretrain", task_mask=True, decoder_mask=True,
        note="GLM-10B-Chinese pretraining (adds [dBLOCK])"),
}
DEFAULT_CONFIGURATION = "large_chinese"


def command_tokens(n: int, cfg: base.Configuration):
  """(command tokens, number of ids) of the reference's ChineseSPTokenizer over n pieces."""
  c = base.CommandToken
  tokens = [c("pad", "<|endoftext|>", n), c("eos", "<|endoftext|>", n), c("sep", "[SEP]", n + 1),
            c("ENC", "[CLS]", n + 2), c("MASK", "[MASK]", n + 3, True), c("unk", "[UNK]", n + 4),
            c("sop", "<|startofpiece|>", n + 6), c("eop", "<|endofpiece|>", n + 7)]
  nxt = n + (8 if cfg.fix_command_token else 7)  # n + 5 is never assigned
  if cfg.task_mask:
    first, second = ("sMASK", "gMASK") if cfg.fix_command_token else ("gMASK", "sMASK")
    tokens += [c(first, f"[{first}]", nxt, True), c(second, f"[{second}]", nxt + 1, True)]
    nxt += 2
  if cfg.decoder_mask:
    tokens.append(c("dBLOCK", "[dBLOCK]", nxt))
    nxt += 1
  return tokens, nxt


class ChineseSPVocabulary(base.SentencePieceState, base.CommandTokenVocabulary):
  """cog-pretrain.model with GLM's reference ids (padded size 50048)."""

  def __init__(self, model_file: str, spec: Optional[str] = None,
               configuration: Optional[str] = None):
    cfg = base.pick_configuration("chinese_sp", CONFIGURATIONS, DEFAULT_CONFIGURATION,
                                  configuration)
    self._model_proto = files.existing(model_file, "Chinese SentencePiece model").read_bytes()
    self._model_file = model_file
    self._sp = spm.SentencePieceProcessor(model_proto=self._model_proto)
    self.spec = spec or f"chinese_sp:{model_file}@{cfg.name}"
    n = self._sp.get_piece_size()
    self._pieces = [self._sp.id_to_piece(i) for i in range(n)]
    tokens, num_tokens = command_tokens(n, cfg)
    self._set_command_tokens(tokens, num_tokens, cfg, self._pieces)
    super().__init__(extra_ids=0)

  def __eq__(self, other):
    return (isinstance(other, ChineseSPVocabulary) and self._model_proto == other._model_proto
            and self.configuration == other.configuration)

  def __hash__(self):
    return hash((self._model_proto, self.configuration.name))

  def _encode_pieces(self, pieces: Sequence[str]) -> List[List[int]]:
    return self._sp.encode(list(pieces))

  def _decode_text(self, ids: Sequence[int]) -> str:
    return self._sp.decode(list(ids))
