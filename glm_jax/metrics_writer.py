"""Training metrics: MODEL_DIR/metrics.jsonl, TensorBoard event files and a progress bar.

MODEL_DIR may be local or gs://: the JSONL goes through epath (glm_jax.paths), the event
files through TensorBoard's writer, which uses TensorFlow's gfile.
"""

from __future__ import annotations

import json
import math
import time
from typing import Dict, Optional

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
import tqdm

from glm_jax import paths

METRICS_FILE = "metrics.jsonl"


def _clean(value):
  value = float(value)
  return value if math.isfinite(value) else str(value)


def truncate_after(path, step: int) -> None:
  """Drops lines logged after `step` (a resumed run logs those steps again)."""
  path = paths.resolve(path)
  if not path.exists():
    return
  kept = []
  for line in path.read_text().splitlines(keepends=True):
    try:
      if json.loads(line).get("step", 0) <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
    except json.JSONDecodeError:
      continue  # a line cut short by a kill
  path.write_text("".join(kept))


class MetricsWriter:
  """Writes scalars per step to JSONL and TensorBoard; only process 0 writes."""

  def __init__(self, model_dir: str, *, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    self.path = paths.resolve(model_dir) / METRICS_FILE
    self._tb = None
    if enabled:
      truncate_after(self.path, resume_step)
      self._tb = EventFileWriter(str(paths.resolve(model_dir) / "tensorboard"))

  def write(self, step: int, scalars: Dict[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _clean(v) for k, v in sorted(scalars.items())}}
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
              for k, v in scalars.items()]
    self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                       summary=summary_pb2.Summary(value=values)))
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class ProgressBar:
  """tqdm bar over train steps with loss, tokens/s, MFU and (tqdm's own) ETA."""

  def __init__(self, total: int, initial: int, enabled: bool = True):
    self._bar: Optional[tqdm.tqdm] = None
    if enabled:
      self._bar = tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                            smoothing=0.1)

  def update(self, steps: int, scalars: Dict[str, float]) -> None:
    if self._bar is None:
      return
    if not scalars:
      self._bar.update(steps)
      return
    post = {}
    if "loss" in scalars:
      post["loss"] = f"{scalars['loss']:.4f}"
    if "tokens_per_second" in scalars:
      post["tok/s"] = f"{scalars['tokens_per_second']:,.0f}"
    if "mfu" in scalars:
      post["mfu"] = f"{100 * scalars['mfu']:.1f}%"
    self._bar.set_postfix(post, refresh=False)
    self._bar.update(steps)

  def write(self, message: str) -> None:
    if self._bar is None:
      print(message, flush=True)
    else:
      self._bar.write(message)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
