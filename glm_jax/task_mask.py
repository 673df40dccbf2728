"""Which mask token a task uses: the checkpoint's task-mask flag, or the TASK_MASK override.

Models trained with task masks (GLM-2B, GLM-10B, the Chinese models) fill a sentence behind
`[sMASK]` (XSum) and a document behind `[gMASK]` (LAMBADA, WikiText, open generation); models
trained without them (GLM-Base, GLM-Large, GLM-Doc, GLM-RoBERTa) use `[MASK]` for every task,
as the reference does (its `--task-mask`). The flag travels with the checkpoint's vocabulary
spec (its configuration, e.g. `wordpiece:PATH@task_mask`; `SpecialTokens.task_mask`), which
conversion and training record. The gin macro TASK_MASK (bound to `task_mask.override`)
replaces it for a checkpoint whose spec does not say. SuperGLUE always uses `[MASK]`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import gin

from glm_jax.data.special_tokens import SpecialTokens


@gin.configurable
def override(task_mask: Optional[bool] = None) -> Optional[bool]:
  """The TASK_MASK setting: None follows the checkpoint's vocabulary, True / False force it."""
  if task_mask not in (None, True, False):
    raise ValueError(f"TASK_MASK must be None, True or False, got {task_mask!r}.")
  return task_mask


def special_tokens(vocabulary, task_mask: Optional[bool] = None) -> SpecialTokens:
  """The vocabulary's roles with the task-mask flag of this run (argument, else TASK_MASK)."""
  special = getattr(vocabulary, "special", vocabulary)
  flag = override() if task_mask is None else task_mask
  if flag is None or flag == special.task_mask:
    return special
  if flag and (special.smask is None or special.gmask is None):
    spec = getattr(vocabulary, "spec", "this vocabulary")
    raise ValueError(f"TASK_MASK = True needs [sMASK] and [gMASK], which {spec} does not have; "
                     "use the vocabulary configuration with task masks (e.g. "
                     "wordpiece:PATH@task_mask) or leave TASK_MASK = None.")
  return dataclasses.replace(special, task_mask=bool(flag))


def describe(special: SpecialTokens) -> str:
  """'task masks ([sMASK] S, [gMASK] G)' or 'no task masks ([MASK] M everywhere)', for logs."""
  if special.task_mask:
    return f"task masks ([sMASK] {special.smask}, [gMASK] {special.gmask})"
  return f"no task masks ([MASK] {special.mask} for every task)"
