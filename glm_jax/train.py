r"""Training entry point: gin config in, checkpoints, metrics and evaluations out.

  python -m glm_jax.train --gin_file=configs/runs/quickstart.gin
  python -m glm_jax.train --gin_file=configs/experiments/glm_base.gin \
      --gin.MODEL_DIR=/ckpt/base --gin.BATCH_SIZE=256

Restore order: latest checkpoint in MODEL_DIR (with the data position), else INIT_CHECKPOINT
(parameters only), else fresh initialisation. Every path (MODEL_DIR, INIT_CHECKPOINT, ...)
may be local or gs://. SIGTERM (a preemption notice) saves a checkpoint and exits cleanly;
in multi-process runs at the step JAX's preemption sync point agrees on. Multi-host:
--coordinator_address/--num_processes/--process_id, or --multihost_auto (JAX's detection of
Cloud TPU pods and SLURM).
"""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":
  from glm_jax import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.reexec_with_tuned_malloc()
  # Run the importable module instead, so its gin configurables are registered once, under
  # glm_jax.train (the name gin files import), and not a second time under __main__.
  from glm_jax import train as _train_module  # pylint: disable=import-self
  _train_module.cli()
  sys.exit(0)
import time
from typing import Callable, Dict, Iterator, Optional

from absl import flags, logging
import gin
import jax
import numpy as np

from glm_jax import checkpoints, distributed, flops, gin_utils, metrics_writer, optim
from glm_jax import partitioning, paths, run_lock, run_report, settings
from glm_jax import trainer as trainer_lib
from glm_jax.data import corpus
from glm_jax.model_api import BaseModel, BlankInfillingModel

FLAGS = flags.FLAGS


