"""TrainState, the sharded train step (gradient accumulation, NaN handling) and the eval step."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Dict, Optional

import flax
import gin
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
import optax

from glm_jax import optim, partitioning, settings
from glm_jax.model_api import BaseModel

NAN_ACTIONS = ("skip", "stop")
LOSS_NORMALIZATIONS = ("tokens", "microbatch_mean")
MICROBATCH_CLIPS = ("accumulated", "each")


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a checkpoint saves exactly this pytree."""

  step: jax.Array  # int32 scalar: number of train steps taken
  params: Any
  opt_state: Any


def _zeros_like_tree(tree):
  return jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), tree)


@gin.configurable
class Trainer:
  """Builds jitted, sharded init / train / eval functions for one model on one mesh.

  The loss of a step is sum(per-token loss) / sum(weights) over the whole global batch, also
  when the batch is split into `num_microbatches` accumulated with lax.scan
  (`loss_normalization='tokens'`); 'microbatch_mean' is the reference's: the mean over
  microbatches of each one's own token mean. The mean gradient is clipped to global norm
  `clip_norm` (optax.clip_by_global_norm) before the optimizer; `microbatch_clip='each'`
  also clips the gradient accumulated so far before each further microbatch is added (the
  reference's non-DeepSpeed path). Dropout keys are fold_in(PRNGKey(seed), step) (then the
  microbatch index), so a resumed run repeats them. `nan_action`: a step with a non-finite
  loss or gradient never changes the state; 'skip' carries on, 'stop' makes the training loop
  raise at its next check (no new checkpoint).
  """

  def __init__(self, model: BaseModel, partitioner: partitioning.Partitioner,
               optimizer: optax.GradientTransformation, learning_rate_fn: Callable,
               seed: int = 0, num_microbatches: int = 1, nan_action: str = "skip",
               clip_norm: Optional[float] = 1.0,
               loss_normalization: str = "tokens", microbatch_clip: str = "accumulated"):
    if nan_action not in NAN_ACTIONS:
      raise ValueError(f"nan_action must be one of {NAN_ACTIONS}, got {nan_action!r}.")
    settings.check_types(Trainer, {"clip_norm": clip_norm,
                                   "loss_normalization": loss_normalization,
                                   "microbatch_clip": microbatch_clip})
    settings.in_range(Trainer, "clip_norm", clip_norm, 0.0, math.inf, low_open=True)
    if num_microbatches < 1:
      raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}.")
    if loss_normalization not in LOSS_NORMALIZATIONS:
      raise ValueError(f"loss_normalization must be one of {LOSS_NORMALIZATIONS}, got "
                       f"{loss_normalization!r}.")
    if microbatch_clip not in MICROBATCH_CLIPS:
      raise ValueError(f"microbatch_clip must be one of {MICROBATCH_CLIPS}, got "
                       f"{microbatch_clip!r}.")
    if (microbatch_clip == "each" and num_microbatches > 1 and clip_norm
        and loss_normalization != "microbatch_mean"):
      raise ValueError("MICROBATCH_CLIP='each' (the reference's non-DeepSpeed path) needs "
                       "LOSS_NORMALIZATION='microbatch_mean', as in the reference.")
    self.model = model
    self.partitioner = partitioner
    self.optimizer = optimizer
    self.learning_rate_fn = learning_rate_fn
    self.seed = seed
    self.num_microbatches = num_microbatches
    self.nan_action = nan_action
    self.clip_norm = clip_norm
    # With one microbatch both normalisations and both clip points coincide.
    self.microbatch_mean = loss_normalization == "microbatch_mean" and num_microbatches > 1
    self.clip_each = microbatch_clip == "each" and num_microbatches > 1 and bool(clip_norm)

    boxed = model.abstract_params()
    self.param_shardings = partitioner.param_shardings(boxed)
    abstract_params = flax.linen.meta.unbox(boxed)
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    replicated = partitioner.replicated()
    opt_shardings = optax.tree_map_params(
        optimizer, lambda _, sharding: sharding, abstract_opt, self.param_shardings,
        transform_non_params=lambda _: replicated)
    self.state_shardings = TrainState(step=replicated, params=self.param_shardings,
                                      opt_state=opt_shardings)
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                          opt_state=abstract_opt)
    self.abstract_state = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract,
        self.state_shardings)
    batch_sharding = partitioner.batch_sharding()

    self._init = jax.jit(self._init_fn, out_shardings=self.state_shardings)
    self._from_params = jax.jit(self._from_params_fn, in_shardings=(self.param_shardings,),
                                out_shardings=self.state_shardings)
    self._train_step = jax.jit(self._train_step_fn,
                               in_shardings=(self.state_shardings, batch_sharding),
                               out_shardings=(self.state_shardings, replicated),
                               donate_argnums=(0,))
    self._eval_step = make_eval_step(model, partitioner, self.param_shardings)

  # Everything traced runs under the mesh and the logical-axis rules.
  def _traced(self, fn, *args):
    with jax.set_mesh(self.partitioner.mesh), self.partitioner.axis_rules():
      return fn(*args)

  def init_state(self, rng) -> TrainState:
    """Fresh parameters and optimizer state, created directly in their shardings."""
    return self._traced(self._init, rng)

  def state_from_params(self, params) -> TrainState:
    """A step-0 state around given parameters (fine-tuning, converted weights)."""
    return self._traced(self._from_params, params)

  def train_step(self, state: TrainState, batch) -> tuple:
    """One optimizer step on a global batch; returns (new_state, metrics). Donates `state`."""
    return self._traced(self._train_step, state, batch)

  def lower_train_step(self, state, batch, lowering_platforms=None):
    """The jitted train step lowered for (abstract) state and batch: for AOT compilation.

    lowering_platforms, e.g. ('cuda',): lower for that platform instead of this one's.
    """
    lower = lambda s, b: self._train_step.trace(s, b).lower(  # pylint: disable=unnecessary-lambda-assignment
        lowering_platforms=lowering_platforms)
    return self._traced(lower, state, batch)

  def eval_step(self, params, batch) -> Dict[str, tuple]:
    """{name: (numerator, denominator)} of one global evaluation batch."""
    return self._eval_step(params, batch)

  def eval_metric_names(self, batch) -> list:
    """The names `evaluate` reports ('eval/<metric>') for batches like `batch` (no compute)."""
    shapes = self._traced(jax.eval_shape, self.model.eval_fn, self.abstract_state.params, batch)
    return sorted(f"eval/{name}" for name in shapes)

  def _init_fn(self, rng):
    params = self.model.init_params(rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.optimizer.init(params))

  def _from_params_fn(self, params):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.optimizer.init(params))

  def _microbatches(self, batch):
    """[B, ...] -> [M, B/M, ...]; microbatch m takes rows m, m+M, ... (local to each shard)."""
    m = self.num_microbatches
    sharding = NamedSharding(self.partitioner.mesh,
                             PartitionSpec(None, partitioning.BATCH_AXES))

    def split(x):
      rows = x.shape[0]
      if rows % m:
        raise ValueError(f"Batch of {rows} rows is not divisible by {m} microbatches.")
      y = x.reshape((rows // m, m) + x.shape[1:]).swapaxes(0, 1)
      return jax.lax.with_sharding_constraint(y, sharding)

    return jax.tree_util.tree_map(split, batch)

  def learning_rate(self, optimizer_updates) -> float:
    """The learning rate of the update after `optimizer_updates` applied ones (float64)."""
    return optim.schedule_value(self.learning_rate_fn, optimizer_updates)

  def _gradients(self, params, batch, rng):
    """(grads, loss_sum, denominator, aux): the mean gradient is grads / denominator.

    'tokens': grads and loss_sum are sums over the batch, denominator its total weight.
    'microbatch_mean': each microbatch's share is divided by its own weight first and the
    denominator is the number of microbatches. aux is summed over microbatches.
    """
    loss_fn = functools.partial(self.model.loss_fn, deterministic=False)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if self.num_microbatches == 1:
      (loss_sum, aux), grads = grad_fn(params, batch, rng)
      return grads, loss_sum, _positive(aux["weight_sum"]), aux

    m = self.num_microbatches
    micro = self._microbatches(batch)
    first = jax.tree_util.tree_map(lambda x: x[0], micro)
    (loss_shape, aux_shape), grad_shape = jax.eval_shape(grad_fn, params, first, rng)
    init = (_zeros_like_tree(grad_shape), _zeros_like_tree(loss_shape),
            _zeros_like_tree(aux_shape))

    def body(carry, inputs):
      index, microbatch = inputs
      if self.clip_each:
        # The reference's backward_step clips after every microbatch: the sum so far (in the
        # final mean's scale, / m) is clipped before the next microbatch is added; the last
        # clip is the step's own, after the scan.
        carry = (_clip(carry[0], m * self.clip_norm),) + carry[1:]
      (loss_sum, aux), grads = grad_fn(params, microbatch, jax.random.fold_in(rng, index))
      if self.microbatch_mean:
        inverse = 1.0 / _positive(aux["weight_sum"])
        grads, loss_sum = _scale_tree(grads, inverse), loss_sum * inverse
      carry = jax.tree_util.tree_map(jnp.add, carry, (grads, loss_sum, aux))
      return carry, None

    (grads, loss_sum, aux), _ = jax.lax.scan(body, init, (jnp.arange(m), micro))
    if self.microbatch_mean:
      return grads, loss_sum, jnp.asarray(m, jnp.float32), aux
    return grads, loss_sum, _positive(aux["weight_sum"]), aux

  def _train_step_fn(self, state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.PRNGKey(self.seed), state.step)
    grads, loss_sum, denominator, aux = self._gradients(state.params, batch, rng)
    loss = loss_sum / denominator
    # The norm of the mean gradient grads / denominator (the metric and the NaN check); the
    # clip in `apply` is optax's, which takes the norm of the mean gradient again.
    grad_norm = optax.global_norm(grads) / denominator
    # An Inf or NaN anywhere in the gradients makes the norm's sum of squares non-finite, so
    # one scalar decides; the optimizer then runs only on finite steps (no full-state select).
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # The optimizer's own update count: the step its schedule takes the learning rate at. A
    # skipped step advances state.step but not this count.
    updates_before = optimizer_updates(state.opt_state, state.step)

    def apply(params_and_opt):
      params, opt_state = params_and_opt
      mean = _scale_tree(grads, 1.0 / denominator)
      if self.clip_norm:
        mean = _clip(mean, self.clip_norm)
      updates, opt_state = self.optimizer.update(mean, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    params, opt_state = jax.lax.cond(finite, apply, lambda unchanged: unchanged,
                                     (state.params, state.opt_state))
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)

    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "optimizer_updates": updates_before,
        "skipped_updates": new_state.step - optimizer_updates(opt_state, new_state.step),
        "weight_sum": aux["weight_sum"],
        "nonfinite": jnp.logical_not(finite),
    }
    for name, (num, den) in aux["metrics"].items():
      if name != "loss":
        metrics[name] = num / jnp.where(den > 0, den, 1.0)
    return new_state, metrics


def optimizer_updates(opt_state, default):
  """The update count an optax state keeps (its first `count` field), else `default`."""
  counts = optax.tree_utils.tree_get_all_with_path(opt_state, "count")
  return counts[0][1] if counts else default


def _positive(weight):
  return jnp.where(weight > 0, weight, 1.0)


def _clip(tree, max_norm: float):
  """optax.clip_by_global_norm: `tree` scaled to global norm max_norm where it is above."""
  return optax.clip_by_global_norm(max_norm).update(tree, optax.EmptyState())[0]


def _scale_tree(tree, factor):
  return jax.tree_util.tree_map(lambda x: x * factor.astype(x.dtype), tree)


def make_eval_step(model: BaseModel, partitioner: partitioning.Partitioner, param_shardings=None):
  """Jitted eval_fn(params, batch) -> {name: (numerator, denominator)} on the mesh."""
  if param_shardings is None:
    param_shardings = partitioner.param_shardings(model.abstract_params())
  jitted = jax.jit(model.eval_fn, in_shardings=(param_shardings, partitioner.batch_sharding()),
                   out_shardings=partitioner.replicated())

  def eval_step(params, batch):
    with jax.set_mesh(partitioner.mesh), partitioner.axis_rules():
      return jitted(params, batch)

  return eval_step


def evaluate(eval_step: Callable, params, batches) -> Dict[str, float]:
  """Sums {name: (numerator, denominator)} over global batches; returns {eval/name: ratio}."""
  totals = None
  for batch in batches:
    metrics = eval_step(params, batch)
    totals = metrics if totals is None else jax.tree_util.tree_map(jnp.add, totals, metrics)
  if totals is None:
    raise ValueError("The evaluation input yielded no batches; check the split and EVAL_STEPS.")
  totals = jax.device_get(totals)
  return {f"eval/{name}": float(num) / max(float(den), 1e-9)
          for name, (num, den) in totals.items()}
