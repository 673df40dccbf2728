r"""Training entry point: gin config in, checkpoints, metrics and evaluations out.

  python -m glm_jax.train --gin_file=configs/runs/quickstart.gin
  python -m glm_jax.train --gin_file=configs/experiments/glm_base.gin \
      --gin.MODEL_DIR=/ckpt/base --gin.BATCH_SIZE=256

Restore order: latest checkpoint in MODEL_DIR (with the data position), else INIT_CHECKPOINT
(parameters only), else fresh initialisation. Every path (MODEL_DIR, INIT_CHECKPOINT, ...)
may be local or gs://. SIGTERM (a preemption notice) saves a checkpoint and exits cleanly;
in multi-process runs at the step JAX's preemption sync point agrees on. Multi-host:
--coordinator_address/--num_processes/--process_id, or --multihost_auto (JAX's detection of
Cloud TPU pods and SLURM). Here: train()'s checks and the CLI; the loop is glm_jax/loop.py,
its hooks (SIGTERM, MODEL_DIR/best, the sample fill) glm_jax/hooks.py.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
  from glm_jax.kernels.cpu import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.reexec_with_tuned_malloc()
  # Run the importable module instead, so its gin configurables are registered once, under
  # glm_jax.train (the name gin files import), and not a second time under __main__.
  from glm_jax import train as _train_module  # pylint: disable=import-self
  _train_module.cli()
  sys.exit(0)
from typing import Callable, Optional

from absl import logging
import gin
import jax

from glm_jax import checkpoints, gin_utils, loop, optim, partitioning, paths
from glm_jax import run_report, settings
from glm_jax import trainer as trainer_lib
from glm_jax.data import corpus, synthetic
from glm_jax.model_api import BaseModel, BlankInfillingModel


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
  if vocab_spec == synthetic.SYNTHETIC_VOCABULARY:
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
    eval_batches = loop.eval_batches(eval_input or train_input,
                                    eval_mixture_or_task_name or mixture_or_task_name,
                                    eval_split, sequence_length, eval_batch_size, data_seed,
                                    pack, eval_steps, partitioner, vocab_spec, baseline)
    if isinstance(model, BlankInfillingModel):  # its accuracy is target-token accuracy
      report.set_baseline(baseline, vocab_spec)
    if keep_best_metric:
      names = trainer.eval_metric_names(eval_batches[0])
      if keep_best_metric not in names:
        raise settings.SettingError(
            f"{settings.setting_name(train, 'keep_best_metric')} {keep_best_metric!r} is not a "
            f"metric of the evaluation; choose one of {', '.join(names)}.")
  if train_input is task_batches:  # the corpus is prepared and checked before MODEL_DIR
    loop.open_train_input(train_input, mixture_or_task_name, sequence_length, batch_size,
                          data_seed, pack, partitioner, vocab_spec)
  checkpoints.check_same_run(model_dir, model.config, vocab_spec)
  created = not paths.resolve(model_dir).exists()
  lock = loop.lock_model_dir(model_dir)
  try:
    manager = checkpoints.CheckpointManager(model_dir, trainer.abstract_state,
                                            period=checkpoint_period, keep=keep_checkpoints,
                                            async_save=async_checkpoints)
    try:
      return loop.train_loop(
          model_dir=model_dir, model=model, train_input=train_input,
          mixture_or_task_name=mixture_or_task_name, train_steps=train_steps,
          batch_size=batch_size, sequence_length=sequence_length, vocab_spec=vocab_spec,
          seed=seed, data_seed=data_seed, pack=pack, init_checkpoint=init_checkpoint,
          eval_batches=eval_batches, eval_period=eval_period, log_period=log_period,
          progress_bar=progress_bar, final_hook=final_hook, partitioner=partitioner,
          trainer=trainer, manager=manager, lock=lock, keep_best_metric=keep_best_metric,
          best_mode=best_mode, report=report)
    except BaseException:
      manager.close(check=False)
      raise
  finally:
    if lock is not None:
      lock.release()
    if created and jax.process_index() == 0:
      loop.remove_if_empty(model_dir)


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


def _check_compatible(found, expected, path: str) -> None:
  keys = ("vocab_size", "num_layers", "hidden_size", "num_heads", "ffn_size",
          "max_sequence_length")
  diff = [f"{k} {getattr(found, k)} != {getattr(expected, k)}" for k in keys
          if getattr(found, k) != getattr(expected, k)]
  if diff:
    raise ValueError(f"INIT_CHECKPOINT {path} does not match the model config ({'; '.join(diff)});"
                     " use the model gin file the checkpoint was made with.")


def cli():
  gin_utils.gin_cli(train)
