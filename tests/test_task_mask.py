"""The task-mask flag: from the checkpoint's vocabulary, or TASK_MASK; every task's mask."""

import gin
import pytest

from glm_jax import task_mask


pytestmark = pytest.mark.usefixtures("clean_gin")


def test_mask_of_each_task_follows_the_vocabulary(vocab_paths):
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  path = vocab_paths["wordpiece"]
  large = task_mask.special_tokens(vocab_lib.get_vocabulary(f"wordpiece:{path}"))
  assert not large.task_mask  # GLM-Base / GLM-Large: [MASK] for LAMBADA, WikiText, XSum
  assert {large.mask_for(o) for o in ("token", "sentence", "document")} == {103}
  masked = task_mask.special_tokens(vocab_lib.get_vocabulary(f"wordpiece:{path}@task_mask"))
  assert (masked.mask_for("document"), masked.mask_for("sentence")) == (30524, 30525)


def test_override_through_gin(builtin_vocab):
  assert builtin_vocab.special.task_mask  # the built-in vocabulary has [sMASK] / [gMASK]
  with gin.unlock_config():
    gin.bind_parameter("glm_jax.task_mask.override.task_mask", False)
  special = task_mask.special_tokens(builtin_vocab)
  assert not special.task_mask and special.mask_for("document") == builtin_vocab.special.mask
  assert task_mask.special_tokens(builtin_vocab, True).task_mask  # an argument wins


def test_override_needs_the_task_mask_tokens(vocab_paths):
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  vocabulary = vocab_lib.get_vocabulary(f"wordpiece:{vocab_paths['wordpiece']}")
  with pytest.raises(ValueError, match="@task_mask"):
    task_mask.special_tokens(vocabulary, True)
  with pytest.raises(ValueError, match="TASK_MASK"):
    task_mask.override("yes")
