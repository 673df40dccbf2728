"""One trainer per MODEL_DIR: MODEL_DIR/train.lock, taken and kept with conditional writes.

The lock is a small JSON object (host, process, start time, heartbeat) written through
tensorstore's key-value store, whose writes can be conditional on the stored generation: on
`gs://` as GCS object generation preconditions (`ifGenerationMatch`, 0 for "must not exist"),
locally with the file driver's atomic conditional writes. So of two trainers racing for a
MODEL_DIR exactly one wins. The holder refreshes its heartbeat every `heartbeat_seconds`,
again conditionally; if the lock was taken meanwhile, `lost` names the new holder.

A lock is stale, and is taken over (conditionally, so only one contender wins), when its
process is gone: on the same machine and PID namespace at once (the PID is dead or reused),
elsewhere once its heartbeat is older than `stale_seconds`.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from typing import Optional

from absl import logging
import gin
import tensorstore as ts

from glm_jax import paths

LOCK_FILE = "train.lock"


def _pid_start(pid: int) -> Optional[str]:
  """The start time of process `pid` in clock ticks since boot (Linux), else None."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _pid_namespace() -> str:
  try:
    return os.readlink("/proc/self/ns/pid")
  except OSError:
    return ""


def _alive(pid: int, start: Optional[str]) -> bool:
  """Whether process `pid` (started at `start`) still runs on this machine."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  return start is None or _pid_start(pid) in (None, start)


def _kvstore_spec(directory) -> Optional[dict]:
  """tensorstore kvstore spec of a local or gs:// directory; None for other schemes."""
  text = str(directory)
  if text.startswith("gs://"):
    bucket, _, prefix = text[len("gs://"):].partition("/")
    return {"driver": "gcs", "bucket": bucket, "path": prefix.rstrip("/") + "/"}
  if paths.is_url(text):
    return None
  return {"driver": "file", "path": text.rstrip("/") + "/"}


def describe_holder(record: dict, now: Optional[float] = None) -> str:
  now = time.time() if now is None else now
  age = max(0.0, now - float(record.get("heartbeat", now)))
  return (f"host {record.get('host', '?')} pid {record.get('pid', '?')} (started "
          f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record.get('started', now)))}, "
          f"last heartbeat {age:.0f} s ago)")


class LockHeld(ValueError):
  """MODEL_DIR is in use by another live trainer."""


@gin.configurable(module="glm_jax.run_lock")
class RunLock:
  """The lock of one MODEL_DIR (acquire / release; a heartbeat thread while held)."""

  def __init__(self, model_dir: str, *, heartbeat_seconds: float = 30.0,
               stale_seconds: float = 120.0):
    self.model_dir = paths.resolve(model_dir)
    self.heartbeat_seconds = heartbeat_seconds
    self.stale_seconds = stale_seconds
    self.lost: Optional[str] = None
    self._spec = _kvstore_spec(self.model_dir)
    self._store = None
    self._generation = None
    self._record = None
    self._stop = threading.Event()
    self._thread = None
    self._mutex = threading.Lock()

  @property
  def path(self):
    return self.model_dir / LOCK_FILE

  def _kv(self):
    if self._store is None:
      self._store = ts.KvStore.open(self._spec).result()
    return self._store

  def _read(self):
    """(record or None, generation) of the stored lock."""
    result = self._kv().read(LOCK_FILE).result()
    if result.state != "value":
      return None, result.stamp.generation
    try:
      record = json.loads(result.value.decode("utf-8"))
      if not isinstance(record, dict):
        raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError):
      record = {"heartbeat": 0.0}  # unreadable: as old as can be
    return record, result.stamp.generation

  def _write(self, record: Optional[dict], if_equal) -> Optional[bytes]:
    """The new generation, or None when the stored generation is no longer `if_equal`."""
    value = None if record is None else json.dumps(record).encode("utf-8")
    stamp = self._kv().write(LOCK_FILE, value, if_equal=if_equal).result()
    return stamp.generation or None

  def _stale(self, record: dict, now: float) -> Optional[str]:
    """Why a held lock may be taken over, or None while its holder may still run."""
    same_machine = (record.get("host") == socket.gethostname()
                    and record.get("pid_namespace") == _pid_namespace())
    pid = record.get("pid")
    if same_machine and isinstance(pid, int) and not _alive(pid, record.get("pid_start")):
      return f"its process {pid} on this machine has ended"
    age = now - float(record.get("heartbeat", 0.0))
    if age > self.stale_seconds:
      return f"its heartbeat is {age:.0f} s old (over {self.stale_seconds:.0f} s)"
    return None

  def acquire(self) -> "RunLock":
    """Takes the lock or raises LockHeld naming its holder (a stale one is taken over)."""
    if self._spec is None:
      logging.warning("MODEL_DIR %s is not local or gs://: it is not locked against a second "
                      "trainer.", self.model_dir)
      return self
    for _ in range(5):  # a lost race re-reads the winner's record
      record, generation = self._read()
      now = time.time()
      if record is not None:
        reason = self._stale(record, now)
        if reason is None:
          raise LockHeld(
              f"MODEL_DIR {self.model_dir} is in use by another trainer: "
              f"{describe_holder(record, now)}. Stop it or use another MODEL_DIR (a dead "
              f"trainer's lock {self.path} is taken over once its heartbeat is "
              f"{self.stale_seconds:.0f} s old).")
      mine = {"host": socket.gethostname(), "pid": os.getpid(),
              "pid_start": _pid_start(os.getpid()), "pid_namespace": _pid_namespace(),
              "started": now, "heartbeat": now, "argv": " ".join(sys.argv)[:500]}
      written = self._write(mine, generation)
      if written is not None:
        if record is not None:
          logging.warning("Took over the stale lock of MODEL_DIR %s (%s; %s).", self.model_dir,
                          describe_holder(record, now), reason)
        self._generation, self._record = written, mine
        self._thread = threading.Thread(target=self._heartbeat, name="glm_jax_run_lock",
                                        daemon=True)
        self._thread.start()
        return self
    raise LockHeld(f"MODEL_DIR {self.model_dir} is being locked by another trainer at the "
                   "same moment; use one trainer per MODEL_DIR.")

  def _heartbeat(self):
    while not self._stop.wait(self.heartbeat_seconds):
      with self._mutex:
        if self._generation is None:
          return
        record = dict(self._record, heartbeat=time.time())
        try:
          written = self._write(record, self._generation)
        except Exception as e:  # pylint: disable=broad-except
          logging.warning("Could not refresh the lock %s (%s); retrying.", self.path, e)
          continue
        if written is None:
          holder, _ = self._read()
          self.lost = describe_holder(holder) if holder else "the lock was removed"
          self._generation = None
          return
        self._generation, self._record = written, record

  def release(self) -> None:
    """Stops the heartbeat and deletes the lock if this trainer still holds it."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=60)
    with self._mutex:
      if self._generation is not None:
        try:
          self._write(None, self._generation)
        except Exception as e:  # pylint: disable=broad-except
          logging.warning("Could not remove the lock %s (%s).", self.path, e)
        self._generation = None
