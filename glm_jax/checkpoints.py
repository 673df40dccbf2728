"""Orbax checkpoints: the train state with its data position, GLMConfig and vocabulary spec.

Layout of MODEL_DIR/<step>/: `state/` (TrainState: step, params, opt_state) and `meta/` (JSON:
next_batch, glm_config, vocab_spec, step and the digest of every saved array). A params-only
checkpoint (converted weights, the input of fine-tuning) is a directory with `params/` and
`glm_checkpoint.json` (with the params' digests). Every path may be local or gs://
(glm_jax.paths); a step is complete when orbax has finalized it (its atomic rename locally,
`commit_success.txt` on GCS).

Nothing bad is restored or saved: each restore recomputes the digests (glm_jax/digests.py) and
checks every value is finite; a step that fails is set aside (`corrupt_<step>_<time>`) and the
one before it is used. A state with a non-finite value is never saved. The manager keeps the
newest KEEP complete steps and deletes an old step only once a newer one is complete, so a
failed save (a full disk) leaves the last complete checkpoint in place.

  python -m glm_jax.checkpoints --model_dir=DIR   # step, parameters, SHA-256, verified or not
"""

from __future__ import annotations

import hashlib
import json
import logging as std_logging
import os
import re
import threading
import time
from typing import Any, Optional, Tuple

from absl import flags, logging  # pylint: disable=g-multiple-import
import flax.linen as nn
import gin
import jax
import numpy as np
import orbax.checkpoint as ocp

from glm_jax import digests as digests_lib
from glm_jax import gin_utils, paths
from glm_jax import model as model_lib
from glm_jax.model import GLMConfig

STATE_ITEM = "state"
META_ITEM = "meta"
PARAMS_ITEM = "params"
PARAMS_META_FILE = "glm_checkpoint.json"
TMP_MARKER = ".orbax-checkpoint-tmp"
# tensorstore's status codes for bytes that are gone, cut short or cannot be decoded.
_LOST_DATA_CODES = ("DATA_LOSS", "NOT_FOUND", "OUT_OF_RANGE")
# ... and what its decoders say of bytes that are cut or garbled under other codes.
_LOST_DATA_PHRASES = ("Truncated", "Error decoding", "checksum mismatch", "Corrupt")


DIGESTS_KEY = "digests"
# GLMConfig fields that decide the saved arrays' shapes and tree: a MODEL_DIR whose run differs
# in one of them belongs to another model.
ARCHITECTURE_FIELDS = ("vocab_size", "num_layers", "hidden_size", "num_heads", "ffn_size",
                       "max_sequence_length", "scan_layers")


class CorruptCheckpoint(ValueError):
  """Saved arrays that do not match their digests, or that hold NaN / Inf."""


class NonFiniteState(FloatingPointError):
  """A state about to be saved holds NaN / Inf (it is not saved)."""


def _make_meta(step: int, next_batch: int, config: GLMConfig, vocab_spec: str,
               digests: Optional[dict] = None) -> dict:
  meta = {"step": int(step), "next_batch": int(next_batch), "glm_config": config.to_dict(),
          "vocab_spec": vocab_spec}
  if digests is not None:
    meta[DIGESTS_KEY] = digests
  return meta


def _few(names, limit: int = 2) -> str:
  names = list(names)
  more = f" and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def verify(tree, saved_digests: Optional[dict], where: str, prefix: str = "") -> None:
  """Raises CorruptCheckpoint unless `tree`'s digests equal the saved ones and all is finite.

  `prefix` maps the tree's leaf paths onto the saved ones (".params" for the params of a
  saved TrainState). Checkpoints saved without digests are only checked for finiteness.
  """
  found, finite = digests_lib.tree_digests(tree)
  if saved_digests is not None:
    expected = {k[len(prefix):]: v for k, v in saved_digests.items() if k.startswith(prefix)}
    bad = digests_lib.mismatches(expected, found)
    if bad:
      raise CorruptCheckpoint(f"{where}: the digest of {_few(bad)} does not match what was "
                              "saved (its bytes changed)")
  nonfinite = [k for k, ok in finite.items() if not ok]
  if nonfinite:
    raise CorruptCheckpoint(f"{where}: {_few(nonfinite)} hold NaN or Inf")


