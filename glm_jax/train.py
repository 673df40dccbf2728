r"""Training entry point: gin config in, checkpoints, metrics and evaluations out.

  python -m glm_jax.train --gin_file=configs/runs/quickstart.gin
  python -m glm_jax.train --gin_file=configs/experiments/glm_base.gin \
      --gin.MODEL_DIR=/ckpt/base --gin.BATCH_SIZE=256

Restore order: latest checkpoint in MODEL_DIR (with the data position), else INIT_CHECKPOINT
(parameters only), else fresh initialisation. SIGTERM saves a checkpoint and exits cleanly.
Multi-host: --coordinator_address/--num_processes/--process_id, or automatic on Cloud TPU.
"""

from __future__ import annotations

import json
import os
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
from typing import Any, Callable, Dict, Iterator, Optional

from absl import flags, logging
import gin
import jax
import numpy as np

from glm_jax import checkpoints, flops, gin_utils, metrics_writer, optim, partitioning
from glm_jax import run_report
from glm_jax import trainer as trainer_lib
from glm_jax.models import BaseModel, BlankInfillingModel

FLAGS = flags.FLAGS


@gin.configurable
def synthetic_batches(mixture_or_task_name: str, split: str, *, sequence_length: int,
                      batch_size: int, seed: int, start_batch: int = 0, shard_index: int = 0,
                      num_shards: int = 1, pack: bool = False, num_batches: Optional[int] = None,
                      vocab_size: int = 128) -> Iterator[Dict[str, np.ndarray]]:
  """Blank-infilling batches of arithmetic-progression 'documents' (tests; no TF, no files).

  Same contract as glm_jax.data.pipeline.get_batches: batch i is a pure function of
  (seed, split, i); this process gets rows [shard_index * B / num_shards, ...) of each global
  batch. Each row: `[CLS] doc` with one span replaced by [MASK] (Part A), then sop + span
  (Part B) with targets span + eop; ids 0 pad, 1 cls, 2 mask, 3 sop, 4 eop.
  """
  del mixture_or_task_name, pack
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
def task_batches(mixture_or_task_name: str, split: str, **kwargs):
  """glm_jax.data.pipeline.get_batches, imported on first use (TensorFlow loads only then)."""
  from glm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.get_batches(mixture_or_task_name, split, **kwargs)


def _say(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)
  logging.info(message)


def _fetch(tree):
  return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)


