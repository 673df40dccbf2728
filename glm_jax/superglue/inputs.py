"""Cloze batches for the trainer and the evaluator (layouts of GLM_SPEC.md section 6).

`get_batches` is the trainer's input callable: batch i is a pure function of (seed, i), one
epoch is ceil(N / batch_size) batches, and only the train split may be trained on. Rows are
laid out as Part A = [CLS] pattern eos (sep = len(A)) and Part B = [sop] + answer[:-1],
every Part B position = the mask's position, block positions 1..n.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import gin
import numpy as np

from glm_jax.superglue import patterns
from glm_jax.superglue import sources

LAYOUTS = ("auto", "separate", "shared")


def parse_task_name(name: str) -> Tuple[str, str]:
  """'rte', 'superglue_rte', 'fewglue_rte' or 'superglue_rte_tfds' -> (task, source)."""
  source = "superglue"
  base = name.lower()
  if base.endswith("_tfds"):
    base, source = base[:-len("_tfds")], "tfds"
  for prefix in ("glm_superglue_", "superglue_", "fewglue_"):
    if base.startswith(prefix):
      if prefix == "fewglue_":
        source = "fewglue"
      base = base[len(prefix):]
  return sources.check_task(base), source


def load_records(name: str, split: str) -> List[dict]:
  """Flat records of a task name (see parse_task_name); TFDS names go through seqio."""
  task, source = parse_task_name(name)
  if source == "tfds":
    from glm_jax.superglue import tasks  # pylint: disable=g-import-not-at-top
    return tasks.tfds_records(task, split)
  return sources.load_records(task, split, source=source)


def resolve_vocabulary(vocabulary: Any):
  """A vocabulary object, or a spec string for glm_jax.data.vocab.get_vocabulary."""
  if isinstance(vocabulary, str):
    from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
    return vocab_lib.get_vocabulary(vocabulary)
  return vocabulary


@dataclasses.dataclass(frozen=True)
class EncodedSplit:
  examples: Tuple[patterns.ClozeExample, ...]
  encoded: Tuple[patterns.EncodedCloze, ...]
  num_truncated: int


def encode_examples(examples: Sequence[patterns.ClozeExample], vocab, sequence_length: int, *,
                    shared_candidates: bool = False, max_answer_length: int = 16
                    ) -> EncodedSplit:
  encoded = tuple(patterns.encode(e, vocab, sequence_length, shared_candidates=shared_candidates,
                                  max_answer_length=max_answer_length) for e in examples)
  return EncodedSplit(tuple(examples), encoded, sum(e.truncated for e in encoded))


def training_examples(examples: Sequence[patterns.ClozeExample], seed: int = 0,
                      max_candidates: int = 10) -> List[patterns.ClozeExample]:
  """The train-time form: WSC keeps its true examples, COPA adds choice-swapped mirrors,
  ReCoRD keeps the gold entity and up to max_candidates - 1 others."""
  out = []
  rng = np.random.RandomState(seed)
  for e in examples:
    if e.label < 0:
      if e.task == "wsc":
        continue
      raise ValueError(f"{e.task} training example {e.idx} has no label; train on the train "
                       "split only.")
    if e.task == "record" and len(e.candidates) > max_candidates:
      others = [i for i in range(len(e.candidates)) if i != e.label]
      keep = sorted(rng.choice(others, max_candidates - 1, replace=False).tolist() + [e.label])
      e = dataclasses.replace(
          e, candidates=tuple(e.candidates[i] for i in keep),
          candidate_values=tuple(e.candidate_values[i] for i in keep), label=keep.index(e.label))
    out.append(e)
    if e.task == "copa":
      out.append(dataclasses.replace(e, candidates=e.candidates[::-1], label=1 - e.label,
                                     parts=_swap_copa_choices(e.parts)))
  return out


def _swap_copa_choices(parts):
  parts = list(parts)
  parts[1], parts[3] = parts[3], parts[1]
  return tuple(parts)


def _round_up(x: int, multiple: int) -> int:
  return int(math.ceil(x / multiple) * multiple)


def make_batch(encoded: Sequence[patterns.EncodedCloze], labels: Sequence[int], *,
               sequence_length: int, batch_size: Optional[int] = None,
               num_candidates: Optional[int] = None, layout: str = "auto",
               first_is_gold: Optional[Sequence[bool]] = None) -> dict:
  """numpy batch of `encoded` examples, padded to batch_size rows (example_weight 0).

  layout 'auto' gives the verbalizer layout for single-token examples and one sequence per
  candidate otherwise; 'shared' packs all candidates of an example behind one Part A.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"Unknown layout {layout!r}; use one of {LAYOUTS}.")
  n = len(encoded)
  rows = batch_size or n
  if n > rows:
    raise ValueError(f"{n} examples do not fit a batch of {rows}.")
  if len({e.multi_token for e in encoded}) > 1:
    raise ValueError("A batch mixes single-token and multi-token examples.")
  c = num_candidates or max(len(e.answers) for e in encoded)
  t = sequence_length
  batch = {"label": np.full((rows,), -1, np.int32),
           "example_weight": np.zeros((rows,), np.float32),
           "candidate_mask": np.zeros((rows, c), np.float32)}
  batch["label"][:n] = labels
  batch["example_weight"][:n] = 1.0
  if first_is_gold is not None:
    batch["first_is_gold"] = np.zeros((rows,), np.int32)
    batch["first_is_gold"][:n] = np.asarray(first_is_gold, np.int32)
  multi = encoded[0].multi_token
  if not multi:
    batch.update(tokens=np.zeros((rows, t), np.int32), positions=np.zeros((rows, 2, t), np.int32),
                 sep=np.zeros((rows,), np.int32), candidate_ids=np.zeros((rows, c), np.int32))
  elif layout == "shared":
    batch.update(tokens=np.zeros((rows, t), np.int32), positions=np.zeros((rows, 2, t), np.int32),
                 sep=np.zeros((rows,), np.int32), targets=np.zeros((rows, t), np.int32),
                 loss_weights=np.zeros((rows, t), np.float32),
                 candidate_index=np.full((rows, t), -1, np.int32))
  else:
    batch.update(tokens=np.zeros((rows, c, t), np.int32),
                 positions=np.zeros((rows, c, 2, t), np.int32), sep=np.zeros((rows, c), np.int32),
                 targets=np.zeros((rows, c, t), np.int32),
                 loss_weights=np.zeros((rows, c, t), np.float32))
  for r, e in enumerate(encoded):
    a = len(e.part_a)
    if len(e.answers) > c:
      raise ValueError(f"An example has {len(e.answers)} candidates, more than {c}.")
    batch["candidate_mask"][r, :len(e.answers)] = 1.0
    if not multi:
      _fill_row(batch, (r,), e, t)
      batch["candidate_ids"][r, :len(e.answers)] = [ans[0] for ans in e.answers]
      continue
    if layout == "shared":
      _fill_row(batch, (r,), e, t)
      start = a
      for ci, ans in enumerate(e.answers):
        end = start + len(ans)
        if end > t:
          raise ValueError(f"Shared candidates need {end} tokens > sequence_length {t}.")
        _fill_answer(batch, (r,), e, ans, start)
        batch["candidate_index"][r, start:end] = ci
        start = end
    else:
      for ci, ans in enumerate(e.answers):
        _fill_row(batch, (r, ci), e, t)
        if a + len(ans) > t:
          raise ValueError(f"Part A + answer need {a + len(ans)} tokens > sequence_length {t}.")
        _fill_answer(batch, (r, ci), e, ans, a)
  return batch


