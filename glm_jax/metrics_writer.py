"""Training metrics: MODEL_DIR/metrics.jsonl, TensorBoard event files and a progress bar.

MODEL_DIR may be local or gs://: the JSONL goes through epath (glm_jax.paths), the event
files through TensorBoard's writer, which uses TensorFlow's gfile. A damaged metrics.jsonl
(a line cut by a kill, a stray byte, a line that is not a record) never blocks a resume: its
bad lines are dropped with one warning.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Dict, List, Optional, Tuple

from absl import logging

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
import tqdm

from glm_jax import paths

METRICS_FILE = "metrics.jsonl"


def _clean(value):
  value = float(value)
  return value if math.isfinite(value) else str(value)


@dataclasses.dataclass
class Records:
  """A metrics.jsonl read line by line: its records and the lines that are not records."""

  records: List[Tuple[int, dict, str]]  # (line number, record, the line's text)
  bad: List[Tuple[int, str]]  # (line number, why it is not a record)
  cut_line: Optional[int]  # the number of a last line without newline (a cut write), or None


def _parse_line(raw: bytes) -> Tuple[Optional[dict], str]:
  """(record, text) of one line, or (None, why it is not a record)."""
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError:
    return None, "not UTF-8 text"
  try:
    record = json.loads(text)
  except ValueError:
    return None, "not valid JSON"
  if not isinstance(record, dict):
    return None, f"a JSON {type(record).__name__}, not an object"
  if isinstance(record.get("step"), bool) or not isinstance(record.get("step"), int):
    return None, "an object without an integer 'step'"
  return record, text


def read_records(path) -> Records:
  """The records of a metrics.jsonl (empty if it does not exist), bad lines set apart."""
  path = paths.resolve(path)
  if not path.exists():
    return Records([], [], None)
  lines = path.read_bytes().split(b"\n")
  cut = len(lines) if lines[-1].strip() else None
  records, bad = [], []
  for number, raw in enumerate(lines, start=1):
    if not raw.strip():
      continue
    record, text = _parse_line(raw)
    if record is None:
      bad.append((number, text))
    else:
      records.append((number, record, text.rstrip("\r")))
  return Records(records, bad, cut)


def truncate_after(path, step: int) -> None:
  """Keeps the records up to `step` (a resumed run logs later steps again), drops bad lines."""
  path = paths.resolve(path)
  read = read_records(path)
  if read.bad:
    shown = ", ".join(f"line {n}: {why}" for n, why in read.bad[:3])
    logging.warning("%s: dropped %d damaged line(s) (%s%s).", path, len(read.bad), shown,
                    ", ..." if len(read.bad) > 3 else "")
  kept = [text + "\n" for _, record, text in read.records if record["step"] <= step]
  if read.records or read.bad:
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
