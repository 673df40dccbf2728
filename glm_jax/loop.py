"""The training loop of glm_jax.train.train: restore, then step, log, evaluate and save.

Also the reads before the loop (evaluation batches, the first train batch) and MODEL_DIR's lock.
"""

from __future__ import annotations

import time
from typing import Optional

from absl import logging
import gin
import jax
import numpy as np

from glm_jax import checkpoints, flops, gin_utils, hooks, metrics_writer, paths, run_lock
from glm_jax import run_report
from glm_jax import trainer as trainer_lib


def _say(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)
  logging.info(message)


def _fetch(tree):
  return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)


def eval_batches(input_fn, name, split, sequence_length, batch_size, seed, pack, steps,
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


def open_train_input(input_fn, name, sequence_length, batch_size, seed, pack, partitioner,
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


def lock_model_dir(model_dir: str) -> Optional[run_lock.RunLock]:
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


def remove_if_empty(model_dir: str) -> None:
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


def train_loop(*, model_dir, model, train_input, mixture_or_task_name, train_steps, batch_size,
               sequence_length, vocab_spec, seed, data_seed, pack, init_checkpoint,
               eval_batches, eval_period, log_period, progress_bar, final_hook, partitioner,
               trainer, manager, lock, keep_best_metric, best_mode, report):
  """The loop of train(): restore, then step, log, evaluate and save until train_steps."""
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

  preemption = hooks.Preemption(manager)
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
          hooks.keep_if_best(model_dir, keep_best_metric, best_mode, results, state, model.config,
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
