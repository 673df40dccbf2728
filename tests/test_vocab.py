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
  for bad in ("gpt2", "bpe:/x", "gpt2:", "builtin:x"):
    with pytest.raises(ValueError, match="Unknown vocabulary spec"):
      vocab_lib.get_vocabulary(bad)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    vocab_lib.get_vocabulary("spm:/nonexistent/model.model")
  with pytest.raises(FileNotFoundError, match="gpt2-vocab.json"):
    vocab_lib.get_vocabulary("gpt2:/nonexistent/dir")


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
  v = vocab_lib.get_vocabulary("wordpiece:" + path)  # GLM-Base/Large: no task masks
  assert v.spec == f"wordpiece:{path}@finetune_eval"
  got = v.special
  assert (got.pad, got.eos, got.cls, got.unk, got.mask, got.sep, got.sop, got.eop) == (
      0, 0, 101, 100, 103, 102, 30522, 30523)
  assert (got.smask, got.gmask, got.dblock, got.task_mask) == (None, None, None, False)
  assert {got.mask_for(o) for o in ("token", "sentence", "document")} == {103}
  assert v.vocab_size == 30592 and v.raw_vocab_size == 30524
  t = vocab_lib.get_vocabulary(f"wordpiece:{path}@task_mask").special
  expected = special_tokens.BERT_WORDPIECE
  for role in ("pad", "eos", "cls", "unk", "mask", "smask", "gmask", "sop", "eop", "sep"):
    assert getattr(t, role) == getattr(expected, role), role
  assert t.task_mask and t.dblock is None
  assert v.id_to_piece(got.sentence_end_ids[0]) in vocab_lib.SENTENCE_END_CHARS


def test_wordpiece_small_file_round_trip():
  v = vocab_lib.WordPieceVocabulary(os.path.join(DATA, "wordpiece_vocab.txt"))
  n = 37
  assert (v.special.sop, v.special.eop, v.special.gmask, v.special.smask,
          v.special.dblock) == (n, n + 1, None, None, None)
  t = vocab_lib.WordPieceVocabulary(os.path.join(DATA, "wordpiece_vocab.txt"),
                                    configuration="task_mask")
  assert (t.special.gmask, t.special.smask) == (n + 2, n + 3)
  assert v.vocab_size == 128
  ids = v.encode("The Headless Horse rides; HELLO world!")
  pieces = [v.id_to_piece(i) for i in ids]
  assert pieces == ["the", "head", "##less", "horse", "ride", "##s", ";", "hello", "world", "!"]
  assert v.decode(ids) == "the headless horse rides ; hello world !"
  assert v.encode("xyzzy") == [v.special.unk]
  assert v.decode_tf(tf.constant(ids)).numpy().decode() == v.decode(ids)
  assert set(v.special.sentence_end_ids) == {5, 7, 8, 9, 10}
  # A literal [MASK] is the mask token even glued to words; [mask] is plain text.
  unk = v.special.unk
  assert v.encode("a[MASK]b [mask]") == [13, v.special.mask, unk, unk, unk, unk]


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


def test_train_vocab_cli_errors(tmp_path):
  from conftest import run_module  # pylint: disable=g-import-not-at-top
  result = run_module("glm_jax.data.train_vocab", ["--input=/nonexistent.txt",
                                                   f"--output={tmp_path / 'x'}"], timeout=120)
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and "/nonexistent.txt does not exist" in errors[0], result.stderr
  assert not (tmp_path / "x.model").exists()


# --- The released families: GPT-2 / RoBERTa BPE, Chinese SentencePiece, BERT WordPiece. -------

from conftest import REPO_ROOT, read_xz_json, shared_fixture, shipped_fixture  # pylint: disable=g-import-not-at-top,wrong-import-position

FAMILIES = ("gpt2", "roberta", "chinese_sp")
# Reference command-token names -> SpecialTokens fields.
ROLES = {"pad": "pad", "eos": "eos", "sep": "sep", "ENC": "cls", "MASK": "mask", "unk": "unk",
         "sop": "sop", "eop": "eop", "gMASK": "gmask", "sMASK": "smask", "dBLOCK": "dblock"}


