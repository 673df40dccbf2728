"""get_batches: layout, batch i = f(seed, i), resume without replay, shards, packing, eval,
prepared corpora, vocabularies, mixtures."""

import time

import numpy as np
import pytest

from glm_jax.data import pipeline
from glm_jax.data import tasks

from conftest import TINY_CORPUS as TINY, prepare_in_process

T, B = 64, 8


@pytest.fixture(scope="module")
def task_name():
  return tasks.register_text_task("pipeline_tiny", train_files=[TINY], mix="base")


@pytest.fixture(scope="module")
def bert_corpus(tmp_path_factory, bert_vocab_file):
  """(prepared dir, spec): the tiny corpus tokenized with the real BERT WordPiece file."""
  spec = "wordpiece:" + bert_vocab_file
  return prepare_in_process(tmp_path_factory.mktemp("bert") / "corpus", vocabulary=spec), spec


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
  rows = [set(pipeline.stream_positions(7, B, s, 2)) for s in range(2)]
  assert not rows[0] & rows[1] and rows[0] | rows[1] == set(range(7 * B, 8 * B))


def test_each_shard_reads_only_its_rows(task_name):
  source = tasks.get_source(task_name)
  before = source.reads
  _batches(task_name, start_batch=5, num_batches=1, batch_size=64, shard_index=3,
           num_shards=8)
  one_shard = source.reads - before
  before = source.reads
  _batches(task_name, start_batch=5, num_batches=1, batch_size=64)
  assert 0 < one_shard < (source.reads - before) / 4  # 1/8 of the rows, 1/8 of the reads


def test_far_resume_costs_what_starting_does(task_name):
  """The first batch after start_batch=10**6 arrives within 2x the time of start_batch=0."""
  def first_batch(start):
    source = tasks.get_source(task_name)
    reads = source.reads
    t = time.perf_counter()
    batch = next(pipeline.get_batches(task_name, "train", sequence_length=T, batch_size=B,
                                      seed=3, start_batch=start))
    return time.perf_counter() - t, source.reads - reads, batch
  first_batch(0)  # warm-up: the source and TF functions
  times = {0: [], 10**6: []}
  for _ in range(3):
    for start in times:
      seconds, reads, batch = first_batch(start)
      times[start].append(seconds)
      assert batch["tokens"].shape == (B, T) and batch["loss_weights"].sum() > 0
  assert min(times[10**6]) < 2 * min(times[0]), times


