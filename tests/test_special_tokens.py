"""Which mask token each objective uses, with and without task masks."""

import dataclasses

import pytest

from glm_jax.data.special_tokens import BERT_WORDPIECE


def test_task_masks_pick_one_mask_per_objective():
  assert [BERT_WORDPIECE.mask_for(o) for o in ("token", "sentence", "document")] == [
      103, 30525, 30524]


def test_without_task_masks_every_objective_uses_mask():
  special = dataclasses.replace(BERT_WORDPIECE, task_mask=False)
  assert {special.mask_for(o) for o in ("token", "sentence", "document")} == {103}


def test_unknown_objective_is_named():
  with pytest.raises(ValueError, match="'paragraph'"):
    BERT_WORDPIECE.mask_for("paragraph")
