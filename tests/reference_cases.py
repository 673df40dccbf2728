"""The reference PyTorch GLM's outputs (fixture set glm_reference) for the parity tests.

The tests read the compact subset shipped in tests/fixtures/glm_reference (made by
tools/make_parity_fixtures.py: logits cut to 64 vocabulary columns); where the full set is
beside the checkout (../shared/fixtures/glm_reference) the same tests also run on it, with
full-vocabulary logits, as optional extra cases (marked `full_fixtures`).
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np
import pytest

from conftest import shared_fixture, shipped_fixture

SET = "glm_reference"
MODEL = "model_glm_tiny_a.npz"
STRESS_SCALE = np.float32(5.0)  # the stress model: every 2-D weight x5 (the set's README)

# (stress, full): the shipped subset always runs; the full set only where it is present.
VARIANTS = [
    pytest.param((False, False), id="normal"),
    pytest.param((True, False), id="stress"),
    pytest.param((False, True), id="normal-full", marks=[
        pytest.mark.full_fixtures,
        pytest.mark.skipif(shared_fixture(SET) is None,
                           reason="optional: ../shared/fixtures/glm_reference not present")]),
    pytest.param((True, True), id="stress-full", marks=[
        pytest.mark.full_fixtures,
        pytest.mark.skipif(shared_fixture(SET) is None,
                           reason="optional: ../shared/fixtures/glm_reference not present")]),
]


def load_npz(path: str) -> Dict[str, np.ndarray]:
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


def stress_state_dict(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """The stress model from the normal one: 2-D weights x5, biases and LayerNorm unchanged."""
  return {k: v * STRESS_SCALE if v.ndim == 2 else v for k, v in state.items()}


def state_dict(stress: bool = False) -> Dict[str, np.ndarray]:
  """The reference model's state dict (reference key names), from the shipped copy."""
  state = load_npz(shipped_fixture(SET, MODEL))
  return stress_state_dict(state) if stress else state


def cases(stress: bool = False, full: bool = False
          ) -> Tuple[Dict[str, np.ndarray], Optional[np.ndarray]]:
  """(case arrays '<case>/<field>', the vocabulary columns kept in their logits or None)."""
  suffix = "_stress" if stress else ""
  if full:
    return load_npz(os.path.join(shared_fixture(SET), f"cases_glm_tiny_a{suffix}.npz")), None
  data = load_npz(shipped_fixture(SET, f"parity_cases_glm_tiny_a{suffix}.npz"))
  return data, data["_logit_columns"]


def columns_of(logits, columns: Optional[np.ndarray]) -> np.ndarray:
  """Our logits [..., V] at the vocabulary columns the reference kept."""
  logits = np.asarray(logits)
  return logits if columns is None else logits[..., columns]
