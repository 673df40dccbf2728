"""Text corpora as documents: the built-in Gutenberg slice and local text / JSONL files.

A document is one string (one paragraph of a book in the built-in corpus). Files are read
through `etils.epath` (local or gs://), whole or by byte range. Reading is forgiving: invalid UTF-8 is replaced, empty lines are skipped, and both are counted in a
`ReadCounters` so a bad file never stops a run.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
from typing import Iterable, Iterator, List, Optional, Sequence

from etils import epath

BUILTIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "builtin")
BUILTIN_SPLITS = ("train", "validation")
BUILTIN_SPM_MODEL = os.path.join(BUILTIN_DIR, "glm_spm_8k.model")
BUILTIN_MANIFEST = os.path.join(BUILTIN_DIR, "MANIFEST.json")

_START_RE = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG", re.IGNORECASE)
_END_RE = re.compile(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG", re.IGNORECASE)
# Paragraphs that still talk about Project Gutenberg after the markers are boilerplate.
_BOILERPLATE_RE = re.compile(r"gutenberg", re.IGNORECASE)
_SPACE_RE = re.compile(r"\s+")


@dataclasses.dataclass
class ReadCounters:
  """What reading a corpus skipped or repaired (reported by `inspect`)."""

  documents: int = 0
  empty_lines: int = 0
  invalid_utf8: int = 0
  bad_json: int = 0
  characters: int = 0

  def merge(self, other: "ReadCounters") -> None:
    for field in dataclasses.fields(self):
      setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def normalize_newlines(text: str) -> str:
  """Drops a BOM and turns CRLF / CR line endings into LF."""
  return text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def strip_gutenberg(text: str) -> str:
  """The body of a Project Gutenberg file: between the `*** START OF` and `*** END OF` lines."""
  lines = normalize_newlines(text).split("\n")
  start = next((i for i, line in enumerate(lines) if _START_RE.match(line.strip())), None)
  if start is None:
    raise ValueError("No '*** START OF ... PROJECT GUTENBERG' line found; is this a raw "
                     "Project Gutenberg file?")
  end = next((i for i in range(start + 1, len(lines)) if _END_RE.match(lines[i].strip())),
             len(lines))
  return "\n".join(lines[start + 1:end])


def split_paragraphs(text: str) -> List[str]:
  """Paragraphs (blocks separated by blank lines), each on one line with single spaces."""
  paragraphs = []
  for block in re.split(r"\n\s*\n", normalize_newlines(text)):
    paragraph = _SPACE_RE.sub(" ", block).strip()
    if paragraph:
      paragraphs.append(paragraph)
  return paragraphs


def gutenberg_documents(text: str) -> List[str]:
  """Documents of one raw Gutenberg book: its body's paragraphs without PG boilerplate."""
  return [p for p in split_paragraphs(strip_gutenberg(text)) if not _BOILERPLATE_RE.search(p)]


def builtin_file(split: str) -> str:
  """Path of the shipped corpus file of a split ('train' or 'validation')."""
  if split not in BUILTIN_SPLITS:
    raise ValueError(f"Unknown split {split!r} of the built-in corpus; use one of "
                     f"{BUILTIN_SPLITS}.")
  path = os.path.join(BUILTIN_DIR, f"gutenberg_{split}.txt.gz")
  if not os.path.exists(path):
    raise FileNotFoundError(f"Built-in corpus file {path} is missing; regenerate it with "
                            "`python tools/build_builtin_corpus.py`.")
  return path


def builtin_manifest() -> dict:
  """The manifest of the shipped corpus (books per split, sizes, source checksums)."""
  with open(BUILTIN_MANIFEST) as f:
    return json.load(f)


def _decode_line(raw: bytes, counters: ReadCounters) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError:
    counters.invalid_utf8 += 1
    return raw.decode("utf-8", errors="replace")


def is_jsonl(path: str, text_key: Optional[str] = None) -> bool:
  """A file is read as JSONL when `text_key` is given or its name ends in .jsonl(.gz)."""
  return text_key is not None or os.fspath(path).endswith((".jsonl", ".jsonl.gz"))


def read_lines(path, start: int = 0, end: Optional[int] = None) -> Iterator[bytes]:
  """Raw lines of a file (local or gs://; .gz decompressed) whose first byte is in [start, end).

  Byte ranges split one large uncompressed file into independent work units: a range that
  starts inside a line skips to the next one, and the last line is read past `end`.
  """
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"Corpus file {path} does not exist; check the input paths.")
  with path.open("rb") as raw:
    if os.fspath(path).endswith(".gz"):
      if start or end is not None:
        raise ValueError(f"{path} is gzip-compressed; it cannot be read by byte range.")
      with gzip.GzipFile(fileobj=raw) as f:
        yield from f
      return
    position = start
    if start > 0:
      raw.seek(start - 1)
      position = start - 1 + len(raw.readline())  # the rest of the line holding start - 1
    while end is None or position < end:
      line = raw.readline()
      if not line:
        return
      position += len(line)
      yield line


def parse_document(raw: bytes, jsonl: bool, text_key: Optional[str],
                   counters: ReadCounters) -> Optional[str]:
  """One document from one raw line (None for an empty or bad line, counted in `counters`)."""
  line = _decode_line(raw, counters).strip()
  if jsonl and line:
    try:
      value = json.loads(line)
      line = value[text_key or "text"] if isinstance(value, dict) else None
    except (ValueError, KeyError):
      line = None
    if not isinstance(line, str):
      counters.bad_json += 1
      return None
    line = line.strip()
  if not line:
    counters.empty_lines += 1
    return None
  counters.documents += 1
  counters.characters += len(line)
  return line


def read_documents(paths: Sequence[str], *, text_key: Optional[str] = None,
                   counters: Optional[ReadCounters] = None) -> Iterator[str]:
  """Documents of text files (one per line) or JSONL files (field `text_key`); .gz allowed.

  A file is read as JSONL when `text_key` is given or its name ends in .jsonl(.gz).
  Invalid UTF-8 is replaced by U+FFFD, empty lines and unparsable JSON lines are skipped;
  all of it is counted in `counters`.
  """
  counters = counters if counters is not None else ReadCounters()
  for path in paths:
    jsonl = is_jsonl(path, text_key)
    for raw in read_lines(path):
      document = parse_document(raw, jsonl, text_key, counters)
      if document is not None:
        yield document


def write_documents(path: str, documents: Iterable[str]) -> int:
  """Writes documents one per line to a reproducible gzip file; returns the byte size."""
  path = epath.Path(path)
  with path.open("wb") as raw:
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f:
      for document in documents:
        if "\n" in document:
          raise ValueError("A document must not contain a newline; join its lines first.")
        f.write(document.encode("utf-8") + b"\n")
  return path.stat().length