def any_process(flag: bool) -> bool:
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

  tensorstore reports missing, cut and undecodable files as NOT_FOUND / OUT_OF_RANGE /
  DATA_LOSS, a cut JSON metadata file fails to decode, and arrays whose digests differ or
  that hold NaN / Inf are CorruptCheckpoint. Anything else (a shape that does not match this run's
  model, memory, the network) says nothing against the checkpoint.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, CorruptCheckpoint):
      return str(error)
    if isinstance(error, (json.JSONDecodeError, UnicodeDecodeError)):
      return f"undecodable metadata ({error})"
    if isinstance(error, FileNotFoundError):
      return f"missing file ({error})"
    code = str(error).split(":", 1)[0].strip()
    if code in _LOST_DATA_CODES or (code.isupper() and "_" in code and any(
        phrase in str(error) for phrase in _LOST_DATA_PHRASES)):
      return str(error).splitlines()[0][:300]
    error = error.__cause__ or error.__context__
  return None


# The OS's reason inside a tensorstore / orbax message, e.g. "No space left on device
# [os_error_code='28']".
_OS_REASON = re.compile(r"[A-Z][^:\"\[\]]*? \[os_error_code='?\d+'?\]")


def first_line(error: BaseException, limit: int = 300) -> str:
  """'Type: first line' of an error; a long line keeps its start and the OS reason, else its end."""
  text = str(error).strip()
  if not text:
    return type(error).__name__
  line = text.splitlines()[0]
  if len(line) > limit:
    reason = _OS_REASON.search(line)
    line = f"{line[:limit // 2]} ... {reason.group(0) if reason else line[-(limit // 2):]}"
  return f"{type(error).__name__}: {line}"



def is_step_dir(path) -> bool:
  """A step directory orbax has finalized (commit marker or atomic rename) with a state item."""
  return (path.name.isdigit() and ocp.path.step.is_path_finalized(path)
          and (path / STATE_ITEM).exists())


def _is_partial_step(path) -> bool:
  """A step directory a kill cut short: orbax's tmp directory, or (on GCS) no commit marker."""
  name = path.name
  step_like = name.isdigit() or (TMP_MARKER in name and name.split(".", 1)[0].isdigit())
  return step_like and path.is_dir() and not ocp.path.step.is_path_finalized(path)


class _SaveErrors(std_logging.Filter):
  """Keeps (and silences) the exception orbax logs when a background save fails.

  orbax's finalize thread logs such an error with its whole traceback and carries on; the
  manager reports it itself, in one line (CheckpointManager.poll).
  """

  def __init__(self):
    super().__init__()
    self.errors = []
    self._lock = threading.Lock()

  def filter(self, record):
    if record.exc_info and "orbax" in (record.pathname or ""):
      with self._lock:
        self.errors.append(record.exc_info[1])
      return False
    return True

  def pop(self) -> Optional[BaseException]:
    with self._lock:
      errors, self.errors = self.errors, []
    return errors[-1] if errors else None


class _OrphanedWrites(std_logging.Filter):
  """Drops asyncio's "<Task|Future|_GatheringFuture> exception was never retrieved" of the
  writes of a save that failed and was reported.

  A failed save's sibling writes are garbage-collected later, at exit too, each logging its own
  copy of the error (tensorstore's futures without a Python traceback); the failure itself is
  reported in one line (CheckpointManager._confirm), which sets `after_failed_save`.
  """

  def __init__(self):
    super().__init__()
    self.after_failed_save = False

  def filter(self, record):
    first = record.getMessage().split("\n", 1)[0]  # then "future: <...>" lines
    return not (self.after_failed_save and first.endswith(" exception was never retrieved"))


_ORPHANED_WRITES = _OrphanedWrites()


def keep_count(keep: Optional[int]) -> Optional[int]:
  """Steps KEEP_CHECKPOINTS keeps: None all, 0 only the latest (as 1), else that many."""
  if keep is None:
    return None
  if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
    raise ValueError(f"KEEP_CHECKPOINTS must be None (all), 0 (only the latest) or a positive "
                     f"integer, got {keep!r}.")
  return max(keep, 1)


