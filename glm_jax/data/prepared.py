"""Prepared corpora on disk: sharded token arrays with document indexes, read by ranged reads.

Layout of a prepared corpus DIR (written by `glm_jax.data.prepare`, read by `PreparedCorpus`):

  DIR/manifest.json                        written last: vocabulary, counts, source fingerprint
  DIR/units/unit-UUUUU-of-NNNNN.json       one per finished work unit (a re-run skips these)
  DIR/<split>/part-UUUUU-of-NNNNN.tokens   the unit's documents' token ids back to back
                                           (little-endian uint16; uint32 above 65536 ids)
  DIR/<split>/part-UUUUU-of-NNNNN.index    int64 [documents + 1]: token offset of each document
  DIR/<split>/part-UUUUU-of-NNNNN.blocks   int64: every BLOCK-th entry of .index, then the last

Documents hold no [CLS]/eos (the sampler adds them). A reader keeps only the `.blocks`
arrays in memory (8 bytes per BLOCK documents): finding the document of a token costs one
ranged read of a BLOCK-entry index block (cached), reading a window of it one ranged read of
its tokens. Memory does not grow with the corpus, and every file goes through `etils.epath`,
so `gs://` directories are read like local ones. Local files are written under temporary
names and renamed (on gs:// an object appears only once fully uploaded, so there they are
written under their own names); a unit's JSON is written after its files, the manifest after
every unit.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import os
import threading
import uuid
from typing import Dict, List, Sequence, Tuple

from etils import epath
import numpy as np

FORMAT = "glm_jax.prepared/1"
MANIFEST = "manifest.json"
UNITS_DIR = "units"
SPLITS = ("train", "validation")
BLOCK = 512  # index entries per block (4 KiB)
_INDEX_DTYPE = np.dtype("<i8")


def token_dtype(vocab_size: int) -> np.dtype:
  """Smallest unsigned little-endian dtype holding ids below `vocab_size`."""
  return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def part_name(unit: int, num_units: int) -> str:
  return f"part-{unit:05d}-of-{num_units:05d}"


def unit_record_path(directory, unit: int, num_units: int) -> epath.Path:
  return epath.Path(directory) / UNITS_DIR / f"unit-{unit:05d}-of-{num_units:05d}.json"


def is_object_store(path) -> bool:
  """gs:// (and other URL) paths: an object appears only once it is fully written."""
  return "://" in os.fspath(path)


def _staging(path: epath.Path) -> epath.Path:
  """Where `path` is written before it is renamed into place (itself on an object store)."""
  if is_object_store(path):
    return path
  return path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"


