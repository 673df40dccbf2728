r"""Our trainer on a reference training trajectory (glm_trajectory fixtures): same numbers?

  python -m glm_jax.parity trajectory --fixture_dir=../shared/fixtures/glm_trajectory \
      --name=tiny_a --init=../shared/fixtures/glm_reference/model_glm_tiny_a.npz \
      --output=/tmp/tiny_a.npz

Reads `trajectory_NAME.json` (the reference's arguments) and `trajectory_NAME.npz` (its
batches and numbers), turns the arguments into gin bindings on top of configs/runs/pretrain.gin
and configs/runs/reference_training.gin (then --gin_file / --gin.NAME=VALUE, e.g.
--gin.SCHEDULE_CONVENTION="'glm_jax'" to see our own default diverge), and runs
glm_jax.train.train from the reference-named weights `--init` on the fixture's batches in
order. Writes `step<k>/loss`, `step<k>/lr`, `step<k>/grad_norm` (as metrics.jsonl logged them)
and `final/<reference key>` (convert.to_official_state_dict) to `--output`, prints the largest
differences from the fixture and exits 1 when one is outside TOLERANCES.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from absl import flags
import numpy as np

from glm_jax import gin_utils

FLAGS = flags.FLAGS

# The acceptance tolerances: relative for the per-step scalars, absolute for weights.
TOLERANCES = {"loss": 1e-5, "lr": 1e-9, "grad_norm": 1e-4, "final": 1e-5}
BASE_GIN_FILES = ("configs/runs/pretrain.gin", "configs/runs/reference_training.gin")
# AnnealingLR's decay styles -> ours ('exponential' is a TODO there: a constant rate).
DECAY_STYLES = {"cosine": "cosine", "linear": "linear", "constant": "constant",
                "exponential": "constant", "none": "constant"}


def define_flags() -> None:
  gin_utils.define_flags()
  flags.DEFINE_string("fixture_dir", None, "Folder with trajectory_NAME.json and .npz.")
  flags.DEFINE_string("name", None, "Trajectory name, e.g. tiny_a or tiny_a_accum2_deepspeed.")
  flags.DEFINE_string("init", None, "Initial weights in the reference's naming (.npz, .pt or "
                      "a reference checkpoint directory; glm_jax.convert.load_official).")
  flags.DEFINE_string("output", None, "Where to write our trajectory (.npz).")
  flags.DEFINE_string("model_dir", None, "Keep the run (metrics.jsonl, checkpoint) in this new "
                      "or empty folder; default: a temporary folder, removed afterwards.")
  flags.DEFINE_bool("check", True, "Exit 1 when a difference is outside the tolerances.")


def load_fixture(fixture_dir: str, name: str) -> Tuple[dict, Dict[str, np.ndarray]]:
  """(the JSON description, the npz arrays) of trajectory NAME in `fixture_dir`."""
  stem = os.path.join(fixture_dir, f"trajectory_{name}")
  for suffix in (".json", ".npz"):
    if not os.path.exists(stem + suffix):
      found = sorted(f[len("trajectory_"):-len(".json")] for f in os.listdir(fixture_dir)
                     if f.startswith("trajectory_") and f.endswith(".json")
                     ) if os.path.isdir(fixture_dir) else []
      raise FileNotFoundError(f"No trajectory_{name}{suffix} in {fixture_dir}; names there: "
                              f"{', '.join(found) or 'none'}.")
  with open(stem + ".json") as f:
    spec = json.load(f)
  with np.load(stem + ".npz") as data:
    arrays = {k: data[k] for k in data.files}
  return spec, arrays


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The reference run's settings, in our terms (from the fixture's reference_arguments)."""

  bindings: Tuple[str, ...]  # gin bindings of configs/runs/pretrain.gin macros
  num_steps: int
  batch_size: int  # global rows per optimizer step
  num_microbatches: int
  warmup: float  # AnnealingLR's warmup_iter
  decay_span: float  # its end_iter (updates of decay after the warmup)


