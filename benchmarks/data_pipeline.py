"""Samples/s per core of the pretraining data pipeline.

  python benchmarks/data_pipeline.py --corpus=DIR [--sequence_length=512] [--mix=base]
      [--batch_size=64] [--num_batches=300]        # end to end, from a prepared corpus
  python benchmarks/data_pipeline.py [--raw_length=512] [--seconds=5]
      [--consumed_samples_per_second=X]            # objective + feature conversion only
  python benchmarks/data_pipeline.py --reference_stats   # statistics vs the reference

End to end (`--corpus`): `glm_jax.data.pipeline.get_batches` over `prepared:DIR`, exactly the
trainer's input: raw samples drawn from random positions of the whole corpus, objectives,
padding or packing, this host's shard of each global batch, numpy batches. It prints
samples per CPU-second of the process (all its threads: the per-core figure) and per wall
second, resident memory (anonymous and file-backed, /proc/self/status) after the warm-up and
at the end, and what one host must feed GLM-Large at T = 512 (the formula is printed):
samples/s = chips x peak FLOP/s x MFU / (FLOPs per token x T), FLOPs per token =
glm_jax.flops.train_flops_per_token (6 N + 12 L T h).

Raw samples are the reference collator's own inputs (by default the first 300 of its 2000
samples of 512 BERT tokens, shipped in tests/fixtures/glm_reference; pass
--inputs=../shared/fixtures/glm_reference/collator_inputs_glm_tiny_a.npz for all 2000), cut
to --raw_length, held in memory and repeated.
Every run limits tf.data and TF to one thread (private threadpool 1, intra/inter-op 1).
`samples_per_second` is samples per CPU-second of the process (the per-core figure, robust
to other load on a shared machine); `samples_per_wall_second` is also printed.
The model length is max_output_length(raw_length) so nothing is truncated (590 for 512;
--raw_length=444 gives the T=512 pipeline). Prints one JSON line.
"""

import dataclasses
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from glm_jax import console, gin_utils  # pylint: disable=g-import-not-at-top,g-multiple-import
console.quiet_startup()  # before TensorFlow loads

from absl import flags  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import seqio  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from glm_jax.data import objectives  # pylint: disable=g-import-not-at-top
from glm_jax.data.feature_converter import GLMFeatureConverter  # pylint: disable=g-import-not-at-top,line-too-long
from glm_jax.data.special_tokens import BERT_WORDPIECE  # pylint: disable=g-import-not-at-top

_RAW_LENGTH = flags.DEFINE_integer("raw_length", 512, "Raw sample length (<= 512).")
_SECONDS = flags.DEFINE_float("seconds", 5.0, "Timed seconds per configuration.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Rows per batch (the reference used 16).")
_PACK = flags.DEFINE_bool("pack", False, "Pack rows (GLMFeatureConverter(pack=True)).")
_CONSUMED = flags.DEFINE_float(
    "consumed_samples_per_second", None,
    "Samples/s the glm_tiny train step consumes; prints pipeline/consumed ratios.")
_STATS = flags.DEFINE_bool(
    "reference_stats", False,
    "Instead of timing: statistics of each objective on all fixture samples next to the "
    "reference collator's (collator_stats_glm_tiny_a.json).")
_CORPUS = flags.DEFINE_string("corpus", None, "End to end from this prepared corpus.")
_SEQUENCE_LENGTH = flags.DEFINE_integer("sequence_length", 512, "Model length T (--corpus).")
_MIX = flags.DEFINE_string("mix", "base", "Objective mix (tasks.MIXES) for --corpus.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 300, "Timed batches (--corpus).")
_START_BATCH = flags.DEFINE_integer("start_batch", 1000, "First batch (--corpus).")
_THREADS = flags.DEFINE_integer("threads", None, "--corpus: tf.data threads (None: all).")
_INPUTS = flags.DEFINE_string(
    "inputs", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                           "fixtures", "glm_reference", "collator_inputs_glm_tiny_a_300.npz"),
    "npz with `text` int32 [num_samples, 512]; collator_stats_glm_tiny_a.json beside it.")

# REFERENCE_PERF.md: reference Python collator, one core, samples/s (two runs).
REFERENCE = {"token": (1098, 679), "sentence": (924, 596), "document": (2407, 2239)}
# name: (objective_probs (token, sentence, document), doc_min_ratio), GLM_SPEC section 2.
MIXES = {
    "token": ((1.0, 0.0, 0.0), 0.5),            # = the GLM-Base / GLM-Large mix
    "sentence": ((0.0, 1.0, 0.0), 0.5),
    "document": ((0.0, 0.0, 1.0), 0.5),
    "glm_doc": ((0.5, 0.0, 0.5), 0.5),
    "glm_2b": ((0.4, 0.3, 0.3), 0.25),
}


