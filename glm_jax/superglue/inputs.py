"""Cloze batches for the trainer and the evaluator (layouts of GLM_SPEC.md section 6).

`get_batches` is the trainer's input callable: batch i is a pure function of (seed, i), one
epoch is ceil(N / batch_size) batches, and only the train split may be trained on. Rows are
laid out as Part A = [CLS] pattern eos (sep = len(A)) and Part B = [sop] + answer[:-1],
every Part B position = the mask's position, block positions 1..n.
"""

from __future__ import annotations

import dataclasses
import os
import random
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import gin
import numpy as np

from glm_jax import sizes
from glm_jax.superglue import patterns
from glm_jax.superglue import sources

LAYOUTS = ("auto", "separate", "shared", "generative")


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
class ClozeSettings:
  """How a task's examples are built: the reference's per-task options (configs/superglue).

  pattern_id: None = the task's default (patterns.DEFAULT_PATTERNS). loss: 'cross_entropy',
  'mix' (the reference's WSC: -score[gold] + cross-entropy) or 'generative' (WSC only, the
  reference's task_wsc_generative.sh: the gold span's language-model loss, correct iff every
  token is the argmax). length_penalty: multi-token scores divided by the answer length **
  length_penalty (WSC 1.0). wsc_candidates and record_answer_order: see patterns.render and
  training_examples.
  """

  pattern_id: Optional[int] = None
  loss: str = "cross_entropy"
  length_penalty: float = 0.0
  wsc_candidates: str = "heuristic"
  record_answer_order: str = "file"

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f"SuperGLUE loss must be one of {LOSSES}, got {self.loss!r}.")
    if self.record_answer_order not in RECORD_ANSWER_ORDERS:
      raise ValueError(f"record_answer_order must be one of {RECORD_ANSWER_ORDERS}, got "
                       f"{self.record_answer_order!r}.")
    if self.length_penalty < 0:
      raise ValueError(f"length_penalty must be >= 0, got {self.length_penalty}.")

  def check_task(self, task: str) -> "ClozeSettings":
    if self.loss == "generative" and task != "wsc":
      raise ValueError(f"loss 'generative' is the WSC variant; {task} uses 'cross_entropy'.")
    return self


LOSSES = ("cross_entropy", "mix", "generative")
RECORD_ANSWER_ORDERS = ("file", "set")
RECORD_SEED = 42  # the reference's ReCoRD entity shuffler
WSC_CHUNK = 9  # the reference's training examples hold at most 9 WSC rivals


@dataclasses.dataclass(frozen=True)
class EncodedSplit:
  examples: Tuple[patterns.ClozeExample, ...]
  encoded: Tuple[patterns.EncodedCloze, ...]
  num_truncated: int


def render_records(task: str, records: Sequence[dict], settings: ClozeSettings = ClozeSettings()
                   ) -> List[patterns.ClozeExample]:
  return [patterns.render(task, r, pattern_id=settings.pattern_id,
                          wsc_candidates=settings.wsc_candidates) for r in records]


def encode_examples(examples: Sequence[patterns.ClozeExample], vocab, sequence_length: int, *,
                    shared_candidates: bool = False, max_answer_length: int = 0
                    ) -> EncodedSplit:
  encoded = tuple(patterns.encode(e, vocab, sequence_length, shared_candidates=shared_candidates,
                                  max_answer_length=max_answer_length) for e in examples)
  return EncodedSplit(tuple(examples), encoded, sum(e.truncated for e in encoded))


def _mirrored_copa(record: dict) -> dict:
  """The reference's extra COPA training example: the choices swapped, the label flipped."""
  return {**record, "choice1": record["choice2"], "choice2": record["choice1"],
          "label": 1 if record.get("label") == 0 else 0}


def _record_training(examples: Sequence[patterns.ClozeExample], order: str,
                     max_candidates: int) -> List[patterns.ClozeExample]:
  """One example per distinct gold answer: that answer, then the non-gold entities.

  Where more than max_candidates - 1 of those, one random.Random(42) over the whole split (in
  file order) shuffles them and the first max_candidates - 1 stay, as in the reference. Its
  answers come in Python set order (PYTHONHASHSEED-dependent: order 'set'); ours in file
  order ('file'), so the pairing of answers and shuffles is reproducible.
  """
  shuffler = random.Random(RECORD_SEED)
  out = []
  for e in examples:
    answers = list(e.answers) if order == "file" else list(set(e.answers))
    for answer in answers:
      others = [x for x in e.candidate_values if x not in e.answers]
      if len(others) > max_candidates - 1:
        shuffler.shuffle(others)
        others = others[:max_candidates - 1]
      values = (answer,) + tuple(others)
      out.append(dataclasses.replace(e, candidates=tuple(" " + v for v in values),
                                     candidate_values=values, label=0, label_value=[answer],
                                     answers=(answer,)))
  return out