class CheckpointManager:
  """Periodic async saves of the TrainState into MODEL_DIR, keep K, resume from the latest.

  Saves are verified as they finish: a save that fails (a full disk) is reported by the next
  `poll()` or `save()` as a RunFault naming the last complete step, which is kept.
  """

  def __init__(self, model_dir: str, abstract_state, *, period: int, keep: Optional[int] = 3,
               async_save: bool = True):
    self.model_dir = paths.resolve(model_dir)
    self.abstract_state = abstract_state
    self.period = period
    self.keep = keep_count(keep)
    self._pending = None  # the step of a save started and not yet seen complete
    self._failed = set()  # steps whose save failed: never counted as complete
    self._errors = _SaveErrors()
    std_logging.getLogger("absl").addFilter(self._errors)
    std_logging.getLogger("asyncio").addFilter(_ORPHANED_WRITES)  # once: a set of filters
    _prepare_model_dir(self.model_dir, model_dir)
    self._manager = self._open(async_save)

  def _open(self, async_save):
    self._remove_partial_saves()
    # Old steps are deleted here (_prune), only once a newer step is complete.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None, create=True, enable_async_checkpointing=async_save)
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

  def complete_steps(self):
    """Steps whose save is known to be complete (the one in flight and failed ones excluded)."""
    return [s for s in self.all_steps() if s != self._pending and s not in self._failed]

  def last_complete(self) -> str:
    """'step N (DIR/N)' of the newest complete checkpoint, for messages (waits for a save in
    flight, on this process)."""
    steps = [s for s in self.complete_steps() if is_step_dir(self.model_dir / str(s))]
    if self._pending is not None and self._manager is not None:
      self._wait_quietly()
      if is_step_dir(self.model_dir / str(self._pending)):
        steps = sorted(steps + [self._pending])
    return f"step {steps[-1]} ({self.model_dir / str(steps[-1])})" if steps else "none"

  def should_save(self, step: int) -> bool:
    return self.period > 0 and step % self.period == 0

  def reached_preemption(self, step: int) -> bool:
    """JAX's preemption sync point (multi-process runs): all processes agree on this step."""
    return self._manager.reached_preemption(step)

  def poll(self) -> None:
    """Raises RunFault at once when the save in flight has failed (one process: each step)."""
    if jax.process_count() == 1:
      self._confirm(wait=False)

  def _confirm(self, wait: bool) -> None:
    """Checks that the pending save finished complete; raises RunFault when it did not."""
    if self._pending is None:
      return
    if wait:
      self._wait_quietly()
    elif self._manager.is_saving_in_progress():
      return
    step, self._pending = self._pending, None
    error = self._errors.pop()
    complete = error is None and is_step_dir(self.model_dir / str(step))
    if not any_process(not complete):
      return
    self._failed.add(step)
    _ORPHANED_WRITES.after_failed_save = True
    reason = first_line(error) if error is not None else "it was not finalized"
    raise gin_utils.RunFault(
        f"Saving checkpoint step {step} to {self.model_dir} failed ({reason}); the last "
        f"complete checkpoint is {self.last_complete()}, kept. Fix the cause (free space?), "
        "then run again to resume from it.")

  def _wait_quietly(self):
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._errors.errors.append(e)

  def _prune(self) -> None:
    """Deletes the oldest complete steps beyond `keep` (every process calls it together)."""
    if self.keep is None:
      return
    for step in self.complete_steps()[:-self.keep]:
      self._manager.delete(step)

  def save(self, state, *, next_batch: int, config: GLMConfig, vocab_spec: str,
           force: bool = False) -> bool:
    """Starts an asynchronous save of `state` at its step; returns whether it saved.

    Raises NonFiniteState (nothing saved) when a value of the state is NaN or Inf, and
    RunFault when the previous save failed or this one cannot start.
    """
    step = int(jax.device_get(state.step))
    # orbax's save waits for the previous one anyway; it must be complete before old steps go.
    self._confirm(wait=True)
    if step in self._manager.all_steps():
      return False
    found, finite = digests_lib.tree_digests(state)
    nonfinite = [k for k, ok in finite.items() if not ok]
    if nonfinite:
      raise NonFiniteState(
          f"The train state at step {step} holds NaN or Inf in {_few(nonfinite)}; it is not "
          f"saved. The last complete checkpoint is {self.last_complete()}. Lower the learning "
          "rate (or check the data), then resume from it.")
    self._prune()
    meta = _make_meta(step, next_batch, config, vocab_spec, found)
    try:
      saved = self._manager.save(
          step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state),
                                           META_ITEM: ocp.args.JsonSave(meta)}),
          force=force)
    except Exception as e:  # pylint: disable=broad-except
      _ORPHANED_WRITES.after_failed_save = True
      raise gin_utils.RunFault(
          f"Saving checkpoint step {step} to {self.model_dir} failed ({first_line(e)}); the "
          f"last complete checkpoint is {self.last_complete()}, kept. Fix the cause (free "
          "space?), then run again to resume from it.") from e
    if saved:
      self._pending = step
    return saved

  def restore_latest(self) -> Optional[Tuple[Any, dict]]:
    """(state, meta) of the newest readable checkpoint, or None if there is none.

    A step whose bytes are lost, undecodable, differ from their digests or hold NaN / Inf
    (unreadable_reason) is set aside and the one before it is tried; any other failure (e.g.
    a model that does not match the saved one) is raised and nothing is renamed. All
    processes take the same decision.
    """
    for step in reversed(self.all_steps()):
      error = None
      try:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(
                self.abstract_state), META_ITEM: ocp.args.JsonRestore()}))
        verify(restored[STATE_ITEM], dict(restored[META_ITEM]).get(DIGESTS_KEY),
               f"step {step}")
      except Exception as e:  # pylint: disable=broad-except
        error = e
      if not any_process(error is not None):
        return restored[STATE_ITEM], dict(restored[META_ITEM])
      reason = unreadable_reason(error) if error is not None else None
      if not any_process(reason is not None):
        if error is None:
          raise RuntimeError(f"Another process could not restore step {step} from "
                             f"{self.model_dir}; see its log.")
        raise ValueError(
            f"Checkpoint step {step} in {self.model_dir} cannot be restored into this run's "
            f"train state ({first_line(error)}); train with the gin config it was saved "
            "with, or use a new MODEL_DIR.") from error
      moved = self._set_aside(step)
      logging.warning("Checkpoint step %d in %s is unreadable (%s); set aside as %s, falling "
                      "back to the previous step.", step, self.model_dir,
                      reason or "on another process", moved)
    return None

  def _set_aside(self, step: int) -> str:
    """Renames an unreadable step directory so a new save of that step can succeed."""
    dst = self.model_dir / f"corrupt_{step}_{int(time.time())}"
    if jax.process_index() == 0:
      src = self.model_dir / str(step)
      if src.is_dir():
        src.rename(dst)
    _sync(f"glm_jax_set_aside_{step}")
    self._manager.reload()
    return dst.name

  def wait(self):
    self._manager.wait_until_finished()

  def close(self, check: bool = True):
    """Waits for the save in flight, keeps the newest `keep` steps and closes.

    With `check` (a run that ends normally) a failed last save raises RunFault; on an error
    path (`check=False`) it is only logged.
    """
    if self._manager is None:
      return
    try:
      try:
        self._confirm(wait=True)
        if check:  # on an error path nothing is deleted
          self._prune()
      except gin_utils.RunFault as e:
        if check:
          raise
        logging.warning("%s", e)
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        if check:
          raise
    finally:
      self._manager = None
      std_logging.getLogger("absl").removeFilter(self._errors)


