"""The reference's Chinese SentencePiece (`cog-pretrain.model`: GLM-Large-Chinese, GLM-10B-Chinese)
under GLM's command tokens: `chinese_sp:PATH[@NAME]`.

Text pieces go through the SentencePiece model itself (its nmt_nfkc normalizer, dummy prefix,
no byte fallback: characters outside it become piece 0, not [UNK]). The command tokens follow
the 50,000 pieces; GLM-10B-Chinese was trained without --fix-command-token, so its [gMASK] has
the id of <|endofpiece|> (50007, `@10b_chinese`), while GLM-Large-Chinese and the Hugging Face
hub's Chinese checkpoints (whose converter copies row 50007 to 50009) use [sMASK] 50008,
[gMASK] 50009 (`@large_chinese`, the default). Ids and configurations: families.py.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import sentencepiece as spm

from glm_jax.data.vocab import base, families


class ChineseSPVocabulary(base.SentencePieceState, base.CommandTokenVocabulary):
  """cog-pretrain.model with GLM's reference ids (padded size 50048)."""

  def __init__(self, model_file: str, spec: Optional[str] = None,
               configuration: Optional[str] = None):
    loaded = families.load("chinese_sp", model_file, configuration)
    self._model_proto = loaded.data["proto"]
    self._model_file = model_file
    self._sp = spm.SentencePieceProcessor(model_proto=self._model_proto)
    self.spec = spec or f"chinese_sp:{model_file}@{loaded.configuration.name}"
    self._set_command_tokens(loaded)
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
