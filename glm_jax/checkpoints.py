"""Orbax checkpoints: the train state with its data position, GLMConfig and vocabulary spec.

Layout of MODEL_DIR/<step>/: `state/` (TrainState: step, params, opt_state) and `meta/` (JSON:
next_batch, glm_config, vocab_spec, step). A params-only checkpoint (converted weights, the
input of fine-tuning) is a directory with `params/` and `glm_checkpoint.json`. Every path
may be local or gs:// (glm_jax.paths); a step is complete when orbax has finalized it (its
atomic rename locally, `commit_success.txt` on GCS).

  python -m glm_jax.checkpoints --model_dir=DIR   # step, parameter count, SHA-256 of params
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from typing import Any, Optional, Tuple

from absl import app, flags, logging  # pylint: disable=g-multiple-import
import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from glm_jax import paths
from glm_jax.model import GLMConfig

STATE_ITEM = "state"
META_ITEM = "meta"
PARAMS_ITEM = "params"
PARAMS_META_FILE = "glm_checkpoint.json"
TMP_MARKER = ".orbax-checkpoint-tmp"
# tensorstore's status codes for bytes that are gone or cannot be decoded.
_LOST_DATA_CODES = ("DATA_LOSS", "NOT_FOUND")


def _make_meta(step: int, next_batch: int, config: GLMConfig, vocab_spec: str) -> dict:
  return {"step": int(step), "next_batch": int(next_batch), "glm_config": config.to_dict(),
          "vocab_spec": vocab_spec}


def _any_process(flag: bool) -> bool:
  """True when `flag` holds on any process (every process gets the same answer)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    ocp.multihost.sync_global_processes(name)


def unreadable_reason(error: BaseException) -> Optional[str]:
  """Why `error`, raised reading a checkpoint, shows its bytes lost or undecodable; else None.

  tensorstore reports missing and undecodable files as NOT_FOUND / DATA_LOSS, and a cut
  JSON metadata file fails to decode. Anything else (a shape that does not match this run's
  model, memory, the network) says nothing against the checkpoint.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, (json.JSONDecodeError, UnicodeDecodeError)):
      return f"undecodable metadata ({error})"
    if isinstance(error, FileNotFoundError):
      return f"missing file ({error})"
    code = str(error).split(":", 1)[0].strip()
    if code in _LOST_DATA_CODES:
      return str(error).splitlines()[0][:300]
    error = error.__cause__ or error.__context__
  return None


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return f"{type(error).__name__}: {text.splitlines()[0][:300]}" if text else type(error).__name__


def is_step_dir(path) -> bool:
  """A step directory orbax has finalized (commit marker or atomic rename) with a state item."""
  return (path.name.isdigit() and ocp.path.step.is_path_finalized(path)
          and (path / STATE_ITEM).exists())


def _is_partial_step(path) -> bool:
  """A step directory a kill cut short: orbax's tmp directory, or (on GCS) no commit marker."""
  name = path.name
  step_like = name.isdigit() or (TMP_MARKER in name and name.split(".", 1)[0].isdigit())
  return step_like and path.is_dir() and not ocp.path.step.is_path_finalized(path)


class CheckpointManager:
  """Periodic async saves of the TrainState into MODEL_DIR, keep K, resume from the latest."""

  def __init__(self, model_dir: str, abstract_state, *, period: int, keep: Optional[int] = 3,
               async_save: bool = True):
    self.model_dir = paths.resolve(model_dir)
    self.abstract_state = abstract_state
    self.period = period
    _prepare_model_dir(self.model_dir, model_dir)
    self._manager = self._open(keep, async_save)

  def _open(self, keep, async_save):
    self._remove_partial_saves()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(self.model_dir, options=options,
                                 item_names=(STATE_ITEM, META_ITEM))

  def _remove_partial_saves(self):
    """Deletes step directories orbax never finalized (a save cut short by a kill).

    orbax's own cleanup would, on GCS, also take every other directory without a commit
    marker (tensorboard/, best/, eval/), so only step-named directories are considered.
    """
    if jax.process_index() == 0:
      for child in self.model_dir.iterdir():
        if _is_partial_step(child):
          child.rmtree()
          logging.warning("Removed the partial checkpoint %s.", child)
    _sync("glm_jax_remove_partial_saves")

  def all_steps(self):
    return sorted(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    return self.period > 0 and step % self.period == 0

  def reached_preemption(self, step: int) -> bool:
    """JAX's preemption sync point (multi-process runs): all processes agree on this step."""
    return self._manager.reached_preemption(step)

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
    """(state, meta) of the newest readable checkpoint, or None if there is none.

    A step whose bytes are lost or undecodable (unreadable_reason) is set aside and the one
    before it is tried; any other failure (e.g. a model that does not match the saved one)
    is raised and nothing is renamed. All processes take the same decision.
    """
    for step in reversed(self.all_steps()):
      error = None
      try:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(
                self.abstract_state), META_ITEM: ocp.args.JsonRestore()}))
      except Exception as e:  # pylint: disable=broad-except
        error = e
      if not _any_process(error is not None):
        return restored[STATE_ITEM], dict(restored[META_ITEM])
      reason = unreadable_reason(error) if error is not None else None
      if not _any_process(reason is not None):
        if error is None:
          raise RuntimeError(f"Another process could not restore step {step} from "
                             f"{self.model_dir}; see its log.")
        raise ValueError(
            f"Checkpoint step {step} in {self.model_dir} cannot be restored into this run's "
            f"train state ({_first_line(error)}); train with the gin config it was saved "
            "with, or use a new MODEL_DIR.") from error
      logging.warning("Checkpoint at step %d in %s is unreadable (%s); falling back to the "
                      "previous one.", step, self.model_dir, reason or "on another process")
      self._set_aside(step)
    return None

  def _set_aside(self, step: int):
    """Renames an unreadable step directory so a new save of that step can succeed."""
    if jax.process_index() == 0:
      src = self.model_dir / str(step)
      dst = self.model_dir / f"corrupt_{step}_{int(time.time())}"
      if src.is_dir():
        src.rename(dst)
        logging.warning("Moved unreadable checkpoint %s to %s.", src, dst)
    _sync(f"glm_jax_set_aside_{step}")
    self._manager.reload()

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    if self._manager is not None:
      self._manager.wait_until_finished()
      self._manager.close()
      self._manager = None