def _wsc_training(examples: Sequence[patterns.ClozeExample]) -> List[patterns.ClozeExample]:
  """The true examples (gold = the queried span, label 0); more than 9 rivals are split into
  examples of 9, the last one topped up from the first rivals (the reference's)."""
  out = []
  for e in examples:
    if e.label_value is not True:
      continue
    gold, rivals = e.candidates[0], list(e.candidates[1:])
    chunks = [rivals[i:i + WSC_CHUNK] for i in range(0, len(rivals), WSC_CHUNK)] if len(
        rivals) > WSC_CHUNK else [rivals]
    for chunk in chunks:
      chunk = chunk + rivals[:WSC_CHUNK - len(chunk)] if len(rivals) > WSC_CHUNK else chunk
      out.append(dataclasses.replace(e, candidates=(gold,) + tuple(chunk),
                                     candidate_values=(True,) + (False,) * len(chunk), label=0))
  return out


def training_examples(task: str, records: Sequence[dict],
                      settings: ClozeSettings = ClozeSettings(),
                      max_candidates: int = 10) -> List[patterns.ClozeExample]:
  """The train-time form of a split, as the reference's processors build it.

  COPA adds choice-swapped mirrors after the originals; WSC keeps its true examples; ReCoRD
  makes one example per gold answer (see _record_training); every other example needs a label.
  """
  task = sources.check_task(task)
  if task == "copa":
    records = list(records) + [_mirrored_copa(r) for r in records]
  examples = render_records(task, records, settings)
  if task == "record":
    return _record_training(examples, settings.record_answer_order, max_candidates)
  if task == "wsc":
    return _wsc_training(examples)
  for e in examples:
    if e.label < 0:
      raise ValueError(f"{e.task} training example {e.idx} has no label; train on the train "
                       "split only.")
  return examples


