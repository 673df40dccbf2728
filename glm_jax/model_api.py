"""The model API the trainer drives: a network plus its loss and evaluation metrics.

Every model (BlankInfillingModel here; the SuperGLUE ClozeModel elsewhere) subclasses
BaseModel and provides:

  config: GLMConfig                  the network's sizes (stored with every checkpoint)
  module: GLM                        the Flax network
  loss_fn(params, batch, rng, deterministic) -> (loss_sum, aux)
      loss_sum: float32 scalar SUM of per-token losses of this (micro)batch, not a mean;
      aux = {'weight_sum': scalar total loss weight,
             'metrics': {name: (numerator, denominator)}}.
      The trainer divides the summed gradient by the weight of the whole (accumulated) global
      batch, so gradient accumulation equals the large-batch gradient exactly.
  eval_fn(params, batch) -> {name: (numerator, denominator)}
      summed over evaluation batches; reported as numerator / denominator.
  init_params(rng) / abstract_params(): parameters and their logically annotated shapes.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import gin
import jax

from glm_jax import losses
from glm_jax import model as model_lib
from glm_jax.model import GLM, GLMConfig

Metrics = Dict[str, Tuple[jax.Array, jax.Array]]


class BaseModel:
  """A GLM network with a loss; subclasses implement loss_fn and eval_fn."""

  def __init__(self, config: Optional[GLMConfig] = None):
    self.config = config if config is not None else GLMConfig()
    self.module = GLM(self.config)

  def abstract_params(self):
    """Parameter ShapeDtypeStructs still boxed with their logical axis names."""
    return model_lib.abstract_params(self.config)

  def init_params(self, rng):
    """Fresh (unboxed) parameters."""
    return model_lib.init_params(self.config, rng)

  def logits(self, params, batch, rng=None, deterministic: bool = True):
    """Float32 logits [B, T, V] of a model batch (docs/ARCHITECTURE.md)."""
    rngs = None if deterministic or rng is None else {"dropout": rng}
    return self.module.apply({"params": params}, batch["tokens"], batch["positions"],
                             sep=batch.get("sep"), segment_ids=batch.get("segment_ids"),
                             deterministic=deterministic, rngs=rngs)

  def loss_fn(self, params, batch, rng, deterministic: bool = False) -> Tuple[jax.Array, Any]:
    raise NotImplementedError

  def eval_fn(self, params, batch) -> Metrics:
    raise NotImplementedError


@gin.configurable
class BlankInfillingModel(BaseModel):
  """GLM pretraining and seq2seq: cross-entropy on Part B targets (loss_weights)."""

  def __init__(self, config: Optional[GLMConfig] = None, label_smoothing: float = 0.0):
    from glm_jax import settings  # pylint: disable=g-import-not-at-top
    settings.check_types(BlankInfillingModel, {"label_smoothing": label_smoothing})
    settings.in_range(BlankInfillingModel, "label_smoothing", label_smoothing, 0.0, 1.0)
    super().__init__(config)
    self.label_smoothing = label_smoothing

  def loss_fn(self, params, batch, rng, deterministic: bool = False):
    logits = self.logits(params, batch, rng, deterministic)
    loss_sum, weight_sum, correct = losses.weighted_cross_entropy(
        logits, batch["targets"], batch["loss_weights"], self.label_smoothing)
    metrics = {"loss": (loss_sum, weight_sum), "accuracy": (correct, weight_sum)}
    return loss_sum, {"weight_sum": weight_sum, "metrics": metrics}

  def eval_fn(self, params, batch) -> Metrics:
    logits = self.logits(params, batch)
    loss_sum, weight_sum, correct = losses.weighted_cross_entropy(
        logits, batch["targets"], batch["loss_weights"])
    return {"loss": (loss_sum, weight_sum), "accuracy": (correct, weight_sum)}
