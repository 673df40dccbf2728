"""get_batches: layout, batch i = f(seed, i), resume without replay, shards, packing, eval."""

import os

import numpy as np
import pytest

from glm_jax.data import pipeline
from glm_jax.data import tasks

TINY = os.path.join(os.path.dirname(__file__), "data", "tiny_corpus.txt")
T, B = 64, 8


@pytest.fixture(scope="module")
def task_name():
  return tasks.register_text_task("pipeline_tiny", train_files=[TINY], mix="base")


def _batches(name, **kw):
  split = kw.pop("split", "train")
  args = dict(sequence_length=T, batch_size=B, seed=3)
  args.update(kw)
  return list(pipeline.get_batches(name, split, **args))


def _equal(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_layout_of_published_mix():
  task_name = tasks.register_text_task("pipeline_tiny_2b", train_files=[TINY], mix="2b")
  special = tasks.glm_task(task_name).vocabulary.special
  batch = _batches(task_name, num_batches=1)[0]
  assert batch["tokens"].shape == (B, T) and batch["positions"].shape == (B, 2, T)
  assert batch["sep"].shape == (B,) and batch["loss_weights"].dtype == np.float32
  assert all(v.dtype in (np.int32, np.float32) for v in batch.values())
  assert (batch["tokens"][:, 0] == special.cls).all()
  cols = np.arange(T)[None]
  assert not (batch["loss_weights"] * (cols < batch["sep"][:, None])).any()
  # A sentence-level draw on a sample without sentence ends has no span (weight 0).
  assert (batch["loss_weights"].sum(1) > 0).mean() >= 0.5


def test_same_seed_same_batches_and_resume(task_name):
  first = _batches(task_name, num_batches=5)
  assert all(_equal(a, b) for a, b in zip(first, _batches(task_name, num_batches=5)))
  resumed = _batches(task_name, start_batch=3, num_batches=2)
  assert _equal(resumed[0], first[3]) and _equal(resumed[1], first[4])
  other = _batches(task_name, num_batches=1, seed=4)[0]
  assert not np.array_equal(other["tokens"], first[0]["tokens"])


def test_shards_partition_global_batch(task_name):
  full = _batches(task_name, start_batch=7, num_batches=1)[0]
  parts = [_batches(task_name, start_batch=7, num_batches=1, shard_index=s, num_shards=2)[0]
           for s in range(2)]
  for key in full:
    assert np.array_equal(np.concatenate([p[key] for p in parts]), full[key]), key


def test_epochs_wrap_with_new_order(task_name):
  table, _ = pipeline.sample_table(task_name, "train", T)
  n = table.num_samples
  per_epoch = n // B
  late = _batches(task_name, start_batch=per_epoch + 2, num_batches=1)[0]
  assert late["tokens"].shape == (B, T) and late["loss_weights"].sum() > 0


def test_validation_one_pass_is_finite_and_padded(task_name):
  table, _ = pipeline.sample_table(task_name, "validation", T)
  n = table.num_samples
  batches = _batches(task_name, split="validation", batch_size=4)
  assert len(batches) == -(-n // 4)
  first = np.concatenate([b["tokens"][:, 0] for b in batches])
  special = tasks.glm_task(task_name).vocabulary.special
  assert (first[:n] == special.cls).all() and not first[n:].any()
  weights = np.concatenate([b["loss_weights"] for b in batches])
  assert weights[:n].sum() > 0 and not weights[n:].any()
  again = _batches(task_name, split="validation", batch_size=4, seed=3)
  assert all(_equal(a, b) for a, b in zip(batches, again))


def test_packing(task_name):
  packed = _batches(task_name, num_batches=2, pack=True, pack_factor=3)
  for batch in packed:
    assert batch["segment_ids"].shape == (B, T) and batch["sep"].shape == (B, T)
    seg = batch["segment_ids"]
    assert (seg.max(1) >= 1).all() and seg.max() >= 2
    assert (batch["tokens"][seg > 0] != 0).all() and not batch["tokens"][seg == 0].any()
    assert not batch["loss_weights"][seg == 0].any()
  again = _batches(task_name, start_batch=1, num_batches=1, pack=True, pack_factor=3)[0]
  assert _equal(again, packed[1])


def test_builtin_and_vocabulary_for_task():
  batch = next(pipeline.get_batches("glm_builtin", "train", sequence_length=128, batch_size=2,
                                    seed=0, num_batches=1))
  assert batch["tokens"].shape == (2, 128)
  assert pipeline.get_vocabulary_for_task("glm_builtin").spec == "builtin"
  assert pipeline.get_vocabulary_for_task("glm_c4").spec == "builtin"


def test_errors(task_name):
  with pytest.raises(ValueError, match="multiple of num_shards"):
    pipeline.get_batches(task_name, "train", sequence_length=T, batch_size=6, num_shards=4)
  with pytest.raises(ValueError, match="shard_index"):
    pipeline.get_batches(task_name, "train", sequence_length=T, batch_size=8, shard_index=2,
                         num_shards=2)
  with pytest.raises(ValueError, match="Unknown task"):
    pipeline.get_batches("nope", "train", sequence_length=T, batch_size=8)
