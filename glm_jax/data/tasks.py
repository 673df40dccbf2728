"""GLM pretraining tasks and mixtures (importing this module registers them, also with seqio).

A task is a corpus and an objective mix; it is vocabulary-parametric: the run's vocabulary
tokenizes it. Every corpus is read as a prepared corpus (`prepared.py`) through the one
index-addressable source (`source.py`):

  glm_builtin            built-in Gutenberg corpus, Base/Large mix (token level only)
  glm_builtin_doc / _sent / _2b / _10b   the published mixes of GLM_SPEC.md section 2
  glm_builtin_token / _sentence / _document   one objective each
  glm_wikipedia, glm_bookcorpus, glm_c4  named prepared corpora: DATA_DIR/wikipedia, ...
  glm_wiki_books         wikipedia + bookcorpus weighted by tokens (the reference's
                         concatenation), the Base/Large pretraining data
  glm_wiki_books_{doc,sent,2b,10b}  the same data with the GLM-Doc/-Sent/-2B/-10B mixes
  prepared:DIR           any prepared corpus (`python -m glm_jax.data.prepare`), Base mix
  text:PATH[,PATH...]    local or gs:// text / JSONL files, prepared on first use (cached)

The built-in corpus and `text:` files are prepared on first use with the run's vocabulary
into the cache (`prepare.cache_root()`). Named corpora live in DATA_DIR/<name> (the
`data_dir` argument, or $GLM_JAX_DATA_DIR), prepared with the run's vocabulary. A prepared
corpus whose manifest names another vocabulary stops the run with one line.

seqio: each task is registered with the default vocabulary ('builtin'; a `prepared:` task
its manifest's); `seqio_task(name, vocabulary)` registers it for another vocabulary. Its
source emits stream positions and its preprocessor is `source.GLMSource.examples`, the map
the trainer runs, so seqio users see the trainer's examples.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import threading
from typing import Dict, Optional, Sequence, Tuple, Union

from etils import epath
import gin
import seqio
import tensorflow as tf

from glm_jax.data import corpus
from glm_jax.data import objectives
from glm_jax.data import prepare as prepare_lib
from glm_jax.data import prepared
from glm_jax.data import source as source_lib
from glm_jax.data import vocab as vocab_lib

SPLITS = prepared.SPLITS
# Without validation files, every HOLDOUT_EVERY-th document of the inputs is validation.
HOLDOUT_EVERY = prepare_lib.DEFAULT_HOLDOUT_EVERY
DEFAULT_VOCABULARY = "builtin"
DATA_DIR_ENV = "GLM_JAX_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class ObjectiveMix:
  """Blank-infilling configuration of a task (GLM_SPEC.md section 2 table)."""

  objective_probs: Tuple[float, float, float] = (1.0, 0.0, 0.0)  # token, sentence, document
  doc_min_ratio: float = 0.5
  block_mask_prob: float = 0.0
  # The reference's --short-seq-prob: 0.02 in the 2B/10B (and Chinese) configs, unset (0)
  # in Base/Large.
  short_seq_prob: float = 0.0

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
    "2b": ObjectiveMix((0.4, 0.3, 0.3), doc_min_ratio=0.25, block_mask_prob=0.1,
                       short_seq_prob=0.02),
    "10b": ObjectiveMix((0.5, 0.3, 0.2), doc_min_ratio=0.25, block_mask_prob=0.1,
                        short_seq_prob=0.02),
    "token": ObjectiveMix((1.0, 0.0, 0.0)),
    "sentence": ObjectiveMix((0.0, 1.0, 0.0)),
    "document": ObjectiveMix((0.0, 0.0, 1.0)),
}


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
  """Where a task's documents come from.

  kind 'builtin' (the shipped corpus), 'files' (text/JSONL, prepared on first use),
  'prepared' (a prepared corpus at `path`) or 'named' (DATA_DIR/`name`, built by
  `python -m glm_jax.data.prepare --input=<source>`).
  """

  kind: str
  train_files: Tuple[str, ...] = ()
  validation_files: Tuple[str, ...] = ()
  text_key: Optional[str] = None
  path: Optional[str] = None
  name: Optional[str] = None
  source: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class GLMTask:
  """A registered GLM task: a corpus and an objective mix (the vocabulary is the run's)."""

  name: str
  corpus: CorpusSpec
  mix: ObjectiveMix
  seqio_name: str = ""  # The seqio registry name ('text:PATH' names are hashed into one).

  @property
  def default_vocabulary(self) -> str:
    """The vocabulary when none is given: a prepared corpus's own, else 'builtin'."""
    if self.corpus.kind == "prepared":
      return prepared.open_corpus(self.corpus.path).vocabulary_spec
    return DEFAULT_VOCABULARY

  @property
  def vocabulary(self):
    return vocab_lib.get_vocabulary(self.default_vocabulary)


_GLM_TASKS: Dict[str, GLMTask] = {}
# name -> ((task name, rate), ...); rate 'tokens' weights a task by its corpus's train tokens.
_GLM_MIXTURES: Dict[str, Tuple[Tuple[str, Union[float, str]], ...]] = {}
_SOURCES: Dict[tuple, "source_lib.GLMSource"] = {}
_LOCK = threading.Lock()


def _register_on_demand(name: str) -> None:
  if name.startswith("text:"):
    files = [f for f in name[len("text:"):].split(",") if f]
    register_text_task(name, train_files=files)
  elif name.startswith("prepared:"):
    path = name[len("prepared:"):]
    if not path:
      raise ValueError("Use 'prepared:DIR' with the directory of a prepared corpus.")
    register_task(name, CorpusSpec(kind="prepared", path=path), MIXES["base"])


def glm_task(name: str) -> GLMTask:
  """The GLMTask registered under `name` (registering 'text:' / 'prepared:' names on demand)."""
  if name not in _GLM_TASKS:
    _register_on_demand(name)
  if name not in _GLM_TASKS:
    raise ValueError(f"{name!r} is not a GLM task; use one of {sorted(_GLM_TASKS)}, "
                     "'prepared:DIR' or 'text:PATH[,PATH]'.")
  return _GLM_TASKS[name]


def is_glm_task(name: str) -> bool:
  return name in _GLM_TASKS or name.startswith(("text:", "prepared:"))


def is_glm_mixture(name: str) -> bool:
  return name in _GLM_MIXTURES


def is_glm(name: str) -> bool:
  """A GLM task or a mixture of GLM tasks (read through the index-addressable source)."""
  return is_glm_task(name) or is_glm_mixture(name)


def data_dir(explicit: Optional[str] = None) -> Optional[str]:
  """The directory of named prepared corpora: `explicit`, else $GLM_JAX_DATA_DIR."""
  return explicit or os.environ.get(DATA_DIR_ENV) or None


def check_vocabulary(corpus_: prepared.PreparedCorpus, vocabulary: str) -> None:
  """One line naming both vocabularies and the fix when a prepared corpus has another one."""
  if not prepared.same_vocabulary(corpus_.vocabulary_spec, vocabulary):
    raise ValueError(
        f"Prepared corpus {os.fspath(corpus_.directory)} was tokenized with vocabulary "
        f"{corpus_.vocabulary_spec!r} but the run's VOCABULARY is {vocabulary!r}; prepare it "
        f"again with `python -m glm_jax.data.prepare --vocabulary={vocabulary} "
        f"--output_dir=NEW_DIR ...` or set VOCABULARY = '{corpus_.vocabulary_spec}'.")


def task_corpus_path(task: GLMTask, vocabulary: str, data_dir_: Optional[str] = None) -> str:
  """The prepared corpus directory of a task for `vocabulary` (prepared on first use)."""
  spec = task.corpus
  if spec.kind == "builtin":
    path = prepare_lib.cached_corpus([corpus.builtin_file("train")],
                                     [corpus.builtin_file("validation")], vocabulary)
  elif spec.kind == "files":
    path = prepare_lib.cached_corpus(spec.train_files, spec.validation_files, vocabulary,
                                     text_key=spec.text_key, holdout_every=HOLDOUT_EVERY)
  elif spec.kind == "prepared":
    path = spec.path
  elif spec.kind == "named":
    root = data_dir(data_dir_)
    if root is None:
      raise ValueError(
          f"Task {task.name!r} reads the prepared corpus '{spec.name}' from DATA_DIR; set "
          f"PREPARED_DATA_DIR (gin) or ${DATA_DIR_ENV} to the folder holding {spec.name}/, "
          f"made by `python -m glm_jax.data.prepare --input={spec.source} "
          f"--vocabulary=SPEC --output_dir=DATA_DIR/{spec.name}`.")
    path = os.fspath(epath.Path(root) / spec.name)
    if not (epath.Path(path) / prepared.MANIFEST).exists():
      raise FileNotFoundError(
          f"Task {task.name!r} needs the prepared corpus {path}; make it with `python -m "
          f"glm_jax.data.prepare --input={spec.source} --vocabulary={vocabulary} "
          f"--output_dir={path}`.")
  else:
    raise ValueError(f"Unknown corpus kind {spec.kind!r}.")
  return path


def open_task_corpus(task: GLMTask, vocabulary: str,
                     data_dir_: Optional[str] = None) -> prepared.PreparedCorpus:
  """The prepared corpus of a task, checked to be tokenized with `vocabulary`."""
  opened = prepared.open_corpus(task_corpus_path(task, vocabulary, data_dir_))
  check_vocabulary(opened, vocabulary)
  return opened


def _mixture_members(name: str):
  if is_glm_mixture(name):
    return [(glm_task(t), rate) for t, rate in _GLM_MIXTURES[name]]
  return [(glm_task(name), 1.0)]


def get_source(name: str, vocabulary: Optional[str] = None,
               data_dir_: Optional[str] = None) -> source_lib.GLMSource:
  """The index-addressable source of a GLM task or mixture for a vocabulary (cached)."""
  members = _mixture_members(name)
  if vocabulary is None:
    vocabulary = members[0][0].default_vocabulary
  mixes = {task.mix for task, _ in members}
  if len(mixes) > 1:
    raise ValueError(f"Mixture {name!r} mixes tasks with different objective mixes; use one "
                     "mix per mixture.")
  key = (name, vocabulary, data_dir(data_dir_),
         tuple((task.corpus, task.mix, rate) for task, rate in members))
  with _LOCK:
    cached = _SOURCES.get(key)
  components = [(open_task_corpus(task, vocabulary, data_dir_), rate) for task, rate in members]
  if cached is not None and [c for c, _ in components] == cached.components:
    return cached
  components = [(c, c.num_tokens("train") if rate == "tokens" else float(rate))
                for c, rate in components]
  made = source_lib.GLMSource(name, components, mixes.pop(),
                              vocab_lib.get_vocabulary(vocabulary))
  with _LOCK:
    _SOURCES[key] = made
  return made


# ----------------------------------------------------------------------------- seqio


class IndexSource(seqio.DataSource):
  """seqio source of stream positions k (each shard k = index, index + num_shards, ...).

  Both splits stream; `_glm_examples` stops validation after one pass
  (`GLMSource.num_samples`).
  """

  def __init__(self, task_name: str, vocabulary: str):
    self._task_name, self._vocabulary = task_name, vocabulary
    super().__init__(splits=SPLITS, caching_permitted=False)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str):
    return [split]

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None, shard_info: Optional[seqio.ShardInfo] = None,
                  *, sequence_length=None, use_cached=False, num_epochs=1) -> tf.data.Dataset:
    del shuffle, sequence_length, use_cached, num_epochs
    if split not in SPLITS:
      raise ValueError(f"Unknown split {split!r}; use one of {SPLITS}.")
    index, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
    seed = 0 if seed is None else int(seed)
    # The preprocessor ends a validation pass (its length depends on the model length).
    return tf.data.Dataset.range(index, 1 << 62, count).map(
        lambda k: source_lib.index_features(split, seed, k))


