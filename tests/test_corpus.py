"""Corpus cleaning, the shipped built-in corpus and forgiving document reading."""

import gzip
import hashlib
import os

import pytest

from glm_jax.data import corpus
from conftest import REPO_ROOT, load_tool, shipped_fixture

# The 85 raw books are only in ../shared; two small ones ship in tests/fixtures/gutenberg.
SHARED_SOURCE = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "gutenberg")
SAMPLE_TRAIN_BOOK = "essays/modest_proposal.txt"
SAMPLE_VALIDATION_BOOK = "classics/yellow_wallpaper.txt"
RAW_BOOK = ("\ufeffThe Project Gutenberg eBook of Test\r\n\r\nLicense: see below\r\n"
            "*** START OF THE PROJECT GUTENBERG EBOOK TEST ***\r\n\r\n"
            "CHAPTER I.\r\n\r\nIt was a dark\r\nand stormy night.\r\n\r\n\r\n"
            "Produced by a Project Gutenberg volunteer.\r\n\r\nThe end.\r\n"
            "*** END OF THE PROJECT GUTENBERG EBOOK TEST ***\r\n"
            "Section 1. General Terms of Use and Redistributing Project Gutenberg\r\n")


def test_strip_gutenberg_and_paragraphs():
  body = corpus.strip_gutenberg(RAW_BOOK)
  assert "START OF" not in body and "END OF" not in body and "License" not in body
  assert "\r" not in body and "\ufeff" not in body
  assert corpus.gutenberg_documents(RAW_BOOK) == [
      "CHAPTER I.", "It was a dark and stormy night.", "The end."]


def test_strip_gutenberg_needs_start_marker():
  with pytest.raises(ValueError, match="START OF"):
    corpus.strip_gutenberg("just some text\n")


def test_read_documents_counts_bad_input(tmp_path):
  path = tmp_path / "bad.txt"
  path.write_bytes(b"first line\n\n   \nbad \xff\xfe bytes\nlast\n")
  counters = corpus.ReadCounters()
  docs = list(corpus.read_documents([str(path)], counters=counters))
  assert docs == ["first line", "bad \ufffd\ufffd bytes", "last"]
  assert (counters.documents, counters.empty_lines, counters.invalid_utf8) == (3, 2, 1)


def test_read_documents_jsonl_and_gzip(tmp_path):
  path = tmp_path / "docs.jsonl.gz"
  with gzip.open(path, "wt") as f:
    f.write('{"text": "one"}\nnot json\n{"other": 1}\n\n{"text": "two"}\n[1, 2]\n')
  counters = corpus.ReadCounters()
  assert list(corpus.read_documents([str(path)], counters=counters)) == ["one", "two"]
  assert counters.bad_json == 3 and counters.empty_lines == 1


def test_read_documents_missing_file():
  with pytest.raises(FileNotFoundError, match="does not exist"):
    list(corpus.read_documents(["/nonexistent/file.txt"]))


def test_write_documents_is_reproducible(tmp_path):
  a, b = tmp_path / "a.txt.gz", tmp_path / "b.txt.gz"
  corpus.write_documents(str(a), ["x y", "z"])
  corpus.write_documents(str(b), ["x y", "z"])
  assert a.read_bytes() == b.read_bytes()
  with pytest.raises(ValueError, match="newline"):
    corpus.write_documents(str(a), ["two\nlines"])


def test_builtin_assets_small_and_split_by_book():
  manifest = corpus.builtin_manifest()
  train = {b["book"] for b in manifest["splits"]["train"]["books"]}
  validation = {b["book"] for b in manifest["splits"]["validation"]["books"]}
  assert train and validation and not train & validation
  assert "historical_documents/doctrina_christiana.txt" not in train | validation
  total = sum(os.path.getsize(os.path.join(corpus.BUILTIN_DIR, f))
              for f in os.listdir(corpus.BUILTIN_DIR))
  assert 2e6 < total < 6e6
  for split in corpus.BUILTIN_SPLITS:
    counters = corpus.ReadCounters()
    docs = list(corpus.read_documents([corpus.builtin_file(split)], counters=counters))
    assert len(docs) == manifest["splits"][split]["documents"]
    assert counters.invalid_utf8 == 0 and counters.empty_lines == 0
    text = "\n".join(docs)
    assert "gutenberg" not in text.lower()
    assert "*** START OF" not in text and "*** END OF" not in text
    assert "\r" not in text and "\ufeff" not in text