def _pipeline(texts, probs, doc_min_ratio, special, length):
  ds = tf.data.Dataset.from_tensor_slices({"targets": texts}).cache().repeat()
  with seqio.map_seed_manager(1234):
    ds = objectives.blank_infilling(ds, sequence_length={"targets": length},
                                    special_tokens=special, objective_probs=probs,
                                    doc_min_ratio=doc_min_ratio)
  ds = GLMFeatureConverter(pack=_PACK.value, pad_id=special.pad)(ds, {"targets": length})
  ds = ds.batch(_BATCH.value, drop_remainder=True)
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  options.autotune.enabled = False
  return ds.with_options(options)


def _measure(ds, seconds):
  """(samples per wall second, samples per CPU second of this process)."""
  it = iter(ds)
  for _ in range(20):  # warm-up: tracing, first-call allocation
    next(it)
  rows, start, cpu = 0, time.perf_counter(), time.process_time()
  while time.perf_counter() - start < seconds:
    for _ in range(10):
      rows += next(it)["tokens"].shape[0]
  return rows / (time.perf_counter() - start), rows / (time.process_time() - cpu)


def _reference_stats(texts, special):
  """Our statistics on the reference's inputs next to the reference's own."""
  ref_file = pathlib.Path(_INPUTS.value).with_name("collator_stats_glm_tiny_a.json")
  modes = json.loads(ref_file.read_text())["modes"]
  fns = {"token": (objectives.token_infilling, "bert"),
         "sentence": (objectives.sentence_infilling, "sentence"),
         "document": (objectives.document_infilling, "gpt")}
  out = {}
  for name, (fn, mode) in fns.items():
    f = tf.function(lambda t, s, fn=fn: fn(t, s, special))
    ds = tf.data.Dataset.from_tensor_slices(texts).enumerate().map(
        lambda i, t, f=f: f(t, tf.stack([i, tf.constant(11, tf.int64)])))
    ours = objectives.layout_statistics(ds.as_numpy_iterator())
    ref = modes[mode]
    ref_hist = np.array(ref["span_length"]["histogram_1_to_40_normalized"])
    out[name] = {
        "masked_fraction_mean": [round(ours["masked_fraction_mean"], 4),
                                 round(ref["masked_fraction_of_original_length"]["mean"], 4)],
        "masked_fraction_std": [round(ours["masked_fraction_std"], 4),
                                round(ref["masked_fraction_of_original_length"]["std"], 4)],
        "spans_per_sample_mean": [round(ours["spans_per_sample_mean"], 3),
                                  round(ref["spans_per_sample"]["mean"], 3)],
        "span_length_mean": [round(ours["span_length_mean"], 3),
                             round(ref["span_length"]["mean"], 3)],
        "span_length_max": [ours["max_span_length"], ref["span_length"]["max"]],
        "length_mean": [round(ours["length_mean"], 2),
                        round(ref["sequence_length_after_construction_unpadded"]["mean"], 2)],
        "suffix_fraction": [ours["suffix_fraction"],
                            ref.get("fraction_samples_suffix_layout", 0.0)],
        "span_hist_tvd": round(0.5 * float(np.abs(np.array(ours["span_length_hist"]) -
                                                  ref_hist).sum()), 4),
        "redraws": ours["redraws_total"], "unplaced": ours["unplaced_total"],
    }
  print(json.dumps({"samples": len(texts), "ours_vs_reference": out}))


# Hosts: (chips, peak bf16 FLOP/s per chip). v5e: 197 TFLOP/s; H100 SXM: 989 TFLOP/s dense.
HOSTS = {"v5e-8": (8, 197e12), "8xH100": (8, 989e12)}
MFU = 0.5


def _memory() -> dict:
  out = {}
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(("RssAnon", "RssFile", "VmHWM")):
        key, value = line.split(":")
        out[key] = round(int(value.split()[0]) / 1024, 1)
  return out