def _glm_examples(dataset: tf.data.Dataset, sequence_length=None, output_features=None, *,
                  task_name: str, vocabulary: str) -> tf.data.Dataset:
  """seqio preprocessor: stream positions -> GLM layout examples (`GLMSource.examples`)."""
  del output_features
  if not sequence_length or not sequence_length.get("targets"):
    raise ValueError("GLM tasks need sequence_length={'targets': T}.")
  length = sequence_length["targets"]
  src = get_source(task_name, vocabulary)
  one_pass = (src.num_samples("validation", length)
              if all("validation" in c.splits for c in src.components) else 0)
  limit = lambda f: tf.where(tf.equal(f["split"], "train"), tf.constant(1 << 62, tf.int64),
                             tf.constant(one_pass, tf.int64))
  dataset = dataset.take_while(lambda f: f["index"] < limit(f))
  return src.examples(dataset, length)


def _seqio_name(name: str, vocabulary: str, default: str) -> str:
  base = name if re.fullmatch(r"[\w.:#]+", name) else (
      "text_" + hashlib.sha1(name.encode()).hexdigest()[:16])
  if vocabulary != default:
    base += "__v" + hashlib.sha1(vocabulary.encode()).hexdigest()[:10]
  return base


def _add_seqio_task(task: GLMTask, vocabulary: str, seqio_name: str) -> None:
  if seqio_name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(seqio_name)
  seqio.TaskRegistry.add(
      seqio_name, source=IndexSource(task.name, vocabulary),
      preprocessors=[functools.partial(_glm_examples, task_name=task.name,
                                       vocabulary=vocabulary)],
      output_features={"targets": seqio.Feature(vocab_lib.get_vocabulary(vocabulary),
                                                add_eos=False, dtype=tf.int32)})