def test_validation_one_pass_is_finite_and_padded(task_name):
  n = tasks.get_source(task_name).num_samples("validation", T)
  batches = _batches(task_name, split="validation", batch_size=4)
  assert len(batches) == -(-n // 4)
  first = np.concatenate([b["tokens"][:, 0] for b in batches])
  special = tasks.glm_task(task_name).vocabulary.special
  assert (first[:n] == special.cls).all() and not first[n:].any()
  weights = np.concatenate([b["loss_weights"] for b in batches])
  assert weights[:n].sum() > 0 and not weights[n:].any()
  again = _batches(task_name, split="validation", batch_size=4, seed=3)
  assert all(_equal(a, b) for a, b in zip(batches, again))


def test_packing():
  # Samples are as long as the row unless re-cut (short_seq_prob): re-cut all of them.
  mix = tasks.ObjectiveMix(short_seq_prob=1.0)
  name = tasks.register_task("pipeline_short", tasks.CorpusSpec(
      kind="files", train_files=(TINY,)), mix).name
  length = 160
  packed = _batches(name, num_batches=2, pack=True, pack_factor=3, sequence_length=length)
  for batch in packed:
    assert batch["segment_ids"].shape == (B, length) and batch["sep"].shape == (B, length)
    seg = batch["segment_ids"]
    assert (seg.max(1) >= 1).all() and seg.max() >= 2
    assert (batch["tokens"][seg > 0] != 0).all() and not batch["tokens"][seg == 0].any()
    assert not batch["loss_weights"][seg == 0].any()
  again = _batches(name, start_batch=1, num_batches=1, pack=True, pack_factor=3,
                   sequence_length=length)[0]
  assert _equal(again, packed[1])


def test_builtin_task_and_its_vocabulary():
  batch = next(pipeline.get_batches("glm_builtin", "train", sequence_length=128, batch_size=2,
                                    seed=0, num_batches=1))
  assert batch["tokens"].shape == (2, 128)
  assert tasks.get_source("glm_builtin").vocabulary.spec == "builtin"


def test_prepared_corpus_with_the_bert_vocabulary(bert_corpus):
  directory, spec = bert_corpus
  batch = _batches(f"prepared:{directory}", num_batches=1, vocabulary=spec)[0]
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  vocabulary = vocab_lib.get_vocabulary(spec)
  assert (batch["tokens"][:, 0] == 101).all()  # [CLS] of BERT
  assert batch["tokens"].max() < 30592 and (batch["tokens"] == 103).any()  # [MASK]
  sep = int(batch["sep"][0])
  words = vocabulary.decode([t for t in batch["tokens"][0, 1:sep] if t != 103]).split()
  corpus_words = set(open(TINY, encoding="utf-8").read().lower().split())
  assert sum(w in corpus_words for w in words) > len(words) // 2
  # The vocabulary defaults to the corpus's own.
  assert tasks.get_source(f"prepared:{directory}").vocabulary.spec == vocabulary.spec
  # The same files read as a text: task with the BERT vocabulary give the same examples.
  again = _batches(f"text:{TINY}", num_batches=1, vocabulary=spec)[0]
  assert again["tokens"].max() < 30592


def test_prepared_corpus_with_another_vocabulary_is_one_line(bert_corpus):
  directory, spec = bert_corpus
  with pytest.raises(ValueError) as error:
    pipeline.get_batches(f"prepared:{directory}", "train", sequence_length=T, batch_size=B,
                         vocabulary="builtin")
  from glm_jax import gin_utils  # pylint: disable=g-import-not-at-top
  message = gin_utils.one_line(error.value)  # what the CLIs print
  assert spec in message and "'builtin'" in message
  assert "--vocabulary=builtin" in message


def test_mixture_weights_corpora_by_rate(tmp_path):
  tasks.register_prepared_task("mix_a", prepare_in_process(tmp_path / "a"))
  other = tmp_path / "b.txt"
  other.write_text("\n".join(["Zebra quagga okapi giraffe."] * 300) + "\n")
  tasks.register_prepared_task("mix_b", prepare_in_process(tmp_path / "b", [str(other)]))
  tasks.register_mixture("mix_ab", [("mix_a", 3.0), ("mix_b", 1.0)])
  source = tasks.get_source("mix_ab")
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  vocabulary = vocab_lib.get_vocabulary("builtin")
  b_ids = set(vocabulary.encode("Zebra quagga okapi giraffe.")) | {
      vocabulary.special.cls, vocabulary.special.eos}
  is_b = lambda sample: set(sample.tolist()) <= b_ids
  from_b = [is_b(source.raw_sample("train", 0, k, T)) for k in range(400)]
  assert abs(np.mean(from_b) - 0.25) < 0.07
  batch = _batches("mix_ab", num_batches=1)[0]
  assert batch["tokens"].shape == (B, T)
  tasks.register_mixture("mix_ab_tokens", [("mix_a", "tokens"), ("mix_b", "tokens")])
  weighted = tasks.get_source("mix_ab_tokens")
  sizes = [c.num_tokens("train") for c in weighted.components]
  share = np.mean([is_b(weighted.raw_sample("train", 1, k, T)) for k in range(400)])
  assert abs(share - sizes[1] / sum(sizes)) < 0.07


def test_named_corpus_needs_its_prepared_dir(tmp_path, monkeypatch):
  monkeypatch.delenv(tasks.DATA_DIR_ENV, raising=False)
  with pytest.raises(ValueError, match="PREPARED_DATA_DIR"):
    pipeline.get_batches("glm_wiki_books", "train", sequence_length=T, batch_size=B)
  with pytest.raises(FileNotFoundError, match="glm_jax.data.prepare --input=tfds:wikipedia"):
    pipeline.get_batches("glm_wikipedia", "train", sequence_length=T, batch_size=B,
                         data_dir=str(tmp_path))
  prepare_in_process(tmp_path / "wikipedia")
  prepare_in_process(tmp_path / "bookcorpus")
  monkeypatch.setenv(tasks.DATA_DIR_ENV, str(tmp_path))
  batch = next(pipeline.get_batches("glm_wiki_books", "train", sequence_length=T,
                                    batch_size=B))
  assert batch["tokens"].shape == (B, T)


def test_errors(task_name):
  with pytest.raises(ValueError, match="multiple of num_shards"):
    pipeline.get_batches(task_name, "train", sequence_length=T, batch_size=6, num_shards=4)
  with pytest.raises(ValueError, match="shard_index"):
    pipeline.get_batches(task_name, "train", sequence_length=T, batch_size=8, shard_index=2,
                         num_shards=2)
  with pytest.raises(ValueError, match="Unknown task"):
    pipeline.get_batches("nope", "train", sequence_length=T, batch_size=8)
  with pytest.raises(ValueError, match="Unknown split"):
    pipeline.get_batches(task_name, "test", sequence_length=T, batch_size=8)
