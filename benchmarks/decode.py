"""Greedy blank-filling speed: new tokens/s with and without the key/value cache.

  python benchmarks/decode.py [--models=4l_256,glm_tiny,glm_base] [--context=256]
      [--new_tokens=256] [--batch=1] [--uncached_steps=0]

The setting is REFERENCE_PERF.md "Generation": a context of `--context` tokens
(`[CLS]`, random ids, `[gMASK]` last), then `--new_tokens` greedy tokens (eop suppressed by
min_length, so every run generates exactly that many). Times include the Part A pass.
"Uncached" recomputes the whole sequence buffer (context + new tokens) at every step; its
per-step cost does not change along the run, so `--uncached_steps=N` may time only the first
N steps of the same program for slow models. A 2048 x 2048 float32 matmul probe is timed
next to each measurement because this machine's speed drifts.
"""

import json
import statistics
import time

import common  # first: the repository on sys.path, the tuned allocator before JAX starts

from absl import flags
import numpy as np

from glm_jax import flops, gin_utils

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["4l_256", "glm_tiny", "glm_base"],
                  "Model presets in configs/models, or 4l_256 (the reference's small shape).")
flags.DEFINE_integer("context", 256, "Context tokens, [CLS] first and [gMASK] last.")
flags.DEFINE_integer("new_tokens", 256, "Greedy new tokens per row.")
flags.DEFINE_integer("batch", 1, "Rows decoded together.")
flags.DEFINE_integer("repeats", 3, "Timed runs per setting (the median is reported).")
flags.DEFINE_integer("uncached_steps", 0,
                     "Time only this many uncached steps (0 = all new_tokens).")
flags.DEFINE_boolean("uncached", True, "Also time decoding without the cache.")
flags.DEFINE_string("output", None, "Optional JSON file for the results.")

REFERENCE = {"4l_256": (79.3, 12.6), "glm_base": (4.7, 1.0)}  # new tokens/s: cached, recompute


def bench_model(name: str) -> dict:
  n = FLAGS.new_tokens
  cfg, run = common.greedy_filler(common.load_config(name), FLAGS.batch, FLAGS.context, n)
  result = {"model": name, "layers": cfg.num_layers, "hidden": cfg.hidden_size,
            "vocab": cfg.vocab_size, "batch": FLAGS.batch, "context": FLAGS.context,
            "new_tokens": n}
  for use_cache in ((True, False) if FLAGS.uncached else (True,)):
    steps = n if use_cache or not FLAGS.uncached_steps else min(n, FLAGS.uncached_steps)
    start = time.perf_counter()
    made = int(np.asarray(run(use_cache, steps))[0])
    compile_s = time.perf_counter() - start
    assert made == steps, (made, steps)
    repeats = FLAGS.repeats if use_cache else 1
    times = [common.timed(lambda: run(use_cache, steps)) for _ in range(repeats)]
    probe = flops.measure_matmul_peak(repeats=3) / 1e9
    key = "cached" if use_cache else "uncached"
    result[key] = {"tokens_per_s": FLAGS.batch * steps / statistics.median(times),
                   "seconds": statistics.median(times), "timed_steps": steps,
                   "first_call_s": compile_s, "probe_gflops": probe}
  if "uncached" in result:
    result["speedup"] = result["cached"]["tokens_per_s"] / result["uncached"]["tokens_per_s"]
  if name in REFERENCE and FLAGS.batch == 1 and FLAGS.context == 256 and n == 256:
    result["reference_cached_tokens_per_s"] = REFERENCE[name][0]
    result["vs_reference_cached"] = result["cached"]["tokens_per_s"] / REFERENCE[name][0]
  return result


def main(argv):
  del argv
  results = []
  for name in FLAGS.models:
    r = bench_model(name)
    results.append(r)
    line = (f"{name}: cached {r['cached']['tokens_per_s']:.1f} new tokens/s "
            f"(probe {r['cached']['probe_gflops']:.0f} GFLOP/s)")
    if "uncached" in r:
      line += (f", uncached {r['uncached']['tokens_per_s']:.2f} new tokens/s over "
               f"{r['uncached']['timed_steps']} steps, cache speed-up {r['speedup']:.1f}x")
    if "vs_reference_cached" in r:
      line += f", {r['vs_reference_cached']:.1f}x the reference's {REFERENCE[name][0]}"
    print(line, flush=True)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  gin_utils.run(main)
