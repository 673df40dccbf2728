"""Task registration: builtin mixes, named prepared corpora, text tasks, seqio = trainer."""

import os

import numpy as np
import pytest
import seqio

from glm_jax.data import objectives
from glm_jax.data import tasks

DATA = os.path.join(os.path.dirname(__file__), "data")
TINY = os.path.join(DATA, "tiny_corpus.txt")


def test_registered_names():
  names = seqio.TaskRegistry.names()
  for name in ("glm_builtin", "glm_builtin_doc", "glm_builtin_sent", "glm_builtin_2b",
               "glm_builtin_10b", "glm_builtin_token", "glm_builtin_sentence",
               "glm_builtin_document", "glm_wikipedia", "glm_c4", "glm_bookcorpus"):
    assert name in names, name
    assert tasks.glm_task(name).default_vocabulary == "builtin"
  assert tasks.glm_task("glm_wikipedia").corpus.kind == "named"
  assert "glm_wiki_books" in seqio.MixtureRegistry.names() and tasks.is_glm("glm_wiki_books")


def test_real_corpus_mixtures_carry_the_published_objective_mixes():
  for mix in ("doc", "sent", "2b", "10b"):
    mixture = seqio.get_mixture_or_task(f"glm_wiki_books_{mix}")
    names = sorted(t.name for t in mixture.tasks)
    assert names == [f"glm_bookcorpus_{mix}", f"glm_wikipedia_{mix}"]
    for name in names:
      assert tasks.glm_task(name).mix == tasks.MIXES[mix]


def test_published_mixes():
  assert tasks.glm_task("glm_builtin").mix.objective_probs == (1.0, 0.0, 0.0)
  assert tasks.glm_task("glm_builtin_doc").mix.objective_probs == (0.5, 0.0, 0.5)
  assert tasks.glm_task("glm_builtin_sent").mix.objective_probs == (0.5, 0.5, 0.0)
  for name, probs in (("glm_builtin_2b", (0.4, 0.3, 0.3)), ("glm_builtin_10b", (0.5, 0.3, 0.2))):
    mix = tasks.glm_task(name).mix
    assert mix.objective_probs == probs
    assert (mix.doc_min_ratio, mix.block_mask_prob, mix.short_seq_prob) == (0.25, 0.1, 0.02)
  assert tasks.glm_task("glm_builtin").mix.doc_min_ratio == 0.5
  # The reference's Base/Large/Doc configs leave --short-seq-prob at its default 0.
  for name in ("glm_builtin", "glm_builtin_doc", "glm_builtin_sent", "glm_wikipedia"):
    assert tasks.glm_task(name).mix.short_seq_prob == 0.0
  document = tasks.glm_task("glm_builtin_document").mix.raw_length(512)
  assert document == objectives.raw_length_for(512, ("document",))
  token = tasks.glm_task("glm_builtin").mix.raw_length(512)
  assert token == objectives.raw_length_for(512, ("token",)) < document < 512
  assert tasks.glm_task("glm_builtin_2b").mix.raw_length(512) == objectives.raw_length_for(512)


def _check_layout(ex, special, length):
  n = len(ex["tokens"])
  sep = int(ex["sep"])
  assert n <= length and ex["positions"].shape == (2, n)
  assert ex["tokens"][0] == special.cls
  assert not ex["loss_weights"][:sep].any() and ex["loss_weights"][sep:].all()
  assert not ex["positions"][1, :sep].any()
  assert (ex["positions"][0, :sep] == np.arange(sep)).all()
  if n > sep:
    assert ex["tokens"][sep] == special.sop


def test_text_task_yields_layout(tmp_path):
  name = tasks.register_text_task("test_tiny_text", train_files=[TINY], mix="2b")
  task = seqio.get_mixture_or_task(name)
  special = tasks.glm_task(name).vocabulary.special
  ds = task.get_dataset({"targets": 64}, split="train", shuffle=False, seed=1)
  examples = list(ds.take(12).as_numpy_iterator())
  assert len(examples) == 12
  for ex in examples:
    _check_layout(ex, special, 64)
  assert {int(ex["objective"]) for ex in examples} > {0}