def seqio_task(name: str, vocabulary: Optional[str] = None) -> seqio.Task:
  """The seqio Task of a GLM task with `vocabulary` (registered under a derived name)."""
  task = glm_task(name)
  vocabulary = vocabulary or task.default_vocabulary
  seqio_name = _seqio_name(name, vocabulary, task.default_vocabulary)
  if seqio_name not in seqio.TaskRegistry.names():
    _add_seqio_task(task, vocabulary, seqio_name)
  return seqio.get_mixture_or_task(seqio_name)


def register_task(name: str, corpus_spec: CorpusSpec, mix: ObjectiveMix) -> GLMTask:
  """Registers (or re-registers) a GLM task and its seqio Task (default vocabulary).

  Names seqio does not accept (paths in 'text:PATH') get a hashed seqio name, `.seqio_name`.
  """
  task = GLMTask(name=name, corpus=corpus_spec, mix=mix)
  default = task.default_vocabulary
  task = dataclasses.replace(task, seqio_name=_seqio_name(name, default, default))
  _GLM_TASKS[name] = task
  _add_seqio_task(task, default, task.seqio_name)
  return task


@gin.configurable
def register_text_task(name: str, train_files: Sequence[str],
                       validation_files: Sequence[str] = (), *, text_key: Optional[str] = None,
                       mix: str = "base") -> str:
  """Registers a task over text (one document per line) or JSONL files; returns `name`.

  Without `validation_files`, every 100th document of `train_files` is the validation split.
  The files are prepared on first use with the run's vocabulary (cached).
  """
  if not train_files:
    raise ValueError(f"register_text_task({name!r}) needs at least one train file.")
  for path in list(train_files) + list(validation_files):
    if not epath.Path(path).exists():
      raise FileNotFoundError(f"Corpus file {path} does not exist; fix the path of task "
                              f"{name!r}.")
  if mix not in MIXES:
    raise ValueError(f"Unknown objective mix {mix!r}; use one of {sorted(MIXES)}.")
  spec = CorpusSpec(kind="files", train_files=tuple(train_files),
                    validation_files=tuple(validation_files), text_key=text_key)
  register_task(name, spec, MIXES[mix])
  return name