def prepare_model_dir(model_dir: str) -> None:
  """Creates MODEL_DIR (ValueError in one line when it cannot be)."""
  _prepare_model_dir(paths.resolve(model_dir), model_dir)


def _prepare_model_dir(path, given: str) -> None:
  """Creates MODEL_DIR; a local one must be readable and writable."""
  try:
    path.mkdir(parents=True, exist_ok=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"Cannot create MODEL_DIR {given!r} ({first_line(e)}); choose a "
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
  if all(isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(params)):
    found, finite = digests_lib.host_tree_digests(params)
  else:
    found, finite = digests_lib.tree_digests(params)
  nonfinite = [k for k, ok in finite.items() if not ok]
  if nonfinite:
    raise NonFiniteState(f"The parameters to save to {directory} hold NaN or Inf in "
                         f"{_few(nonfinite)}; nothing was written.")
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
    paths.write_json(directory / PARAMS_META_FILE,
                     _make_meta(step, 0, config, vocab_spec, found))
  _sync("glm_jax_save_params_checkpoint")
  return str(directory)


def _read_step_meta(step_dir) -> dict:
  """The meta item of a step directory, read by orbax's JSON handler (as restore_latest)."""
  return dict(ocp.JsonCheckpointHandler().restore(paths.resolve(step_dir) / META_ITEM))


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
    try:
      meta = paths.read_json(path / PARAMS_META_FILE)
      params = _restore_tree(path / PARAMS_ITEM, abstract_params)
      verify(params, meta.get(DIGESTS_KEY), f"params-only checkpoint {given}")
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"Checkpoint {given!r} cannot be read ({first_line(e)}); pass an "
                       "intact checkpoint (convert it again?).") from e
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
      verify(params, meta.get(DIGESTS_KEY), f"checkpoint {step_dir}", prefix=".params")
    except Exception as e:  # pylint: disable=broad-except
      error = e
    if not any_process(error is not None):
      return params, GLMConfig.from_dict(meta["glm_config"]), meta["vocab_spec"], meta["step"]
    reason = unreadable_reason(error) if error is not None else None
    if i + 1 == len(candidates) or not any_process(reason is not None):
      detail = first_line(error) if error is not None else "failed on another process"
      raise ValueError(f"Checkpoint {str(step_dir)!r} cannot be read ({detail}); pass an "
                       "intact checkpoint made for this model.") from error
    logging.warning("Checkpoint %s is unreadable (%s); using the previous one.", step_dir,
                    reason or "on another process")
  raise AssertionError("unreachable")


