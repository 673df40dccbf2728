"""Prepared-corpus files: shard writer, two-level document index, ranged reads, temporaries."""

import numpy as np
import pytest

from glm_jax.data import prepared


def _write_split(directory, shards_docs, dtype=np.uint16, split="train"):
  entries = []
  for i, docs in enumerate(shards_docs):
    writer = prepared.ShardWriter(directory / split, prepared.part_name(i, len(shards_docs)),
                                  dtype)
    for doc in docs:
      writer.add(doc)
    entries.append(writer.commit())
  return prepared.Split(directory, split, entries, np.dtype(dtype).newbyteorder("<"))


def test_locate_and_read_match_brute_force(tmp_path):
  rng = np.random.default_rng(0)
  # Two shards with more documents than one index block, one empty document (not stored).
  shards = [[rng.integers(1, 60000, rng.integers(1, 9)) for _ in range(1300)] + [[]],
            [rng.integers(1, 60000, rng.integers(1, 30)) for _ in range(700)]]
  split = _write_split(tmp_path, shards)
  docs = [d for shard in shards for d in shard if len(d)]
  assert split.num_documents == len(docs) == 2000
  assert split.num_tokens == sum(len(d) for d in docs)
  starts = np.cumsum([0] + [len(d) for d in docs])
  for position in list(rng.integers(0, split.num_tokens, 400)) + [0, split.num_tokens - 1,
                                                                  int(starts[512])]:
    doc = int(np.searchsorted(starts, position, side="right")) - 1
    shard, start, stop = split.locate(int(position))
    assert stop - start == len(docs[doc])
    assert split.read(shard, start, stop).tolist() == list(docs[doc])
  # Only the coarse block offsets stay in memory: 8 bytes per 512 documents.
  assert sum(len(s.blocks) for s in split._shards) <= 2000 // prepared.BLOCK + 4  # pylint: disable=protected-access
  with pytest.raises(IndexError):
    split.locate(split.num_tokens)


def test_uint32_tokens_and_id_range(tmp_path):
  split = _write_split(tmp_path, [[[70000, 1, 2]]], dtype=np.uint32)
  assert split.read(*split.locate(0)).tolist() == [70000, 1, 2]
  writer = prepared.ShardWriter(tmp_path / "x", "part", np.uint16)
  with pytest.raises(ValueError, match="does not fit"):
    writer.add([70000])
  writer.abort()


def test_uncommitted_shard_leaves_only_temporaries(tmp_path):
  writer = prepared.ShardWriter(tmp_path / "train", "part-00000-of-00001", np.uint16)
  writer.add([1, 2, 3])
  # A kill here leaves temporary names only; nothing under the shard's final names.
  names = sorted(p.name for p in (tmp_path / "train").iterdir())
  assert names and all(".tmp-" in n for n in names)
  assert not (tmp_path / "train" / "part-00000-of-00001.tokens").exists()
  assert prepared.remove_temporaries(tmp_path) == len(names)
  assert not list((tmp_path / "train").iterdir())


def test_missing_manifest_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a prepared corpus"):
    prepared.PreparedCorpus(tmp_path)