def _fill_row(batch, at, e: patterns.EncodedCloze, t: int):
  """Part A (and, for single-token scoring, the lone sop) of one row."""
  a = len(e.part_a)
  if a + 1 > t:
    raise ValueError(f"Part A has {a} tokens, too long for sequence_length {t}.")
  batch["tokens"][at + (slice(0, a),)] = e.part_a
  batch["positions"][at + (0, slice(0, a))] = np.arange(a)
  batch["sep"][at] = a
  if not e.multi_token:
    batch["tokens"][at + (a,)] = e.sop
    batch["positions"][at + (0, a)] = e.mask_position
    batch["positions"][at + (1, a)] = 1


def _fill_answer(batch, at, e: patterns.EncodedCloze, answer, start: int):
  """Part B inputs [sop] + answer[:-1] at `start`, targets = answer (eop last)."""
  n = len(answer)
  span = slice(start, start + n)
  batch["tokens"][at + (span,)] = (e.sop,) + tuple(answer[:-1])
  batch["positions"][at + (0, span)] = e.mask_position
  batch["positions"][at + (1, span)] = np.arange(1, n + 1)
  batch["targets"][at + (span,)] = answer
  batch["loss_weights"][at + (span,)] = 1.0


def _num_candidates(task: str, examples: Sequence[patterns.EncodedCloze],
                    max_candidates: int) -> int:
  if task in patterns.VERBALIZERS or task == "copa":
    return max(len(e.answers) for e in examples)
  return max(max_candidates, max(len(e.answers) for e in examples))


@gin.configurable
def prepare_split(name: str, split: str, *, sequence_length: int, vocabulary: Any = "builtin",
                  train: bool = False, seed: int = 0, max_candidates: int = 10,
                  layout: str = "auto") -> EncodedSplit:
  """Rendered and tokenized examples of a task split, in train or eval form."""
  task, _ = parse_task_name(name)
  examples = [patterns.render(task, r) for r in load_records(name, split)]
  if train:
    examples = training_examples(examples, seed=seed, max_candidates=max_candidates)
  if not examples:
    raise ValueError(f"{name} {split} has no usable examples.")
  return encode_examples(examples, resolve_vocabulary(vocabulary), sequence_length,
                         shared_candidates=layout == "shared")