@gin.configurable
def synthetic_batches(mixture_or_task_name: str, split: str, *, sequence_length: int,
                      batch_size: int, seed: int, start_batch: int = 0, shard_index: int = 0,
                      num_shards: int = 1, pack: bool = False, num_batches: Optional[int] = None,
                      vocab_size: int = 128, vocabulary: Optional[str] = None
                      ) -> Iterator[Dict[str, np.ndarray]]:
  """Blank-infilling batches of arithmetic-progression 'documents' (tests; no TF, no files).

  Same contract as glm_jax.data.pipeline.get_batches: batch i is a pure function of
  (seed, split, i); this process gets rows [shard_index * B / num_shards, ...) of each global
  batch. Each row: `[CLS] doc` with one span replaced by [MASK] (Part A), then sop + span
  (Part B) with targets span + eop; ids 0 pad, 1 cls, 2 mask, 3 sop, 4 eop.
  """
  del mixture_or_task_name, pack, vocabulary
  if batch_size % num_shards:
    raise ValueError(f"batch_size {batch_size} is not divisible by {num_shards} shards.")
  if sequence_length < 8 or vocab_size < 8:
    raise ValueError("synthetic_batches needs sequence_length >= 8 and vocab_size >= 8.")
  rows = batch_size // num_shards
  split_id = sum(split.encode())
  index = start_batch
  while num_batches is None or index < start_batch + num_batches:
    examples = [_synthetic_row(np.random.default_rng([seed, split_id, index, r]),
                               sequence_length, vocab_size)
                for r in range(shard_index * rows, (shard_index + 1) * rows)]
    yield {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    index += 1


def _synthetic_row(rng, length: int, vocab: int) -> Dict[str, np.ndarray]:
  doc_len = length - 2 - int(rng.integers(0, length // 4))  # [CLS] + words
  start_word, stride = int(rng.integers(0, vocab - 5)), int(rng.integers(1, 4))
  doc = np.concatenate([[1], 5 + (start_word + stride * np.arange(doc_len - 1)) % (vocab - 5)])
  span = int(rng.integers(1, max(2, doc_len // 4)))
  begin = int(rng.integers(1, doc_len - span + 1))
  part_a = np.concatenate([doc[:begin], [2], doc[begin + span:]])
  sep = len(part_a)
  inputs = np.concatenate([part_a, [3], doc[begin:begin + span]])
  used = len(inputs)
  tokens = np.zeros(length, np.int32)
  tokens[:used] = inputs
  targets = np.zeros(length, np.int32)
  targets[sep:used] = np.concatenate([doc[begin:begin + span], [4]])
  weights = np.zeros(length, np.float32)
  weights[sep:used] = 1.0
  positions = np.zeros((2, length), np.int32)
  positions[0, :sep] = np.arange(sep)
  positions[0, sep:used] = begin
  positions[1, sep:used] = np.arange(1, span + 2)
  return {"tokens": tokens, "positions": positions, "sep": np.int32(sep), "targets": targets,
          "loss_weights": weights}


@gin.configurable
def task_batches(mixture_or_task_name: str, split: str, *, data_dir: Optional[str] = None,
                 max_dropped_fraction: float = corpus.DEFAULT_MAX_DROPPED_FRACTION,
                 **kwargs):
  """glm_jax.data.pipeline.get_batches, imported on first use (TensorFlow loads only then).

  `data_dir` (gin macro PREPARED_DATA_DIR) holds the named prepared corpora;
  `max_dropped_fraction` (MAX_DROPPED_FRACTION) is the share of bad lines (invalid UTF-8,
  unparsable JSON) a corpus file prepared on first use may have before the run stops.
  """
  check_input_settings({"max_dropped_fraction": max_dropped_fraction})
  from glm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.get_batches(mixture_or_task_name, split, data_dir=data_dir,
                              max_dropped_fraction=max_dropped_fraction, **kwargs)


def check_input_settings(values: Optional[dict] = None) -> None:
  """Types and ranges of task_batches' settings (`values`; default: its gin bindings)."""
  if values is None:
    values = gin.get_bindings(task_batches)
  settings.check_types(task_batches, values)
  settings.in_range(task_batches, "max_dropped_fraction", values.get("max_dropped_fraction"),
                    0.0, 1.0, high_open=False)


SYNTHETIC_VOCABULARY = "synthetic"  # ids of no text vocabulary (synthetic_batches, fixtures): unchecked


@gin.configurable
def default_vocabulary(init_checkpoint: Optional[str] = None) -> str:
  """The VOCABULARY of a run that names none: INIT_CHECKPOINT's, else 'builtin'."""
  if init_checkpoint:
    try:
      return checkpoints.read_config(init_checkpoint)[1]
    except FileNotFoundError:
      pass  # train() reports the missing INIT_CHECKPOINT in one line
  return "builtin"


def check_vocabulary(vocab_spec: str, config, init_checkpoint: Optional[str] = None,
                     model_dir: Optional[str] = None) -> None:
  """Stops a run whose VOCABULARY does not load or fit the model or its checkpoints (one line)."""
  if vocab_spec == SYNTHETIC_VOCABULARY:
    return
  from glm_jax.data import prepared  # pylint: disable=g-import-not-at-top
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  try:
    size = vocab_lib.describe(vocab_spec).padded_vocab_size
  except (ValueError, OSError) as e:
    raise settings.SettingError(
        f"{settings.setting_name(train, 'vocab_spec')} {vocab_spec!r} cannot be loaded "
        f"({gin_utils.one_line(e)})") from None
  if size > config.vocab_size:
    raise ValueError(f"VOCABULARY {vocab_spec!r} has {size} ids (padded) but "
                     f"GLMConfig.vocab_size is {config.vocab_size}; use the model's vocabulary "
                     f"or set model.GLMConfig.vocab_size = {size}.")
  for kind, path in (("INIT_CHECKPOINT", init_checkpoint), ("MODEL_DIR", model_dir)):
    if not path:
      continue
    try:
      stored = checkpoints.read_config(path)[1]
    except FileNotFoundError:
      continue  # an empty MODEL_DIR starts fresh
    if not prepared.same_vocabulary(stored, vocab_spec):
      raise ValueError(f"{kind} {path} was trained with vocabulary {stored!r} but VOCABULARY "
                       f"is {vocab_spec!r}; leave VOCABULARY unset (it defaults to "
                       f"INIT_CHECKPOINT's) or set VOCABULARY = '{stored}'.")


def _say(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)
  logging.info(message)


def _fetch(tree):
  return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)


class _Preemption:
  """Whether to save and stop after a step because of SIGTERM (a preemption notice).

  Multi-process runs use JAX's preemption sync point (orbax's reached_preemption): the
  notifier jax.distributed installs catches SIGTERM and the processes agree on the step in
  the background, so no step waits on a collective. One process watches SIGTERM itself.
  """

  def __init__(self, manager: checkpoints.CheckpointManager):
    self._manager = manager
    self._signalled = False
    self._distributed = jax.process_count() > 1
    if not self._distributed:
      try:
        signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread (tests calling train() from a thread)
        pass

  def _handle(self, signum, frame):
    del signum, frame
    self._signalled = True

  def reached(self, step: int) -> bool:
    if self._distributed:
      return self._manager.reached_preemption(step)
    return self._signalled


@gin.configurable
def print_sample_fill(params, config, vocab_spec: str,
                      text: str = "The old man looked at the [MASK] and smiled.",
                      max_new_tokens: int = run_report.SAMPLE_MAX_NEW_TOKENS,
                      strategy: str = "greedy", num_beams: int = 4,
                      length_penalty: float = 1.0) -> Optional[str]:
  """The trained model's fill of one blank (glm_jax.generate: greedy or beam search), printed
  by process 0; `python -m glm_jax.infer` with the same flags gives the same fill."""
  from glm_jax import generation as generate_lib  # pylint: disable=g-import-not-at-top
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  if strategy not in ("greedy", "beam"):
    raise ValueError(f"train.print_sample_fill.strategy must be 'greedy' or 'beam' (a "
                     f"deterministic fill), got {strategy!r}.")
  vocabulary = vocab_lib.get_vocabulary(vocab_spec)
  filled = generate_lib.generate(text, params=params, config=config, vocabulary=vocabulary,
                                 strategy=strategy, max_new_tokens=max_new_tokens,
                                 num_beams=num_beams, length_penalty=length_penalty)
  if jax.process_index() == 0:
    print(f"Sample blank: {text}\nModel's fill: {filled}", flush=True)
  return filled


# The shortest sequence a GLM sample fits in ([CLS], a word, [MASK], sop, a span token, eop).
MIN_SEQUENCE_LENGTH = 8


@gin.configurable(denylist=["partitioner"])
def train(*, model_dir: str = gin.REQUIRED, model: BaseModel = gin.REQUIRED,
          train_input: Callable = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          train_steps: int = gin.REQUIRED, batch_size: int = gin.REQUIRED,
          sequence_length: int = gin.REQUIRED, vocab_spec: str = "builtin",
          optimizer_fn: Callable = optim.create_optimizer,
          mesh_config: partitioning.MeshConfig = partitioning.MeshConfig(),
          logical_rules=None, seed: int = 0, data_seed: Optional[int] = None,
          num_microbatches: int = 1, nan_action: str = "skip", pack: bool = False,
          checkpoint_period: int = 1000, keep_checkpoints: Optional[int] = 3,
          async_checkpoints: bool = True, init_checkpoint: Optional[str] = None,
          eval_input: Optional[Callable] = None, eval_mixture_or_task_name: Optional[str] = None,
          eval_split: str = "validation", eval_period: int = 0, eval_steps: int = 10,
          eval_batch_size: Optional[int] = None, log_period: int = 10,
          progress_bar: bool = True, final_hook: Optional[Callable] = None,
          keep_best_metric: Optional[str] = None, best_mode: str = "max",
          partitioner: Optional[partitioning.Partitioner] = None):
  """Trains `model` to `train_steps`; returns the final TrainState.

  Every setting is checked before anything is written to MODEL_DIR (types, ranges, the
  vocabulary, INIT_CHECKPOINT, the evaluation data and KEEP_BEST_METRIC, that MODEL_DIR holds
  no other model's run); then MODEL_DIR is locked for this trainer (glm_jax/run_lock.py).
  With `keep_best_metric` (an eval metric such as 'eval/accuracy') the parameters of the best
  evaluation so far are kept as a params-only checkpoint in MODEL_DIR/best. `final_hook(params,
  config, vocab_spec)` runs on every process after the last step, on the run's mesh
  (`partitioning.active()`); it writes files from process 0 only.
  """
  gin_utils.check_required(model_dir=model_dir, model=model, train_input=train_input,
                           mixture_or_task_name=mixture_or_task_name, train_steps=train_steps,
                           batch_size=batch_size, sequence_length=sequence_length)
  _check_settings(dict(locals()), model.config)
  if keep_best_metric and not eval_period:
    logging.warning("KEEP_BEST_METRIC %s is ignored: periodic evaluation is off "
                    "(EVAL_PERIOD = 0).", keep_best_metric)
    keep_best_metric = None
  if task_batches in (train_input, eval_input):
    check_input_settings()
  if init_checkpoint:
    _check_init_checkpoint(init_checkpoint, model.config)
  check_vocabulary(vocab_spec, model.config, init_checkpoint, model_dir)
  partitioner = partitioner or partitioning.Partitioner(mesh_config, logical_rules)
  partitioner.check_batch_size(batch_size, num_microbatches)
  eval_batch_size = eval_batch_size or batch_size
  if eval_period:
    partitioner.check_batch_size(eval_batch_size)
  data_seed = seed if data_seed is None else data_seed
  optimizer, lr_fn = optimizer_fn(total_steps=train_steps)
  trainer = trainer_lib.Trainer(model, partitioner, optimizer, lr_fn, seed=seed,
                                num_microbatches=num_microbatches, nan_action=nan_action)
  report = run_report.RunReport(
      model_dir=model_dir, train_steps=train_steps, sequence_length=sequence_length,
      mixture_or_task_name=eval_mixture_or_task_name or mixture_or_task_name,
      eval_input=eval_input or train_input, eval_batch_size=eval_batch_size,
      eval_steps=eval_steps, enabled=jax.process_index() == 0)
  eval_batches = None
  if eval_period:  # read now: a missing file or split fails before MODEL_DIR is touched
    baseline = run_report.TargetBaseline(model.config.vocab_size)  # counted once, here
    eval_batches = _eval_batches(eval_input or train_input,
                                 eval_mixture_or_task_name or mixture_or_task_name, eval_split,
                                 sequence_length, eval_batch_size, data_seed, pack, eval_steps,
                                 partitioner, vocab_spec, baseline)
    if isinstance(model, BlankInfillingModel):  # its accuracy is target-token accuracy
      report.set_baseline(baseline, vocab_spec)
    if keep_best_metric:
      names = trainer.eval_metric_names(eval_batches[0])
      if keep_best_metric not in names:
        raise settings.SettingError(
            f"{settings.setting_name(train, 'keep_best_metric')} {keep_best_metric!r} is not a "
            f"metric of the evaluation; choose one of {', '.join(names)}.")
  if train_input is task_batches:  # the corpus is prepared and checked before MODEL_DIR
    _open_train_input(train_input, mixture_or_task_name, sequence_length, batch_size,
                      data_seed, pack, partitioner, vocab_spec)
  checkpoints.check_same_run(model_dir, model.config, vocab_spec)
  created = not paths.resolve(model_dir).exists()
  lock = _lock_model_dir(model_dir)
  try:
    manager = checkpoints.CheckpointManager(model_dir, trainer.abstract_state,
                                            period=checkpoint_period, keep=keep_checkpoints,
                                            async_save=async_checkpoints)
    try:
      return _train_loop(**locals())
    except BaseException:
      manager.close(check=False)
      raise
  finally:
    if lock is not None:
      lock.release()
    if created and jax.process_index() == 0:
      _remove_if_empty(model_dir)


def _check_settings(values: dict, config) -> None:
  """Types (from train's annotations), ranges and choices of train's settings: one line each."""
  settings.check_types(train, {k: v for k, v in values.items()
                               if k not in ("model", "partitioner", "logical_rules")})
  if not values["model_dir"]:
    raise settings.SettingError("MODEL_DIR is empty; set --gin.MODEL_DIR=DIR (local or gs://).")
  for name, minimum in (("train_steps", 1), ("batch_size", 1), ("num_microbatches", 1),
                        ("eval_steps", 1), ("log_period", 1), ("checkpoint_period", 0),
                        ("eval_period", 0), ("keep_checkpoints", 0), ("seed", 0),
                        ("data_seed", 0), ("eval_batch_size", 1)):
    settings.at_least(train, name, values[name], minimum)
  length = values["sequence_length"]
  settings.at_least(train, "sequence_length", length, MIN_SEQUENCE_LENGTH,
                    " (the shortest a GLM sample fits in)")
  if length > config.max_sequence_length:
    raise settings.SettingError(
        f"{settings.setting_name(train, 'sequence_length')} {length} exceeds the model's "
        f"max_sequence_length {config.max_sequence_length} (its position table); lower it.")
  settings.one_of(train, "nan_action", values["nan_action"], trainer_lib.NAN_ACTIONS)
  settings.one_of(train, "best_mode", values["best_mode"], ("max", "min"))


def _check_init_checkpoint(init_checkpoint: str, config) -> None:
  if not paths.resolve(init_checkpoint).is_dir():
    raise FileNotFoundError(f"INIT_CHECKPOINT {init_checkpoint!r} does not exist; pass a "
                            "params-only checkpoint, a step directory or a MODEL_DIR.")
  _check_compatible(checkpoints.read_config(init_checkpoint)[0], config, init_checkpoint)


def _eval_batches(input_fn, name, split, sequence_length, batch_size, seed, pack, steps,
                  partitioner, vocabulary, baseline: run_report.TargetBaseline) -> list:
  """The evaluation batches (global arrays), read once before training; `baseline` counts
  their targets."""
  shard, shards = partitioner.local_batch_slice(batch_size)
  try:
    batches = [partitioner.shard_batch(baseline.add(b), batch_size) for b in input_fn(
        name, split, sequence_length=sequence_length, batch_size=batch_size, seed=seed,
        shard_index=shard, num_shards=shards, pack=pack, num_batches=steps,
        vocabulary=vocabulary)]
  except (ValueError, OSError) as e:
    raise _data_error("evaluation", name, split, e) from None
  if not batches:
    raise ValueError(f"The evaluation input ({name!r}, split {split!r}) yielded no batches; "
                     "check EVAL_SPLIT and EVAL_STEPS.")
  return batches


def _open_train_input(input_fn, name, sequence_length, batch_size, seed, pack, partitioner,
                      vocabulary) -> None:
  """Opens the train data (a GLM corpus: prepared on first use, its files checked) unread."""
  shard, shards = partitioner.local_batch_slice(batch_size)
  try:
    input_fn(name, "train", sequence_length=sequence_length, batch_size=batch_size, seed=seed,
             shard_index=shard, num_shards=shards, pack=pack, num_batches=1,
             vocabulary=vocabulary)
  except (ValueError, OSError) as e:
    raise _data_error("train", name, "train", e) from None


def _data_error(kind: str, name: str, split: str, error: BaseException) -> ValueError:
  return ValueError(f"Reading the {kind} data ({name!r}, split {split!r}) failed: "
                    f"{gin_utils.one_line(error)}")


def _lock_model_dir(model_dir: str) -> Optional[run_lock.RunLock]:
  """MODEL_DIR's lock (process 0 holds it); LockHeld on every process when it is taken."""
  lock, error = None, None
  if jax.process_index() == 0:
    checkpoints.prepare_model_dir(model_dir)
    try:
      lock = run_lock.RunLock(model_dir).acquire()
    except run_lock.LockHeld as e:
      error = e
  if checkpoints.any_process(error is not None):
    raise error or run_lock.LockHeld(f"MODEL_DIR {model_dir} is in use by another trainer "
                                     "(see process 0's error).")
  return lock


def _remove_if_empty(model_dir: str) -> None:
  """Removes a MODEL_DIR this run created when a failure left nothing in it."""
  path = paths.resolve(model_dir)
  try:
    if path.is_dir() and not any(path.iterdir()):
      path.rmdir()
  except OSError:
    pass


def _first_batch(batches, name: str, split: str):
  """The first train batch: an unreadable corpus or a bad length fails before step 1."""
  try:
    return next(batches)
  except StopIteration:
    raise ValueError(f"The train input ({name!r}, split {split!r}) yielded no batch; check "
                     "the data files.") from None
  except (ValueError, OSError) as e:
    raise _data_error("train", name, split, e) from None


def _train_loop(*, model_dir, model, train_input, mixture_or_task_name, train_steps, batch_size,
                sequence_length, vocab_spec, seed, data_seed, nan_action, pack, init_checkpoint,
                eval_batches, eval_period, log_period, progress_bar, final_hook, partitioner,
                trainer, manager, lock, keep_best_metric, best_mode, report, **unused):
  """The loop of train(): restore, then step, log, evaluate and save until train_steps."""
  del unused, nan_action
  is_chief = jax.process_index() == 0
  run_dir = paths.resolve(model_dir)

  restored = manager.restore_latest()
  if restored is not None:
    state, meta = restored
    next_batch = int(meta["next_batch"])
    _say(f"Resumed from step {int(meta['step'])} in {model_dir}.")
  elif init_checkpoint:
    abstract = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=s.sharding),
        trainer.abstract_state.params)
    params, _, _, _ = checkpoints.load_params(init_checkpoint, abstract)
    state, next_batch = trainer.state_from_params(params), 0
    _say(f"Initialised parameters from {init_checkpoint}.")
  else:
    state, next_batch = trainer.init_state(jax.random.PRNGKey(seed)), 0
  start_step = int(jax.device_get(state.step))

  if start_step >= train_steps:
    _say(f"Step {start_step} already reaches TRAIN_STEPS {train_steps} in {model_dir}; "
         "nothing to train.")
    if final_hook is not None:
      with partitioner.activate():
        final_hook(state.params, model.config, vocab_spec)
    manager.close()
    return state

  shard_index, num_shards = partitioner.local_batch_slice(batch_size)
  batches = train_input(mixture_or_task_name, "train", sequence_length=sequence_length,
                        batch_size=batch_size, seed=data_seed, start_batch=next_batch,
                        shard_index=shard_index, num_shards=num_shards, pack=pack,
                        vocabulary=vocab_spec)
  first = _first_batch(batches, mixture_or_task_name, "train")
  if is_chief:
    paths.write_text(run_dir / "config.gin", gin.config_str())
  writer = metrics_writer.MetricsWriter(model_dir, enabled=is_chief, resume_step=start_step)
  try:
    state = _steps(state, first, batches, start_step, next_batch, model_dir=model_dir,
                   model=model, train_steps=train_steps, batch_size=batch_size,
                   sequence_length=sequence_length, vocab_spec=vocab_spec,
                   log_period=log_period, progress_bar=progress_bar, eval_batches=eval_batches,
                   eval_period=eval_period, trainer=trainer, partitioner=partitioner,
                   manager=manager, lock=lock, writer=writer, report=report,
                   keep_best_metric=keep_best_metric, best_mode=best_mode, is_chief=is_chief,
                   run_dir=run_dir)
  except OSError as e:  # MODEL_DIR's disk is full or gone
    raise gin_utils.RunFault(
        f"Writing to {model_dir} failed ({checkpoints.first_line(e)}); the last complete "
        f"checkpoint is {manager.last_complete()}, kept. Fix the cause (free space?), then run "
        "again to resume from it.") from e
  finally:
    writer.close()
  final_step = int(jax.device_get(state.step))
  if final_hook is not None and final_step == train_steps:
    with partitioner.activate():  # every process, on the run's mesh (files: process 0)
      final_hook(state.params, model.config, vocab_spec)
  report.print_summary(final_step, stopped=final_step < train_steps)
  return state


def _steps(state, first, batches, start_step, next_batch, *, model_dir, model, train_steps,
           batch_size, sequence_length, vocab_spec, log_period, progress_bar, eval_batches,
           eval_period, trainer, partitioner, manager, lock, writer, report, keep_best_metric,
           best_mode, is_chief, run_dir):
  """Train steps from start_step + 1 to train_steps (or a SIGTERM); returns the last state."""
  tokens_per_step = batch_size * sequence_length
  flops_per_step = flops.train_flops_per_token(model.config, sequence_length) * tokens_per_step
  peak = flops.PeakFlops(jax.devices())  # on CPU re-measured during the run

  preemption = _Preemption(manager)
  bar = metrics_writer.ProgressBar(train_steps, start_step, enabled=is_chief and progress_bar)
  pending, window_start = [], None
  try:
    for state_step in range(start_step + 1, train_steps + 1):
      try:
        local = first if state_step == start_step + 1 else next(batches)
      except StopIteration:
        raise ValueError(f"The train input ran out at step {state_step}; use a repeating "
                         "dataset or fewer TRAIN_STEPS.") from None
      state, metrics = trainer.train_step(state, partitioner.shard_batch(local, batch_size))
      next_batch += 1
      pending.append(metrics)
      is_last = state_step == train_steps
      stop = preemption.reached(state_step)
      do_save = manager.should_save(state_step) or is_last or stop
      manager.poll()  # a failed background save stops the run now
      _check_lock(lock, do_save, model_dir, manager)
      scalars = {}
      # The first step includes compilation: it is logged without throughput.
      if window_start is None or state_step % log_period == 0 or is_last or do_save:
        fetched = _fetch(pending)
        _check_nonfinite(fetched, trainer.nan_action, state_step, manager, bar)
        scalars = {k: float(v) for k, v in fetched[-1].items()
                   if k not in ("nonfinite", "optimizer_updates")}
        # The rate the optimizer applied in this step (its schedule at its own update count,
        # which a skipped non-finite step does not advance), in float64.
        scalars["learning_rate"] = trainer.learning_rate(fetched[-1]["optimizer_updates"])
        scalars["loss"] = float(np.mean([m["loss"] for m in fetched]))
        now = time.perf_counter()
        if window_start is not None:
          elapsed = max(now - window_start, 1e-9)
          scalars["tokens_per_second"] = tokens_per_step * len(fetched) / elapsed
          scalars["mfu"] = peak.mfu(flops_per_step * len(fetched) / elapsed)
        writer.write(state_step, scalars)
        report.train(scalars)
        if peak.maybe_reprobe():  # the probe's time is not training time
          now = time.perf_counter()
        pending, window_start = [], now
      bar.update(1, scalars)
      if eval_batches is not None and (state_step % eval_period == 0 or is_last):
        results = report.eval(state_step, trainer_lib.evaluate(trainer.eval_step, state.params,
                                                               eval_batches))
        writer.write(state_step, results)
        if keep_best_metric:
          _keep_if_best(model_dir, keep_best_metric, best_mode, results, state, model.config,
                        vocab_spec)
        bar.write(report.eval_line(state_step, results))
        window_start = time.perf_counter()  # evaluation time is not training throughput
      if do_save:
        manager.save(state, next_batch=next_batch, config=model.config, vocab_spec=vocab_spec,
                     force=True)
      if state_step == start_step + 1 and is_chief:
        paths.write_text(run_dir / "operative_config.gin", gin.operative_config_str())
      if stop:
        bar.write(f"SIGTERM: saved step {state_step}; exiting.")
        break
    manager.close()  # waits for the last save; a failure is a RunFault
  finally:
    bar.close()
  return state


def _check_lock(lock, do_save: bool, model_dir: str, manager) -> None:
  """Stops (RunFault, nothing saved) when another trainer took MODEL_DIR's lock.

  One process checks every step; several agree at save steps (a collective).
  """
  lost = lock is not None and lock.lost
  if jax.process_count() > 1:
    if not do_save:
      return
    lost = checkpoints.any_process(bool(lost))
  if lost:
    holder = lock.lost if lock is not None and lock.lost else "see process 0"
    raise gin_utils.RunFault(
        f"Another trainer took the lock of MODEL_DIR {model_dir} ({holder}); this one stops "
        f"without saving. The last complete checkpoint is {manager.last_complete()}.")


BEST_DIR = "best"


def _keep_if_best(model_dir, metric, mode, results, state, config, vocab_spec) -> bool:
  """Saves params to MODEL_DIR/best when `metric` beats the best kept so far (never a NaN)."""
  value = float(results[metric])
  if not np.isfinite(value):
    return False
  best_dir = paths.resolve(model_dir) / BEST_DIR
  record_path = best_dir / "best.json"
  if record_path.exists():
    best = paths.read_json(record_path)["value"]
    if (value <= best) if mode == "max" else (value >= best):
      return False
  step = int(jax.device_get(state.step))
  checkpoints.save_params_checkpoint(str(best_dir), state.params, config, vocab_spec, step=step)
  if jax.process_index() == 0:
    paths.write_json(record_path, {"metric": metric, "value": value, "mode": mode, "step": step})
  return True


def _check_nonfinite(fetched, nan_action: str, step: int, manager, bar) -> None:
  bad = [m for m in fetched if bool(m["nonfinite"])]
  if not bad:
    return
  if nan_action == "stop":
    raise FloatingPointError(
        f"Non-finite loss or gradient before step {step}; stopped without saving (last "
        f"checkpoint: {manager.last_complete()}). Lower the learning rate or use "
        "NAN_ACTION='skip'.")
  bar.write(f"Skipped {len(bad)} update(s) with a non-finite loss or gradient before step "
            f"{step}.")


def _check_compatible(found, expected, path: str) -> None:
  keys = ("vocab_size", "num_layers", "hidden_size", "num_heads", "ffn_size",
          "max_sequence_length")
  diff = [f"{k} {getattr(found, k)} != {getattr(expected, k)}" for k in keys
          if getattr(found, k) != getattr(expected, k)]
  if diff:
    raise ValueError(f"INIT_CHECKPOINT {path} does not match the model config ({'; '.join(diff)});"
                     " use the model gin file the checkpoint was made with.")


def main(argv):
  gin_utils.begin_cli(argv, "--gin_file, --gin.NAME=VALUE")
  distributed.initialize()
  gin_utils.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
  train()  # pylint: disable=no-value-for-parameter


def define_flags():
  gin_utils.define_flags()
  distributed.define_flags()


def cli():
  define_flags()
  gin_utils.run(main)
