r"""Evaluate a checkpoint with a gin-configured evaluator.

  python -m glm_jax.eval --gin_file=configs/runs/eval.gin --gin.CHECKPOINT=runs/quickstart

CHECKPOINT is a MODEL_DIR (its latest step), a step directory or a params-only checkpoint.
The evaluator is any callable `evaluator(params, config, vocab_spec, output_dir) -> dict`;
the default, `infilling_evaluator`, reports loss and blank-infilling token accuracy on a
task's validation split with the trainer's eval step. SuperGLUE and LM evaluation plug their
own evaluators in through gin.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Callable, Dict, Optional, Sequence

if __name__ == "__main__":
  from glm_jax import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.reexec_with_tuned_malloc()
  # Run the importable module so its gin configurables are registered once, as glm_jax.eval.
  from glm_jax import eval as _eval_module  # pylint: disable=import-self
  _eval_module.cli()
  sys.exit(0)

from absl import flags  # pylint: disable=g-import-not-at-top
import gin  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top

from glm_jax import checkpoints, gin_utils, partitioning, run_report  # pylint: disable=g-import-not-at-top,g-multiple-import
from glm_jax import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
from glm_jax.models import BlankInfillingModel  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS


def default_output_dir(checkpoint: str) -> str:
  """`<MODEL_DIR>/eval` for a run or step directory, `<checkpoint>/eval` for params-only."""
  checkpoint = os.path.abspath(checkpoint)
  if os.path.isdir(os.path.join(checkpoint, checkpoints.STATE_ITEM)):
    checkpoint = os.path.dirname(checkpoint)
  return os.path.join(checkpoint, "eval")


@gin.configurable
def infilling_evaluator(params, config, vocab_spec: str, output_dir: str, *,
                        mixture_or_task_name: str = gin.REQUIRED, split: str = "validation",
                        sequence_length: int = 512, batch_size: int = 8,
                        num_batches: Optional[int] = None, input_fn: Optional[Callable] = None,
                        seed: int = 0,
                        mesh_config: partitioning.MeshConfig = partitioning.MeshConfig()
                        ) -> Dict[str, float]:
  """Loss and token accuracy of blank infilling on a task split (the trainer's eval step),
  and the accuracy of always predicting the most frequent target (eval/baseline_accuracy)."""
  del vocab_spec, output_dir
  if input_fn is None:
    from glm_jax import train as train_lib  # pylint: disable=g-import-not-at-top
    input_fn = train_lib.task_batches
  model = BlankInfillingModel(config)
  partitioner = partitioning.Partitioner(mesh_config)
  partitioner.check_batch_size(batch_size)
  shard_index, num_shards = partitioner.local_batch_slice(batch_size)
  eval_step = trainer_lib.make_eval_step(model, partitioner)
  baseline = run_report.TargetBaseline(config.vocab_size)
  batches = (partitioner.shard_batch(baseline.add(b), batch_size) for b in input_fn(
      mixture_or_task_name, split, sequence_length=sequence_length, batch_size=batch_size,
      seed=seed, shard_index=shard_index, num_shards=num_shards, num_batches=num_batches))
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
  params, config, vocab_spec, step = _load(checkpoint, mesh_config)
  output_dir = output_dir or default_output_dir(checkpoint)
  os.makedirs(output_dir, exist_ok=True)
  results = {}
  for fn in (evaluators if evaluators else [evaluator]):
    for name, value in fn(params, config, vocab_spec, output_dir).items():
      if name in results:
        raise ValueError(f"Two evaluators report {name!r}; give them distinct metric names.")
      results[name] = value
  results = {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in results.items()}
  if jax.process_index() == 0:
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
      json.dump({"checkpoint": os.path.abspath(checkpoint), "step": step, **results}, f,
                indent=2)
    print(f"Checkpoint {checkpoint} (step {step}):")
    for name, value in sorted(results.items()):
      print(f"  {name:<32} {value:.4f}" if isinstance(value, float) else f"  {name:<32} {value}")
    print(f"Wrote {os.path.join(output_dir, 'metrics.json')}")
  return results


def _load(checkpoint: str, mesh_config: partitioning.MeshConfig):
  """Parameters restored straight into the mesh's shardings."""
  params, config, vocab_spec, step = checkpoints.load_params(checkpoint)
  partitioner = partitioning.Partitioner(mesh_config)
  shardings = partitioner.param_shardings(BlankInfillingModel(config).abstract_params())
  params = jax.tree_util.tree_map(jax.device_put, params, shardings)
  return params, config, vocab_spec, step


def main(argv):
  gin_utils.begin_cli(argv, "--gin_file, --gin.NAME=VALUE")
  try:
    gin_utils.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
    evaluate_checkpoint()  # pylint: disable=no-value-for-parameter
  except (ValueError, FileNotFoundError, RuntimeError, TypeError) as e:
    gin_utils.exit_with_error(e)


def cli():
  gin_utils.define_flags()
  gin_utils.run(main)