def _rows(split: EncodedSplit, order: Sequence[int], **kwargs) -> dict:
  examples = [split.examples[i] for i in order]
  first_is_gold = ([bool(e.label_value) for e in examples] if examples[0].task == "wsc"
                   else None)
  return make_batch([split.encoded[i] for i in order], [e.label for e in examples],
                    first_is_gold=first_is_gold, **kwargs)


@gin.configurable
def get_batches(name: str, split: str, *, sequence_length: int, batch_size: int, seed: int = 0,
                start_batch: int = 0, shard_index: int = 0, num_shards: int = 1,
                vocabulary: Any = "builtin", train: Optional[bool] = None,
                max_candidates: int = 10, layout: str = "auto", pack: bool = False,
                num_batches: Optional[int] = None) -> Iterator[dict]:
  """Trainer input: endless shuffled train batches, or one ordered pass over an eval split.

  Training (the default for split 'train') reshuffles every epoch with seed + epoch; batch i
  is epoch i // E, slice i % E of that epoch's order (E = ceil(N / batch_size)); a short last
  slice is padded with example_weight 0. Each shard gets batch_size / num_shards rows. An
  eval pass stops after `num_batches` batches when given.
  """
  if pack:
    raise ValueError("SuperGLUE cloze batches cannot be packed; set PACK = False.")
  train = split == "train" if train is None else train
  if train and split != "train":
    raise ValueError(f"Refusing to train on the {split!r} split; SuperGLUE fine-tuning trains "
                     "on 'train' only.")
  if batch_size % num_shards:
    raise ValueError(f"batch_size {batch_size} is not divisible by num_shards {num_shards}.")
  task, _ = parse_task_name(name)
  data = prepare_split(name, split, sequence_length=sequence_length, vocabulary=vocabulary,
                       train=train, seed=seed, max_candidates=max_candidates, layout=layout)
  c = _num_candidates(task, data.encoded, max_candidates)
  per_shard = batch_size // num_shards
  n = len(data.examples)
  per_epoch = math.ceil(n / batch_size)
  kwargs = dict(sequence_length=sequence_length, batch_size=per_shard, num_candidates=c,
                layout=layout)
  step = start_batch
  while True:
    epoch, j = divmod(step, per_epoch)
    if not train and (epoch > 0 or (num_batches is not None and step >= num_batches)):
      return
    order = (np.random.RandomState((seed + epoch) % 2**32).permutation(n) if train
             else np.arange(n))
    rows = order[j * batch_size:(j + 1) * batch_size][shard_index * per_shard:
                                                        (shard_index + 1) * per_shard]
    if len(rows):
      yield _rows(data, rows, **kwargs)
    else:  # this shard's part of a short last batch is empty
      yield make_batch(data.encoded[:1], [-1], **kwargs) | {
          "example_weight": np.zeros((per_shard,), np.float32)}
    step += 1


@gin.configurable
def steps_per_epoch(name: str, batch_size: int, split: str = "train", seed: int = 0,
                    max_candidates: int = 10) -> int:
  """Train batches in one epoch of a task (after WSC filtering / COPA mirroring)."""
  task, _ = parse_task_name(name)
  examples = [patterns.render(task, r) for r in load_records(name, split)]
  examples = training_examples(examples, seed=seed, max_candidates=max_candidates)
  return math.ceil(len(examples) / batch_size)


@gin.configurable
def num_train_steps(name: str, epochs: int, batch_size: int, fraction: float = 1.0) -> int:
  """fraction * epochs * steps_per_epoch (fraction 0.1 gives GLM's warmup)."""
  return int(fraction * epochs * steps_per_epoch(name, batch_size))


@gin.configurable
def hparam(task: str, name: str, per_task: dict) -> Any:
  """per_task[task][name]: a task's fine-tuning hyperparameter from configs/superglue/*.gin."""
  task, _ = parse_task_name(task)
  if task not in per_task or name not in per_task[task]:
    raise ValueError(f"No {name!r} for SuperGLUE task {task!r} in configs/superglue/{task}.gin;"
                     f" set the macro {name.upper()} instead.")
  return per_task[task][name]


@gin.configurable
def default_model_dir(init_checkpoint: Optional[str], task: str) -> str:
  """<INIT_CHECKPOINT>_superglue_<task>: the fine-tuning MODEL_DIR when none is given."""
  if not init_checkpoint:
    raise ValueError("Set INIT_CHECKPOINT (a pretrained checkpoint) or MODEL_DIR.")
  from glm_jax import paths  # pylint: disable=g-import-not-at-top
  return str(paths.resolve(os.fspath(init_checkpoint).rstrip("/"))) + f"_superglue_{task}"
