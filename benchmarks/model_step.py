"""Forward+backward tokens/s and MFU of the GLM network, each step normalised by a matmul probe.

  python benchmarks/model_step.py [--models=glm_tiny,glm_base] [--seq_len=512] [--batch=4]

MFU = (6 N + 12 L T h) x tokens / step time / probe FLOP/s, where the probe is a 2048 x 2048
float32 matmul timed right before each step (this machine's speed drifts by +-20%, so each
step is compared with the peak measured next to it). N = parameters outside the word,
position and block-position tables plus vocab x hidden (glm_jax.flops.matmul_params).
"""

import json
import statistics

import common  # first: the repository on sys.path, the tuned allocator before JAX starts

from absl import flags
import jax

from glm_jax import flops, gin_utils, losses
from glm_jax.model import GLM, init_params

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["glm_tiny", "glm_base"], "Model presets in configs/models.")
flags.DEFINE_integer("seq_len", 512, "Sequence length.")
flags.DEFINE_integer("batch", 4, "Batch size.")
flags.DEFINE_integer("warmup_steps", 2, "Untimed steps after the compiling one: the host "
                     "allocator maps its pages in the first steps "
                     "(glm_jax/kernels/cpu/host_memory.py).")
flags.DEFINE_integer("steps", 6, "Timed steps per model.")
flags.DEFINE_string("dtype", "float32", "Compute dtype.")
flags.DEFINE_string("remat", "dots_no_batch", "Remat policy (dots_no_batch: fastest on this CPU).")
flags.DEFINE_string("output", None, "Optional JSON file for the results.")


def bench(name: str):
  cfg = common.load_config(name, dtype=FLAGS.dtype, remat_policy=FLAGS.remat,
                           **common.REFERENCE_DROPOUT)
  params = init_params(cfg, jax.random.PRNGKey(0))
  batch = jax.device_put(common.make_batch(cfg, FLAGS.batch, FLAGS.seq_len, 0))
  model = GLM(cfg)

  def loss_fn(p, b, rng):
    logits = model.apply({"params": p}, b["tokens"], b["positions"], sep=b["sep"],
                         deterministic=False, rngs={"dropout": rng})
    loss_sum, weight_sum, _ = losses.weighted_cross_entropy(logits, b["targets"],
                                                            b["loss_weights"])
    return loss_sum / weight_sum

  step = jax.jit(jax.value_and_grad(loss_fn))
  rng = jax.random.PRNGKey(1)
  jax.block_until_ready(step(params, batch, rng))  # compile
  for i in range(FLAGS.warmup_steps):
    jax.block_until_ready(step(params, batch, jax.random.fold_in(rng, FLAGS.steps + i)))
  tokens = FLAGS.batch * FLAGS.seq_len
  step_flops = flops.train_flops_per_token(cfg, FLAGS.seq_len) * tokens
  mfus, tps, probes = [], [], []
  for i in range(FLAGS.steps):
    probe = flops.measure_matmul_peak(repeats=3)
    seconds = common.timed(lambda i=i: step(params, batch, jax.random.fold_in(rng, i)))
    probes.append(probe)
    tps.append(tokens / seconds)
    mfus.append(step_flops / seconds / probe)
  return dict(model=name, seq_len=FLAGS.seq_len, batch=FLAGS.batch, dtype=FLAGS.dtype,
              matmul_params=flops.matmul_params(cfg),
              tokens_per_second_median=statistics.median(tps),
              probe_gflops_median=statistics.median(probes) / 1e9,
              mfu_median=statistics.median(mfus), mfu_max=max(mfus),
              mfu_all=[round(m, 3) for m in mfus])


def main(argv):
  del argv
  results = [bench(name) for name in FLAGS.models]
  for r in results:
    print(json.dumps(r))
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  gin_utils.run(main)