def recipe_from_spec(spec: dict, arrays: Dict[str, np.ndarray]) -> Recipe:
  """Maps the reference's command-line arguments to our gin macros; refuses what can't match."""
  args = spec.get("reference_arguments")
  if not isinstance(args, dict):
    raise ValueError("The fixture JSON has no 'reference_arguments' object.")

  def arg(name, default=KeyError):
    if name in args:
      return args[name]
    if default is KeyError:
      raise ValueError(f"The fixture JSON's reference_arguments lack {name}.")
    return default

  if arg("--fp16", False):
    raise ValueError("The trajectory was run with --fp16; only float32 runs can be compared.")
  dropout = (float(arg("--hidden-dropout", 0.0)), float(arg("--attention-dropout", 0.0)))
  if any(dropout):
    raise ValueError(f"The trajectory was run with dropout {dropout}; its random masks cannot "
                     "be reproduced, so only dropout-free runs are compared.")
  if spec.get("optimizer", {}).get("amsgrad"):
    raise ValueError("The trajectory used AMSGrad; our AdamW (optax.adamw) has none.")
  style = str(arg("--lr-decay-style")).lower()
  if style not in DECAY_STYLES:
    raise ValueError(f"Unknown --lr-decay-style {style!r}; known: {sorted(DECAY_STYLES)}.")
  accumulation = int(arg("--gradient-accumulation-steps", 1))
  decay_iters = arg("--lr-decay-iters", None)
  decay_iters = int(decay_iters if decay_iters is not None else arg("--train-iters"))
  if arg("--finetune", False):  # the reference's finetuning counts decay in optimizer steps
    decay_iters //= accumulation
  decay_iters = max(1, decay_iters)
  warmup_fraction = float(arg("--warmup"))
  clip = float(arg("--clip-grad"))
  num_steps = int(arrays["meta/num_steps"]) if "meta/num_steps" in arrays else len(
      [k for k in arrays if k.startswith("step") and k.endswith("/loss")])
  batch_size = int(arg("--batch-size")) * accumulation
  bindings = (
      f"TRAIN_STEPS = {num_steps}",
      f"BATCH_SIZE = {batch_size}",
      f"NUM_MICROBATCHES = {accumulation}",
      f"LEARNING_RATE = {float(arg('--lr'))!r}",
      f"WARMUP_FRACTION = {warmup_fraction!r}",
      f"DECAY_STEPS = {decay_iters}",
      f"SCHEDULE = '{DECAY_STYLES[style]}'",
      f"FINAL_LR_FRACTION = {float(arg('--lr-decay-ratio'))!r}",
      f"WEIGHT_DECAY = {float(arg('--weight-decay'))!r}",
      f"ADAM_B1 = {float(arg('--adam-beta1'))!r}",
      f"ADAM_B2 = {float(arg('--adam-beta2'))!r}",
      f"ADAM_EPS = {float(arg('--adam-eps'))!r}",
      f"CLIP_NORM = {clip!r}" if clip > 0 else "CLIP_NORM = None",
      # DeepSpeed clips the accumulated gradient once; the plain path after every microbatch.
      "MICROBATCH_CLIP = '{}'".format("accumulated" if arg("--deepspeed", False) else "each"),
  )
  warmup = warmup_fraction * decay_iters
  recipe = Recipe(bindings=bindings, num_steps=num_steps, batch_size=batch_size,
                  num_microbatches=accumulation, warmup=warmup, decay_span=decay_iters - warmup)
  scheduler = spec.get("scheduler", {})
  for ours, theirs in ((recipe.warmup, "warmup_iter"), (recipe.decay_span, "end_iter")):
    if theirs in scheduler and abs(float(scheduler[theirs]) - ours) > 1e-9 * max(1.0, ours):
      raise ValueError(f"The fixture's scheduler has {theirs} {scheduler[theirs]}, but its "
                       f"arguments give {ours}; the JSON is inconsistent.")
  return recipe


def model_bindings(config) -> List[str]:
  """model.GLMConfig bindings for every field of `config` that differs from the default."""
  from glm_jax.model import GLMConfig  # pylint: disable=g-import-not-at-top
  default = GLMConfig()
  return [f"model.GLMConfig.{field.name} = {getattr(config, field.name)!r}"
          for field in dataclasses.fields(GLMConfig)
          if getattr(config, field.name) != getattr(default, field.name)]


def check_decay_groups(spec: dict, config, params) -> None:
  """The fixture's weight-decay groups must be optim.decay_mask's, in reference names."""
  import jax  # pylint: disable=g-import-not-at-top
  from glm_jax import convert, optim  # pylint: disable=g-import-not-at-top
  groups = spec.get("param_groups")
  if not groups:
    return
  mask = jax.tree_util.tree_map(lambda p, m: np.full(np.shape(p), m), params,
                                optim.decay_mask(params))
  ours = {k for k, v in convert.to_official_state_dict(config, mask).items() if np.all(v)}
  theirs = {name for group in groups if float(group["weight_decay"]) > 0
            for name in group["params"]}
  if ours != theirs:
    diff = sorted(ours ^ theirs)
    raise ValueError(f"The fixture's weight-decay groups differ from optim.decay_mask on "
                     f"{len(diff)} tensor(s), e.g. {diff[0]}.")
  rates = {float(group["weight_decay"]) for group in groups if float(group["weight_decay"]) > 0}
  if len(rates) > 1:
    raise ValueError(f"The fixture decays with several rates {sorted(rates)}; ours has one.")


