"""Seqio Tasks and Mixtures for GLM pretraining (importing this module registers them).

Every task: documents -> tokens (vocabulary 'builtin' unless told) -> raw samples
(`samples.py`) -> `short_seq_prob` re-cut -> blank infilling with an objective mix
(`objectives.py`). Registered here:

  glm_builtin            built-in Gutenberg corpus, Base/Large mix (token level only)
  glm_builtin_doc / _sent / _2b / _10b   the published mixes of GLM_SPEC.md section 2
  glm_builtin_token / _sentence / _document   one objective each
  glm_wikipedia, glm_c4, glm_bookcorpus  TFDS corpora (need the prepared data; never downloaded)
  glm_wiki_books         Mixture of wikipedia + bookcorpus (the Base/Large pretraining data)
  glm_wiki_books_{doc,sent,2b,10b}  the same data with the GLM-Doc/-Sent/-2B/-10B objective mixes

Local files: `register_text_task(name, train_files=[...])`, or use the task name
'text:PATH[,PATH...]' anywhere a task name is taken (it registers itself on first use).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from typing import Dict, Mapping, Optional, Sequence, Tuple

import gin
import seqio
import tensorflow as tf

from glm_jax.data import corpus
from glm_jax.data import objectives
from glm_jax.data import samples
from glm_jax.data import vocab as vocab_lib

SPLITS = ("train", "validation")
# Without validation files, every HOLDOUT_EVERY-th document of the inputs is validation.
HOLDOUT_EVERY = 100


@dataclasses.dataclass(frozen=True)
class ObjectiveMix:
  """Blank-infilling configuration of a task (GLM_SPEC.md section 2 table)."""

  objective_probs: Tuple[float, float, float] = (1.0, 0.0, 0.0)  # token, sentence, document
  doc_min_ratio: float = 0.5
  block_mask_prob: float = 0.0
  short_seq_prob: float = 0.02

  @property
  def objectives(self) -> Tuple[str, ...]:
    return tuple(o for o, p in zip(objectives.OBJECTIVES, self.objective_probs) if p > 0)

  def raw_length(self, sequence_length: int) -> int:
    """Raw sample length whose examples always fit `sequence_length`."""
    return objectives.raw_length_for(sequence_length, self.objectives)

  def objective_kwargs(self) -> dict:
    return dict(objective_probs=self.objective_probs, doc_min_ratio=self.doc_min_ratio,
                block_mask_prob=self.block_mask_prob)


MIXES: Dict[str, ObjectiveMix] = {
    "base": ObjectiveMix((1.0, 0.0, 0.0)),
    "doc": ObjectiveMix((0.5, 0.0, 0.5)),
    "sent": ObjectiveMix((0.5, 0.5, 0.0)),
    "2b": ObjectiveMix((0.4, 0.3, 0.3), doc_min_ratio=0.25, block_mask_prob=0.1),
    "10b": ObjectiveMix((0.5, 0.3, 0.2), doc_min_ratio=0.25, block_mask_prob=0.1),
    "token": ObjectiveMix((1.0, 0.0, 0.0)),
    "sentence": ObjectiveMix((0.0, 1.0, 0.0)),
    "document": ObjectiveMix((0.0, 0.0, 1.0)),
}


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
  """Where a task's documents come from: 'builtin', local 'files', or 'tfds'."""

  kind: str
  train_files: Tuple[str, ...] = ()
  validation_files: Tuple[str, ...] = ()
  text_key: Optional[str] = None
  tfds_name: Optional[str] = None
  tfds_splits: Optional[Tuple[Tuple[str, str], ...]] = None

  @property
  def in_memory(self) -> bool:
    """Small enough to hold as a sample table (index-addressable batches)."""
    return self.kind in ("builtin", "files")


@dataclasses.dataclass(frozen=True)
class GLMTask:
  """What tasks.py knows about a registered GLM task (the pipeline reads it)."""

  name: str
  corpus: CorpusSpec
  mix: ObjectiveMix
  vocabulary_spec: str = "builtin"
  seqio_name: str = ""  # The seqio registry name ('text:PATH' names are hashed into one).

  @property
  def vocabulary(self):
    return vocab_lib.get_vocabulary(self.vocabulary_spec)


_GLM_TASKS: Dict[str, GLMTask] = {}


def glm_task(name: str) -> GLMTask:
  """The GLMTask registered under `name` (registering 'text:PATH,...' names on demand)."""
  if name not in _GLM_TASKS and name.startswith("text:"):
    files = [f for f in name[len("text:"):].split(",") if f]
    register_text_task(name, train_files=files)
  if name not in _GLM_TASKS:
    raise ValueError(f"{name!r} is not a GLM task; use one of {sorted(_GLM_TASKS)} or "
                     "'text:PATH[,PATH]' for local files.")
  return _GLM_TASKS[name]


def is_glm_task(name: str) -> bool:
  return name in _GLM_TASKS or name.startswith("text:")


def read_split_documents(spec: CorpusSpec, split: str,
                         counters: Optional[corpus.ReadCounters] = None):
  """Documents of an in-memory corpus split (a generator of str)."""
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; use one of {SPLITS}.")
  if spec.kind == "builtin":
    yield from corpus.read_documents([corpus.builtin_file(split)], counters=counters)
    return
  if spec.kind != "files":
    raise ValueError(f"Corpus kind {spec.kind!r} is not held in memory.")
  if spec.validation_files:
    files = spec.train_files if split == "train" else spec.validation_files
    yield from corpus.read_documents(files, text_key=spec.text_key, counters=counters)
    return
  for i, document in enumerate(corpus.read_documents(spec.train_files, text_key=spec.text_key,
                                                     counters=counters)):
    if (i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1) == (split == "validation"):
      yield document


