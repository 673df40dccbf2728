"""AdamW with GLM's decay mask, warmup + cosine/linear decay to a floor, and the clip factor.

GLM_SPEC.md section 5: Adam betas (0.9, 0.98), eps 1e-6, weight decay 0.1 on everything but
biases and LayerNorm parameters, clipping at global norm 1.0, linear warmup, then cosine (or
linear) decay to a fraction of the peak learning rate. Schedules are optax schedules of the
optimizer's update count (0 for the first update); two conventions (docs/training.md):

  'glm_jax'    update k (1-based) of the warmup gets peak * k / W: no update runs at lr 0.
  'reference'  THUDM/GLM's AnnealingLR: update k gets lr(k - 1), so the first has lr 0; its
               linear decay is not clamped at DECAY_STEPS.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

SCHEDULES = ("cosine", "linear", "constant")
CONVENTIONS = ("glm_jax", "reference")


def learning_rate_schedule(*, peak: float, warmup_steps: float = 0,
                           decay_steps: Optional[float] = None, schedule: str = "cosine",
                           final_fraction: float = 0.05,
                           convention: str = "glm_jax") -> optax.Schedule:
  """lr(count) for count = updates already applied: warmup, then `schedule` to the floor.

  Linear warmup to `peak` over `warmup_steps` (W), then `schedule` from `peak` down to
  `final_fraction * peak` at count `decay_steps` (counted from 0, warmup included), constant
  afterwards ('reference' linear: decreasing on). `decay_steps` None: `peak` after warmup.
  """
  if schedule not in SCHEDULES:
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}.")
  if convention not in CONVENTIONS:
    raise ValueError(f"schedule convention must be one of {CONVENTIONS}, got {convention!r}.")
  if warmup_steps < 0:
    raise ValueError(f"The warmup must not be negative, got {warmup_steps}.")
  reference = convention == "reference"
  warmup = warmup_steps
  floor = final_fraction * peak

  if schedule == "constant" or decay_steps is None:
    decay = optax.constant_schedule(peak)
  else:
    span = decay_steps - warmup
    if reference and span <= 0:
      raise ValueError(f"DECAY_STEPS ({decay_steps}) must exceed the warmup ({warmup}) with the "
                       "reference schedule (it divides by their difference).")
    span = span if reference else max(span, 1)
    if schedule == "cosine":
      decay = optax.cosine_decay_schedule(peak, span, alpha=final_fraction)
    elif not reference:
      decay = optax.linear_schedule(peak, floor, span)
    else:  # AnnealingLR's linear decay goes on below the floor after DECAY_STEPS
      decay = lambda count: peak - (peak - floor) * (count / span)

  if reference:
    if not warmup:  # AnnealingLR takes the warmup branch only for W > 0
      return decay
    ramp = optax.linear_schedule(0.0, peak, warmup)  # count n <= W: peak * n / W
  elif warmup > 1:
    ramp = optax.linear_schedule(peak / warmup, peak, warmup - 1)  # count n: peak (n+1) / W
  elif warmup > 0:
    ramp = optax.constant_schedule(peak)  # a warmup of at most one update is the peak
  else:
    return decay
  return optax.join_schedules([ramp, decay], [warmup])


def schedule_value(schedule: optax.Schedule, count) -> float:
  """The schedule at an update count, evaluated in float64 on the host (for logging).

  Inside the jitted step the same function runs in float32 (what the update applies; within
  ~6e-8 relative of this value).
  """
  with jax.enable_x64(True):
    return float(schedule(np.int64(count)))


def clip_factor(norm, max_norm: Optional[float], eps: float = 0.0):
  """The factor that brings a gradient of global norm `norm` to at most `max_norm`.

  max_norm / (norm + eps) where that is below 1, else 1 (also for a NaN norm). eps 0 is
  optax.clip_by_global_norm's rule; 1e-6 is the reference's (mpu.clip_grad_norm, DeepSpeed).
  """
  if not max_norm:
    return jnp.ones_like(norm)
  shifted = norm + eps
  return jnp.where(shifted > max_norm, max_norm / shifted, 1.0).astype(norm.dtype)


@gin.configurable
def decay_mask(params):
  """True for parameters that get weight decay: not biases, not LayerNorm parameters.

  The reference's groups (glm_get_params_for_weight_decay_optimization): the embeddings and
  every kernel decay.
  """

  def decays(path, _):
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    leaf = names[-1] if names else ""
    in_layernorm = any("layernorm" in n.lower() or n.lower() in ("ln", "layer_norm")
                       for n in names[:-1])
    return not (leaf.endswith("bias") or leaf == "scale" or in_layernorm)

  return jax.tree_util.tree_map_with_path(decays, params)


def _check_settings(values: dict) -> None:
  """Types and ranges of create_optimizer's settings (one line naming the macro)."""
  from glm_jax import settings  # pylint: disable=g-import-not-at-top
  fn = create_optimizer
  settings.check_types(fn, {k: v for k, v in values.items() if k != "weight_decay_mask"})
  settings.in_range(fn, "learning_rate", values["learning_rate"], 0.0, math.inf)
  settings.at_least(fn, "decay_steps", values["decay_steps"], 1)
  settings.in_range(fn, "warmup_fraction", values["warmup_fraction"], 0.0, 1.0,
                    high_open=False)
  settings.in_range(fn, "final_fraction", values["final_fraction"], 0.0, 1.0, high_open=False)
  for name in ("b1", "b2"):
    settings.in_range(fn, name, values[name], 0.0, 1.0)
  settings.in_range(fn, "eps", values["eps"], 0.0, math.inf, low_open=True)
  settings.in_range(fn, "weight_decay", values["weight_decay"], 0.0, math.inf)


@gin.configurable
def create_optimizer(*, total_steps: Optional[int] = None, learning_rate: float = 4e-4,
                     warmup_steps: int = 0, warmup_fraction: Optional[float] = None,
                     decay_steps: Optional[int] = None, schedule: str = "cosine",
                     final_fraction: float = 0.05, convention: str = "glm_jax",
                     b1: float = 0.9, b2: float = 0.98, eps: float = 1e-6,
                     weight_decay: float = 0.1, weight_decay_mask: Callable = decay_mask
                     ) -> Tuple[optax.GradientTransformation, optax.Schedule]:
  """(optax.adamw with the decay mask, schedule(update count) -> learning rate).

  `decay_steps` None decays over `total_steps` (the trainer passes TRAIN_STEPS).
  `warmup_fraction` (the reference's --warmup) sets the warmup to that fraction of the decay
  steps, in place of `warmup_steps`. Clipping is the trainer's (Trainer.clip_norm).
  """
  _check_settings(dict(locals()))
  decay_steps = decay_steps if decay_steps is not None else total_steps
  if warmup_fraction is not None:
    if decay_steps is None:
      raise ValueError("WARMUP_FRACTION needs DECAY_STEPS (or TRAIN_STEPS) to be a fraction of.")
    warmup_steps = warmup_fraction * decay_steps
  lr_fn = learning_rate_schedule(peak=learning_rate, warmup_steps=warmup_steps,
                                 decay_steps=decay_steps, schedule=schedule,
                                 final_fraction=final_fraction, convention=convention)
  tx = optax.adamw(lr_fn, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                   mask=weight_decay_mask)
  return tx, lr_fn