def make_batch(encoded: Sequence[patterns.EncodedCloze], labels: Sequence[int], *,
               sequence_length: int, batch_size: Optional[int] = None,
               num_candidates: Optional[int] = None, layout: str = "auto",
               first_is_gold: Optional[Sequence[bool]] = None) -> dict:
  """numpy batch of `encoded` examples, padded to batch_size rows (example_weight 0).

  layout 'auto' gives the verbalizer layout for single-token examples and one sequence per
  candidate otherwise; 'shared' packs all candidates of an example behind one Part A;
  'generative' is the gold candidate's row alone ([B, T]; labels: 1 = true, 0 = false).
  """
  if layout not in LAYOUTS:
    raise ValueError(f"Unknown layout {layout!r}; use one of {LAYOUTS}.")
  n = len(encoded)
  rows = batch_size or n
  if n > rows:
    raise ValueError(f"{n} examples do not fit a batch of {rows}.")
  if len({e.multi_token for e in encoded}) > 1:
    raise ValueError("A batch mixes single-token and multi-token examples.")
  generative = layout == "generative"
  c = 1 if generative else (num_candidates or max(len(e.answers) for e in encoded))
  t = sequence_length
  batch = {"label": np.full((rows,), -1, np.int32),
           "example_weight": np.zeros((rows,), np.float32),
           "candidate_mask": np.zeros((rows, c), np.float32)}
  batch["label"][:n] = labels
  batch["example_weight"][:n] = 1.0
  if first_is_gold is not None and not generative:
    batch["first_is_gold"] = np.zeros((rows,), np.int32)
    batch["first_is_gold"][:n] = np.asarray(first_is_gold, np.int32)
  multi = encoded[0].multi_token
  if generative and not multi:
    raise ValueError("The generative layout needs multi-token answers (WSC).")
  if not multi:
    batch.update(tokens=np.zeros((rows, t), np.int32), positions=np.zeros((rows, 2, t), np.int32),
                 sep=np.zeros((rows,), np.int32), candidate_ids=np.zeros((rows, c), np.int32))
  elif layout in ("shared", "generative"):
    batch.update(tokens=np.zeros((rows, t), np.int32), positions=np.zeros((rows, 2, t), np.int32),
                 sep=np.zeros((rows,), np.int32), targets=np.zeros((rows, t), np.int32),
                 loss_weights=np.zeros((rows, t), np.float32))
    if not generative:
      batch["candidate_index"] = np.full((rows, t), -1, np.int32)
  else:
    batch.update(tokens=np.zeros((rows, c, t), np.int32),
                 positions=np.zeros((rows, c, 2, t), np.int32), sep=np.zeros((rows, c), np.int32),
                 targets=np.zeros((rows, c, t), np.int32),
                 loss_weights=np.zeros((rows, c, t), np.float32))
  for r, e in enumerate(encoded):
    if len(e.answers) > c and not generative:
      raise ValueError(f"An example has {len(e.answers)} candidates, more than {c}.")
    batch["candidate_mask"][r, :min(c, len(e.answers))] = 1.0
    if not multi:
      _fill_row(batch, (r,), e, 0, t)
      batch["candidate_ids"][r, :len(e.answers)] = [ans[0] for ans in e.answers]
      continue
    if layout == "shared":
      _fill_row(batch, (r,), e, 0, t)
      start = len(e.part_a)
      for ci, ans in enumerate(e.answers):
        end = start + len(ans)
        if end > t:
          raise ValueError(f"Shared candidates need {end} tokens > sequence_length {t}.")
        _fill_answer(batch, (r,), e, 0, ans, start)
        batch["candidate_index"][r, start:end] = ci
        start = end
      continue
    for ci, ans in enumerate(e.answers[:c]):
      at = (r,) if generative else (r, ci)
      _fill_row(batch, at, e, ci, t)
      a = len(e.part_a_of(ci))
      if a + len(ans) > t:
        raise ValueError(f"Part A + answer need {a + len(ans)} tokens > sequence_length {t}.")
      _fill_answer(batch, at, e, ci, ans, a)
  return batch


def _fill_row(batch, at, e: patterns.EncodedCloze, candidate: int, t: int):
  """Part A of a candidate's row (and, for single-token scoring, the lone sop)."""
  part_a = e.part_a_of(candidate)
  a = len(part_a)
  if a + 1 > t:
    raise ValueError(f"Part A has {a} tokens, too long for sequence_length {t}.")
  batch["tokens"][at + (slice(0, a),)] = part_a
  batch["positions"][at + (0, slice(0, a))] = np.arange(a)
  batch["sep"][at] = a
  if not e.multi_token:
    batch["tokens"][at + (a,)] = e.sop
    batch["positions"][at + (0, a)] = e.mask_position_of(candidate)
    batch["positions"][at + (1, a)] = 1


def _fill_answer(batch, at, e: patterns.EncodedCloze, candidate: int, answer, start: int):
  """Part B inputs [sop] + answer[:-1] at `start`, targets = answer (eop last)."""
  n = len(answer)
  span = slice(start, start + n)
  batch["tokens"][at + (span,)] = (e.sop,) + tuple(answer[:-1])
  batch["positions"][at + (0, span)] = e.mask_position_of(candidate)
  batch["positions"][at + (1, span)] = np.arange(1, n + 1)
  batch["targets"][at + (span,)] = answer
  batch["loss_weights"][at + (span,)] = 1.0


def _num_candidates(task: str, examples: Sequence[patterns.EncodedCloze],
                    max_candidates: int) -> int:
  if task in patterns.VERBALIZERS or task == "copa":
    return max(len(e.answers) for e in examples)
  return max(max_candidates, max(len(e.answers) for e in examples))


def layout_for(settings: ClozeSettings, layout: str) -> str:
  """The batch layout: 'generative' for the generative WSC loss, else the candidate layout."""
  return "generative" if settings.loss == "generative" else layout