def _document_source(spec: CorpusSpec) -> seqio.DataSource:
  if spec.kind == "tfds":
    return seqio.TfdsDataSource(tfds_name=spec.tfds_name, splits=dict(spec.tfds_splits))

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed  # Order is fixed; shuffling happens on samples.
    return tf.data.Dataset.from_generator(
        lambda: read_split_documents(spec, split),
        output_signature=tf.TensorSpec([], tf.string)).map(lambda t: {"targets": t})

  return seqio.FunctionDataSource(dataset_fn, splits=SPLITS, caching_permitted=False)


def _text_to_targets(dataset: tf.data.Dataset, text_key: str = "text") -> tf.data.Dataset:
  return dataset.map(lambda ex: {"targets": ex[text_key]})


def register_task(name: str, corpus_spec: CorpusSpec, mix: ObjectiveMix,
                  vocabulary_spec: str = "builtin") -> GLMTask:
  """Registers (or re-registers) a seqio Task and its GLMTask description.

  Names seqio does not accept (paths in 'text:PATH') get a hashed seqio name, `.seqio_name`.
  """
  vocabulary = vocab_lib.get_vocabulary(vocabulary_spec)
  special = vocabulary.special
  preprocessors = []
  if corpus_spec.kind == "tfds":
    preprocessors.append(functools.partial(_text_to_targets,
                                           text_key=corpus_spec.text_key or "text"))
  preprocessors += [
      seqio.preprocessors.tokenize,
      functools.partial(samples.concatenate_documents, special_tokens=special,
                        raw_length_fn=mix.raw_length),
      functools.partial(samples.shorten_samples, short_seq_prob=mix.short_seq_prob),
      functools.partial(objectives.blank_infilling, special_tokens=special,
                        **mix.objective_kwargs()),
  ]
  seqio_name = name
  if not re.fullmatch(r"[\w.:#]+", name):
    seqio_name = "text_" + hashlib.sha1(name.encode()).hexdigest()[:16]
  if seqio_name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(seqio_name)
  seqio.TaskRegistry.add(
      seqio_name, source=_document_source(corpus_spec), preprocessors=preprocessors,
      output_features={"targets": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32)})
  task = GLMTask(name=name, corpus=corpus_spec, mix=mix, vocabulary_spec=vocabulary_spec,
                 seqio_name=seqio_name)
  _GLM_TASKS[name] = task
  return task


@gin.configurable
def register_text_task(name: str, train_files: Sequence[str],
                       validation_files: Sequence[str] = (), *, text_key: Optional[str] = None,
                       mix: str = "base", vocabulary: str = "builtin") -> str:
  """Registers a task over local text (one document per line) or JSONL files; returns name.

  Without `validation_files`, every 100th document of `train_files` is held out as the
  validation split.
  """
  if not train_files:
    raise ValueError(f"register_text_task({name!r}) needs at least one train file.")
  for path in list(train_files) + list(validation_files):
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(f"Corpus file {path} does not exist; fix the path of task "
                              f"{name!r}.")
  if mix not in MIXES:
    raise ValueError(f"Unknown objective mix {mix!r}; use one of {sorted(MIXES)}.")
  spec = CorpusSpec(kind="files", train_files=tuple(train_files),
                    validation_files=tuple(validation_files), text_key=text_key)
  register_task(name, spec, MIXES[mix], vocabulary)
  return name


def _register_builtin() -> None:
  builtin = CorpusSpec(kind="builtin")
  register_task("glm_builtin", builtin, MIXES["base"])
  for mix in ("doc", "sent", "2b", "10b", "token", "sentence", "document"):
    register_task(f"glm_builtin_{mix}", builtin, MIXES[mix])


def _register_tfds() -> None:
  held_out = (("train", "train[:99%]"), ("validation", "train[99%:]"))
  register_task("glm_wikipedia", CorpusSpec(kind="tfds", tfds_name="wikipedia/20230601.en:1.0.0",
                                            tfds_splits=held_out), MIXES["base"])
  register_task("glm_c4", CorpusSpec(kind="tfds", tfds_name="c4/en:3.1.0",
                                     tfds_splits=(("train", "train"),
                                                  ("validation", "validation"))),
                MIXES["base"])
  # TFDS 4.9 has no BookCorpus builder: a user-prepared TFDS dataset 'bookcorpus' with a
  # 'text' feature, version 1.0.0, is read (or use register_text_task on the BookCorpus text files).
  register_task("glm_bookcorpus", CorpusSpec(kind="tfds", tfds_name="bookcorpus:1.0.0",
                                             tfds_splits=held_out), MIXES["base"])
  # Base/Large data: English Wikipedia + BooksCorpus, weighted ~ by size (2.5B / 0.8B words).
  _add_mixture("glm_wiki_books", [("glm_wikipedia", 0.75), ("glm_bookcorpus", 0.25)])
  # The published objective mixes of GLM-Doc, GLM-Sent, GLM-2B and GLM-10B on the same data.
  for mix in ("doc", "sent", "2b", "10b"):
    for corpus, tfds_name, splits in (
        ("wikipedia", "wikipedia/20230601.en:1.0.0", held_out),
        ("bookcorpus", "bookcorpus:1.0.0", held_out)):
      register_task(f"glm_{corpus}_{mix}", CorpusSpec(kind="tfds", tfds_name=tfds_name,
                                                      tfds_splits=splits), MIXES[mix])
    _add_mixture(f"glm_wiki_books_{mix}", [(f"glm_wikipedia_{mix}", 0.75),
                                           (f"glm_bookcorpus_{mix}", 0.25)])


def _add_mixture(name: str, tasks_and_rates) -> None:
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, tasks_and_rates)


_register_builtin()
_register_tfds()