def _newest_meta(path, given: str) -> dict:
  """The meta of a MODEL_DIR's newest step whose meta reads (older ones if it does not)."""
  steps = _step_dirs(path)
  if not steps:
    raise FileNotFoundError(f"No checkpoint found in {given!r}; pass a MODEL_DIR with saved "
                            "steps, a step directory or a params-only checkpoint.")
  error = None
  for _, step_dir in reversed(steps):
    try:
      return _read_step_meta(step_dir)
    except (ValueError, OSError) as e:  # a cut or lost meta file: the step is unreadable
      logging.warning("The metadata of %s is unreadable (%s).", step_dir, first_line(e))
      error = e
  raise ValueError(f"No step in {given!r} has readable metadata ({first_line(error)}); "
                   "use another checkpoint.")


def read_config(path: str) -> Tuple[GLMConfig, str, int]:
  """(config, vocab_spec, step) of the checkpoint load_params(path) would read, without params."""
  given, path = path, paths.resolve(path)
  if not path.is_dir():
    raise FileNotFoundError(f"Checkpoint {given!r} does not exist; pass a MODEL_DIR, a step "
                            "directory or a params-only checkpoint directory.")
  kind = _kind(path)
  try:
    if kind == "params":
      meta = paths.read_json(path / PARAMS_META_FILE)
    elif kind == "step":
      meta = _read_step_meta(path)
    else:
      meta = _newest_meta(path, given)
    return GLMConfig.from_dict(meta["glm_config"]), meta["vocab_spec"], int(meta["step"])
  except (KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"Checkpoint {given!r} has unreadable metadata ({first_line(e)}); pass "
                     "an intact checkpoint.") from None


@gin.configurable
def checkpoint_config(path: Optional[str], dropout: Optional[float] = None) -> GLMConfig:
  """read_config's GLMConfig, for gin: a fine-tuning run's network from INIT_CHECKPOINT.

  `dropout` (the reference fine-tunes with 0.1) replaces the embedding, attention and hidden
  dropout.
  """
  if not path:
    raise ValueError("Set INIT_CHECKPOINT (or CHECKPOINT) to a GLM checkpoint directory.")
  try:
    config, _, _ = read_config(path)
  except FileNotFoundError:
    raise FileNotFoundError(f"No GLM checkpoint at {path!r}; pass a params-only checkpoint or "
                            "a MODEL_DIR with saved steps as INIT_CHECKPOINT / CHECKPOINT."
                            ) from None
  if dropout is not None:
    config = config.replace(embedding_dropout=dropout, attention_dropout=dropout,
                            hidden_dropout=dropout)
  return config


def _same_vocabulary(saved: str, wanted: str) -> bool:
  """Whether two vocabulary specs name the same vocabulary (paths compared absolute)."""
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  if saved == wanted:
    return True
  try:
    a, b = vocab_lib.parse_spec(saved), vocab_lib.parse_spec(wanted)
    ca, cb = vocab_lib.canonical_spec(saved), vocab_lib.canonical_spec(wanted)
  except (ValueError, FileNotFoundError):
    return False
  return (a[0] == b[0] and vocab_lib.parse_spec(ca)[2] == vocab_lib.parse_spec(cb)[2]
          and str(paths.resolve(a[1])) == str(paths.resolve(b[1])))


