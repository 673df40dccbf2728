"""Trains a SentencePiece model with the GLM roles reserved.

  python -m glm_jax.data.train_vocab --input=a.txt,b.jsonl --vocab_size=8000 --output=/tmp/glm

writes /tmp/glm.model and /tmp/glm.vocab; use it as the vocabulary spec 'spm:/tmp/glm.model'.
Inputs are text files (one document per line) or JSONL files with a "text" field, .gz allowed.
Ids: pad 0, eos 1, unk 2, then [CLS] [MASK] [sMASK] [gMASK] sop eop [dBLOCK] [SEP]; byte
fallback makes every character encodable (nothing becomes unk).
"""

from __future__ import annotations

import io
import os

if __name__ == "__main__":  # the quiet start must come before TensorFlow loads
  from glm_jax import console  # pylint: disable=g-import-not-at-top
  console.quiet_startup()
from typing import Iterable, Optional, Sequence

from absl import flags
from absl import logging
import sentencepiece as spm

from glm_jax import gin_utils
from glm_jax.data import corpus
from glm_jax.data import vocab as vocab_lib

_INPUT = flags.DEFINE_list("input", None, "Text / JSONL files (comma-separated, .gz allowed).")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 8000, "Pieces in the model (before padding).")
_OUTPUT = flags.DEFINE_string("output", None, "Output prefix: writes PREFIX.model, PREFIX.vocab.")
_MODEL_TYPE = flags.DEFINE_enum("model_type", "unigram", ["unigram", "bpe"],
                                "SentencePiece algorithm.")
_TEXT_KEY = flags.DEFINE_string("text_key", None, "JSON field of the text in JSONL inputs.")
_NUM_THREADS = flags.DEFINE_integer("num_threads", 2, "Trainer threads.")
_MAX_DROPPED = flags.DEFINE_float(
    "max_dropped_fraction", corpus.DEFAULT_MAX_DROPPED_FRACTION,
    "Stop when more than this fraction of an input file's lines are bad (invalid UTF-8, "
    "unparsable JSON).")


def train_sentencepiece(documents: Iterable[str], output_prefix: str, vocab_size: int, *,
                        model_type: str = "unigram", num_threads: int = 1,
                        character_coverage: float = 0.9995) -> str:
  """Trains on `documents` and writes OUTPUT_PREFIX.model/.vocab; returns the .model path."""
  specials = [vocab_lib.ROLE_PIECES[role] for role in vocab_lib.USER_DEFINED_ROLES]
  min_size = len(specials) + 3 + 256 + 1
  if vocab_size < min_size:
    raise ValueError(f"vocab_size {vocab_size} is too small: the roles and 256 byte pieces "
                     f"alone need {min_size - 1}; use at least {min_size}.")
  directory = os.path.dirname(os.path.abspath(output_prefix))
  os.makedirs(directory, exist_ok=True)
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(documents), model_writer=model, vocab_size=vocab_size,
      model_type=model_type, character_coverage=character_coverage, byte_fallback=True,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
      unk_piece="<unk>", user_defined_symbols=specials, split_digits=True,
      input_sentence_size=0, num_threads=num_threads, minloglevel=2)
  model_path = output_prefix + ".model"
  with open(model_path, "wb") as f:
    f.write(model.getvalue())
  sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
  with open(output_prefix + ".vocab", "w", encoding="utf-8") as f:
    for i in range(sp.get_piece_size()):
      f.write(f"{sp.id_to_piece(i)}\t{sp.get_score(i)}\n")
  return model_path


def run(inputs: Sequence[str], vocab_size: int, output: str, model_type: str = "unigram",
        text_key: Optional[str] = None, num_threads: int = 2,
        max_dropped_fraction: float = corpus.DEFAULT_MAX_DROPPED_FRACTION) -> str:
  """Reads `inputs` and trains; returns the .model path.

  A file with more than `max_dropped_fraction` bad lines stops it (one line naming the file).
  """
  documents, counters = [], corpus.ReadCounters()
  for path in inputs:
    read = corpus.ReadCounters()
    documents += corpus.read_documents([path], text_key=text_key, counters=read)
    corpus.check_bad_lines(path, read.as_dict(), max_dropped_fraction, "--max_dropped_fraction")
    if read.bad_lines:
      logging.warning("Corpus file %s: %s.", path, corpus.describe(read.as_dict()))
    counters.merge(read)
  if not documents:
    raise ValueError(f"No text found in {list(inputs)}; pass files with one document per line.")
  model_path = train_sentencepiece(documents, output, vocab_size, model_type=model_type,
                                   num_threads=num_threads)
  vocabulary = vocab_lib.GLMVocabulary(model_path)
  logging.info("Read %s; wrote %s (%d pieces, padded to %d).", counters.as_dict(), model_path,
               vocabulary.raw_vocab_size, vocabulary.padded_vocab_size)
  return model_path


def main(argv):
  gin_utils.begin_cli(argv, "--input, --output, --vocab_size")
  if not _INPUT.value or not _OUTPUT.value:
    raise ValueError("Pass --input=FILES and --output=PREFIX.")
  if _VOCAB_SIZE.value < 1 or _NUM_THREADS.value < 1:
    raise ValueError("--vocab_size and --num_threads must be positive integers.")
  corpus.check_max_dropped_fraction(_MAX_DROPPED.value)
  print(run(_INPUT.value, _VOCAB_SIZE.value, _OUTPUT.value, _MODEL_TYPE.value, _TEXT_KEY.value,
            _NUM_THREADS.value, _MAX_DROPPED.value))


if __name__ == "__main__":
  gin_utils.run(main)
