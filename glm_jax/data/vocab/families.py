"""The released GLM vocabulary families as data: configurations, command tokens, reference ids.

No TensorFlow or seqio here, so tools (the checkpoint converter) can learn a vocabulary's
padded size and roles cheaply with `load(kind, path, configuration)`; the seqio vocabularies
(bpe.py, wordpiece.py, chinese_sp.py) tokenize on top of what it returns.

Each family's command tokens follow the reference (THUDM/GLM `data_utils/tokenization.py`):
names, strings, ids and which ones eat the whitespace before them, for every configuration
(the reference's --task-mask, --block-mask-prob and --fix-command-token flag sets; names as in
../shared/fixtures/glm_vocab/<family>.json).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from glm_jax import sizes
from glm_jax.data.special_tokens import SpecialTokens
from glm_jax.data.vocab import files

PAD_MULTIPLE = 128
# A token ends a sentence when it contains one of these: the reference's contains_sentence_end
# (blocklm_utils.py; BlockDataset's has the first six).
SENTENCE_END_CHARS = (".", "?", "!", ";", ":", "\n", "\u3002", "\uff1f", "\uff01", "\uff1b",
                      "\u2026")
# Reference command-token names -> SpecialTokens fields.
ROLE_OF_NAME = {"pad": "pad", "eos": "eos", "sep": "sep", "ENC": "cls", "MASK": "mask",
                "unk": "unk", "sop": "sop", "eop": "eop", "gMASK": "gmask", "sMASK": "smask",
                "dBLOCK": "dblock"}


def padded_size(size: int, multiple: int = PAD_MULTIPLE) -> int:
  """`size` rounded up to a multiple of `multiple`."""
  return sizes.round_up(size, multiple)


def sentence_end_ids(pieces: Sequence[str], skip: Iterable[int] = ()) -> Tuple[int, ...]:
  """Ids whose piece contains an end mark (the reference's `contains_sentence_end`)."""
  skip = set(skip)
  return tuple(i for i, p in enumerate(pieces)
               if i not in skip and any(c in p for c in SENTENCE_END_CHARS))


@dataclasses.dataclass(frozen=True)
class CommandToken:
  """One command token: its reference name, the string that stands for it in text, its id."""

  name: str            # 'pad', 'eos', 'sep', 'ENC', 'MASK', 'unk', 'sop', 'eop', 'gMASK', ...
  text: str            # '[MASK]'
  id: int
  lstrip: bool = False  # eats the whitespace before it in text


@dataclasses.dataclass(frozen=True)
class Configuration:
  """A family's flag set (the reference's --task-mask, --block-mask-prob, --fix-command-token)."""

  name: str
  task_mask: bool
  decoder_mask: bool = False  # [dBLOCK] exists (pretraining with --block-mask-prob > 0)
  fix_command_token: bool = False  # the Chinese vocabulary only
  note: str = ""


_C = Configuration
CONFIGURATIONS: Dict[str, Dict[str, Configuration]] = {
    # The reference's BERT runs: GLM-Base/Large have no task masks (config_tasks/
    # model_blocklm_large.sh); `@task_mask` adds [gMASK] and [sMASK] after the block symbols.
    "wordpiece": {
        "finetune_eval": _C("finetune_eval", task_mask=False,
                            note="GLM-Base / GLM-Large: [MASK] only (pretraining and tasks)"),
        "task_mask": _C("task_mask", task_mask=True,
                        note="--task-mask: [gMASK] and [sMASK] after the block symbols"),
    },
    "gpt2": {
        "finetune_eval": _C("finetune_eval", task_mask=True,
                            note="GLM-2B / GLM-10B fine-tuning and evaluation (--task-mask)"),
        "pretrain": _C("pretrain", task_mask=True, decoder_mask=True,
                       note="GLM-10B pretraining (--task-mask --block-mask-prob 0.1: [dBLOCK])"),
    },
    "roberta": {
        "finetune_eval": _C("finetune_eval", task_mask=False,
                            note="GLM-RoBERTa fine-tuning and evaluation (no --task-mask)"),
        "pretrain_task_mask": _C("pretrain_task_mask", task_mask=True,
                                 note="GLM-RoBERTa pretraining (ds_blockta_large.sh: --task-mask)"),
    },
    "chinese_sp": {
        "large_chinese": _C(
            "large_chinese", task_mask=True, fix_command_token=True,
            note="GLM-Large-Chinese fine-tuning/eval, and every Hugging Face hub Chinese model"),
        "large_chinese_pretrain": _C(
            "large_chinese_pretrain", task_mask=True, decoder_mask=True, fix_command_token=True,
            note="GLM-Large-Chinese pretraining (adds [dBLOCK])"),
        "10b_chinese": _C(
            "10b_chinese", task_mask=True,
            note="GLM-10B-Chinese from the reference's own checkpoint ([gMASK] = eop = 50007)"),
        "10b_chinese_pretrain": _C("10b_chinese_pretrain", task_mask=True, decoder_mask=True,
                                   note="GLM-10B-Chinese pretraining (adds [dBLOCK])"),
    },
}
# Without @NAME: the configuration the released models are fine-tuned and evaluated with.
DEFAULT_CONFIGURATION = {"wordpiece": "finetune_eval", "gpt2": "finetune_eval",
                         "roberta": "finetune_eval", "chinese_sp": "large_chinese"}
# Files of a BPE folder: the names the reference reads, or Hugging Face's.
BPE_FILE_NAMES = {
    "gpt2": (("gpt2-vocab.json", "gpt2-merges.txt"), ("vocab.json", "merges.txt")),
    "roberta": (("roberta-vocab.json", "roberta-merges.txt"), ("vocab.json", "merges.txt")),
}
_BPE_FOLDER = {"gpt2": "GPT-2 vocabulary folder", "roberta": "RoBERTa vocabulary folder"}


def pick_configuration(kind: str, name: Optional[str]) -> Configuration:
  """The named configuration of a family (its default without a name); unknown names refused."""
  default = DEFAULT_CONFIGURATION[kind]
  name = default if name is None else name
  if name not in CONFIGURATIONS[kind]:
    raise ValueError(f"Unknown {kind} vocabulary configuration {name!r}; use one of "
                     f"{sorted(CONFIGURATIONS[kind])} (e.g. '{kind}:PATH@{default}').")
  return CONFIGURATIONS[kind][name]


@dataclasses.dataclass
class Loaded:
  """A family's files read and its command tokens laid out (what a vocabulary is built from)."""

  kind: str
  configuration: Configuration
  command_tokens: List[CommandToken]
  num_tokens: int                 # ids the reference assigns, before padding
  pieces: List[str]               # text id -> its piece
  special: SpecialTokens
  data: dict                      # what the tokenizer needs (encoder + merges, proto, index)

  @property
  def padded_vocab_size(self) -> int:
    return padded_size(self.num_tokens)


def _special(tokens: Sequence[CommandToken], cfg: Configuration,
             pieces: Sequence[str]) -> SpecialTokens:
  roles = {"smask": None, "gmask": None, **{ROLE_OF_NAME[t.name]: t.id for t in tokens}}
  command_text = {t.id: t.text for t in tokens}
  return SpecialTokens(task_mask=cfg.task_mask, sentence_end_ids=sentence_end_ids(
      [command_text.get(i, p) for i, p in enumerate(pieces)]), **roles)


def _block_task_decoder(tokens: List[CommandToken], n: int, cfg: Configuration,
                        task_order=("gMASK", "sMASK"), lstrip: bool = True):
  """Appends the task masks (with --task-mask) and [dBLOCK] (pretraining) from id n."""
  c = CommandToken
  if cfg.task_mask:
    tokens += [c(name, f"[{name}]", n + i, lstrip) for i, name in enumerate(task_order)]
    n += 2
  if cfg.decoder_mask:
    tokens.append(c("dBLOCK", "[dBLOCK]", n))
    n += 1
  return tokens, n


def _wordpiece(path: str, cfg: Configuration) -> Loaded:
  text = files.existing(path, "WordPiece vocab file").read_text(encoding="utf-8")
  lines = text.split("\n")
  if lines and not lines[-1]:
    lines.pop()  # the newline after the last token
  index = {line.strip(): i for i, line in enumerate(lines)}
  missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t not in index]
  if missing:
    raise ValueError(f"WordPiece vocab {path} lacks {missing}; use a BERT vocab.txt.")
  c, n = CommandToken, len(index)
  tokens = [c("pad", "[PAD]", index["[PAD]"]), c("ENC", "[CLS]", index["[CLS]"]),
            c("MASK", "[MASK]", index["[MASK]"]), c("unk", "[UNK]", index["[UNK]"]),
            c("sep", "[SEP]", index["[SEP]"]), c("eos", "[PAD]", index["[PAD]"]),
            c("sop", "<|startofpiece|>", n), c("eop", "<|endofpiece|>", n + 1)]
  tokens, num = _block_task_decoder(tokens, n + 2, cfg, lstrip=False)
  pieces = [line.strip() for line in lines]
  return Loaded("wordpiece", cfg, tokens, num, pieces, _special(tokens, cfg, pieces),
                {"index": index})