def fixture_batches(arrays: Dict[str, np.ndarray], num_steps: int,
                    num_microbatches: int) -> List[Dict[str, np.ndarray]]:
  """Step k's model batch, rows ordered so that our microbatch m is the reference's m.

  The reference's microbatch m is a contiguous block of rows (meta/micro_rows); ours takes
  rows m, m + M, m + 2M, ... (glm_jax.trainer: each device keeps its rows).
  """
  rows = arrays.get("meta/micro_rows")
  batches = []
  for k in range(1, num_steps + 1):
    get = lambda key, k=k: arrays[f"step{k}/{key}"]
    batch = {"tokens": get("tokens").astype(np.int32),
             "positions": get("position_ids").astype(np.int32),
             "sep": get("sep").astype(np.int32),
             "targets": get("targets").astype(np.int32),
             "loss_weights": get("loss_mask").astype(np.float32)}
    size = batch["tokens"].shape[0]
    blocks = (np.asarray(rows).reshape(-1, 2) if rows is not None else
              np.stack([np.arange(num_microbatches), np.arange(1, num_microbatches + 1)], 1)
              * (size // num_microbatches))
    if len(blocks) != num_microbatches or len({hi - lo for lo, hi in blocks}) != 1:
      raise ValueError(f"meta/micro_rows {blocks.tolist()} are not {num_microbatches} equal "
                       "blocks of rows.")
    order = np.stack([np.arange(lo, hi) for lo, hi in blocks], 1).reshape(-1)
    batches.append({key: value[order] for key, value in batch.items()})
  return batches


def _input_fn(batches: Sequence[Dict[str, np.ndarray]]):
  """A train_input (pipeline.get_batches' signature) that yields the fixture's batches."""

  def train_input(mixture_or_task_name, split, *, sequence_length, batch_size, seed,
                  start_batch=0, shard_index=0, num_shards=1, pack=False,
                  num_batches=None, vocabulary=None) -> Iterator[Dict[str, np.ndarray]]:
    del mixture_or_task_name, split, sequence_length, seed, pack, num_batches, vocabulary
    rows = batch_size // num_shards
    for batch in batches[start_batch:]:
      yield {k: v[shard_index * rows:(shard_index + 1) * rows] for k, v in batch.items()}

  return train_input


def run(fixture_dir: str, name: str, init: str, model_dir: Optional[str] = None,
        gin_files: Sequence[str] = (), gin_bindings: Sequence[str] = ()) -> Dict[str, np.ndarray]:
  """Trains on trajectory NAME with glm_jax.train.train; returns our trajectory's arrays.

  Clears and re-parses the global gin config.
  """
  import gin  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from glm_jax import checkpoints, convert  # pylint: disable=g-import-not-at-top
  from glm_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  from glm_jax.data import synthetic  # pylint: disable=g-import-not-at-top

  spec, arrays = load_fixture(fixture_dir, name)
  recipe = recipe_from_spec(spec, arrays)
  heads = spec.get("model", {}).get("num_attention_heads") or spec.get(
      "reference_arguments", {}).get("--num-attention-heads")
  if not heads:
    raise ValueError("The fixture JSON gives no number of attention heads (model."
                     "num_attention_heads or --num-attention-heads).")
  heads = int(heads)
  config, params = convert.from_official_state_dict(
      convert.load_official(init), num_heads=heads, embedding_dropout=0.0,
      attention_dropout=0.0, hidden_dropout=0.0)
  check_decay_groups(spec, config, params)
  batches = fixture_batches(arrays, recipe.num_steps, recipe.num_microbatches)
  length = max(b["tokens"].shape[1] for b in batches)

  workdir = tempfile.mkdtemp(prefix=f"parity_{name}_")
  try:
    if model_dir and os.path.isdir(model_dir) and os.listdir(model_dir):
      raise ValueError(f"--model_dir {model_dir} is not empty; a trajectory starts from --init, "
                       "so give a new or empty folder.")
    run_dir = model_dir or os.path.join(workdir, "run")
    # The fixture's ids belong to no text vocabulary: the run's VOCABULARY (INIT_CHECKPOINT's)
    # is the trainer's marker for that, which skips the vocabulary checks.
    init_dir = checkpoints.save_params_checkpoint(os.path.join(workdir, "init"), params,
                                                  config, synthetic.SYNTHETIC_VOCABULARY)
    bindings = list(recipe.bindings) + model_bindings(config) + [
        f"MODEL_DIR = {run_dir!r}", f"INIT_CHECKPOINT = {init_dir!r}",
        f"MIXTURE_OR_TASK_NAME = 'trajectory_{name}'", f"SEQUENCE_LENGTH = {length}",
        "EVAL_PERIOD = 0", "LOG_PERIOD = 1", f"CHECKPOINT_PERIOD = {recipe.num_steps}",
        "KEEP_CHECKPOINTS = 1"]
    gin.clear_config()
    gin_utils.parse_gin(list(BASE_GIN_FILES) + list(gin_files), bindings + list(gin_bindings))
    state = train_lib.train(train_input=_input_fn(batches), progress_bar=False)  # pylint: disable=no-value-for-parameter
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
      logged = {int(r["step"]): r for r in map(json.loads, f) if "loss" in r}
    out = {"meta/name": np.asarray(name)}
    missing = [k for k in range(1, recipe.num_steps + 1) if k not in logged]
    if missing:
      raise ValueError(f"metrics.jsonl has no record of step {missing[0]}; keep LOG_PERIOD = 1.")
    for k in range(1, recipe.num_steps + 1):
      out[f"step{k}/loss"] = np.float64(logged[k]["loss"])
      out[f"step{k}/lr"] = np.float64(logged[k]["learning_rate"])
      out[f"step{k}/grad_norm"] = np.float64(logged[k]["grad_norm"])
    final = convert.to_official_state_dict(config, jax.device_get(state.params))
    out.update({f"final/{k}": np.asarray(v, np.float32) for k, v in final.items()})
    return out
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


def compare(ours: Dict[str, np.ndarray], reference: Dict[str, np.ndarray]) -> List[dict]:
  """Per quantity: the largest difference, where, its tolerance and whether it is within."""
  steps = sorted(int(k[4:].split("/")[0]) for k in reference if k.startswith("step")
                 and k.endswith("/loss"))
  rows = []
  for quantity in ("loss", "lr", "grad_norm"):
    worst, where = 0.0, None
    for k in steps:
      theirs = float(reference[f"step{k}/{quantity}"])
      mine = float(ours[f"step{k}/{quantity}"])
      # Relative; a reference value of exactly 0 (the lr of step 1) must come out exactly 0.
      diff = abs(mine - theirs) / abs(theirs) if theirs else (0.0 if mine == 0 else np.inf)
      if where is None or diff > worst:
        worst, where = diff, f"step {k}"
    rows.append(dict(quantity=quantity, kind="rel", worst=worst, where=where,
                     tolerance=TOLERANCES[quantity]))
  keys = [k for k in reference if k.startswith("final/")]
  if keys:
    diffs = {k: float(np.max(np.abs(np.asarray(ours[k], np.float64) - reference[k])))
             if k in ours else np.inf for k in keys}
    key = max(diffs, key=diffs.get)
    rows.append(dict(quantity="final", kind="abs", worst=diffs[key], where=key[len("final/"):],
                     tolerance=TOLERANCES["final"]))
  for row in rows:
    row["ok"] = bool(row["worst"] <= row["tolerance"])
  return rows


def format_rows(name: str, rows: List[dict], num_steps: int) -> str:
  lines = [f"trajectory {name}: {num_steps} steps"]
  for r in rows:
    lines.append(f"  {r['quantity']:<9} max {r['kind']} diff {r['worst']:.2e} at {r['where']}"
                 f"  (tolerance {r['tolerance']:.0e})  {'ok' if r['ok'] else 'FAILED'}")
  if not any(r["quantity"] == "final" for r in rows):
    lines.append("  final     not compared: the fixture has no final/ weights (a subset)")
  return "\n".join(lines)


def main(argv):
  gin_utils.begin_cli(argv, "--fixture_dir, --name, --init, --output")
  try:
    missing = [f"--{n}" for n in ("fixture_dir", "name", "init", "output")
               if not getattr(FLAGS, n)]
    if missing:
      raise ValueError(f"Missing {', '.join(missing)}; e.g. --fixture_dir=DIR --name=tiny_a "
                       "--init=model_glm_tiny_a.npz --output=ours.npz.")
    ours = run(FLAGS.fixture_dir, FLAGS.name, FLAGS.init, FLAGS.model_dir, FLAGS.gin_file,
               FLAGS.gin_bindings)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    np.savez(FLAGS.output, **ours)
    _, reference = load_fixture(FLAGS.fixture_dir, FLAGS.name)
    rows = compare(ours, reference)
    steps = sum(1 for k in ours if k.endswith("/loss"))
    print(format_rows(FLAGS.name, rows, steps) + f"\nWrote {FLAGS.output}.", flush=True)
    failed = [r["quantity"] for r in rows if not r["ok"]]
    if failed and FLAGS.check:
      raise gin_utils.RunFault(f"Trajectory {FLAGS.name} is outside the tolerances in "
                       f"{', '.join(failed)} (table above).")
  except (ValueError, FileNotFoundError, FloatingPointError, RuntimeError, TypeError,
          ImportError, KeyError) as e:
    gin_utils.exit_with_error(e)
