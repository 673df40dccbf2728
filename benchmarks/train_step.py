"""Tokens/s and MFU of the full train step (forward with dropout, loss, backward, clip, AdamW).

  python benchmarks/train_step.py [--models=glm_tiny,glm_base,4l_256] [--seq_len=512] [--batch=4]

Each timed step runs glm_jax.trainer.Trainer.train_step (sharded jit, donated state, exactly
what `python -m glm_jax.train` runs) and is normalised by a 2048 x 2048 float32 matmul probe
taken right before it: this machine's speed drifts by +-20% (REFERENCE_PERF.md), so every
step is compared with the peak measured next to it. MFU = (6 N + 12 L T h) x tokens / step
time / probe FLOP/s, N from glm_jax.flops.matmul_params.
"""

import json
import statistics

import common  # first: the repository on sys.path, the tuned allocator before JAX starts

from absl import flags

from glm_jax import flops, gin_utils, partitioning

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["glm_tiny", "4l_256", "glm_base"],
                  "Model presets in configs/models, or 4l_256 (the reference's small shape).")
flags.DEFINE_integer("seq_len", 512, "Sequence length.")
flags.DEFINE_integer("batch", 4, "Global batch size.")
flags.DEFINE_integer("warmup_steps", 2, "Untimed steps after the compiling one: the host "
                     "allocator maps its pages in the first steps "
                     "(glm_jax/kernels/cpu/host_memory.py).")
flags.DEFINE_integer("steps", 5, "Timed steps per model.")
flags.DEFINE_integer("microbatches", 1, "Gradient accumulation microbatches.")
flags.DEFINE_string("dtype", "float32", "Compute dtype.")
flags.DEFINE_string("remat", "dots_no_batch", "Remat policy (dots_no_batch: fastest on this CPU).")
flags.DEFINE_string("output", None, "Optional JSON file for the results.")


def bench(name: str) -> dict:
  cfg = common.load_config(name, dtype=FLAGS.dtype, remat_policy=FLAGS.remat,
                           **common.REFERENCE_DROPOUT)
  partitioner = partitioning.Partitioner(partitioning.MeshConfig())
  trainer, state = common.create_trainer(cfg, partitioner, FLAGS.microbatches)
  batches = [partitioner.shard_batch(common.make_batch(cfg, FLAGS.batch, FLAGS.seq_len, i),
                                     FLAGS.batch) for i in range(2)]
  run = common.time_train_steps(trainer, state, batches, FLAGS.warmup_steps, FLAGS.steps,
                                probe=lambda: flops.measure_matmul_peak(repeats=3))
  tokens = FLAGS.batch * FLAGS.seq_len
  step_flops = flops.train_flops_per_token(cfg, FLAGS.seq_len) * tokens
  mfus = [step_flops / s / p for s, p in zip(run["seconds"], run["probes"])]
  return dict(model=name, seq_len=FLAGS.seq_len, batch=FLAGS.batch, dtype=FLAGS.dtype,
              matmul_params=flops.matmul_params(cfg), compile_seconds=run["compile_seconds"],
              step_seconds_median=statistics.median(run["seconds"]),
              tokens_per_second_median=statistics.median(tokens / s for s in run["seconds"]),
              probe_gflops_median=statistics.median(run["probes"]) / 1e9,
              mfu_median=statistics.median(mfus), mfu_max=max(mfus),
              mfu_all=[round(m, 3) for m in mfus], loss=float(run["metrics"]["loss"]))


def main(argv):
  del argv
  results = []
  for name in FLAGS.models:
    result = bench(name)
    print(json.dumps(result), flush=True)
    results.append(result)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  gin_utils.run(main)
