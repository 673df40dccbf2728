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
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags
import gin
import jax
import numpy as np

from glm_jax import decoding, flops, model_api, optim, partitioning, trainer as trainer_lib
from glm_jax.data.special_tokens import SpecialTokens
from glm_jax.kernels import cudnn
from glm_jax.model import GLMConfig
# pylint: enable=g-import-not-at-top,wrong-import-position

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

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
ROLES = ("cls", "unk", "mask", "smask", "gmask", "sop", "eop")


def base_config() -> GLMConfig:
  """GLM-Large (or the smoke model) in bf16 with the H100 config's remat, positions for all T."""
  longest = max(int(t) for t in FLAGS.seq_lens)
  if FLAGS.smoke:
    cfg = GLMConfig(vocab_size=256, num_layers=2, hidden_size=64, num_heads=4)
  else:
    gin.clear_config()
    gin.parse_config_file(os.path.join(CONFIGS, "models", "glm_large.gin"))
    cfg = GLMConfig()
    gin.clear_config()
  return cfg.replace(dtype="bfloat16", remat_policy="dots_no_batch", attention_dropout=0.0,
                     max_sequence_length=max(longest, FLAGS.context + FLAGS.new_tokens))


def make_batch(cfg: GLMConfig, rows: int, seq: int, seed: int):
  """A blank-infilling layout with sep = 0.8 T (benchmarks/train_step.py's)."""
  rng = np.random.RandomState(seed)
  sep = int(0.8 * seq)
  tokens = rng.randint(5, cfg.vocab_size, (rows, seq)).astype(np.int32)
  block = np.where(np.arange(seq) < sep, 0, np.arange(seq) - sep + 1)
  positions = np.stack([np.tile(np.minimum(np.arange(seq), sep - 1), (rows, 1)),
                        np.tile(block, (rows, 1))], 1).astype(np.int32)
  weights = np.tile((np.arange(seq) >= sep).astype(np.float32), (rows, 1))
  return dict(tokens=tokens, positions=positions, sep=np.full((rows,), sep, np.int32),
              targets=np.roll(tokens, -1, axis=1), loss_weights=weights)


def train_step(cfg: GLMConfig, kernel: str, seq: int, peak: float) -> dict:
  cfg = cfg.replace(attention_kernel=kernel)
  rows = max(FLAGS.tokens // seq, 1)
  partitioner = partitioning.Partitioner(partitioning.MeshConfig(data=1),
                                         devices=jax.devices()[:1])
  tx, lr = optim.create_optimizer(learning_rate=1e-4, warmup_steps=10, total_steps=1000)
  trainer = trainer_lib.Trainer(model_api.BlankInfillingModel(cfg), partitioner, tx, lr)
  state = trainer.init_state(jax.random.PRNGKey(0))
  batches = [partitioner.shard_batch(make_batch(cfg, rows, seq, i), rows) for i in range(2)]
  start = time.perf_counter()
  state, metrics = trainer.train_step(state, batches[0])
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  for i in range(FLAGS.warmup_steps):
    state, metrics = trainer.train_step(state, batches[(i + 1) % 2])
    jax.block_until_ready(metrics)
  seconds = []
  for i in range(FLAGS.steps):
    start = time.perf_counter()
    state, metrics = trainer.train_step(state, batches[i % 2])
    jax.block_until_ready(metrics)
    seconds.append(time.perf_counter() - start)
  step_s = statistics.median(seconds)
  tokens = rows * seq
  return {"kernel": kernel, "seq_len": seq, "rows": rows, "compile_s": round(compile_s, 1),
          "step_s": step_s, "tokens_per_s": tokens / step_s,
          "mfu": flops.train_flops_per_token(cfg, seq) * tokens / step_s / peak,
          "loss": float(metrics["loss"])}


def decode(cfg: GLMConfig, batch: int) -> dict:
  params, cfg = decoding.unstack_layers(
      model_api.BlankInfillingModel(cfg).init_params(jax.random.PRNGKey(0)), cfg)
  v = cfg.vocab_size
  special = SpecialTokens(pad=0, eos=0, **{k: v - 1 - i for i, k in enumerate(ROLES)})
  context = np.random.RandomState(0).randint(10, v - 20, (batch, FLAGS.context)).astype(np.int32)
  context[:, 0], context[:, -1] = special.cls, special.gmask
  lengths = np.full((batch,), FLAGS.context, np.int32)
  masks = np.full((batch, 1), FLAGS.context - 1, np.int32)
  n = FLAGS.new_tokens
  dc = decoding.DecodeConfig(max_new_tokens=n, min_length=n, max_steps=n)
  run = lambda: decoding.fill_blanks(params, cfg, special, context, lengths, masks,  # pylint: disable=unnecessary-lambda-assignment
                                     decode_config=dc).lengths
  jax.block_until_ready(run())  # compile
  times = []
  for _ in range(3):
    start = time.perf_counter()
    made = int(np.asarray(jax.block_until_ready(run()))[0])
    times.append(time.perf_counter() - start)
  assert made == n, (made, n)
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
  app.run(main)
