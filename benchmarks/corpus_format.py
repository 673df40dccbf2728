"""Prepared-corpus formats: our token array + two-level index vs ArrayRecord (a record a document).

  python benchmarks/corpus_format.py --corpus=DIR [--documents=200000] [--samples=20000]
      [--join=1]

Takes the first `--documents` train documents of a prepared corpus (glm_jax.data.prepare),
writes them once more in each format under --work_dir, then draws raw GLM samples
(`samples.SampleBuilder`, the reference's BlockDataset draw at raw length 444 = T 512) from
each with the same seeds. ArrayRecord gets what it needs to draw token-weighted: the
cumulative document lengths in memory (8 bytes a document), and `group_size:1` (one record
per chunk, the setting for random access) and reads records with the range read
`read(i, i + 1)`. Prints one JSON line: write seconds, bytes on
disk, samples/s and us per sample on one thread, ranged reads / records read per sample,
resident memory (anonymous and file-backed) after reading, and whether the reader takes a
gs:// path.
"""

import json
import os
import random
import shutil
import sys
import time

from absl import flags
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from glm_jax import gin_utils  # pylint: disable=g-import-not-at-top
from glm_jax.data import prepared  # pylint: disable=g-import-not-at-top
from glm_jax.data import samples  # pylint: disable=g-import-not-at-top
from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top

_CORPUS = flags.DEFINE_string("corpus", None, "A prepared corpus directory.")
_DOCUMENTS = flags.DEFINE_integer("documents", 200_000, "Train documents to copy.")
_SAMPLES = flags.DEFINE_integer("samples", 20_000, "Samples drawn per format.")
_RAW_LENGTH = flags.DEFINE_integer("raw_length", 444, "Raw sample length (444: T = 512).")
_JOIN = flags.DEFINE_integer(
    "join", 1, "Join this many consecutive documents into one (longer documents: 8 gives "
    "~Wikipedia articles, 1000 ~books on the Gutenberg paragraphs).")
_WORK_DIR = flags.DEFINE_string("work_dir", "/tmp/glm_jax_corpus_format", "Scratch folder.")


def _memory() -> dict:
  """RssAnon / RssFile of this process in MiB (/proc/self/status)."""
  out = {}
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(("RssAnon", "RssFile")):
        key, value = line.split(":")
        out[key] = round(int(value.split()[0]) / 1024, 1)
  return out


class _ArrayRecordSplit:
  """The Split interface of SampleBuilder over one ArrayRecord file of document records."""

  def __init__(self, path: str, lengths: np.ndarray, dtype):
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    self._reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")
    self._cum = np.concatenate([[0], np.cumsum(lengths)])   # 8 bytes a document, in memory
    self._dtype = dtype
    self.num_tokens = int(self._cum[-1])
    self.reads = 0

  def locate(self, position: int):
    doc = int(np.searchsorted(self._cum, position, side="right")) - 1
    return doc, 0, int(self._cum[doc + 1] - self._cum[doc])

  def read(self, doc: int, start: int, stop: int) -> np.ndarray:
    self.reads += 1
    # read(i, i + 1): the range read (6.6 us here); read([i]) took 5 ms a call at 1M records.
    record = self._reader.read(doc, doc + 1)[0]              # the whole document
    return np.frombuffer(record, self._dtype)[start:stop].astype(np.int32)


def _draw(split, special, is_end, count: int) -> float:
  builder = samples.SampleBuilder(split, special, _RAW_LENGTH.value, 0.0, is_end)
  for k in range(200):
    builder.sample(random.Random(-k - 1))  # warm-up (page cache, caches)
  start = time.perf_counter()
  tokens = 0
  for k in range(count):
    tokens += len(builder.sample(random.Random(k)))
  return time.perf_counter() - start


def main(argv):
  del argv
  if not _CORPUS.value:
    raise ValueError("Pass --corpus=DIR (a prepared corpus, python -m glm_jax.data.prepare).")
  source = prepared.PreparedCorpus(_CORPUS.value)
  train = source.split("train")
  dtype = np.dtype(source.manifest["vocabulary"]["token_dtype"])
  work = _WORK_DIR.value
  shutil.rmtree(work, ignore_errors=True)
  os.makedirs(work)
  docs = []
  for shard, count in enumerate(train.shard_documents()):
    for d in range(count):
      if len(docs) == _DOCUMENTS.value:
        break
      docs.append(train.read(shard, *train.document(shard, d)).astype(dtype))
  docs = [np.concatenate(docs[i:i + _JOIN.value]) for i in range(0, len(docs), _JOIN.value)]
  vocabulary = vocab_lib.get_vocabulary(source.vocabulary_spec)
  special = vocabulary.special
  is_end = samples.sentence_end_table(special, vocabulary.vocab_size)
  result = {"documents": len(docs), "join": _JOIN.value,
            "tokens": int(sum(len(d) for d in docs)),
            "raw_length": _RAW_LENGTH.value, "samples": _SAMPLES.value}

  start = time.perf_counter()
  writer = prepared.ShardWriter(os.path.join(work, "ours", "train"), "part-00000-of-00001",
                                dtype)
  for d in docs:
    writer.add(d)
  entry = writer.commit()
  ours_write = time.perf_counter() - start
  ours_split = prepared.Split(prepared.epath.Path(work) / "ours", "train", [entry], dtype)

  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  path = os.path.join(work, "docs.array_record")
  ar_writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  for d in docs:
    ar_writer.write(d.tobytes())
  ar_writer.close()
  ar_write = time.perf_counter() - start
  ar_split = _ArrayRecordSplit(path, np.asarray([len(d) for d in docs]), dtype)
  del docs

  for name, split, write, size in (
      ("token_array", ours_split, ours_write,
       sum(os.path.getsize(os.path.join(work, "ours", "train", f))
           for f in os.listdir(os.path.join(work, "ours", "train")))),
      ("array_record", ar_split, ar_write, os.path.getsize(path))):
    before = _memory()
    reads = split.reads
    seconds = _draw(split, special, is_end, _SAMPLES.value)
    result[name] = {
        "write_seconds": round(write, 2), "bytes": size,
        "samples_per_second": round(_SAMPLES.value / seconds, 1),
        "us_per_sample": round(seconds / _SAMPLES.value * 1e6, 1),
        "reads_per_sample": round((split.reads - reads) / (_SAMPLES.value + 200), 2),
        "memory_mib_before": before, "memory_mib_after": _memory(),
    }
  result["token_array"]["in_memory_index_bytes"] = int(
      sum(s.blocks.nbytes for s in ours_split._shards))  # pylint: disable=protected-access
  result["array_record"]["in_memory_index_bytes"] = int(
      ar_split._cum.nbytes)  # pylint: disable=protected-access
  result["token_array"]["reads_gs"] = "yes: epath / tf.io.gfile ranged reads"
  result["array_record"]["reads_gs"] = ("no: array_record 0.8 opens files with riegeli's "
                                        "FdReader (google/array_record#120)")
  print(json.dumps(result))
  shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  gin_utils.run(main)
