"""Tokens/s and MFU of the full train step (forward with dropout, loss, backward, clip, AdamW).

  python benchmarks/train_step.py [--models=glm_tiny,glm_base,4l_256] [--seq_len=512] [--batch=4]

Each timed step runs glm_jax.trainer.Trainer.train_step (sharded jit, donated state, exactly
what `python -m glm_jax.train` runs) and is normalised by a 2048 x 2048 float32 matmul probe
taken right before it: this machine's speed drifts by +-20% (REFERENCE_PERF.md), so every
step is compared with the peak measured next to it. MFU = (6 N + 12 L T h) x tokens / step
time / probe FLOP/s, N from glm_jax.flops.matmul_params.
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from glm_jax import console, host_memory  # pylint: disable=g-import-not-at-top,g-multiple-import

host_memory.reexec_with_tuned_malloc()  # before JAX starts: see glm_jax/host_memory.py

from absl import flags
import jax
import numpy as np

# pylint: disable=g-import-not-at-top
from glm_jax import flops, model_api, optim, partitioning, trainer as trainer_lib
from glm_jax.model import GLMConfig
sys.path.insert(0, os.path.dirname(__file__))
import shapes
# pylint: enable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["glm_tiny", "4l_256", "glm_base"],
                  "Model presets in configs/models, or 4l_256 (the reference's small shape).")
flags.DEFINE_integer("seq_len", 512, "Sequence length.")
flags.DEFINE_integer("batch", 4, "Global batch size.")
flags.DEFINE_integer("warmup_steps", 2, "Untimed steps after the compiling one: the host "
                     "allocator maps its pages in the first steps (glm_jax/host_memory.py).")
flags.DEFINE_integer("steps", 5, "Timed steps per model.")
flags.DEFINE_integer("microbatches", 1, "Gradient accumulation microbatches.")
flags.DEFINE_string("dtype", "float32", "Compute dtype.")
flags.DEFINE_string("remat", "dots_no_batch", "Remat policy (dots_no_batch: fastest on this CPU).")
flags.DEFINE_string("output", None, "Optional JSON file for the results.")

def load_config(name: str) -> GLMConfig:
  # Dropout 0.1 everywhere, as the reference's measured training step.
  return shapes.load_config(name, dtype=FLAGS.dtype, remat_policy=FLAGS.remat,
                            embedding_dropout=0.1, attention_dropout=0.1, hidden_dropout=0.1)


def make_batch(cfg: GLMConfig, batch: int, seq: int, seed: int):
  """A blank-infilling layout with sep = 0.8 T (the reference collator's typical split)."""
  rng = np.random.RandomState(seed)
  sep = int(0.8 * seq)
  tokens = rng.randint(5, cfg.vocab_size, (batch, seq)).astype(np.int32)
  block = np.where(np.arange(seq) < sep, 0, np.arange(seq) - sep + 1)
  positions = np.stack([np.tile(np.minimum(np.arange(seq), sep - 1), (batch, 1)),
                        np.tile(block, (batch, 1))], 1).astype(np.int32)
  weights = np.tile((np.arange(seq) >= sep).astype(np.float32), (batch, 1))
  targets = np.roll(tokens, -1, axis=1)
  return dict(tokens=tokens, positions=positions, sep=np.full((batch,), sep, np.int32),
              targets=targets, loss_weights=weights)


def bench(name: str) -> dict:
  cfg = load_config(name)
  partitioner = partitioning.Partitioner(partitioning.MeshConfig())
  tx, lr = optim.create_optimizer(learning_rate=1e-4, warmup_steps=10, total_steps=1000)
  trainer = trainer_lib.Trainer(model_api.BlankInfillingModel(cfg), partitioner, tx, lr,
                                num_microbatches=FLAGS.microbatches)
  state = trainer.init_state(jax.random.PRNGKey(0))
  batches = [partitioner.shard_batch(make_batch(cfg, FLAGS.batch, FLAGS.seq_len, i), FLAGS.batch)
             for i in range(2)]
  start = time.perf_counter()
  state, metrics = trainer.train_step(state, batches[0])
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - start
  for i in range(FLAGS.warmup_steps):
    state, metrics = trainer.train_step(state, batches[(i + 1) % 2])
    jax.block_until_ready(metrics)
  tokens = FLAGS.batch * FLAGS.seq_len
  step_flops = flops.train_flops_per_token(cfg, FLAGS.seq_len) * tokens
  mfus, tps, probes, seconds_all = [], [], [], []
  for i in range(FLAGS.steps):
    probe = flops.measure_matmul_peak(repeats=3)
    start = time.perf_counter()
    state, metrics = trainer.train_step(state, batches[i % 2])
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    probes.append(probe)
    seconds_all.append(seconds)
    tps.append(tokens / seconds)
    mfus.append(step_flops / seconds / probe)
  return dict(model=name, seq_len=FLAGS.seq_len, batch=FLAGS.batch, dtype=FLAGS.dtype,
              matmul_params=flops.matmul_params(cfg), compile_seconds=compile_seconds,
              step_seconds_median=statistics.median(seconds_all),
              tokens_per_second_median=statistics.median(tps),
              probe_gflops_median=statistics.median(probes) / 1e9,
              mfu_median=statistics.median(mfus), mfu_max=max(mfus),
              mfu_all=[round(m, 3) for m in mfus], loss=float(metrics["loss"]))


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
  console.run(main)