def read_merges(text: str) -> List[tuple]:
  """merges.txt -> [(left, right)]: a `#version` header and blank lines are skipped."""
  lines = text.split("\n")
  if lines and lines[0].startswith("#version"):
    lines = lines[1:]
  return [tuple(line.split()) for line in lines if line.strip()]


def _need(encoder: dict, token: str, kind: str, folder: str) -> int:
  if token not in encoder:
    other = "roberta:" if kind == "gpt2" else "gpt2:"
    raise ValueError(f"{folder} is not a {kind} vocabulary: its vocab json has no {token!r}; "
                     f"use {other} or the right folder.")
  return encoder[token]


def _bpe(kind: str, folder: str, cfg: Configuration) -> Loaded:
  vocab_path, merges_path = files.first_existing(folder, BPE_FILE_NAMES[kind], _BPE_FOLDER[kind])
  encoder = json.loads(vocab_path.read_text(encoding="utf-8"))
  c, n = CommandToken, len(encoder)
  if kind == "roberta":
    eos, cls = _need(encoder, "</s>", kind, folder), _need(encoder, "<s>", kind, folder)
    mask, unk = _need(encoder, "<mask>", kind, folder), _need(encoder, "<unk>", kind, folder)
    tokens = [c("pad", "<|endoftext|>", eos), c("eos", "<|endoftext|>", eos),
              c("sep", "[SEP]", eos), c("ENC", "[CLS]", cls), c("MASK", "[MASK]", mask, True),
              c("unk", "[UNK]", unk), c("sop", "<|startofpiece|>", n),
              c("eop", "<|endofpiece|>", n + 1)]
    n += 2
  else:
    if encoder.get("<s>") == 0 and "<mask>" in encoder:
      raise ValueError(f"{folder} holds a RoBERTa vocabulary (<s> = 0, <mask>); use "
                       f"'roberta:{folder}'.")
    eot = _need(encoder, "<|endoftext|>", kind, folder)
    tokens = [c("pad", "<|endoftext|>", eot), c("eos", "<|endoftext|>", eot),
              c("sop", "<|startofpiece|>", n), c("eop", "<|endofpiece|>", n + 1),
              c("ENC", "[CLS]", n + 2), c("MASK", "[MASK]", n + 3, True), c("sep", "[SEP]", n + 4),
              c("unk", "[UNK]", n + 5)]
    n += 6
  tokens, num = _block_task_decoder(tokens, n, cfg)
  pieces = [""] * (max(encoder.values()) + 1)
  for token, i in encoder.items():
    pieces[i] = token
  return Loaded(kind, cfg, tokens, num, pieces, _special(tokens, cfg, pieces),
                {"encoder": encoder, "merges": read_merges(merges_path.read_text(encoding="utf-8"))})