def check_same_run(model_dir: str, config: GLMConfig, vocab_spec: str) -> Optional[int]:
  """Refuses (ValueError, nothing touched) a MODEL_DIR whose checkpoints are another model's.

  Compares the newest readable step's architecture (ARCHITECTURE_FIELDS) and vocabulary with
  this run's; returns that step, or None when MODEL_DIR holds no checkpoint. Read-only.
  """
  path = paths.resolve(model_dir)
  if not path.is_dir() or not _step_dirs(path):
    return None
  try:
    meta = _newest_meta(path, model_dir)
    saved = GLMConfig.from_dict(meta["glm_config"])
  except (ValueError, KeyError, TypeError):
    return None  # restore_latest sets unreadable steps aside
  diff = [f"{k} {getattr(saved, k)} (saved) vs {getattr(config, k)}" for k in
          ARCHITECTURE_FIELDS if getattr(saved, k) != getattr(config, k)]
  if not _same_vocabulary(meta["vocab_spec"], vocab_spec):
    diff.append(f"vocabulary {meta['vocab_spec']!r} (saved) vs {vocab_spec!r}")
  if diff:
    raise ValueError(f"MODEL_DIR {model_dir} holds a run of another model (step "
                     f"{meta['step']}: {'; '.join(diff)}); nothing was changed. Use a new "
                     "MODEL_DIR, or the gin config that run was trained with.")
  return int(meta["step"])


def abstract_params(config: GLMConfig, partitioner):
  """ShapeDtypeStructs of the network's parameters in the partitioner's shardings."""
  boxed = model_lib.abstract_params(config)
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
  item = getattr(metadata, "item_metadata", metadata)
  tree = getattr(item, "tree", None)
  if not isinstance(tree, dict) or PARAMS_ITEM not in tree:
    raise CorruptCheckpoint(f"{state_path}: its array metadata cannot be read")
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
  """[{step, num_params, sha256, path, status}] of every checkpoint in a MODEL_DIR (or one).

  Each checkpoint's params are read and verified against their digests; `status` is 'ok' or
  why it cannot be used (its num_params and sha256 are then None).
  """
  path = paths.resolve(model_dir)
  if not path.is_dir():
    raise FileNotFoundError(f"MODEL_DIR {model_dir!r} does not exist; pass the directory of a "
                            "training run.")
  targets = [path] if _kind(path) != "run" else [d for _, d in _step_dirs(path)]
  rows = []
  for target in targets:
    try:
      params, _, _, step = load_params(str(target))
    except (ValueError, FileNotFoundError) as e:
      cause = e.__cause__ if e.__cause__ is not None else e
      reason = unreadable_reason(cause) or first_line(cause)
      step = int(target.name) if target.name.isdigit() else None
      rows.append({"step": step, "num_params": None, "sha256": None, "path": str(target),
                   "status": f"unreadable: {reason}"})
      continue
    rows.append({"step": int(step), "num_params": int(sum(x.size for x in
                                                           jax.tree_util.tree_leaves(params))),
                 "sha256": params_digest(params), "path": str(target), "status": "ok"})
  return rows


def main(argv):
  gin_utils.begin_cli(argv, "--model_dir")
  rows = describe(flags.FLAGS.model_dir)
  if not rows:
    print(f"No checkpoints in {flags.FLAGS.model_dir}.")
    return
  print(f"{'step':>10}  {'params':>12}  {'sha256':<64}  status")
  for row in rows:
    if row["status"] != "ok":
      print(f"{row['step']!s:>10}  {'-':>12}  {'-':<64}  {row['status']}")
      continue
    print(f"{row['step']:>10}  {row['num_params']:>12,}  {row['sha256']}  ok")
  bad = [str(r["step"]) for r in rows if r["status"] != "ok"]
  if bad:
    good = [r["step"] for r in rows if r["status"] == "ok"]
    fallback = f"training and eval use step {good[-1]}" if good else "no step is usable"
    raise gin_utils.RunFault(f"{len(bad)} of {len(rows)} checkpoint(s) in "
                             f"{flags.FLAGS.model_dir} cannot be used (step {', '.join(bad)}); "
                             f"{fallback}.")


if __name__ == "__main__":
  flags.DEFINE_string("model_dir", None, "Training run directory (or one checkpoint).",
                      required=True)
  gin_utils.run(main)