def _family_json(family):
  return read_xz_json(shipped_fixture("glm_vocab", f"{family}.json.xz"))


def _lines(family):
  """The reference's ids of real text: the shipped lines, plus ../shared's where present."""
  lines = read_xz_json(shipped_fixture("glm_vocab", f"{family}.jsonl.xz"), lines=True)
  shared = shared_fixture("glm_vocab", f"{family}.jsonl")
  if shared:
    known = {l["text"] for l in lines}
    lines += [l for l in read_xz_json(shared, lines=True) if l["text"] not in known]
  return lines


CONFIGS = [(family, name) for family in FAMILIES
           for name in _family_json(family)["configurations"]]


@pytest.fixture(scope="module")
def family_vocab(vocab_paths):
  return lambda family, name=None: vocab_lib.get_vocabulary(
      f"{family}:{vocab_paths[family]}" + (f"@{name}" if name else ""))


@pytest.mark.parametrize("family,name", CONFIGS, ids=[f"{f}@{n}" for f, n in CONFIGS])
def test_command_tokens_and_sizes_equal_the_reference(family_vocab, family, name):
  ref = _family_json(family)["configurations"][name]
  v = family_vocab(family, name)
  assert v.padded_vocab_size == v.vocab_size == ref["padded_vocab_size"]
  assert v.raw_vocab_size == ref["num_tokens"]
  for ref_name, i in ref["command_token_ids_by_name"].items():
    assert getattr(v.special, ROLES[ref_name]) == i, ref_name
  for role in set(ROLES.values()) - {ROLES[n] for n in ref["command_token_ids_by_name"]}:
    assert getattr(v.special, role) is None, role  # tokens the configuration does not define
  assert v.special.task_mask == ref["flags"]["task_mask"]
  for i, token in ref["IdToToken_of_command_ids"].items():
    assert v.id_to_piece(int(i)) == token
  assert v.spec.endswith("@" + name)


@pytest.mark.parametrize("family,name", CONFIGS, ids=[f"{f}@{n}" for f, n in CONFIGS])
def test_probes_encode_and_decode_as_the_reference(family_vocab, family, name):
  probes = _family_json(family)["configurations"][name]["probes"]
  v = family_vocab(family, name)
  for probe in probes:
    assert v.encode(probe["text"]) == probe["ids"], probe["text"]
    assert v.decode(probe["ids"]) == probe["decoded"], probe["text"]
  assert v.encode_batch([p["text"] for p in probes]) == [p["ids"] for p in probes]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_text_line_encodes_as_the_reference(family_vocab, family):
  v = family_vocab(family)
  lines = _lines(family)
  assert len(lines) >= 150
  got = v.encode_batch([l["text"] for l in lines])
  for line, ids in zip(lines, got):
    assert ids == line["ids"], line["text"]
  if family != "chinese_sp":  # byte-level BPE inverts itself exactly
    assert all(v.decode(ids) == l["text"] for l, ids in zip(lines, got))


def test_wordpiece_every_line_with_and_without_task_masks(vocab_paths):
  plain = vocab_lib.get_vocabulary("wordpiece:" + vocab_paths["wordpiece"])
  task = vocab_lib.get_vocabulary(f"wordpiece:{vocab_paths['wordpiece']}@task_mask")
  lines = read_xz_json(shipped_fixture("glm_vocab", "wordpiece.jsonl.xz"), lines=True)
  assert len(lines) == 150 and any(l["ids"] != l["ids_task_mask"] for l in lines)
  for line in lines:
    assert plain.encode(line["text"]) == line["ids"], line["text"]
    assert task.encode(line["text"]) == line["ids_task_mask"], line["text"]
    assert plain.decode(line["ids"]) == line["decoded"], line["text"]
  assert (task.special.gmask, task.special.smask, task.special.sop) == (30524, 30525, 30522)
  # No NFKC: accents go after NFD, the ligature is a token, full-width letters are unknown.
  assert [plain.id_to_piece(i) for i in plain.encode("Café … ﬁne ｆｕｌｌ")] == [
      "cafe", "…", "ﬁ", "##ne", "[UNK]"]