def _prepare_model_dir(path, given: str) -> None:
  """Creates MODEL_DIR; a local one must be readable and writable."""
  try:
    path.mkdir(parents=True, exist_ok=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"Cannot create MODEL_DIR {given!r} ({_first_line(e)}); choose a "
                     "writable directory (for gs:// an existing bucket).") from None
  if not paths.is_url(path):
    if not os.access(path, os.W_OK | os.R_OK):
      raise ValueError(f"MODEL_DIR {given!r} is not readable and writable; "
                       "fix its permissions or choose another directory.")


# Host arrays written in chunks of this size by save_params_checkpoint(stream=True).
STREAM_CHUNK_BYTES = 64 << 20


def save_params_checkpoint(directory: str, params, config: GLMConfig, vocab_spec: str,
                           step: int = 0, stream: bool = False) -> str:
  """Writes a params-only checkpoint (e.g. converted reference weights); returns its path.

  `stream=True` (numpy params, one host): each array is written in 64 MiB chunks without the
  copies orbax makes by default (a deep copy of host arrays, and OCDBT's buffered writes), so
  saving needs little memory beyond the params themselves. Restoring reads either form.
  """
  directory = paths.makedirs(directory)
  if stream:
    registry = ocp.type_handlers.create_type_handler_registry(
        (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)))
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(
        use_ocdbt=False, save_concurrent_gb=1, type_handler_registry=registry))
    save_args = jax.tree_util.tree_map(
        lambda _: ocp.SaveArgs(chunk_byte_size=STREAM_CHUNK_BYTES), params)
    checkpointer.save(directory / PARAMS_ITEM,
                      args=ocp.args.PyTreeSave(params, save_args=save_args), force=True)
  else:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / PARAMS_ITEM, params, force=True)
    checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    paths.write_json(directory / PARAMS_META_FILE, _make_meta(step, 0, config, vocab_spec))
  _sync("glm_jax_save_params_checkpoint")
  return str(directory)


def _read_step_meta(step_dir) -> dict:
  return paths.read_json(paths.resolve(step_dir) / META_ITEM / "metadata")


def _restore_tree(path, abstract=None):
  checkpointer = ocp.StandardCheckpointer()
  if abstract is None:
    return checkpointer.restore(path)
  return checkpointer.restore(path, abstract)


def _step_dirs(model_dir):
  """[(step, path)] of the finalized step directories of a MODEL_DIR, oldest first."""
  model_dir = paths.resolve(model_dir)
  return sorted((int(child.name), child) for child in model_dir.iterdir() if is_step_dir(child))


def _kind(path) -> str:
  """'params' (params-only), 'step' (one step directory) or 'run' (a MODEL_DIR)."""
  if (path / PARAMS_META_FILE).exists():
    return "params"
  if (path / STATE_ITEM).is_dir():
    return "step"
  return "run"


