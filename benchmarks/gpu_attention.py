"""GLM-Large on one GPU: train-step MFU per attention kernel, and cached decoding speed (JSON).

  sh benchmarks/gpu_attention.sh                 # on a CUDA GPU (about 5 minutes on an H100)
  python benchmarks/gpu_attention.py --smoke     # a tiny model on any machine: tests the script

Train step: glm_jax.trainer.Trainer.train_step (bf16 forward with dropout, loss, backward, clip,
AdamW, donated state: what `python -m glm_jax.train` runs) of GLM-Large with the remat of
configs/scale/glm_large_h100.gin, at each --seq_lens with --tokens tokens per step, for each of
--kernels. Attention dropout is 0 for every kernel (the fused kernels take none), hidden and
embedding dropout 0.1. MFU = (6 N + 12 L T h) x tokens / step time / the card's dense bf16 peak
(glm_jax.flops.device_peak_flops; the median of --steps timed steps).
Decoding: glm_jax.decoding.fill_blanks with the key/value cache, a --context token context and
--new_tokens greedy tokens at each of --decode_batches; decoding reads its cache with einsums
whatever the kernel, so it is timed once. With --smoke on a machine without cuDNN, the cudnn
kernel's calls run through jax.nn.dot_product_attention's XLA implementation.
"""

import datetime
import json
import statistics

import common  # first: the repository on sys.path, the tuned allocator before JAX starts

from absl import flags
import jax
import numpy as np

from glm_jax import flops, gin_utils, partitioning
from glm_jax.kernels import cudnn
from glm_jax.model import GLMConfig

FLAGS = flags.FLAGS
flags.DEFINE_bool("smoke", False, "A 2-layer model, short sequences, 2 steps: runs anywhere.")
flags.DEFINE_list("kernels", ["xla", "cudnn"], "Attention kernels to time (GLMConfig names).")
flags.DEFINE_list("seq_lens", ["512", "1024"], "Sequence lengths of the train step.")
flags.DEFINE_integer("tokens", 16384, "Tokens per train step (rows = tokens / seq_len).")
flags.DEFINE_integer("warmup_steps", 2, "Untimed steps after the compiling one.")
flags.DEFINE_integer("steps", 10, "Timed train steps per setting.")
flags.DEFINE_list("decode_batches", ["1", "32"], "Rows decoded together.")
flags.DEFINE_integer("context", 256, "Decoding context tokens ([CLS] first, [gMASK] last).")
flags.DEFINE_integer("new_tokens", 128, "Greedy new tokens per row.")
flags.DEFINE_string("output", None, "Also write the JSON here.")


def base_config() -> GLMConfig:
  """GLM-Large (or the smoke model) in bf16 with the H100 config's remat, positions for all T."""
  longest = max(int(t) for t in FLAGS.seq_lens)
  if FLAGS.smoke:
    cfg = GLMConfig(vocab_size=256, num_layers=2, hidden_size=64, num_heads=4)
  else:
    cfg = common.load_config("glm_large")
  return cfg.replace(dtype="bfloat16", remat_policy="dots_no_batch", attention_dropout=0.0,
                     max_sequence_length=max(longest, FLAGS.context + FLAGS.new_tokens))


def train_step(cfg: GLMConfig, kernel: str, seq: int, peak: float) -> dict:
  cfg = cfg.replace(attention_kernel=kernel)
  rows = max(FLAGS.tokens // seq, 1)
  partitioner = partitioning.Partitioner(partitioning.MeshConfig(data=1),
                                         devices=jax.devices()[:1])
  trainer, state = common.create_trainer(cfg, partitioner)
  batches = [partitioner.shard_batch(common.make_batch(cfg, rows, seq, i), rows)
             for i in range(2)]
  run = common.time_train_steps(trainer, state, batches, FLAGS.warmup_steps, FLAGS.steps)
  step_s = statistics.median(run["seconds"])
  tokens = rows * seq
  return {"kernel": kernel, "seq_len": seq, "rows": rows,
          "compile_s": round(run["compile_seconds"], 1), "step_s": step_s, "tokens_per_s": tokens / step_s,
          "mfu": flops.train_flops_per_token(cfg, seq) * tokens / step_s / peak,
          "loss": float(run["metrics"]["loss"])}


def decode(cfg: GLMConfig, batch: int) -> dict:
  n = FLAGS.new_tokens
  _, run = common.greedy_filler(cfg, batch, FLAGS.context, n)
  made = int(np.asarray(run())[0])  # the compiling call
  assert made == n, (made, n)
  times = [common.timed(run) for _ in range(3)]
  return {"batch": batch, "context": FLAGS.context, "new_tokens": n,
          "tokens_per_s": batch * n / statistics.median(times),
          "seconds": statistics.median(times)}


def main(argv):
  del argv
  if FLAGS.smoke:
    FLAGS.seq_lens, FLAGS.tokens, FLAGS.steps, FLAGS.warmup_steps = ["64"], 256, 2, 0
    FLAGS.context, FLAGS.new_tokens, FLAGS.decode_batches = 16, 8, ["1", "2"]
  device = jax.devices()[0]
  version = cudnn.cudnn_version()
  through_xla = FLAGS.smoke and version is None and "cudnn" in FLAGS.kernels
  if through_xla:
    cudnn.IMPLEMENTATION = "xla"
  peak = flops.device_peak_flops(device)
  cfg = base_config()
  result = {
      "date": datetime.date.today().isoformat(), "device_kind": device.device_kind,
      "platform": device.platform, "jax": jax.__version__, "cudnn_version": version,
      "peak_tflops": peak / 1e12, "smoke": FLAGS.smoke,
      "model": {k: getattr(cfg, k) for k in ("num_layers", "hidden_size", "num_heads",
                                             "vocab_size", "dtype", "remat_policy")},
      "train": [], "decode": []}
  if through_xla:
    result["cudnn_calls_through"] = "xla"
  for seq in (int(t) for t in FLAGS.seq_lens):
    for kernel in FLAGS.kernels:
      row = train_step(cfg, kernel, seq, peak)
      print(json.dumps(row), flush=True)
      result["train"].append(row)
  for batch in (int(b) for b in FLAGS.decode_batches):
    row = decode(cfg, batch)
    print(json.dumps(row), flush=True)
    result["decode"].append(row)
  text = json.dumps(result, indent=1)
  print(text, flush=True)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  gin_utils.run(main)