@gin.configurable
def register_prepared_task(name: str, path: str, mix: str = "base") -> str:
  """Registers a task over a prepared corpus directory with an objective mix; returns `name`."""
  if mix not in MIXES:
    raise ValueError(f"Unknown objective mix {mix!r}; use one of {sorted(MIXES)}.")
  register_task(name, CorpusSpec(kind="prepared", path=path), MIXES[mix])
  return name


def register_mixture(name: str, tasks_and_rates: Sequence[Tuple[str, Union[float, str]]]
                     ) -> None:
  """A mixture of GLM tasks; a rate 'tokens' weights a task by its corpus's train tokens."""
  _GLM_MIXTURES[name] = tuple(tasks_and_rates)
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)

  def rate_of(task_name, rate):
    if rate != "tokens":
      return float(rate)
    task = _GLM_TASKS[task_name]
    return lambda _: float(prepared.open_corpus(task_corpus_path(
        task, task.default_vocabulary)).num_tokens("train"))
  seqio.MixtureRegistry.add(name, [(_GLM_TASKS[t].seqio_name, rate_of(t, r))
                                   for t, r in tasks_and_rates])


def _register_builtin() -> None:
  builtin = CorpusSpec(kind="builtin")
  register_task("glm_builtin", builtin, MIXES["base"])
  for mix in ("doc", "sent", "2b", "10b", "token", "sentence", "document"):
    register_task(f"glm_builtin_{mix}", builtin, MIXES[mix])


NAMED_CORPORA = {
    "wikipedia": "tfds:wikipedia/20230601.en:1.0.0",
    # TFDS 4.9 has no BookCorpus builder: prepare the BookCorpus text files (or a TFDS dataset
    # of your own) into DATA_DIR/bookcorpus.
    "bookcorpus": "'/data/bookcorpus/*.txt'",
    "c4": "tfds:c4/en:3.1.0",
}


def _register_named() -> None:
  def named(corpus_name):
    return CorpusSpec(kind="named", name=corpus_name, source=NAMED_CORPORA[corpus_name])
  for corpus_name in NAMED_CORPORA:
    register_task(f"glm_{corpus_name}", named(corpus_name), MIXES["base"])
  # Base/Large data: English Wikipedia + BooksCorpus weighted by tokens, as the reference's
  # concatenated dataset samples them.
  register_mixture("glm_wiki_books", [("glm_wikipedia", "tokens"), ("glm_bookcorpus", "tokens")])
  for mix in ("doc", "sent", "2b", "10b"):
    for corpus_name in ("wikipedia", "bookcorpus"):
      register_task(f"glm_{corpus_name}_{mix}", named(corpus_name), MIXES[mix])
    register_mixture(f"glm_wiki_books_{mix}", [(f"glm_wikipedia_{mix}", "tokens"),
                                               (f"glm_bookcorpus_{mix}", "tokens")])


_register_builtin()
_register_named()
