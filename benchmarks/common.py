"""What the JAX benchmarks share: the start before JAX, the model shapes, a batch, the timing.

Import it before anything else (`import common`: a benchmark runs as a script, so benchmarks/
is on sys.path): it puts the repository on sys.path and re-runs the process with the tuned host
allocator before JAX starts (glm_jax/kernels/cpu/host_memory.py), as `python -m glm_jax.train` does.
"""

import os
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
from glm_jax.kernels.cpu import host_memory  # pylint: disable=wrong-import-position

host_memory.reexec_with_tuned_malloc()

# pylint: disable=g-import-not-at-top,wrong-import-position
import gin
import jax
import numpy as np

from glm_jax import decoding, model_api, optim, trainer as trainer_lib
from glm_jax.data.special_tokens import SpecialTokens
from glm_jax.model import GLMConfig, init_params
# pylint: enable=g-import-not-at-top,wrong-import-position

CONFIGS = os.path.join(ROOT, "configs", "models")
# REFERENCE_PERF.md's small measured shape; not a preset.
SHAPES = {"4l_256": dict(vocab_size=16000, num_layers=4, hidden_size=256, num_heads=4,
                         max_sequence_length=512)}
# Dropout of the reference's measured training step (the glm_tiny preset has none).
REFERENCE_DROPOUT = dict(embedding_dropout=0.1, attention_dropout=0.1, hidden_dropout=0.1)
# Any ids work for speed; the roles sit at the end of the vocabulary, pad = eos = 0.
ROLES = ("cls", "unk", "mask", "smask", "gmask", "sop", "eop")


def load_config(name: str, **overrides) -> GLMConfig:
  """`configs/models/<name>.gin` (or a SHAPES entry) with `overrides` applied."""
  if name in SHAPES:
    cfg = GLMConfig(**SHAPES[name])
  else:
    gin.clear_config()
    gin.parse_config_file(os.path.join(CONFIGS, f"{name}.gin"))
    cfg = GLMConfig()
    gin.clear_config()
  return cfg.replace(**overrides)


def make_batch(cfg: GLMConfig, rows: int, seq: int, seed: int) -> dict:
  """Random ids in [0, vocab) in a blank-infilling layout with sep = 0.8 T (the reference
  collator's typical split); the loss is on Part B, each target the next token."""
  rng = np.random.RandomState(seed)
  sep = int(0.8 * seq)
  tokens = rng.randint(0, cfg.vocab_size, (rows, seq)).astype(np.int32)  # [rows, T]
  index = np.arange(seq)
  block = np.where(index < sep, 0, index - sep + 1)
  positions = np.stack([np.tile(np.minimum(index, sep - 1), (rows, 1)),
                        np.tile(block, (rows, 1))], 1).astype(np.int32)  # [rows, 2, T]
  return dict(tokens=tokens, positions=positions, sep=np.full((rows,), sep, np.int32),
              targets=np.roll(tokens, -1, axis=1),  # [rows, T]; the last one wraps
              loss_weights=np.tile((index >= sep).astype(np.float32), (rows, 1)))


def timed(fn) -> float:
  """Seconds of `fn()` until its result is ready."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def create_trainer(cfg: GLMConfig, partitioner, num_microbatches: int = 1):
  """(Trainer of BlankInfillingModel with AdamW at 1e-4, its initial state)."""
  tx, lr = optim.create_optimizer(learning_rate=1e-4, warmup_steps=10, total_steps=1000)
  trainer = trainer_lib.Trainer(model_api.BlankInfillingModel(cfg), partitioner, tx, lr,
                                num_microbatches=num_microbatches)
  return trainer, trainer.init_state(jax.random.PRNGKey(0))


def time_train_steps(trainer, state, batches, warmup_steps: int, steps: int, probe=None) -> dict:
  """Compiles on batches[0], runs `warmup_steps` untimed and `steps` timed train steps
  (cycling through `batches`); `probe()` (e.g. a matmul's FLOP/s) is taken before each timed one."""
  metrics = None

  def run(i):
    nonlocal state, metrics
    state, metrics = trainer.train_step(state, batches[i % len(batches)])
    return metrics

  compile_seconds = timed(lambda: run(0))
  for i in range(warmup_steps):
    timed(lambda i=i: run(i + 1))
  seconds, probes = [], []
  for i in range(steps):
    if probe is not None:
      probes.append(probe())
    seconds.append(timed(lambda i=i: run(i)))
  return dict(compile_seconds=compile_seconds, seconds=seconds, probes=probes,
              metrics=metrics)


def greedy_filler(cfg: GLMConfig, rows: int, context: int, new_tokens: int):
  """(layer-unstacked cfg, run(use_cache=True, steps=new_tokens) -> generated lengths [rows]):
  greedy filling of `rows` random contexts ([CLS] first, [gMASK] last), eop suppressed."""
  params, cfg = decoding.unstack_layers(init_params(cfg, jax.random.PRNGKey(0)), cfg)
  v = cfg.vocab_size
  special = SpecialTokens(pad=0, eos=0, **{k: v - 1 - i for i, k in enumerate(ROLES)})
  # Ids clear of pad and of the roles: no other blank or end in the context.
  ids = np.random.RandomState(0).randint(10, v - 20, (rows, context)).astype(np.int32)
  ids[:, 0], ids[:, -1] = special.cls, special.gmask
  lengths = np.full((rows,), context, np.int32)
  masks = np.full((rows, 1), context - 1, np.int32)
  decode_config = decoding.DecodeConfig(max_new_tokens=new_tokens, min_length=new_tokens,
                                        max_steps=new_tokens)

  def run(use_cache: bool = True, steps: int = new_tokens):
    return decoding.fill_blanks(params, cfg, special, ids, lengths, masks,
                                decode_config=decode_config.replace(max_steps=steps),
                                use_cache=use_cache).lengths

  return cfg, run
