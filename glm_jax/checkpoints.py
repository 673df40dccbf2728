"""Orbax checkpoints: the train state with its data position, GLMConfig and vocabulary spec.

Layout of MODEL_DIR/<step>/: `state/` (TrainState: step, params, opt_state) and `meta/` (JSON:
next_batch, glm_config, vocab_spec, step). A params-only checkpoint (converted weights, the
input of fine-tuning) is a directory with `params/` and `glm_checkpoint.json`.

  python -m glm_jax.checkpoints --model_dir=DIR   # step, parameter count, SHA-256 of params
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from typing import Any, Dict, Optional, Tuple

from absl import flags, logging  # pylint: disable=g-multiple-import
import jax
import numpy as np
import orbax.checkpoint as ocp

from glm_jax.model import GLMConfig

STATE_ITEM = "state"
META_ITEM = "meta"
PARAMS_ITEM = "params"
PARAMS_META_FILE = "glm_checkpoint.json"


def _make_meta(step: int, next_batch: int, config: GLMConfig, vocab_spec: str) -> dict:
  return {"step": int(step), "next_batch": int(next_batch), "glm_config": config.to_dict(),
          "vocab_spec": vocab_spec}


class CheckpointManager:
  """Periodic async saves of the TrainState into MODEL_DIR, keep K, resume from the latest."""

  def __init__(self, model_dir: str, abstract_state, *, period: int, keep: Optional[int] = 3,
               async_save: bool = True):
    self.model_dir = os.path.abspath(model_dir)
    self.abstract_state = abstract_state
    self.period = period
    try:
      os.makedirs(self.model_dir, exist_ok=True)
    except OSError as e:
      raise ValueError(f"Cannot create MODEL_DIR {model_dir!r} ({e.strerror}); "
                       "choose a writable directory.") from None
    if not os.access(self.model_dir, os.W_OK | os.R_OK):
      raise ValueError(f"MODEL_DIR {model_dir!r} is not readable and writable; "
                       "fix its permissions or choose another directory.")
    self._manager = self._open(keep, async_save)

  def _open(self, keep, async_save):
    self._remove_partial_saves()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(self.model_dir, options=options,
                                 item_names=(STATE_ITEM, META_ITEM))

  def _remove_partial_saves(self):
    """Deletes saves cut short by a kill (orbax's *.orbax-checkpoint-tmp* directories)."""
    if jax.process_index() != 0:
      return
    for name in os.listdir(self.model_dir):
      if ".orbax-checkpoint-tmp" in name:
        shutil.rmtree(os.path.join(self.model_dir, name), ignore_errors=True)
        logging.warning("Removed the partial checkpoint %s.", name)

  def all_steps(self):
    return sorted(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    return self.period > 0 and step % self.period == 0

  def save(self, state, *, next_batch: int, config: GLMConfig, vocab_spec: str,
           force: bool = False) -> bool:
    """Starts an asynchronous save of `state` at its step; returns whether it saved."""
    step = int(jax.device_get(state.step))
    if step in self._manager.all_steps():
      return False
    meta = _make_meta(step, next_batch, config, vocab_spec)
    return self._manager.save(
        step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state),
                                         META_ITEM: ocp.args.JsonSave(meta)}),
        force=force)

  def restore_latest(self) -> Optional[Tuple[Any, dict]]:
    """(state, meta) of the newest readable checkpoint; unreadable newer ones are set aside."""
    steps = self.all_steps()
    for step in reversed(steps):
      try:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(
                self.abstract_state), META_ITEM: ocp.args.JsonRestore()}))
        return restored[STATE_ITEM], dict(restored[META_ITEM])
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Checkpoint at step %d in %s is unreadable (%s: %s); falling back to "
                        "the previous one.", step, self.model_dir, type(e).__name__,
                        str(e).splitlines()[0] if str(e) else "")
        self._set_aside(step)
    return None

  def _set_aside(self, step: int):
    """Renames an unreadable step directory so a new save of that step can succeed."""
    if jax.process_index() == 0:
      src = os.path.join(self.model_dir, str(step))
      dst = os.path.join(self.model_dir, f"corrupt_{step}_{int(time.time())}")
      if os.path.isdir(src):
        os.rename(src, dst)
        logging.warning("Moved unreadable checkpoint %s to %s.", src, dst)
    self._manager.reload()

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    if self._manager is not None:
      self._manager.wait_until_finished()
      self._manager.close()
      self._manager = None


def save_params_checkpoint(directory: str, params, config: GLMConfig, vocab_spec: str,
                           step: int = 0) -> str:
  """Writes a params-only checkpoint (e.g. converted reference weights); returns its path."""
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(directory, PARAMS_ITEM), params, force=True)
  checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    with open(os.path.join(directory, PARAMS_META_FILE), "w") as f:
      json.dump(_make_meta(step, 0, config, vocab_spec), f, indent=2)
  return directory


def _read_step_meta(step_dir: str) -> dict:
  with open(os.path.join(step_dir, META_ITEM, "metadata")) as f:
    return json.load(f)


def _restore_tree(path: str, abstract=None):
  checkpointer = ocp.StandardCheckpointer()
  if abstract is None:
    return checkpointer.restore(path)
  return checkpointer.restore(path, abstract)


def _step_dirs(model_dir: str):
  steps = []
  for name in os.listdir(model_dir):
    full = os.path.join(model_dir, name)
    if name.isdigit() and os.path.isdir(os.path.join(full, STATE_ITEM)):
      steps.append((int(name), full))
  return sorted(steps)