def test_builtin_task_yields_layout():
  task = seqio.get_mixture_or_task("glm_builtin")
  special = tasks.glm_task("glm_builtin").vocabulary.special
  ds = task.get_dataset({"targets": 128}, split="validation", shuffle=False, seed=0)
  for ex in ds.take(3).as_numpy_iterator():
    _check_layout(ex, special, 128)
    assert int(ex["objective"]) == 0 and int(ex["num_spans"]) >= 1


def test_holdout_split_partitions_documents():
  name = tasks.register_text_task("test_holdout", [TINY])
  source = tasks.get_source(name)
  corpus_ = source.components[0]
  everything = [line.strip() for line in open(TINY) if line.strip()]
  held = corpus_.num_documents("validation")
  assert len(everything) // tasks.HOLDOUT_EVERY <= held <= -(-len(everything) //
                                                            tasks.HOLDOUT_EVERY)
  assert (corpus_.num_documents("train") + corpus_.num_documents("validation") ==
          len(everything))


def _unpadded(batch, row):
  n = int(np.count_nonzero(batch["tokens"][row]))
  return batch["tokens"][row][:n]


def test_seqio_task_sees_the_trainer_examples():
  name = tasks.register_text_task("test_same", [TINY], mix="2b")
  from glm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  batch = next(pipeline.get_batches(name, "train", sequence_length=64, batch_size=6, seed=5))
  task = seqio.get_mixture_or_task(tasks.glm_task(name).seqio_name)
  ds = task.get_dataset({"targets": 64}, split="train", shuffle=False, seed=5)
  for row, ex in enumerate(ds.take(6).as_numpy_iterator()):
    assert ex["index"] == row
    assert int(ex["sep"]) == int(batch["sep"][row])
    assert ex["tokens"].tolist() == batch["tokens"][row][:len(ex["tokens"])].tolist()
    assert ex["targets"].tolist() == batch["targets"][row][:len(ex["targets"])].tolist()
  # A seqio shard reads every num_shards-th stream position.
  shard = task.get_dataset({"targets": 64}, split="train", shuffle=False, seed=5,
                           shard_info=seqio.ShardInfo(1, 2))
  assert [int(ex["index"]) for ex in shard.take(3).as_numpy_iterator()] == [1, 3, 5]
  validation = list(task.get_dataset({"targets": 64}, split="validation", shuffle=False,
                                     seed=5).as_numpy_iterator())
  assert len(validation) == tasks.get_source(name).num_samples("validation", 64)


def test_seqio_task_for_another_vocabulary(bert_vocab_file):
  spec = "wordpiece:" + bert_vocab_file
  name = tasks.register_text_task("test_bert", [TINY])
  task = tasks.seqio_task(name, spec)
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  assert task.name != name
  assert task.output_features["targets"].vocabulary.spec == vocab_lib.get_vocabulary(spec).spec
  ex = next(task.get_dataset({"targets": 128}, split="train", shuffle=False,
                             seed=0).as_numpy_iterator())
  assert ex["tokens"][0] == 101 and ex["tokens"].max() < 30592


def test_text_name_registers_on_demand_and_errors(tmp_path):
  path = tmp_path / "docs.jsonl"
  path.write_text('{"text": "One sentence. Two sentences."}\n')
  task = tasks.glm_task(f"text:{path}")
  assert task.corpus.train_files == (str(path),) and task.mix == tasks.MIXES["base"]
  with pytest.raises(FileNotFoundError, match="not a prepared corpus"):
    tasks.glm_task(f"prepared:{tmp_path}/none")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    tasks.glm_task("text:/nonexistent/file.txt")
  with pytest.raises(ValueError, match="not a GLM task"):
    tasks.glm_task("no_such_task")
  with pytest.raises(ValueError, match="Unknown objective mix"):
    tasks.register_text_task("bad_mix", [str(path)], mix="3b")
