"""Peak host memory of `python -m glm_jax.convert` on a synthetic fp16 checkpoint (>= 1.5 B params).

  python benchmarks/convert_memory.py [--layers=30] [--hidden=2048] [--layouts=megatron,hf]
      [--vocabulary=gpt2:../shared/data/vocab/gpt2] [--workdir=/tmp]

Writes a GLM-2B-width checkpoint of random fp16 weights (30 layers x hidden 2048 + a 50304-row
vocabulary: 1.61 B parameters, 3.2 GB) in the reference's layout (`<dir>/latest_checkpointed_
iteration.txt` + `mp_rank_00_model_states.pt`, torch.save) and/or the HF layout
(`model.safetensors` + config.json), converts each in a fresh process and reads that process's
peak resident set (ru_maxrss of the child), then deletes everything. Prints one JSON line per
layout: checkpoint bytes, peak RSS bytes, their ratio (the target is <= 1.5) and seconds.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import flags

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
_LAYERS = flags.DEFINE_integer("layers", 30, "Transformer layers.")
_HIDDEN = flags.DEFINE_integer("hidden", 2048, "Hidden size (heads = hidden / 128).")
_VOCAB = flags.DEFINE_integer("vocab_rows", 50304, "Embedding rows.")
_LAYOUTS = flags.DEFINE_list("layouts", ["megatron", "hf"], "megatron and/or hf.")
_VOCABULARY = flags.DEFINE_string(
    "vocabulary", os.path.abspath(os.path.join(ROOT, "..", "shared", "data", "vocab", "gpt2")),
    "GPT-2 vocabulary folder for the spec (--nocheck_vocab_size with 'builtin' if missing).")
_WORKDIR = flags.DEFINE_string("workdir", tempfile.gettempdir(), "Where the checkpoint goes.")


def _state(layers: int, hidden: int, vocab_rows: int):
  """Random fp16 tensors with the reference's names (one at a time: the writer's memory)."""
  import torch  # pylint: disable=g-import-not-at-top
  g = torch.Generator().manual_seed(0)
  rand = lambda *shape: (torch.randn(*shape, generator=g) * 0.02).half()
  yield "word_embeddings.weight", rand(vocab_rows, hidden)
  yield "transformer.position_embeddings.weight", rand(1025, hidden)
  yield "transformer.block_position_embeddings.weight", rand(1025, hidden)
  for i in range(layers):
    p = f"transformer.layers.{i}."
    for name, shape in (("input_layernorm.weight", (hidden,)), ("input_layernorm.bias", (hidden,)),
                        ("attention.query_key_value.weight", (3 * hidden, hidden)),
                        ("attention.query_key_value.bias", (3 * hidden,)),
                        ("attention.dense.weight", (hidden, hidden)),
                        ("attention.dense.bias", (hidden,)),
                        ("post_attention_layernorm.weight", (hidden,)),
                        ("post_attention_layernorm.bias", (hidden,)),
                        ("mlp.dense_h_to_4h.weight", (4 * hidden, hidden)),
                        ("mlp.dense_h_to_4h.bias", (4 * hidden,)),
                        ("mlp.dense_4h_to_h.weight", (hidden, 4 * hidden)),
                        ("mlp.dense_4h_to_h.bias", (hidden,))):
      yield p + name, rand(*shape)
  yield "transformer.final_layernorm.weight", rand(hidden)
  yield "transformer.final_layernorm.bias", rand(hidden)


def _write(layout: str, root: str) -> int:
  """Writes the checkpoint in a child process (so this one stays small); returns its bytes."""
  code = f"""
import json, os, sys, torch
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
from convert_memory import _state
state = dict(_state({_LAYERS.value}, {_HIDDEN.value}, {_VOCAB.value}))
root = {root!r}
if {layout!r} == "megatron":
  os.makedirs(os.path.join(root, "1"))
  torch.save({{"iteration": 1, "module": state}}, os.path.join(root, "1", "mp_rank_00_model_states.pt"))
  open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w").write("1")
else:
  from safetensors.torch import save_file
  os.makedirs(root)
  save_file(state, os.path.join(root, "model.safetensors"), metadata={{"format": "pt"}})
  json.dump({{"num_layers": {_LAYERS.value}, "hidden_size": {_HIDDEN.value},
             "num_attention_heads": {_HIDDEN.value // 128}, "vocab_size": {_VOCAB.value},
             "max_sequence_length": 1024, "model_type": "glm"}},
            open(os.path.join(root, "config.json"), "w"))
"""
  subprocess.run([sys.executable, "-c", code], check=True)
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


def _convert(path: str, out: str):
  """(peak RSS bytes, seconds) of one `python -m glm_jax.convert` process."""
  vocabulary = _VOCABULARY.value
  args = [f"--official={path}", f"--output_dir={out}", f"--num_heads={_HIDDEN.value // 128}"]
  if os.path.isdir(vocabulary):
    args.append(f"--vocabulary=gpt2:{vocabulary}")
  else:
    args += ["--vocabulary=builtin", "--nocheck_vocab_size"]
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  # A wrapper process whose only child is the converter: its RUSAGE_CHILDREN peak is the
  # converter's own (this process's children include the checkpoint writer).
  wrapper = ("import resource, subprocess, sys\n"
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
             "sys.stdout.write(r.stdout); sys.stderr.write(r.stderr)\n"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
             "sys.exit(r.returncode)\n")
  start = time.time()
  result = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "glm_jax.convert",
                           *args], env=env, capture_output=True, text=True)
  seconds = time.time() - start
  if result.returncode:
    raise RuntimeError(result.stderr[-2000:])
  lines = result.stdout.strip().splitlines()
  return int(lines[-1]) * 1024, seconds, lines[-2]


def main(argv):
  del argv
  for layout in _LAYOUTS.value:
    work = tempfile.mkdtemp(prefix="glm_convert_bench_", dir=_WORKDIR.value)
    try:
      size = _write(layout, os.path.join(work, "checkpoint"))
      peak, seconds, line = _convert(os.path.join(work, "checkpoint"), os.path.join(work, "out"))
      params = (_VOCAB.value + 2 * 1025 + 2) * _HIDDEN.value + _LAYERS.value * (
          12 * _HIDDEN.value ** 2 + 13 * _HIDDEN.value)
      print(json.dumps({"layout": layout, "parameters": params, "checkpoint_bytes": size,
                        "peak_rss_bytes": peak, "peak_over_checkpoint": round(peak / size, 3),
                        "seconds": round(seconds, 1), "converter": line}), flush=True)
    finally:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  from glm_jax import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.run(main)
