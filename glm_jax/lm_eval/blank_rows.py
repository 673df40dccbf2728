"""One blank-infilling model row (docs/ARCHITECTURE.md "The model batch") from token lists."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

FEATURES = ("tokens", "positions", "sep", "targets", "loss_weights")


def infill_row(part_a: Sequence[int], mask_index: int, part_b: Sequence[int],
               targets: Sequence[int], length: int,
               weights: Optional[Sequence[float]] = None) -> Dict[str, np.ndarray]:
  """Part A ++ Part B padded to `length`; Part B sits at the mask's position, blocks 1..n.

  part_b are the Part B inputs (starting with sop), targets the tokens they predict.
  """
  if len(part_b) != len(targets):
    raise ValueError(f"Part B has {len(part_b)} inputs but {len(targets)} targets.")
  sep, used = len(part_a), len(part_a) + len(part_b)
  if used > length:
    raise ValueError(f"A row needs {used} tokens but the sequence length is {length}.")
  row = {
      "tokens": np.zeros(length, np.int32),
      "positions": np.zeros((2, length), np.int32),
      "sep": np.int32(sep),
      "targets": np.zeros(length, np.int32),
      "loss_weights": np.zeros(length, np.float32),
  }
  row["tokens"][:sep] = part_a
  row["tokens"][sep:used] = part_b
  row["positions"][0, :sep] = np.arange(sep)
  row["positions"][0, sep:used] = mask_index
  row["positions"][1, sep:used] = np.arange(1, len(part_b) + 1)
  row["targets"][sep:used] = targets
  row["loss_weights"][sep:used] = 1.0 if weights is None else np.asarray(weights, np.float32)
  return row


def stack_rows(rows) -> Dict[str, np.ndarray]:
  return {k: np.stack([r[k] for r in rows]) for k in FEATURES}


def batches(rows, batch_size: int):
  """Rows -> padded batches; padding rows have zero loss weight. Yields (batch, n_real)."""
  rows = list(rows)
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    n = len(chunk)
    while len(chunk) < batch_size:
      filler = dict(chunk[0])
      filler["loss_weights"] = np.zeros_like(filler["loss_weights"])
      chunk.append(filler)
    yield stack_rows(chunk), n