def load_params(path: str, abstract_params=None) -> Tuple[Any, GLMConfig, str, int]:
  """(params, config, vocab_spec, step) from a MODEL_DIR (latest), a step dir or params-only.

  `abstract_params` (ShapeDtypeStructs with shardings) restores directly into those
  shardings; without it arrays land on the default device.
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"Checkpoint {path!r} does not exist; pass a MODEL_DIR, a step "
                            "directory or a params-only checkpoint directory.")
  if os.path.exists(os.path.join(path, PARAMS_META_FILE)):
    with open(os.path.join(path, PARAMS_META_FILE)) as f:
      meta = json.load(f)
    params = _restore_tree(os.path.join(path, PARAMS_ITEM), abstract_params)
    return params, GLMConfig.from_dict(meta["glm_config"]), meta["vocab_spec"], meta["step"]
  if os.path.isdir(os.path.join(path, STATE_ITEM)):
    candidates = [path]
  else:
    candidates = [d for _, d in reversed(_step_dirs(path))]
    if not candidates:
      raise FileNotFoundError(f"No checkpoint found in {path!r}; pass a MODEL_DIR with saved "
                              "steps, a step directory or a params-only checkpoint.")
  for i, step_dir in enumerate(candidates):
    try:
      meta = _read_step_meta(step_dir)
      params = _restore_params_from_state(os.path.join(step_dir, STATE_ITEM), abstract_params)
      return params, GLMConfig.from_dict(meta["glm_config"]), meta["vocab_spec"], meta["step"]
    except Exception as e:  # pylint: disable=broad-except
      if i + 1 == len(candidates):
        raise ValueError(f"Checkpoint {step_dir!r} is unreadable ({type(e).__name__}); "
                         "pass an intact checkpoint.") from e
      logging.warning("Checkpoint %s is unreadable (%s); trying the previous one.", step_dir,
                      type(e).__name__)
  raise AssertionError("unreachable")


def read_config(path: str) -> Tuple[GLMConfig, str, int]:
  """(config, vocab_spec, step) of the checkpoint load_params(path) would read, without params."""
  path = os.path.abspath(path)
  if os.path.exists(os.path.join(path, PARAMS_META_FILE)):
    with open(os.path.join(path, PARAMS_META_FILE)) as f:
      meta = json.load(f)
  elif os.path.isdir(os.path.join(path, STATE_ITEM)):
    meta = _read_step_meta(path)
  else:
    steps = _step_dirs(path) if os.path.isdir(path) else []
    if not steps:
      raise FileNotFoundError(f"No checkpoint found in {path!r}; pass a MODEL_DIR with saved "
                              "steps, a step directory or a params-only checkpoint.")
    meta = _read_step_meta(steps[-1][1])
  return GLMConfig.from_dict(meta["glm_config"]), meta["vocab_spec"], int(meta["step"])


def _restore_params_from_state(state_path: str, abstract_params=None):
  """Only the params subtree of a saved TrainState (optimizer state is not read)."""
  checkpointer = ocp.PyTreeCheckpointer()
  # The state item sits inside a step directory, so orbax warns that it has no step metadata.
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    return _restore_params_subtree(checkpointer, state_path, abstract_params)
  finally:
    logging.set_verbosity(verbosity)


def _restore_params_subtree(checkpointer, state_path: str, abstract_params):
  metadata = checkpointer.metadata(state_path)
  tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata.tree
  params_meta = tree[PARAMS_ITEM]
  if abstract_params is None:
    device = jax.devices()[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    abstract_params = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), params_meta)
  restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_params)
  restored = checkpointer.restore(
      state_path, args=ocp.args.PyTreeRestore(
          item={PARAMS_ITEM: abstract_params}, restore_args={PARAMS_ITEM: restore_args},
          partial_restore=True))
  return restored[PARAMS_ITEM]


def params_digest(params) -> str:
  """SHA-256 over every parameter's path, dtype, shape and bytes, in path order."""
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_leaves_with_path(params)
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    value = np.asarray(jax.device_get(leaf))
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(str(value.dtype).encode() + str(value.shape).encode())
    digest.update(np.ascontiguousarray(value).tobytes())
  return digest.hexdigest()


def describe(model_dir: str) -> list:
  """[{step, num_params, sha256, path}] of every checkpoint in a MODEL_DIR (or one checkpoint)."""
  model_dir = os.path.abspath(model_dir)
  if not os.path.isdir(model_dir):
    raise FileNotFoundError(f"MODEL_DIR {model_dir!r} does not exist; pass the directory of a "
                            "training run.")
  if (os.path.exists(os.path.join(model_dir, PARAMS_META_FILE))
      or os.path.isdir(os.path.join(model_dir, STATE_ITEM))):
    targets = [model_dir]
  else:
    targets = [d for _, d in _step_dirs(model_dir)]
  rows = []
  for target in targets:
    params, _, _, step = load_params(target)
    rows.append({"step": int(step), "num_params": int(sum(x.size for x in
                                                           jax.tree_util.tree_leaves(params))),
                 "sha256": params_digest(params), "path": target})
  return rows


def main(argv):
  del argv
  try:
    rows = describe(flags.FLAGS.model_dir)
  except (ValueError, FileNotFoundError) as e:
    print(f"Error: {e}", file=sys.stderr)
    sys.exit(1)
  if not rows:
    print(f"No checkpoints in {flags.FLAGS.model_dir}.")
    return
  print(f"{'step':>10}  {'params':>12}  sha256")
  for row in rows:
    print(f"{row['step']:>10}  {row['num_params']:>12,}  {row['sha256']}")


if __name__ == "__main__":
  flags.DEFINE_string("model_dir", None, "Training run directory (or one checkpoint).",
                      required=True)
  from glm_jax import console  # pylint: disable=g-import-not-at-top
  console.run(main)
