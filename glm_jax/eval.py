r"""Evaluate a checkpoint with a gin-configured evaluator.

  python -m glm_jax.eval --gin_file=configs/runs/eval.gin --gin.CHECKPOINT=runs/quickstart

CHECKPOINT is a MODEL_DIR (its latest step), a step directory or a params-only checkpoint,
local or on gs://. Its parameters are restored straight into their shardings on the mesh
(MESH_DATA / MESH_FSDP / MESH_TENSOR), and every evaluator runs under that mesh
(`partitioning.active()`); multi-host: --coordinator_address/--num_processes/--process_id
or --multihost_auto, as glm_jax.train. The evaluator is any callable
`evaluator(params, config, vocab_spec, output_dir) -> dict`; the default,
`infilling_evaluator`, reports loss and blank-infilling token accuracy on a task's validation
split with the trainer's eval step. SuperGLUE and LM evaluation plug their own evaluators in
through gin.

Before the parameters are restored, each evaluator that takes a `check_only` keyword is called
with `params=None, check_only=True` and the checkpoint's config: it checks its settings and
data files (one-line errors) and returns {} without work.
"""

from __future__ import annotations

import inspect
import sys
from typing import Callable, Dict, Optional, Sequence

if __name__ == "__main__":
  from glm_jax.kernels.cpu import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.reexec_with_tuned_malloc()
  # Run the importable module so its gin configurables are registered once, as glm_jax.eval.
  from glm_jax import eval as _eval_module  # pylint: disable=import-self
  _eval_module.cli()
  sys.exit(0)

import gin  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top

from glm_jax import checkpoints, gin_utils, partitioning, paths, run_report, settings  # pylint: disable=g-import-not-at-top,g-multiple-import
from glm_jax import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
from glm_jax.model_api import BlankInfillingModel  # pylint: disable=g-import-not-at-top


def default_output_dir(checkpoint: str) -> str:
  """`<MODEL_DIR>/eval` for a run or step directory, `<checkpoint>/eval` for params-only."""
  path = paths.resolve(checkpoint)
  if (path / checkpoints.STATE_ITEM).is_dir():
    path = path.parent
  return str(path / "eval")


@gin.configurable
def infilling_evaluator(params, config, vocab_spec: str, output_dir: str, *,
                        mixture_or_task_name: str = gin.REQUIRED, split: str = "validation",
                        sequence_length: int = 512, batch_size: int = 8,
                        num_batches: Optional[int] = None, input_fn: Optional[Callable] = None,
                        seed: int = 0,
                        mesh_config: partitioning.MeshConfig = partitioning.MeshConfig(),
                        check_only: bool = False) -> Dict[str, float]:
  """Loss and token accuracy of blank infilling on a task split (the trainer's eval step),
  and the accuracy of always predicting the most frequent target (eval/baseline_accuracy).

  Runs on the active partitioner's mesh (glm_jax.eval's), else on one from `mesh_config`; the
  split is tokenized with the checkpoint's vocabulary (`vocab_spec`).
  """
  del output_dir
  fn = infilling_evaluator
  settings.check_types(fn, {"mixture_or_task_name": mixture_or_task_name, "split": split,
                            "sequence_length": sequence_length, "batch_size": batch_size,
                            "num_batches": num_batches, "seed": seed})
  from glm_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  settings.at_least(fn, "sequence_length", sequence_length, train_lib.MIN_SEQUENCE_LENGTH)
  if sequence_length > config.max_sequence_length:
    raise settings.SettingError(
        f"{settings.setting_name(fn, 'sequence_length')} {sequence_length} exceeds the "
        f"checkpoint's max_sequence_length {config.max_sequence_length} (its position "
        "table); lower it.")
  settings.at_least(fn, "batch_size", batch_size, 1)
  settings.at_least(fn, "num_batches", num_batches, 1)
  if check_only:
    return {}
  if input_fn is None:
    input_fn = train_lib.task_batches
  model = BlankInfillingModel(config)
  partitioner = partitioning.active() or partitioning.Partitioner(mesh_config)
  partitioner.check_batch_size(batch_size)
  shard_index, num_shards = partitioner.local_batch_slice(batch_size)
  eval_step = trainer_lib.make_eval_step(model, partitioner)
  baseline = run_report.TargetBaseline(config.vocab_size)
  batches = (partitioner.shard_batch(baseline.add(b), batch_size) for b in input_fn(
      mixture_or_task_name, split, sequence_length=sequence_length, batch_size=batch_size,
      seed=seed, shard_index=shard_index, num_shards=num_shards, num_batches=num_batches,
      vocabulary=vocab_spec))
  results = trainer_lib.evaluate(eval_step, params, batches)
  results[run_report.BASELINE_KEY] = baseline.result()[0]  # always the most frequent target
  return results


@gin.configurable
def evaluate_checkpoint(*, checkpoint: str = gin.REQUIRED,
                        evaluator: Callable = infilling_evaluator,
                        evaluators: Optional[Sequence[Callable]] = None,
                        output_dir: Optional[str] = None,
                        mesh_config: partitioning.MeshConfig = partitioning.MeshConfig()
                        ) -> Dict[str, float]:
  """Restores CHECKPOINT once, runs the evaluator(s), writes OUTPUT_DIR/metrics.json.

  `evaluators` (gin macro EVALUATORS in configs/runs/eval_lm.gin and eval_superglue.gin)
  replaces the single `evaluator`; their results are merged into one table.
  """
  gin_utils.check_required(checkpoint=checkpoint)
  partitioner = partitioning.Partitioner(mesh_config)
  config, vocab_spec, _ = checkpoints.read_config(checkpoint)
  output_dir = str(paths.resolve(output_dir or default_output_dir(checkpoint)))
  fns = list(evaluators) if evaluators else [evaluator]
  if not fns:
    raise ValueError("EVALUATORS is empty; list at least one evaluator.")
  for fn in fns:  # settings and data files, before any work
    if not callable(fn):
      raise ValueError(f"EVALUATORS holds {fn!r}, which is not an evaluator; use "
                       "@module.function references.")
    if "check_only" in inspect.signature(fn).parameters:
      fn(None, config, vocab_spec, output_dir, check_only=True)
  params, config, vocab_spec, step = checkpoints.load_sharded_params(checkpoint, partitioner)
  if jax.process_index() == 0:
    print(f"Restored step {step} of {checkpoint} into the mesh "
          f"{partitioning.mesh_text(partitioner.mesh)} ({partitioning.placement(params)}).",
          flush=True)
  if jax.process_index() == 0:
    paths.makedirs(output_dir)
  results = {}
  with partitioner.activate():
    for fn in fns:
      for name, value in fn(params, config, vocab_spec, output_dir).items():
        if name in results:
          raise ValueError(f"Two evaluators report {name!r}; give them distinct metric names.")
        results[name] = value
  results = {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in results.items()}
  if jax.process_index() == 0:
    metrics_path = paths.resolve(output_dir) / "metrics.json"
    paths.write_json(metrics_path, {"checkpoint": str(paths.resolve(checkpoint)), "step": step,
                                    **results})
    print(f"Checkpoint {checkpoint} (step {step}):")
    for name, value in sorted(results.items()):
      print(f"  {name:<32} {value:.4f}" if isinstance(value, float) else f"  {name:<32} {value}")
    print(f"Wrote {metrics_path}")
  return results


def cli():
  gin_utils.gin_cli(evaluate_checkpoint)