class _Preemption:
  """Turns SIGTERM into a flag the loop checks every step (synchronised across processes)."""

  def __init__(self):
    self.requested = False
    try:
      signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (tests calling train() from a thread)
      pass

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def check(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags_all = multihost_utils.process_allgather(np.asarray(self.requested))
    return bool(np.any(flags_all))


@gin.configurable
def print_sample_fill(params, config, vocab_spec: str,
                      text: str = "The old man looked at the [MASK] and smiled.",
                      max_new_tokens: int = 16) -> Optional[str]:
  """Greedy fill of one blank by the trained model (glm_jax.generate), printed to stdout."""
  from glm_jax import generate as generate_lib  # pylint: disable=g-import-not-at-top
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  vocabulary = vocab_lib.get_vocabulary(vocab_spec)
  params = jax.device_get(params)
  filled = generate_lib.generate(text, params=params, config=config, vocabulary=vocabulary,
                                 strategy="greedy", max_new_tokens=max_new_tokens)
  print(f"Sample blank: {text}\nModel's fill: {filled}", flush=True)
  return filled


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

  With `keep_best_metric` (an eval metric such as 'eval/accuracy') the parameters of the best
  evaluation so far are kept as a params-only checkpoint in MODEL_DIR/best.
  """
  gin_utils.check_required(model_dir=model_dir, model=model, train_input=train_input,
                           mixture_or_task_name=mixture_or_task_name, train_steps=train_steps,
                           batch_size=batch_size, sequence_length=sequence_length)
  if init_checkpoint and not os.path.isdir(init_checkpoint):
    raise FileNotFoundError(f"INIT_CHECKPOINT {init_checkpoint!r} does not exist; pass a "
                            "params-only checkpoint, a step directory or a MODEL_DIR.")
  if train_steps < 1 or batch_size < 1 or sequence_length < 1:
    raise ValueError("TRAIN_STEPS, BATCH_SIZE and SEQUENCE_LENGTH must be positive.")
  if sequence_length > model.config.max_sequence_length:
    raise ValueError(f"SEQUENCE_LENGTH {sequence_length} exceeds the model's "
                     f"max_sequence_length {model.config.max_sequence_length}; lower it.")
  if best_mode not in ("max", "min"):
    raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}.")
  if keep_best_metric and not eval_period:
    logging.warning("KEEP_BEST_METRIC %s is ignored: periodic evaluation is off "
                    "(EVAL_PERIOD = 0).", keep_best_metric)
    keep_best_metric = None
  partitioner = partitioner or partitioning.Partitioner(mesh_config, logical_rules)
  partitioner.check_batch_size(batch_size, num_microbatches)
  eval_batch_size = eval_batch_size or batch_size
  if eval_period:
    partitioner.check_batch_size(eval_batch_size)
  data_seed = seed if data_seed is None else data_seed
  optimizer, lr_fn = optimizer_fn(total_steps=train_steps)
  trainer = trainer_lib.Trainer(model, partitioner, optimizer, lr_fn, seed=seed,
                                num_microbatches=num_microbatches, nan_action=nan_action)
  manager = checkpoints.CheckpointManager(model_dir, trainer.abstract_state,
                                          period=checkpoint_period, keep=keep_checkpoints,
                                          async_save=async_checkpoints)
  try:
    return _train_loop(**locals())
  except BaseException:
    manager.close()
    raise


def _train_loop(*, model_dir, model, train_input, mixture_or_task_name, train_steps, batch_size,
                sequence_length, vocab_spec, seed, data_seed, nan_action, pack, init_checkpoint,
                eval_input, eval_mixture_or_task_name, eval_split, eval_period, eval_steps,
                eval_batch_size, log_period, progress_bar, final_hook, partitioner, trainer,
                manager, keep_best_metric, best_mode, **unused):
  """The loop of train(): restore, then step, log, evaluate and save until train_steps."""
  del unused
  is_chief = jax.process_index() == 0
  if is_chief:
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
      f.write(gin.config_str())

  restored = manager.restore_latest()
  if restored is not None:
    state, meta = restored
    next_batch = int(meta["next_batch"])
    _say(f"Resumed from step {int(meta['step'])} in {model_dir}.")
  elif init_checkpoint:
    abstract = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=s.sharding),
        trainer.abstract_state.params)
    _check_compatible(checkpoints.read_config(init_checkpoint)[0], model.config,
                      init_checkpoint)
    params, _, _, _ = checkpoints.load_params(init_checkpoint, abstract)
    state, next_batch = trainer.state_from_params(params), 0
    _say(f"Initialised parameters from {init_checkpoint}.")
  else:
    state, next_batch = trainer.init_state(jax.random.PRNGKey(seed)), 0
  start_step = int(jax.device_get(state.step))

  writer = metrics_writer.MetricsWriter(model_dir, enabled=is_chief, resume_step=start_step)
  if start_step >= train_steps:
    _say(f"Step {start_step} already reaches TRAIN_STEPS {train_steps} in {model_dir}; "
         "nothing to train.")
    if final_hook is not None and is_chief:
      final_hook(state.params, model.config, vocab_spec)
    manager.close()
    writer.close()
    return state

  report = run_report.RunReport(
      model_dir=model_dir, train_steps=train_steps, sequence_length=sequence_length,
      mixture_or_task_name=eval_mixture_or_task_name or mixture_or_task_name,
      eval_input=eval_input or train_input, eval_batch_size=eval_batch_size,
      eval_steps=eval_steps, enabled=is_chief)
  shard_index, num_shards = partitioner.local_batch_slice(batch_size)
  batches = train_input(mixture_or_task_name, "train", sequence_length=sequence_length,
                        batch_size=batch_size, seed=data_seed, start_batch=next_batch,
                        shard_index=shard_index, num_shards=num_shards, pack=pack)
  eval_batches = None
  if eval_period:
    eval_shard, eval_shards = partitioner.local_batch_slice(eval_batch_size)
    eval_fn = eval_input or train_input
    baseline = run_report.TargetBaseline(model.config.vocab_size)  # counted once, here
    eval_batches = [partitioner.shard_batch(baseline.add(b), eval_batch_size) for b in eval_fn(
        eval_mixture_or_task_name or mixture_or_task_name, eval_split,
        sequence_length=sequence_length, batch_size=eval_batch_size, seed=data_seed,
        shard_index=eval_shard, num_shards=eval_shards, pack=pack, num_batches=eval_steps)]
    if isinstance(model, BlankInfillingModel):  # its accuracy is target-token accuracy
      report.set_baseline(baseline, vocab_spec)

  tokens_per_step = batch_size * sequence_length
  flops_per_step = flops.train_flops_per_token(model.config, sequence_length) * tokens_per_step
  peak = flops.PeakFlops(jax.devices())  # on CPU re-measured during the run

  preemption = _Preemption()
  bar = metrics_writer.ProgressBar(train_steps, start_step, enabled=is_chief and progress_bar)
  pending, window_start, last_good, state_step = [], None, start_step, start_step
  try:
    for state_step in range(start_step + 1, train_steps + 1):
      try:
        local = next(batches)
      except StopIteration:
        raise ValueError(f"The train input ran out at step {state_step}; use a repeating "
                         "dataset or fewer TRAIN_STEPS.") from None
      state, metrics = trainer.train_step(state, partitioner.shard_batch(local, batch_size))
      next_batch += 1
      pending.append(metrics)
      is_last = state_step == train_steps
      stop = preemption.check()
      do_save = manager.should_save(state_step) or is_last or stop
      scalars = {}
      # The first step includes compilation: it is logged without throughput.
      if window_start is None or state_step % log_period == 0 or is_last or do_save:
        fetched = _fetch(pending)
        _check_nonfinite(fetched, nan_action, state_step, last_good, bar)
        scalars = {k: float(v) for k, v in fetched[-1].items() if k != "nonfinite"}
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
        last_good = state_step
      if state_step == start_step + 1 and is_chief:
        with open(os.path.join(model_dir, "operative_config.gin"), "w") as f:
          f.write(gin.operative_config_str())
      if stop:
        bar.write(f"SIGTERM: saved step {state_step}; exiting.")
        break
  finally:
    bar.close()
    manager.close()
    writer.close()
  if final_hook is not None and is_chief and state_step == train_steps:
    final_hook(state.params, model.config, vocab_spec)
  report.print_summary(state_step, stopped=state_step < train_steps)
  return state


BEST_DIR = "best"


def _keep_if_best(model_dir, metric, mode, results, state, config, vocab_spec) -> bool:
  """Saves params to MODEL_DIR/best when `metric` beats the best kept so far."""
  if metric not in results:
    raise ValueError(f"KEEP_BEST_METRIC {metric!r} is not an eval metric; choose one of "
                     f"{sorted(results)}.")
  value = float(results[metric])
  record_path = os.path.join(model_dir, BEST_DIR, "best.json")
  if os.path.exists(record_path):
    with open(record_path) as f:
      best = json.load(f)["value"]
    if (value <= best) if mode == "max" else (value >= best):
      return False
  step = int(jax.device_get(state.step))
  checkpoints.save_params_checkpoint(os.path.join(model_dir, BEST_DIR), state.params, config,
                                     vocab_spec, step=step)
  if jax.process_index() == 0:
    with open(record_path, "w") as f:
      json.dump({"metric": metric, "value": value, "mode": mode, "step": step}, f)
  return True


def _check_nonfinite(fetched, nan_action: str, step: int, last_good: int, bar) -> None:
  bad = [m for m in fetched if bool(m["nonfinite"])]
  if not bad:
    return
  if nan_action == "stop":
    raise FloatingPointError(
        f"Non-finite loss or gradient before step {step}; stopped without saving (last "
        f"checkpoint: step {last_good}). Lower the learning rate or use NAN_ACTION='skip'.")
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


def initialize_distributed() -> None:
  """jax.distributed from flags, or automatically on Cloud TPU pods."""
  if FLAGS.coordinator_address:
    if FLAGS.num_processes is None or FLAGS.process_id is None:
      raise ValueError("--coordinator_address needs --num_processes and --process_id too.")
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  elif FLAGS.multihost_auto or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
    jax.distributed.initialize()


def main(argv):
  gin_utils.begin_cli(argv, "--gin_file, --gin.NAME=VALUE")
  try:
    initialize_distributed()
    gin_utils.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
    train()  # pylint: disable=no-value-for-parameter
  except (ValueError, FileNotFoundError, FloatingPointError, RuntimeError, TypeError) as e:
    gin_utils.exit_with_error(e)


def define_flags():
  gin_utils.define_flags()
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
  flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
  flags.DEFINE_integer("process_id", None, "Index of this process (multi-host).")
  flags.DEFINE_bool("multihost_auto", False,
                    "Call jax.distributed.initialize() with auto-detection (TPU pods, SLURM).")


def cli():
  define_flags()
  gin_utils.run(main)
