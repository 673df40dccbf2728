"""Corpus preparation: units, Beam, JSONL / text / TFDS sources, resume, kill -9, errors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow_datasets as tfds

from glm_jax.data import corpus
from glm_jax.data import prepare
from glm_jax.data import prepared
from glm_jax.data import vocab as vocab_lib

from conftest import REPO_ROOT, TINY_CORPUS, multi_device_env, prepare_in_process
from conftest import run_module, write_damaged_corpora

LINES = [line.strip() for line in open(TINY_CORPUS, encoding="utf-8") if line.strip()]


def _jsonl(path, lines):
  with open(path, "w", encoding="utf-8") as f:
    for line in lines:
      f.write(json.dumps({"text": line, "id": 1}) + "\n")
  return str(path)


def _documents(directory, split):
  """Every stored document of a split, as token lists, in shard order."""
  corpus_ = prepared.PreparedCorpus(directory)
  reader = corpus_.split(split)
  out = []
  for shard, count in enumerate(reader.shard_documents()):
    for d in range(count):
      out.append(reader.read(shard, *reader.document(shard, d)).tolist())
  return out


def _files(directory):
  """{relative path: bytes} of every file of a prepared corpus."""
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = f.read()
  return out


def test_jsonl_units_hold_every_document_once(tmp_path):
  path = _jsonl(tmp_path / "docs.jsonl", LINES * 2)
  out = prepare_in_process(tmp_path / "out", [path], unit_bytes=60_000)
  manifest = prepared.read_json(os.path.join(out, "manifest.json"))
  assert manifest["source"]["units"] >= 4  # byte ranges of one file
  vocabulary = vocab_lib.get_vocabulary("builtin")
  expected = sorted(vocabulary.encode_batch(LINES * 2))
  train, validation = _documents(out, "train"), _documents(out, "validation")
  assert sorted(train + validation) == expected
  assert 1 <= len(validation) <= 6  # ~1 in HOLDOUT_EVERY per unit
  splits = manifest["splits"]
  assert splits["train"]["documents"] == len(train)
  assert splits["train"]["tokens"] + splits["validation"]["tokens"] == sum(map(len, expected))
  assert manifest["vocabulary"] == {"spec": "builtin", "vocab_size": 8064, "token_dtype": "<u2"}
  assert manifest["counters"]["documents"] == 2 * len(LINES)


def test_byte_ranges_partition_lines(tmp_path):
  path = tmp_path / "lines.txt"
  path.write_bytes(b"".join(f"line {i} {'x' * (i % 37)}\n".encode() for i in range(500)))
  size = path.stat().st_size
  for parts in (1, 3, 7, 40):
    bounds = [size * i // parts for i in range(parts + 1)]
    lines = [l for a, b in zip(bounds[:-1], bounds[1:]) for l in corpus.read_lines(path, a, b)]
    assert lines == path.read_bytes().splitlines(keepends=True)


def test_beam_direct_runner_matches_in_process_and_reruns_skip(tmp_path, monkeypatch):
  path = _jsonl(tmp_path / "docs.jsonl", LINES)
  reference = _files(prepare_in_process(tmp_path / "ref", [path], unit_bytes=40_000))
  out = str(tmp_path / "beam")
  prepare.prepare([path], "builtin", out, unit_bytes=40_000,
                  beam_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"])
  assert _files(out) == reference
  # A re-run finds every unit complete: nothing is tokenized again.
  monkeypatch.setattr(prepare, "process_unit", lambda *a, **k: pytest.fail("re-tokenized"))
  prepare.prepare([path], "builtin", out, unit_bytes=40_000, in_process=True)
  assert _files(out) == reference


def test_half_written_unit_is_redone(tmp_path, monkeypatch):
  path = _jsonl(tmp_path / "docs.jsonl", LINES)
  out = prepare_in_process(tmp_path / "out", [path], unit_bytes=40_000)
  reference = _files(out)
  # What a kill leaves: a unit whose record is missing and a truncated shard, plus a file
  # under a temporary name.
  num_units = prepared.read_json(os.path.join(out, "manifest.json"))["source"]["units"]
  assert num_units >= 3
  os.remove(prepared.unit_record_path(out, 1, num_units))
  tokens = os.path.join(out, "train", prepared.part_name(1, num_units) + ".tokens")
  with open(tokens, "r+b") as f:
    f.truncate(10)
  with open(os.path.join(out, "train", "." + prepared.part_name(2, num_units) +
                         ".tokens.tmp-dead"), "wb") as f:
    f.write(b"junk")
  os.remove(os.path.join(out, "manifest.json"))
  with pytest.raises(FileNotFoundError):
    prepared.PreparedCorpus(out)  # no manifest: not trusted
  done = []
  real = prepare.process_unit
  monkeypatch.setattr(prepare, "process_unit",
                      lambda i, **k: done.append(i) or real(i, **k))
  prepare.prepare([path], "builtin", out, unit_bytes=40_000, in_process=True)
  assert done == [1]
  assert _files(out) == reference


def test_other_vocabulary_in_the_same_dir_is_refused(tmp_path, bert_vocab_file):
  out = prepare_in_process(tmp_path / "out")
  with pytest.raises(ValueError, match="other inputs or options"):
    prepare_in_process(out, vocabulary="wordpiece:" + bert_vocab_file)


def test_wordpiece_corpus_tokenizes_with_the_real_vocabulary(tmp_path, bert_vocab_file):
  spec = "wordpiece:" + bert_vocab_file
  out = prepare_in_process(tmp_path / "bert", vocabulary=spec)
  corpus_ = prepared.PreparedCorpus(out)
  vocabulary = vocab_lib.get_vocabulary(spec)
  assert corpus_.vocabulary_spec == vocabulary.spec and corpus_.vocab_size == 30592
  docs = _documents(out, "train") + _documents(out, "validation")
  assert sorted(docs) == sorted(vocabulary.encode(line) for line in LINES)
  assert vocabulary.decode(docs[0]).startswith("found among the papers of the late")


class LocalText(tfds.core.GeneratorBasedBuilder):
  """A TFDS dataset over local text files (one document per line), no download."""

  VERSION = tfds.core.Version("1.0.0")
  FILES = {}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(path) for split, path in self.FILES.items()}

  def _generate_examples(self, path):
    with open(path, encoding="utf-8") as f:
      for i, line in enumerate(f):
        yield i, {"text": line.strip()}


def test_tfds_dataset_built_from_local_files(tmp_path):
  train, validation = tmp_path / "train.txt", tmp_path / "validation.txt"
  train.write_text("\n".join(LINES[:100]) + "\n", encoding="utf-8")
  validation.write_text("\n".join(LINES[100:]) + "\n", encoding="utf-8")
  LocalText.FILES = {"train": str(train), "validation": str(validation)}
  data_dir = tmp_path / "tfds"
  LocalText(data_dir=str(data_dir)).download_and_prepare()
  out = prepare_in_process(tmp_path / "out", ["tfds:local_text:1.0.0"],
                           tfds_data_dir=str(data_dir))
  manifest = prepared.read_json(os.path.join(out, "manifest.json"))
  assert manifest["splits"]["train"]["documents"] == 100
  assert manifest["splits"]["validation"]["documents"] == len(LINES) - 100
  vocabulary = vocab_lib.get_vocabulary("builtin")
  assert sorted(_documents(out, "validation")) == sorted(vocabulary.encode_batch(LINES[100:]))
  with pytest.raises(FileNotFoundError, match="not prepared in"):
    prepare.plan_units(["tfds:local_text:2.0.0"], tfds_data_dir=str(data_dir))


def test_errors_are_one_line(tmp_path):
  result = run_module("glm_jax.data.prepare", [f"--input={tmp_path}/none*.jsonl",
                                               f"--output_dir={tmp_path}/out"], timeout=120)
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: Input pattern") and "matches no file" in last
  with pytest.raises(ValueError, match="tfds:NAME:VERSION"):
    prepare.plan_units(["tfds:wikipedia"])


def test_files_with_too_many_bad_lines_stop_before_the_manifest(tmp_path, monkeypatch):
  damaged = write_damaged_corpora(tmp_path)
  for name, counts in (("binary", "99 of 100 lines are bad (99.0%; 99 invalid UTF-8, 0 not"),
                       ("broken", "30 of 90 lines are bad (33.3%; 0 invalid UTF-8, 30 not")):
    out = tmp_path / f"out_{name}"
    # The good file first: the line names the damaged one.
    with pytest.raises(corpus.TooManyBadLines) as info:
      prepare_in_process(out, [damaged["few"], damaged[name]])
    assert str(info.value).startswith(f"Corpus file {damaged[name]}: {counts}"), info.value
    assert "--max_dropped_fraction = 0.01" in str(info.value)
    assert not (out / "manifest.json").exists()
  # A higher limit finishes from the units already tokenized, nothing read again.
  monkeypatch.setattr(prepare, "process_unit", lambda *a, **k: pytest.fail("re-tokenized"))
  manifest = prepare.prepare([damaged["few"], damaged["broken"]], "builtin",
                             str(tmp_path / "out_broken"), in_process=True,
                             max_dropped_fraction=0.5)
  assert manifest["input_counters"][damaged["broken"]]["bad_json"] == 30
  assert manifest["counters"]["documents"] == 299 + 60
  with pytest.raises(ValueError, match=r"--max_dropped_fraction must be a fraction of lines in "
                     r"\[0, 1\] \(e.g. 0.01\), got 2"):
    prepare_in_process(tmp_path / "x", [damaged["few"]], max_dropped_fraction=2)


def test_a_few_bad_lines_are_logged_with_their_counts(tmp_path, caplog):
  few = write_damaged_corpora(tmp_path)["few"]
  with caplog.at_level("INFO", logger="absl"):  # an earlier test may have raised absl's level
    out = prepare_in_process(tmp_path / "out", [TINY_CORPUS, few])
  manifest = prepared.read_json(os.path.join(out, "manifest.json"))
  assert manifest["input_counters"][few] == {
      "lines": 300, "documents": 299, "empty_lines": 0, "invalid_utf8": 0, "bad_json": 1,
      "bad_lines": 1, "characters": manifest["input_counters"][few]["characters"],
      "empty_documents": 0}
  warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert warned == [f"Corpus file {few}: 300 lines: 299 documents, 1 not JSON with a text "
                    "string (skipped); 1 of 300 lines bad, within --max_dropped_fraction = 0.01."]
  assert any(m.getMessage().startswith(f"Corpus file {TINY_CORPUS}: ")
             for m in caplog.records if m.levelname == "INFO")


def test_corpora_prepared_on_first_use_are_checked_at_every_use(tmp_path):
  damaged = write_damaged_corpora(tmp_path)
  path = prepare.cached_corpus([damaged["few"]], [], "builtin")
  assert prepare.cached_corpus([damaged["few"]], [], "builtin") == path  # cached
  with pytest.raises(corpus.TooManyBadLines, match=(
      f"^Corpus file {damaged['few']}: 1 of 300 lines are bad .* more than "
      "MAX_DROPPED_FRACTION = 0.001; ")):
    prepare.cached_corpus([damaged["few"]], [], "builtin", max_dropped_fraction=0.001)
  with pytest.raises(corpus.TooManyBadLines, match="MAX_DROPPED_FRACTION = 0.01"):
    prepare.cached_corpus([damaged["broken"]], [], "builtin")


@pytest.mark.slow
def test_prepare_cli_names_the_damaged_file(tmp_path):
  """The CLI on Beam's DirectRunner: one line and exit 2; a higher limit completes."""
  binary = write_damaged_corpora(tmp_path)["binary"]
  args = [f"--input={binary}", f"--output_dir={tmp_path}/out", "--",
          "--direct_running_mode=in_memory", "--direct_num_workers=1"]
  result = run_module("glm_jax.data.prepare", args, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert errors == [f"error: Corpus file {binary}: 99 of 100 lines are bad (99.0%; 99 invalid "
                    "UTF-8, 0 not JSON with a text string), more than --max_dropped_fraction = "
                    "0.01; fix or remove the file (is it text? JSONL with the right text key?), "
                    "or raise --max_dropped_fraction."], result.stderr[-3000:]
  result = run_module("glm_jax.data.prepare", ["--max_dropped_fraction=1"] + args, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout.strip().splitlines()[-1])["counters"]["invalid_utf8"] == 99


@pytest.mark.slow
def test_kill_9_then_same_command_completes_identically(tmp_path):
  """The CLI on the multi-process DirectRunner, killed mid-run, then run again."""
  path = _jsonl(tmp_path / "docs.jsonl", LINES * 8)
  args = [sys.executable, "-m", "glm_jax.data.prepare", f"--input={path}",
          f"--output_dir={tmp_path}/out", "--unit_bytes=30000", "--",
          "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
  env = multi_device_env(1)
  proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, start_new_session=True)
  units = tmp_path / "out" / "units"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if units.exists() and any(p.suffix == ".json" for p in units.iterdir()):
      break
    time.sleep(0.05)
  assert proc.poll() is None, proc.stderr.read()[-2000:]
  os.killpg(proc.pid, signal.SIGKILL)  # the runner and its worker processes
  proc.wait()
  assert not (tmp_path / "out" / "manifest.json").exists()
  result = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["splits"]["train"]["documents"] + summary["splits"]["validation"][
      "documents"] == 8 * len(LINES)
  reference = _files(prepare_in_process(tmp_path / "ref", [path], unit_bytes=30000))
  assert _files(tmp_path / "out") == reference


def test_prepared_corpus_on_gcs(tmp_path, gcs_emulator):
  """Prepare to gs:// and train-read from gs:// (the session's GCS emulator on 127.0.0.1)."""
  path = _jsonl(tmp_path / "docs.jsonl", LINES)
  local = prepare_in_process(tmp_path / "local", [path], unit_bytes=40_000)
  url = gcs_emulator.url("prepared", "tiny")
  code = f"""
import json
from glm_jax.data import pipeline, prepare
for _ in range(2):  # the second run finds every unit complete
  prepare.prepare([{path!r}], "builtin", {url!r}, unit_bytes=40_000, in_process=True)
for where in ({url!r}, {local!r}):
  b = next(pipeline.get_batches("prepared:" + where, "train", sequence_length=64,
                                batch_size=4, seed=7, start_batch=123))
  print(json.dumps({{k: v.tolist() for k, v in b.items()}}))
"""
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT,
                          env=gcs_emulator.subprocess_env(), capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  from_gcs, from_disk = result.stdout.strip().splitlines()[-2:]
  assert json.loads(from_gcs) == json.loads(from_disk)