def _chinese_sp(path: str, cfg: Configuration) -> Loaded:
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  proto = files.existing(path, "Chinese SentencePiece model").read_bytes()
  sp = spm.SentencePieceProcessor(model_proto=proto)
  c, n = CommandToken, sp.get_piece_size()
  tokens = [c("pad", "<|endoftext|>", n), c("eos", "<|endoftext|>", n), c("sep", "[SEP]", n + 1),
            c("ENC", "[CLS]", n + 2), c("MASK", "[MASK]", n + 3, True), c("unk", "[UNK]", n + 4),
            c("sop", "<|startofpiece|>", n + 6), c("eop", "<|endofpiece|>", n + 7)]
  # n + 5 is never assigned; without --fix-command-token [gMASK] lands on eop's id.
  nxt = n + (8 if cfg.fix_command_token else 7)
  order = ("sMASK", "gMASK") if cfg.fix_command_token else ("gMASK", "sMASK")
  tokens, num = _block_task_decoder(tokens, nxt, cfg, task_order=order)
  pieces = [sp.id_to_piece(i) for i in range(n)]
  return Loaded("chinese_sp", cfg, tokens, num, pieces, _special(tokens, cfg, pieces),
                {"proto": proto})


def load(kind: str, path: str, configuration: Optional[str] = None) -> Loaded:
  """Reads a family's files (local or gs://) and lays out its command tokens."""
  cfg = pick_configuration(kind, configuration)
  if kind == "wordpiece":
    return _wordpiece(path, cfg)
  if kind in ("gpt2", "roberta"):
    return _bpe(kind, path, cfg)
  if kind == "chinese_sp":
    return _chinese_sp(path, cfg)
  raise ValueError(f"Unknown vocabulary family {kind!r}; use one of {sorted(CONFIGURATIONS)}.")