def test_default_configurations_are_the_released_models(family_vocab):
  gpt2, roberta, chinese = (family_vocab(f) for f in FAMILIES)
  assert gpt2.spec.endswith("@finetune_eval") and gpt2.special.task_mask
  assert gpt2.special.mask_for("document") == 50263 and gpt2.special.dblock is None
  # GLM-RoBERTa was fine-tuned and evaluated without task masks: [MASK] everywhere.
  assert not roberta.special.task_mask and roberta.special.gmask is None
  assert {roberta.special.mask_for(o) for o in ("token", "sentence", "document")} == {50264}
  assert chinese.spec.endswith("@large_chinese") and chinese.special.gmask == 50009
  assert family_vocab("chinese_sp", "10b_chinese").special.gmask == 50007
  assert family_vocab("gpt2", "pretrain").special.dblock == 50265


def test_spec_round_trip_and_unknown_configuration(family_vocab, vocab_paths):
  v = family_vocab("gpt2", "pretrain")
  assert vocab_lib.get_vocabulary(v.spec) == v
  assert vocab_lib.get_vocabulary(f"gpt2:{vocab_paths['gpt2']}") != v
  with pytest.raises(ValueError) as error:
    vocab_lib.get_vocabulary(f"roberta:{vocab_paths['roberta']}@pretrain")
  assert "finetune_eval" in str(error.value) and "pretrain_task_mask" in str(error.value)
  assert len(str(error.value).splitlines()) == 1
  assert vocab_lib.parse_spec("gpt2:/a@b/dir") == ("gpt2", "/a@b/dir", None)
  assert vocab_lib.parse_spec("chinese_sp:gs://b/m.model@10b_chinese") == (
      "chinese_sp", "gs://b/m.model", "10b_chinese")


def _with_hf_names(folder, source, prefix):
  """A copy of a BPE folder under Hugging Face's file names (vocab.json, merges.txt)."""
  folder.mkdir()
  for name in ("vocab.json", "merges.txt"):
    src = os.path.join(source, f"{prefix}-{name}")
    (folder / name).write_bytes(open(src, "rb").read())
  return folder


def test_hugging_face_file_names_and_wrong_family(vocab_paths, tmp_path):
  hf_roberta = _with_hf_names(tmp_path / "r", vocab_paths["roberta"], "roberta")
  v = vocab_lib.get_vocabulary(f"roberta:{hf_roberta}")
  assert v.encode("Tsinghua University is located in [MASK].") == [
      565, 26058, 15363, 589, 16, 2034, 11, 50264, 4]
  with pytest.raises(ValueError, match="RoBERTa vocabulary") as error:
    vocab_lib.get_vocabulary(f"gpt2:{hf_roberta}")
  assert len(str(error.value).splitlines()) == 1
  hf_gpt2 = _with_hf_names(tmp_path / "g", vocab_paths["gpt2"], "gpt2")
  assert vocab_lib.get_vocabulary(f"gpt2:{hf_gpt2}").special.eos == 50256
  with pytest.raises(ValueError, match="'</s>'"):
    vocab_lib.get_vocabulary(f"roberta:{hf_gpt2}")


@pytest.mark.parametrize("family", FAMILIES + ("wordpiece",))
def test_pickle_tf_ops_and_batches(vocab_paths, family):
  v = vocab_lib.get_vocabulary(f"{family}:{vocab_paths[family]}")
  texts = ["[CLS] The capital of France is [MASK] .", "清华大学位于[MASK]。", "plain words here"]
  ids = [v.encode(t) for t in texts]
  again = pickle.loads(pickle.dumps(v))
  assert again == v and [again.encode(t) for t in texts] == ids
  assert v.encode_batch(texts) == ids
  ds = tf.data.Dataset.from_tensor_slices(texts).map(v.encode_tf)
  assert [x.numpy().tolist() for x in ds] == ids
  assert v.decode_tf(tf.constant(ids[0])).numpy().decode() == v.decode(ids[0])
  batch = tf.constant([ids[0][:3], ids[2][:3]])
  assert [s.decode() for s in v.decode_tf(batch).numpy()] == [
      v.decode(ids[0][:3]), v.decode(ids[2][:3])]
  assert v.decode([v.vocab_size - 1]) == "[UNK]"  # a padding id


