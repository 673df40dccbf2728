"""Merging the reference's model-parallel ranks (mpu: what `change_mp.py` splits, put back).

  word_embeddings, dense_h_to_4h (weight, bias)   rows split (vocab-/column-parallel): concat
  attention.query_key_value (weight, bias)        column-parallel with stride 3: each rank holds
                                                  [Q_r; K_r; V_r]; merged [Q_0..Q_n; K..; V..]
  attention.dense, dense_4h_to_h (weights)        columns split (row-parallel): concat on dim 1
  everything else (LayerNorms, row-parallel biases, position tables)   replicated: rank 0
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from glm_jax.convert.readers import CheckpointError


def rule(name: str, ndim: int) -> str:
  """'rows', 'qkv', 'columns' or 'replicated' for a reference parameter name."""
  if "query_key_value" in name:
    return "qkv"
  if name.endswith("word_embeddings.weight") or "dense_h_to_4h" in name:
    return "rows"
  if ndim == 2 and (name.endswith("attention.dense.weight") or
                    name.endswith("dense_4h_to_h.weight")):
    return "columns"
  return "replicated"


def merged_shapes(rank_shapes: Sequence[Dict[str, Tuple[int, ...]]],
                  path: str) -> Dict[str, Tuple[int, ...]]:
  """Shapes after merging; ranks whose names or split shapes disagree are refused."""
  first = rank_shapes[0]
  for r, shapes in enumerate(rank_shapes[1:], 1):
    if set(shapes) != set(first):
      odd = sorted(set(shapes) ^ set(first))[0]
      raise CheckpointError(f"{path}: model-parallel rank {r} and rank 0 hold different "
                            f"parameters ({odd}); pass the ranks of one checkpoint.")
  out = {}
  for name, shape in first.items():
    shapes = [s[name] for s in rank_shapes]
    kind = rule(name, len(shape))
    if any(s != shape for s in shapes):
      raise CheckpointError(f"{path}: {name} has shapes {shapes} on the model-parallel ranks; "
                            "the reference splits it evenly.")
    if kind in ("rows", "qkv"):
      out[name] = (shape[0] * len(shapes),) + tuple(shape[1:])
    elif kind == "columns":
      out[name] = (shape[0], shape[1] * len(shapes))
    else:
      out[name] = tuple(shape)
  return out


def merge(name: str, parts: List[np.ndarray]) -> np.ndarray:
  """One parameter from its per-rank parts (see the module docstring)."""
  kind = rule(name, parts[0].ndim)
  if kind == "rows":
    return np.concatenate(parts, axis=0)
  if kind == "columns":
    return np.concatenate(parts, axis=1)
  if kind == "qkv":
    thirds = [np.split(p, 3, axis=0) for p in parts]  # per rank: [Q_r, K_r, V_r]
    return np.concatenate([t[j] for j in range(3) for t in thirds], axis=0)
  return parts[0]


def lost_rows_message(path: str, merged_rows: int, vocab_rows: int, ranks: int) -> str:
  """The one line that refuses a split which dropped the remainder of an odd vocabulary."""
  return (f"{path}: the {ranks} model-parallel ranks hold {merged_rows} embedding rows in all, "
          f"the vocabulary {vocab_rows}: the split lost vocabulary rows (the reference's "
          "change_mp.py drops the remainder of a vocabulary its rank count does not divide); "
          "convert the unsplit checkpoint instead.")
