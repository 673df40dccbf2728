"""AdamW with GLM's decay mask, warmup + cosine/linear decay to a floor, and gradient clipping.

GLM_SPEC.md section 5: Adam betas (0.9, 0.98), eps 1e-6, weight decay 0.1 on everything but
biases and LayerNorm parameters, clipping at global norm 1.0, linear warmup, then cosine (or
linear) decay to a fraction of the peak learning rate.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import gin
import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "linear", "constant")


@gin.configurable
def learning_rate_schedule(step, *, peak: float = 4e-4, warmup_steps: int = 0,
                           decay_steps: Optional[int] = None, schedule: str = "cosine",
                           final_fraction: float = 0.05):
  """Learning rate at `step` (0-based count of updates already applied).

  Linear warmup from 0 to `peak` over `warmup_steps`, then `schedule` from `peak` down to
  `final_fraction * peak` at step `decay_steps` (counted from 0, warmup included); constant
  afterwards.
  """
  if schedule not in SCHEDULES:
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}.")
  step = jnp.asarray(step, jnp.float32)
  # Step s is the (s+1)-th update: warmup reaches the peak on update `warmup_steps`.
  warm = peak * jnp.minimum(1.0, (step + 1.0) / max(warmup_steps, 1))
  if schedule == "constant" or decay_steps is None:
    return warm if warmup_steps else jnp.full_like(step, peak)
  span = max(decay_steps - warmup_steps, 1)
  progress = jnp.clip((step - warmup_steps) / span, 0.0, 1.0)
  floor = final_fraction * peak
  if schedule == "cosine":
    decayed = floor + (peak - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
  else:
    decayed = peak - (peak - floor) * progress
  return jnp.where(step < warmup_steps, warm, decayed)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
  """optax.clip_by_global_norm that can take the norm as `update(..., global_norm=n)`.

  The trainer already computes the gradient norm (for metrics and the NaN check); passing it
  saves a second read of every gradient inside the update. A given norm must be that of the
  updates this transformation receives (it comes first in `create_optimizer`'s chain).
  Same numbers as optax's.
  """

  def update(updates, state, params=None, *, global_norm=None, **extra_args):
    del params, extra_args
    norm = optax.global_norm(updates) if global_norm is None else global_norm
    trigger = norm < max_norm

    def clip(t):
      return jax.lax.select(trigger, t, (t / norm.astype(t.dtype)) * max_norm)

    return jax.tree_util.tree_map(clip, updates), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update)


def decay_mask(params):
  """True for parameters that get weight decay: not biases, not LayerNorm parameters."""

  def decays(path, _):
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    leaf = names[-1] if names else ""
    in_layernorm = any("layernorm" in n.lower() or n.lower() in ("ln", "layer_norm")
                       for n in names[:-1])
    return not (leaf.endswith("bias") or leaf == "scale" or in_layernorm)

  return jax.tree_util.tree_map_with_path(decays, params)


@gin.configurable
def create_optimizer(*, total_steps: Optional[int] = None, learning_rate: float = 4e-4, warmup_steps: int = 0,
                     decay_steps: Optional[int] = None, schedule: str = "cosine",
                     final_fraction: float = 0.05, b1: float = 0.9, b2: float = 0.98,
                     eps: float = 1e-6, weight_decay: float = 0.1,
                     clip_norm: Optional[float] = 1.0
                     ) -> Tuple[optax.GradientTransformation, Callable]:
  """(optax transformation, schedule(step) -> learning rate).

  `decay_steps` None decays over `total_steps` (the trainer passes TRAIN_STEPS).
  """
  decay_steps = decay_steps if decay_steps is not None else total_steps

  def lr_fn(step):
    return learning_rate_schedule(step, peak=learning_rate, warmup_steps=warmup_steps,
                                  decay_steps=decay_steps, schedule=schedule,
                                  final_fraction=final_fraction)

  lr_fn(0)  # validates the schedule name now, not inside a jit trace
  chain = []
  if clip_norm:
    chain.append(clip_by_global_norm(clip_norm))
  chain.append(optax.adamw(lr_fn, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                           mask=decay_mask))
  return optax.chain(*chain), lr_fn
