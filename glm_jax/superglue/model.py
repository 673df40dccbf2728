"""ClozeModel: the trainer's model API for SuperGLUE cloze fine-tuning.

The loss is the cross-entropy over candidate scores (verbalizer logits, or sums of answer
log-probabilities), so learning flows through the language-model head, as in GLM.
"""

from __future__ import annotations

import functools
from typing import Optional

import gin
import jax
import jax.numpy as jnp

from glm_jax.model import GLMConfig
from glm_jax.models import BaseModel
from glm_jax.superglue import scoring


def _example_weights(batch):
  """1 on real examples with a gold candidate, 0 on padding rows and unlabeled examples."""
  weight = batch.get("example_weight", jnp.ones(batch["label"].shape, jnp.float32))
  return weight.astype(jnp.float32) * (batch["label"] >= 0)


@gin.configurable
def checkpoint_config(path: Optional[str], dropout: Optional[float] = None) -> GLMConfig:
  """The GLMConfig stored with a checkpoint (params-only or MODEL_DIR).

  Lets a fine-tuning run take its network sizes from INIT_CHECKPOINT; `dropout` (the
  reference fine-tunes with 0.1) replaces the embedding, attention and hidden dropout.
  """
  from glm_jax import checkpoints  # pylint: disable=g-import-not-at-top
  if not path:
    raise ValueError("Set INIT_CHECKPOINT (or CHECKPOINT) to a GLM checkpoint directory.")
  try:
    config, _, _ = checkpoints.read_config(path)
  except FileNotFoundError:
    raise FileNotFoundError(f"No GLM checkpoint at {path!r}; pass a params-only checkpoint or "
                            "a MODEL_DIR with saved steps as INIT_CHECKPOINT / CHECKPOINT."
                            ) from None
  if dropout is not None:
    config = config.replace(embedding_dropout=dropout, attention_dropout=dropout,
                            hidden_dropout=dropout)
  return config


@gin.configurable
class ClozeModel(BaseModel):
  """GLM scored on cloze candidates: `loss_fn`, `eval_fn`, `score`."""

  def __init__(self, config: Optional[GLMConfig] = None):
    super().__init__(config)

  def score(self, params, batch, rng=None, deterministic: bool = True):
    """Candidate scores [B, C] (INVALID_SCORE on padded candidates)."""
    kwargs = {"deterministic": deterministic}
    if rng is not None and not deterministic:
      kwargs["rngs"] = {"dropout": rng}
    apply_fn = functools.partial(self.module.apply, {"params": params})
    return scoring.candidate_scores(apply_fn, batch, **kwargs)

  def _loss_and_correct(self, scores, batch):
    label = jnp.maximum(batch["label"], 0)
    nll = jax.nn.logsumexp(scores, axis=-1) - jnp.take_along_axis(
        scores, label[:, None].astype(jnp.int32), axis=-1)[:, 0]
    prediction = jnp.argmax(scores, axis=-1)
    if "first_is_gold" in batch:  # WSC: true iff the queried span scores highest
      correct = (prediction == 0) == (batch["first_is_gold"] > 0)
    else:
      correct = prediction == batch["label"]
    return nll, correct.astype(jnp.float32)

  def loss_fn(self, params, batch, rng, deterministic: bool = False):
    """(sum of per-example CE over candidates, aux with weight_sum and metrics)."""
    scores = self.score(params, batch, rng=rng, deterministic=deterministic)
    nll, correct = self._loss_and_correct(scores, batch)
    weights = _example_weights(batch)
    loss_sum = jnp.sum(nll * weights)
    weight_sum = jnp.sum(weights)
    return loss_sum, {"weight_sum": weight_sum,
                      "metrics": {"accuracy": (jnp.sum(correct * weights), weight_sum),
                                  "loss": (loss_sum, weight_sum)}}

  def eval_fn(self, params, batch):
    """{'accuracy': (num, den), 'loss': (num, den)} over the real examples of a batch."""
    scores = self.score(params, batch)
    nll, correct = self._loss_and_correct(scores, batch)
    weights = _example_weights(batch)
    valid = batch.get("example_weight", jnp.ones(batch["label"].shape, jnp.float32))
    if "first_is_gold" in batch:  # every WSC example counts, not only the true ones
      acc_weights = valid.astype(jnp.float32)
    else:
      acc_weights = weights
    return {"accuracy": (jnp.sum(correct * acc_weights), jnp.sum(acc_weights)),
            "loss": (jnp.sum(nll * weights), jnp.sum(weights))}