def _shipped_documents(split: str, book: str):
  """The documents of `book` inside the shipped built-in split (books are concatenated)."""
  entries = corpus.builtin_manifest()["splits"][split]["books"]
  start = 0
  for entry in entries:
    if entry["book"] == book:
      docs = list(corpus.read_documents([corpus.builtin_file(split)]))
      return docs[start:start + entry["documents"]], entry
    start += entry["documents"]
  raise KeyError(book)


@pytest.mark.parity
def test_builder_on_shipped_books_reproduces_the_builtin_corpus(tmp_path):
  """The builder, run on two shipped raw books, writes exactly their part of the corpus."""
  source, builder = shipped_fixture("gutenberg"), load_tool("build_builtin_corpus")
  manifest = builder.build(source, str(tmp_path), vocab_size=500,
                           train_books=[SAMPLE_TRAIN_BOOK],
                           validation_books=[SAMPLE_VALIDATION_BOOK])
  for split, book in (("train", SAMPLE_TRAIN_BOOK), ("validation", SAMPLE_VALIDATION_BOOK)):
    expected, entry = _shipped_documents(split, book)
    with open(os.path.join(source, book), "rb") as f:
      assert hashlib.sha256(f.read()).hexdigest() == entry["sha256"]
    built = manifest["splits"][split]
    assert built["books"] == [entry]
    docs = list(corpus.read_documents([str(tmp_path / built["file"])]))
    assert docs == expected and len(docs) == entry["documents"]
  assert os.path.exists(tmp_path / manifest["vocabulary"]["file"])
  with pytest.raises(ValueError, match="two splits"):
    builder.build(source, str(tmp_path), 500, [SAMPLE_TRAIN_BOOK], [SAMPLE_TRAIN_BOOK])


@pytest.mark.full_fixtures
@pytest.mark.skipif(not os.path.isdir(SHARED_SOURCE),
                    reason="optional: ../shared/data/gutenberg (the 85 raw books) not present")
def test_builtin_validation_split_regenerates_from_source():
  manifest = corpus.builtin_manifest()
  expected = []
  for entry in manifest["splits"]["validation"]["books"]:
    with open(os.path.join(SHARED_SOURCE, entry["book"]), encoding="utf-8") as f:
      expected += corpus.gutenberg_documents(f.read())
  assert list(corpus.read_documents([corpus.builtin_file("validation")])) == expected


def test_builtin_file_errors():
  with pytest.raises(ValueError, match="Unknown split"):
    corpus.builtin_file("test")


def test_bad_lines_are_counted_once_and_checked_per_file(tmp_path):
  path = tmp_path / "mixed.jsonl"
  path.write_bytes(b'{"text": "good"}\n{"text": "caf\xe9"}\n{"text": \xff\n\n{"text": ""}\n')
  counters = corpus.ReadCounters()
  assert list(corpus.read_documents([str(path)], counters=counters)) == ["good", "caf\ufffd"]
  # Line 3 is both invalid UTF-8 and bad JSON: one bad line. Empty lines are not bad.
  assert (counters.lines, counters.invalid_utf8, counters.bad_json, counters.bad_lines,
          counters.empty_lines) == (5, 2, 1, 2, 2)
  found = counters.as_dict()
  corpus.check_bad_lines("mixed.jsonl", found, 0.4)  # 2 of 5 is not more than 40%
  with pytest.raises(corpus.TooManyBadLines, match=(
      r"^Corpus file mixed.jsonl: 2 of 5 lines are bad \(40.0%; 2 invalid UTF-8, 1 not JSON "
      r"with a text string\), more than LIMIT = 0.39; .* raise LIMIT.$")):
    corpus.check_bad_lines("mixed.jsonl", found, 0.39, "LIMIT")
  corpus.check_bad_lines("empty.txt", corpus.ReadCounters().as_dict(), 0.0)
  assert corpus.describe(found) == ("5 lines: 2 documents, 2 empty (skipped), 2 invalid UTF-8 "
                                    "(bytes replaced), 1 not JSON with a text string (skipped)")
  for bad in (-0.1, 1.5, "0.1", True):
    with pytest.raises(ValueError, match=r"--max_dropped_fraction must be a fraction of lines"):
      corpus.check_max_dropped_fraction(bad)
