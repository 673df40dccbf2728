"""Vocabularies: GLM roles, padding to 128, round trips, WordPiece reference ids, train_vocab."""

import os
import pickle
import subprocess
import sys

import pytest
import tensorflow as tf

from glm_jax.data import special_tokens
from glm_jax.data import vocab as vocab_lib

DATA = os.path.join(os.path.dirname(__file__), "data")
TEXTS = ["The horse galloped into Sleepy Hollow at night.",
         "Is it 1790? Yes: the ghost rides; nobody knows!"]


@pytest.fixture(scope="module")
def builtin():
  return vocab_lib.get_vocabulary("builtin")


def test_builtin_roles_and_padding(builtin):
  special = builtin.special
  roles = ["pad", "eos", "unk", "cls", "mask", "smask", "gmask", "sop", "eop", "dblock", "sep"]
  ids = [getattr(special, r) for r in roles]
  assert ids == list(range(11))  # train_vocab's reserved layout
  for role in roles:
    assert builtin.id_to_piece(getattr(special, role)) == vocab_lib.ROLE_PIECES[role]
  assert builtin.raw_vocab_size == 8000
  assert builtin.vocab_size == builtin.padded_vocab_size == 8064
  assert builtin.vocab_size % 128 == 0
  assert (builtin.eos_id, builtin.pad_id, builtin.unk_id) == (1, 0, 2)


def test_sentence_end_ids(builtin):
  ends = builtin.special.sentence_end_ids
  pieces = {builtin.id_to_piece(i) for i in ends}
  assert {".", "?", "!", ";", ":"} <= pieces
  assert all(any(c in p for c in ".?!;:") for p in pieces)
  assert not set(ends) & set(range(11))


def test_round_trip_python_and_tf(builtin):
  for text in TEXTS:
    ids = builtin.encode(text)
    assert builtin.unk_id not in ids
    assert builtin.decode(ids) == text
    assert builtin.encode_tf(tf.constant(text)).numpy().tolist() == ids
    assert builtin.decode_tf(tf.constant(ids)).numpy().decode() == text


def test_byte_fallback_never_unk(builtin):
  ids = builtin.encode("漢字 ünïcödé ☃")
  assert builtin.unk_id not in ids
  assert builtin.decode(ids) == "漢字 ünïcödé ☃"


def test_decode_does_not_stop_at_eos_and_maps_padding_ids(builtin):
  a, b = builtin.encode("one."), builtin.encode("two.")
  assert builtin.decode(a + [builtin.eos_id] + b) == "one. two."
  assert builtin.decode([8063]) == builtin.decode([builtin.unk_id])


def test_role_literals_encode_to_roles(builtin):
  ids = builtin.encode("[CLS] a [MASK] b [gMASK]")
  assert builtin.special.cls in ids and builtin.special.mask in ids
  assert builtin.special.gmask in ids


def test_pickle_and_spec(builtin):
  again = pickle.loads(pickle.dumps(builtin))
  assert again == builtin and again.encode(TEXTS[0]) == builtin.encode(TEXTS[0])
  assert vocab_lib.vocabulary_spec(builtin) == "builtin"
  spm = vocab_lib.get_vocabulary("spm:" + builtin.sentencepiece_model_file)
  assert spm == builtin and spm.spec.startswith("spm:")


def test_bad_specs():
  with pytest.raises(ValueError, match="Unknown vocabulary spec"):
    vocab_lib.get_vocabulary("gpt2")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    vocab_lib.get_vocabulary("spm:/nonexistent/model.model")


def _bert_like_vocab(path):
  """A 30522-line file laid out like BERT uncased: [PAD], unused, [UNK] 100 ... words."""
  words = [line.strip() for line in open(os.path.join(DATA, "wordpiece_vocab.txt"))][5:]
  tokens = (["[PAD]"] + [f"[unused{i}]" for i in range(99)] +
            ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words)
  tokens += [f"[filler{i}]" for i in range(30522 - len(tokens))]
  with open(path, "w") as f:
    f.write("\n".join(tokens) + "\n")


def test_wordpiece_reference_ids(tmp_path):
  path = str(tmp_path / "vocab.txt")
  _bert_like_vocab(path)
  v = vocab_lib.get_vocabulary("wordpiece:" + path)
  expected = special_tokens.BERT_WORDPIECE
  got = v.special
  for role in ("pad", "eos", "cls", "unk", "mask", "smask", "gmask", "sop", "eop", "sep",
               "dblock"):
    assert getattr(got, role) == getattr(expected, role), role
  assert v.vocab_size == 30592
  assert v.id_to_piece(got.sentence_end_ids[0]) == "."


def test_wordpiece_small_file_round_trip():
  v = vocab_lib.WordPieceVocabulary(os.path.join(DATA, "wordpiece_vocab.txt"))
  n = 37
  assert (v.special.sop, v.special.eop, v.special.gmask, v.special.smask,
          v.special.dblock) == (n, n + 1, n + 2, n + 3, n + 4)
  assert v.vocab_size == 128
  ids = v.encode("The Headless Horse rides; HELLO world!")
  pieces = [v.id_to_piece(i) for i in ids]
  assert pieces == ["the", "head", "##less", "horse", "ride", "##s", ";", "hello", "world", "!"]
  assert v.decode(ids) == "the headless horse rides ; hello world !"
  assert v.encode("xyzzy") == [v.special.unk]
  assert v.decode_tf(tf.constant(ids)).numpy().decode() == v.decode(ids)
  assert set(v.special.sentence_end_ids) == {5, 7, 8, 9, 10}


def test_wordpiece_missing_roles(tmp_path):
  path = tmp_path / "bad.txt"
  path.write_text("hello\nworld\n")
  with pytest.raises(ValueError, match="lacks"):
    vocab_lib.WordPieceVocabulary(str(path))


def test_train_vocab_cli(tmp_path):
  prefix = str(tmp_path / "tiny")
  result = subprocess.run(
      [sys.executable, "-m", "glm_jax.data.train_vocab",
       f"--input={os.path.join(DATA, 'tiny_corpus.txt')}", "--vocab_size=600",
       f"--output={prefix}", "--model_type=bpe"],
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().endswith("tiny.model")
  v = vocab_lib.GLMVocabulary(prefix + ".model")
  assert v.raw_vocab_size == 600 and v.vocab_size == 640
  assert v.special.cls == 3 and v.special.sop == 7 and v.special.dblock == 9
  text = "Ichabod Crane rode through the Hollow; 漢字!"
  assert v.unk_id not in v.encode(text) and v.decode(v.encode(text)) == text
  assert os.path.exists(prefix + ".vocab")


def test_train_vocab_cli_errors(tmp_path, capsys):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from glm_jax.data import train_vocab  # pylint: disable=g-import-not-at-top
  flags.FLAGS(["train_vocab", "--input=/nonexistent.txt", f"--output={tmp_path / 'x'}"])
  try:
    with pytest.raises(SystemExit) as exit_info:
      train_vocab.main([])
  finally:
    flags.FLAGS.unparse_flags()
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "does not exist" in err[0]