def write_json(path, value) -> None:
  """Writes JSON under a temporary name, then renames it into place."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  temp = _staging(path)
  temp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
  if temp != path:
    temp.replace(path)


def read_json(path):
  return json.loads(epath.Path(path).read_text())


class ShardWriter:
  """Writes one shard (.tokens, .index, .blocks) under temporary names; `commit` renames.

  On an object store (gs://) the files are written under their own names: an object exists
  only once its upload completes, and a rename there would be a copy.
  """

  def __init__(self, directory, name: str, dtype: np.dtype):
    self._dir = epath.Path(directory)
    self._dir.mkdir(parents=True, exist_ok=True)
    self._name = name
    self._dtype = np.dtype(dtype)
    self._tag = uuid.uuid4().hex
    self._direct = is_object_store(self._dir)
    # epath's gs:// open() is a context manager only: hold it open with an ExitStack.
    self._stack = contextlib.ExitStack()
    self._tokens = self._stack.enter_context(self._temp("tokens").open("wb"))
    self._sha = hashlib.sha256()
    self._offsets: List[int] = [0]
    self._max_id = self._limit = np.iinfo(self._dtype).max

  def _temp(self, suffix: str) -> epath.Path:
    if self._direct:
      return self._dir / f"{self._name}.{suffix}"
    return self._dir / f".{self._name}.{suffix}.tmp-{self._tag}"

  def add(self, ids: Sequence[int]) -> None:
    """Appends one document (token ids; may be empty, then it is not stored)."""
    array = np.asarray(ids, np.int64).reshape(-1)
    if not array.size:
      return
    if array.min() < 0 or array.max() > self._limit:
      raise ValueError(f"Token id {int(array.max())} does not fit {self._dtype}; the "
                       "vocabulary's size and the token dtype disagree.")
    data = array.astype(self._dtype).tobytes()
    self._tokens.write(data)
    self._sha.update(data)
    self._offsets.append(self._offsets[-1] + array.size)

  def commit(self) -> dict:
    """Closes and renames the files into place; returns counts and the tokens' sha256."""
    self._stack.close()
    offsets = np.asarray(self._offsets, _INDEX_DTYPE)
    blocks = np.append(offsets[::BLOCK], offsets[-1]).astype(_INDEX_DTYPE)
    for suffix, array in (("index", offsets), ("blocks", blocks)):
      with self._temp(suffix).open("wb") as f:
        f.write(array.tobytes())
    if not self._direct:
      for suffix in ("tokens", "index", "blocks"):
        self._temp(suffix).replace(self._dir / f"{self._name}.{suffix}")
    return {"name": self._name, "documents": len(offsets) - 1, "tokens": int(offsets[-1]),
            "sha256": self._sha.hexdigest()}

  def abort(self) -> None:
    self._stack.close()
    if self._direct:
      return  # the unit's record is not written: a re-run rewrites these files
    for suffix in ("tokens", "index", "blocks"):
      path = self._temp(suffix)
      if path.exists():
        path.unlink()


def remove_temporaries(directory) -> int:
  """Deletes files a killed run left under temporary names; returns how many."""
  count = 0
  directory = epath.Path(directory)
  for sub in (directory, directory / UNITS_DIR, *(directory / s for s in SPLITS)):
    if sub.exists():
      for path in sub.glob(".*.tmp-*"):
        path.unlink()
        count += 1
  return count


class _RangeFile:
  """Ranged reads of one file: os.pread on local files, a locked seek + read elsewhere."""

  def __init__(self, path: epath.Path):
    self._stack = contextlib.ExitStack()  # kept open for the reader's lifetime
    self._file = self._stack.enter_context(path.open("rb"))
    try:
      self._fd = self._file.fileno()
    except (AttributeError, OSError, ValueError, NotImplementedError):
      self._fd = None
    self._lock = threading.Lock()

  def read(self, offset: int, size: int) -> bytes:
    if self._fd is not None:
      return os.pread(self._fd, size, offset)
    with self._lock:
      self._file.seek(offset)
      return self._file.read(size)


@dataclasses.dataclass
class _Shard:
  name: str
  documents: int
  tokens: int
  tokens_file: _RangeFile
  index_file: _RangeFile
  blocks: np.ndarray  # [ceil((documents + 1) / BLOCK) + 1] int64


class Split:
  """The documents of one split of a prepared corpus, addressed by global token position."""

  def __init__(self, directory: epath.Path, split: str, shards: Sequence[dict],
               dtype: np.dtype, cache_blocks: int = 2048):
    self.name = split
    self._dtype = np.dtype(dtype)
    self._shards: List[_Shard] = []
    for entry in shards:
      if not entry["tokens"]:
        continue
      base = directory / split / entry["name"]
      blocks = np.frombuffer(epath.Path(f"{base}.blocks").read_bytes(), _INDEX_DTYPE)
      self._shards.append(_Shard(entry["name"], entry["documents"], entry["tokens"],
                                 _RangeFile(epath.Path(f"{base}.tokens")),
                                 _RangeFile(epath.Path(f"{base}.index")), blocks))
    self.num_documents = sum(s.documents for s in self._shards)
    self.num_tokens = sum(s.tokens for s in self._shards)
    # starts[i]: global token position of shard i's first token.
    self._starts = np.cumsum([0] + [s.tokens for s in self._shards])
    self._cache: "collections.OrderedDict[Tuple[int, int], np.ndarray]" = (
        collections.OrderedDict())
    self._cache_size = cache_blocks
    self._lock = threading.Lock()
    self.reads = 0  # ranged reads issued (tests and benchmarks look at it)

  def _index_block(self, shard: int, block: int) -> np.ndarray:
    key = (shard, block)
    with self._lock:
      hit = self._cache.get(key)
      if hit is not None:
        self._cache.move_to_end(key)
        return hit
    s = self._shards[shard]
    first = block * BLOCK
    count = min(BLOCK + 1, s.documents + 1 - first)
    values = np.frombuffer(s.index_file.read(first * 8, count * 8), _INDEX_DTYPE)
    with self._lock:
      self.reads += 1
      self._cache[key] = values
      if len(self._cache) > self._cache_size:
        self._cache.popitem(last=False)
    return values

  def locate(self, position: int) -> Tuple[int, int, int]:
    """(shard, start, stop) of the document holding global token `position` (shard offsets)."""
    if not 0 <= position < self.num_tokens:
      raise IndexError(f"Token position {position} is outside [0, {self.num_tokens}).")
    shard = int(np.searchsorted(self._starts, position, side="right")) - 1
    local = position - int(self._starts[shard])
    blocks = self._shards[shard].blocks
    block = int(np.searchsorted(blocks[:-1], local, side="right")) - 1
    offsets = self._index_block(shard, block)
    j = int(np.searchsorted(offsets, local, side="right")) - 1
    return shard, int(offsets[j]), int(offsets[j + 1])

  def document(self, shard: int, index: int) -> Tuple[int, int]:
    """(start, stop) token offsets of document `index` of a shard."""
    block, j = divmod(index, BLOCK)
    offsets = self._index_block(shard, block)
    return int(offsets[j]), int(offsets[j + 1])

  def shard_documents(self) -> List[int]:
    return [s.documents for s in self._shards]

  def read(self, shard: int, start: int, stop: int) -> np.ndarray:
    """Tokens [start, stop) of a shard as int32."""
    size = self._dtype.itemsize
    data = self._shards[shard].tokens_file.read(start * size, (stop - start) * size)
    with self._lock:
      self.reads += 1
    return np.frombuffer(data, self._dtype).astype(np.int32)


class PreparedCorpus:
  """A prepared corpus directory (local or gs://): its manifest and its splits."""

  def __init__(self, directory):
    self.directory = epath.Path(directory)
    path = self.directory / MANIFEST
    if not path.exists():
      raise FileNotFoundError(
          f"{directory} is not a prepared corpus (no {MANIFEST}); prepare it with `python -m "
          f"glm_jax.data.prepare --input=... --vocabulary=SPEC --output_dir={directory}`.")
    self.manifest = read_json(path)
    if self.manifest.get("format") != FORMAT:
      raise ValueError(f"{path} has format {self.manifest.get('format')!r}, not {FORMAT!r}; "
                       "prepare the corpus again with this version of glm_jax.")
    self.vocabulary_spec: str = self.manifest["vocabulary"]["spec"]
    self.vocab_size: int = int(self.manifest["vocabulary"]["vocab_size"])
    self._dtype = np.dtype(self.manifest["vocabulary"]["token_dtype"])
    self._splits: Dict[str, Split] = {}
    self._lock = threading.Lock()

  @property
  def splits(self) -> Tuple[str, ...]:
    return tuple(s for s in SPLITS if self.manifest["splits"][s]["tokens"] > 0)

  def split(self, name: str) -> Split:
    """The split's reader (opened once)."""
    if name not in SPLITS:
      raise ValueError(f"Unknown split {name!r}; use one of {SPLITS}.")
    with self._lock:
      if name not in self._splits:
        entry = self.manifest["splits"][name]
        if not entry["tokens"]:
          raise ValueError(f"Split {name!r} of the prepared corpus {self.directory} is empty; "
                           "prepare it with validation inputs or --holdout_every.")
        self._splits[name] = Split(self.directory, name, entry["shards"], self._dtype)
      return self._splits[name]

  def num_tokens(self, split: str) -> int:
    return int(self.manifest["splits"][split]["tokens"])

  def num_documents(self, split: str) -> int:
    return int(self.manifest["splits"][split]["documents"])


_OPEN: Dict[str, PreparedCorpus] = {}
_OPEN_LOCK = threading.Lock()


def open_corpus(directory) -> PreparedCorpus:
  """The PreparedCorpus of `directory`, opened once per process (re-opened if re-prepared)."""
  key = os.fspath(directory)
  manifest = epath.Path(directory) / MANIFEST
  with _OPEN_LOCK:
    corpus = _OPEN.get(key)
    if corpus is not None and manifest.exists():
      if read_json(manifest) == corpus.manifest:
        return corpus
    corpus = PreparedCorpus(directory)
    _OPEN[key] = corpus
    return corpus


def same_vocabulary(a: str, b: str) -> bool:
  """Whether two vocabulary specs name the same vocabulary (equal specs, or equal contents)."""
  if a == b:
    return True
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  try:
    return vocab_lib.get_vocabulary(a) == vocab_lib.get_vocabulary(b)
  except (ValueError, FileNotFoundError, OSError):
    return False