def test_gin_spec_helper_names_the_macro():
  assert vocab_lib.spec("gpt2", "/v/gpt2", "pretrain") == "gpt2:/v/gpt2@pretrain"
  assert vocab_lib.spec("roberta", "/v/r") == "roberta:/v/r"
  with pytest.raises(ValueError, match="GPT2_VOCAB_DIR"):
    vocab_lib.spec("gpt2")
  with pytest.raises(ValueError, match="Unknown chinese_sp vocabulary configuration"):
    vocab_lib.spec("chinese_sp", "/m.model", "10b")


def test_describe_gives_sizes_and_roles_without_tensorflow(vocab_paths):
  spec = f"roberta:{vocab_paths['roberta']}"
  described = vocab_lib.describe(spec)
  built = vocab_lib.get_vocabulary(spec)
  assert described.spec == built.spec == spec + "@finetune_eval"
  assert described.padded_vocab_size == built.padded_vocab_size == 50304
  assert described.special == built.special and described.configuration == "finetune_eval"
  code = ("import sys\nfrom glm_jax.data import vocab\n"
          f"d = vocab.describe({spec + '@pretrain_task_mask'!r})\n"
          "assert d.special.gmask == 50267, d\n"
          "assert 'tensorflow' not in sys.modules and 'seqio' not in sys.modules\n")
  env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
  assert result.returncode == 0, result.stderr[-2000:]


# Presets: (gin file, path macro, family, configuration, task masks, max positions).
PRESETS = [
    ("models/glm_base", "BERT_VOCAB_FILE", "wordpiece", "finetune_eval", False, 512),
    ("models/glm_large", "BERT_VOCAB_FILE", "wordpiece", "finetune_eval", False, 512),
    ("models/glm_roberta", "ROBERTA_VOCAB_DIR", "roberta", "finetune_eval", False, 512),
    ("models/glm_2b", "GPT2_VOCAB_DIR", "gpt2", "finetune_eval", True, 1024),
    ("models/glm_10b", "GPT2_VOCAB_DIR", "gpt2", "finetune_eval", True, 1024),
    ("models/glm_large_chinese", "CHINESE_SP_MODEL", "chinese_sp", "large_chinese", True, 1024),
    ("models/glm_10b_chinese", "CHINESE_SP_MODEL", "chinese_sp", "10b_chinese", True, 1024),
    ("experiments/glm_10b", "GPT2_VOCAB_DIR", "gpt2", "pretrain", True, 1024),
    ("experiments/glm_2b", "GPT2_VOCAB_DIR", "gpt2", "pretrain", True, 1024),
    ("experiments/glm_roberta", "ROBERTA_VOCAB_DIR", "roberta", "pretrain_task_mask", True, 512),
]


@pytest.mark.parametrize("preset,macro,family,configuration,task_mask,positions", PRESETS,
                         ids=[p[0] for p in PRESETS])
def test_presets_name_their_real_vocabulary(vocab_paths, preset, macro, family, configuration,
                                            task_mask, positions):
  import gin  # pylint: disable=g-import-not-at-top
  from glm_jax import gin_utils  # pylint: disable=g-import-not-at-top
  from glm_jax.model import GLMConfig  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    gin_utils.parse_gin([f"configs/{preset}.gin"])
    with pytest.raises(ValueError, match=macro):
      vocab_lib.spec()
    gin.bind_parameter(f"%{macro}", vocab_paths[family])
    spec = vocab_lib.spec()
    config = GLMConfig()
  finally:
    gin.clear_config()
  assert spec == f"{family}:{vocab_paths[family]}@{configuration}"
  v = vocab_lib.get_vocabulary(spec)
  assert v.vocab_size == config.vocab_size and v.special.task_mask == task_mask
  assert config.max_sequence_length == positions
  if configuration in ("pretrain", "large_chinese_pretrain"):
    assert v.special.dblock is not None