def load_params(path: str, abstract_params=None) -> Tuple[Any, GLMConfig, str, int]:
  """(params, config, vocab_spec, step) from a MODEL_DIR (latest), a step dir or params-only.

  `abstract_params` (ShapeDtypeStructs with shardings) restores directly into those
  shardings; without it arrays land on the default device.
  """
  given, path = path, paths.resolve(path)
  if not path.is_dir():
    raise FileNotFoundError(f"Checkpoint {given!r} does not exist; pass a MODEL_DIR, a step "
                            "directory or a params-only checkpoint directory.")
  kind = _kind(path)
  if kind == "params":
    meta = paths.read_json(path / PARAMS_META_FILE)
    params = _restore_tree(path / PARAMS_ITEM, abstract_params)
    return params, GLMConfig.from_dict(meta["glm_config"]), meta["vocab_spec"], meta["step"]
  if kind == "step":
    candidates = [path]
  else:
    candidates = [d for _, d in reversed(_step_dirs(path))]
    if not candidates:
      raise FileNotFoundError(f"No checkpoint found in {given!r}; pass a MODEL_DIR with saved "
                              "steps, a step directory or a params-only checkpoint.")
  for i, step_dir in enumerate(candidates):
    error = None
    try:
      meta = _read_step_meta(step_dir)
      params = _restore_params_from_state(step_dir / STATE_ITEM, abstract_params)
    except Exception as e:  # pylint: disable=broad-except
      error = e
    if not _any_process(error is not None):
      return params, GLMConfig.from_dict(meta["glm_config"]), meta["vocab_spec"], meta["step"]
    reason = unreadable_reason(error) if error is not None else None
    if i + 1 == len(candidates) or not _any_process(reason is not None):
      detail = _first_line(error) if error is not None else "failed on another process"
      raise ValueError(f"Checkpoint {str(step_dir)!r} cannot be read ({detail}); pass an "
                       "intact checkpoint made for this model.") from error
    logging.warning("Checkpoint %s is unreadable (%s); trying the previous one.", step_dir,
                    reason or "on another process")
  raise AssertionError("unreachable")


def read_config(path: str) -> Tuple[GLMConfig, str, int]:
  """(config, vocab_spec, step) of the checkpoint load_params(path) would read, without params."""
  given, path = path, paths.resolve(path)
  if not path.is_dir():
    raise FileNotFoundError(f"Checkpoint {given!r} does not exist; pass a MODEL_DIR, a step "
                            "directory or a params-only checkpoint directory.")
  kind = _kind(path)
  if kind == "params":
    meta = paths.read_json(path / PARAMS_META_FILE)
  elif kind == "step":
    meta = _read_step_meta(path)
  else:
    steps = _step_dirs(path)
    if not steps:
      raise FileNotFoundError(f"No checkpoint found in {given!r}; pass a MODEL_DIR with saved "
                              "steps, a step directory or a params-only checkpoint.")
    meta = _read_step_meta(steps[-1][1])
  return GLMConfig.from_dict(meta["glm_config"]), meta["vocab_spec"], int(meta["step"])


def abstract_params(config: GLMConfig, partitioner):
  """ShapeDtypeStructs of the network's parameters in the partitioner's shardings."""
  from glm_jax.models import BlankInfillingModel  # pylint: disable=g-import-not-at-top
  boxed = BlankInfillingModel(config).abstract_params()
  shardings = partitioner.param_shardings(boxed)
  return jax.tree_util.tree_map(
      lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
      nn.meta.unbox(boxed), shardings)


def load_sharded_params(path: str, partitioner) -> Tuple[Any, GLMConfig, str, int]:
  """load_params restored straight into the partitioner's parameter shardings on its mesh."""
  config, _, _ = read_config(path)
  return load_params(path, abstract_params(config, partitioner))


def read_vocabulary(path: str):
  """The vocabulary of the checkpoint read_config(path) reads (its spec names the configuration,
  so `.special.task_mask` says whether the model was trained with task masks)."""
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  return vocab_lib.get_vocabulary(read_config(path)[1])


def _restore_params_from_state(state_path, abstract_params=None):
  """Only the params subtree of a saved TrainState (optimizer state is not read)."""
  checkpointer = ocp.PyTreeCheckpointer()
  # The state item sits inside a step directory, so orbax warns that it has no step metadata.
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    return _restore_params_subtree(checkpointer, state_path, abstract_params)
  finally:
    logging.set_verbosity(verbosity)


def _restore_params_subtree(checkpointer, state_path, abstract_params):
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
  path = paths.resolve(model_dir)
  if not path.is_dir():
    raise FileNotFoundError(f"MODEL_DIR {model_dir!r} does not exist; pass the directory of a "
                            "training run.")
  targets = [path] if _kind(path) != "run" else [d for _, d in _step_dirs(path)]
  rows = []
  for target in targets:
    params, _, _, step = load_params(str(target))
    rows.append({"step": int(step), "num_params": int(sum(x.size for x in
                                                           jax.tree_util.tree_leaves(params))),
                 "sha256": params_digest(params), "path": str(target)})
  return rows


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every handler it creates at INFO
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
  app.run(main)