def feed_requirement(sequence_length: int) -> dict:
  """Samples/s one host must feed GLM-Large at `sequence_length` and 50% MFU."""
  from glm_jax import flops  # pylint: disable=g-import-not-at-top
  from glm_jax.model import GLMConfig  # pylint: disable=g-import-not-at-top
  config = GLMConfig(vocab_size=30592, num_layers=24, hidden_size=1024, num_heads=16,
                     max_sequence_length=512)
  per_token = flops.train_flops_per_token(config, sequence_length)
  out = {"formula": "samples/s = chips * peak * MFU / (train_flops_per_token * T)",
         "train_flops_per_token": per_token, "mfu": MFU}
  for host, (chips, peak) in HOSTS.items():
    out[host] = round(chips * peak * MFU / (per_token * sequence_length), 1)
  return out


def end_to_end(corpus: str) -> dict:
  """get_batches over a prepared corpus: samples per CPU-second and per wall second."""
  from glm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from glm_jax.data import tasks  # pylint: disable=g-import-not-at-top
  name = tasks.register_prepared_task("benchmark_corpus", corpus, mix=_MIX.value)
  kwargs = dict(sequence_length=_SEQUENCE_LENGTH.value, batch_size=_BATCH.value, seed=0,
                pack=_PACK.value, num_threads=_THREADS.value)
  batches = pipeline.get_batches(name, "train", start_batch=_START_BATCH.value, **kwargs)
  for _ in range(20):
    next(batches)  # warm-up: tracing, first reads
  warm = _memory()
  rows, start, cpu = 0, time.perf_counter(), time.process_time()
  for _ in range(_NUM_BATCHES.value):
    rows += next(batches)["tokens"].shape[0]
  wall, cpu = time.perf_counter() - start, time.process_time() - cpu
  source = tasks.get_source(name)
  manifest = source.components[0].manifest
  need = feed_requirement(_SEQUENCE_LENGTH.value)
  per_core = rows / cpu
  return {
      "corpus": {"tokens": manifest["splits"]["train"]["tokens"],
                 "documents": manifest["splits"]["train"]["documents"],
                 "characters": manifest["counters"]["characters"]},
      "sequence_length": _SEQUENCE_LENGTH.value, "mix": _MIX.value, "batch_size": _BATCH.value,
      "pack": _PACK.value, "samples": rows, "cores": os.cpu_count(), "threads": _THREADS.value,
      "samples_per_cpu_second": round(per_core, 1),
      "samples_per_wall_second": round(rows / wall, 1),
      "memory_mib_after_warmup": warm, "memory_mib_at_end": _memory(),
      "feed_requirement_samples_per_second": need,
      "host_cores_needed": {h: round(need[h] / per_core, 2) for h in HOSTS},
  }


def main(argv):
  del argv
  if _CORPUS.value:
    print(json.dumps(end_to_end(_CORPUS.value)))
    return
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  special = dataclasses.replace(BERT_WORDPIECE, sentence_end_ids=(1012, 1029, 999, 1025, 1024))
  if not os.path.exists(_INPUTS.value):
    raise FileNotFoundError(f"--inputs {_INPUTS.value} does not exist; pass the npz of raw "
                            "samples (collator_inputs_glm_tiny_a*.npz of the glm_reference "
                            "fixtures).")
  texts = np.load(_INPUTS.value)["text"]
  if not 8 <= _RAW_LENGTH.value <= texts.shape[1]:
    raise ValueError(f"--raw_length must be between 8 and {texts.shape[1]}, the inputs' length.")
  texts = texts[:, :_RAW_LENGTH.value].astype(np.int32)
  if _STATS.value:
    return _reference_stats(texts, special)
  length = objectives.max_output_length(_RAW_LENGTH.value, "token")
  results = {"raw_length": _RAW_LENGTH.value, "model_length": length, "batch_size": _BATCH.value,
             "pack": _PACK.value, "threads": 1, "samples_per_second": {},
             "samples_per_wall_second": {}}
  for name, (probs, doc_min_ratio) in MIXES.items():
    ds = _pipeline(texts, probs, doc_min_ratio, special, length)
    wall, rate = _measure(ds, _SECONDS.value)
    results["samples_per_second"][name] = round(rate, 1)
    results["samples_per_wall_second"][name] = round(wall, 1)
    if name in REFERENCE:
      results.setdefault("vs_reference_collator", {})[name] = round(
          rate / max(REFERENCE[name]), 2)
  if _CONSUMED.value:
    results["vs_consumed"] = {k: round(v / _CONSUMED.value, 2)
                              for k, v in results["samples_per_second"].items()}
  print(json.dumps(results))


if __name__ == "__main__":
  gin_utils.run(main)