@gin.configurable
def prepare_split(name: str, split: str, *, sequence_length: int, vocabulary: Any = "builtin",
                  train: bool = False, max_candidates: int = 10, layout: str = "auto",
                  settings: ClozeSettings = ClozeSettings()) -> EncodedSplit:
  """Rendered and tokenized examples of a task split, in train or eval form."""
  task, _ = parse_task_name(name)
  settings.check_task(task)
  records = load_records(name, split)
  if train:
    examples = training_examples(task, records, settings, max_candidates=max_candidates)
  else:
    examples = render_records(task, records, settings)
  if not examples:
    raise ValueError(f"{name} {split} has no usable examples.")
  return encode_examples(examples, resolve_vocabulary(vocabulary), sequence_length,
                         shared_candidates=layout == "shared")


def batch_labels(examples: Sequence[patterns.ClozeExample], layout: str) -> List[int]:
  """The label of each example in a batch: the gold candidate, or for the generative layout
  whether the statement is true (1) or false (0)."""
  if layout == "generative":
    return [int(bool(e.label_value)) for e in examples]
  return [e.label for e in examples]


def _rows(split: EncodedSplit, order: Sequence[int], layout: str = "auto", **kwargs) -> dict:
  examples = [split.examples[i] for i in order]
  first_is_gold = ([bool(e.label_value) for e in examples] if examples[0].task == "wsc"
                   else None)
  return make_batch([split.encoded[i] for i in order], batch_labels(examples, layout),
                    first_is_gold=first_is_gold, layout=layout, **kwargs)


@gin.configurable
def get_batches(name: str, split: str, *, sequence_length: int, batch_size: int, seed: int = 0,
                start_batch: int = 0, shard_index: int = 0, num_shards: int = 1,
                vocabulary: Any = "builtin", train: Optional[bool] = None,
                max_candidates: int = 10, layout: str = "auto", pack: bool = False,
                num_batches: Optional[int] = None, pattern_id: Optional[int] = None,
                loss: str = "cross_entropy", wsc_candidates: str = "heuristic",
                record_answer_order: str = "file") -> Iterator[dict]:
  """Trainer input: endless shuffled train batches, or one ordered pass over an eval split.

  Training (the default for split 'train') reshuffles every epoch with seed + epoch; batch i
  is epoch i // E, slice i % E of that epoch's order (E = ceil(N / batch_size)); a short last
  slice is padded with example_weight 0. Each shard gets batch_size / num_shards rows. An
  eval pass stops after `num_batches` batches when given. pattern_id, loss, wsc_candidates
  and record_answer_order: ClozeSettings (gin macros PATTERN_ID, CLOZE_LOSS, ...).
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
  settings = ClozeSettings(pattern_id=pattern_id, loss=loss, wsc_candidates=wsc_candidates,
                           record_answer_order=record_answer_order).check_task(task)
  layout = layout_for(settings, layout)
  data = prepare_split(name, split, sequence_length=sequence_length, vocabulary=vocabulary,
                       train=train, max_candidates=max_candidates, layout=layout,
                       settings=settings)
  c = _num_candidates(task, data.encoded, max_candidates)
  per_shard = batch_size // num_shards
  n = len(data.examples)
  per_epoch = sizes.ceil_div(n, batch_size)
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
def steps_per_epoch(name: str, batch_size: int, split: str = "train",
                    max_candidates: int = 10) -> int:
  """Train batches in one epoch of a task (WSC filtered, COPA mirrored, ReCoRD per answer)."""
  task, _ = parse_task_name(name)
  examples = training_examples(task, load_records(name, split), max_candidates=max_candidates)
  return sizes.ceil_div(len(examples), batch_size)


@gin.configurable
def num_train_steps(name: str, epochs: int, batch_size: int, fraction: float = 1.0) -> int:
  """fraction * epochs * steps_per_epoch: the reference's train_iters (epochs x loader length)."""
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
def task_settings(task: str, **settings) -> dict:
  """{task: settings}: one task's settings in the form evaluate_superglue(task_settings=) takes."""
  task, _ = parse_task_name(task)
  return {task: settings}


@gin.configurable
def default_model_dir(init_checkpoint: Optional[str], task: str) -> str:
  """<INIT_CHECKPOINT>_superglue_<task>: the fine-tuning MODEL_DIR when none is given."""
  if not init_checkpoint:
    raise ValueError("Set INIT_CHECKPOINT (a pretrained checkpoint) or MODEL_DIR.")
  from glm_jax import paths  # pylint: disable=g-import-not-at-top
  return str(paths.resolve(os.fspath(init_checkpoint).rstrip("/"))) + f"_superglue_{task}"
