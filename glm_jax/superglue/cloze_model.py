"""ClozeModel: the trainer's model API for SuperGLUE cloze fine-tuning.

The loss is the cross-entropy over candidate scores (verbalizer logits, or sums of answer
log-probabilities), so learning flows through the language-model head, as in GLM. As the
reference's finetune_glm.py: loss 'mix' adds the gold candidate's negative score (its WSC
recipe, with length_penalty 1: scores are per-token means), and 'generative' (WSC, the
reference's task_wsc_generative.sh) trains the gold span's language-model loss and calls an
example true iff every token of the span is the argmax.
"""

from __future__ import annotations

import functools
from typing import Optional

import gin
import jax
import jax.numpy as jnp

from glm_jax.model import GLMConfig
from glm_jax.model_api import BaseModel
from glm_jax.superglue import scoring
from glm_jax.superglue.inputs import LOSSES


def _example_weights(batch):
  """1 on real examples with a gold candidate, 0 on padding rows and unlabeled examples."""
  weight = batch.get("example_weight", jnp.ones(batch["label"].shape, jnp.float32))
  return weight.astype(jnp.float32) * (batch["label"] >= 0)


@gin.configurable
class ClozeModel(BaseModel):
  """GLM scored on cloze candidates: `loss_fn`, `eval_fn`, `score`."""

  def __init__(self, config: Optional[GLMConfig] = None, length_penalty: float = 0.0,
               loss: str = "cross_entropy"):
    super().__init__(config)
    if loss not in LOSSES:
      raise ValueError(f"ClozeModel loss must be one of {LOSSES}, got {loss!r}.")
    self.length_penalty = float(length_penalty)
    self.loss = loss

  def _apply_fn(self, params, rng, deterministic):
    kwargs = {"deterministic": deterministic}
    if rng is not None and not deterministic:
      kwargs["rngs"] = {"dropout": rng}
    return functools.partial(self.module.apply, {"params": params}, **kwargs)

  def score(self, params, batch, rng=None, deterministic: bool = True):
    """Candidate scores [B, C] (INVALID_SCORE on padded candidates).

    A generative batch has one 'candidate' whose score is 0 when every answer token is the
    argmax and INVALID_SCORE otherwise.
    """
    apply_fn = self._apply_fn(params, rng, deterministic)
    if scoring.layout_of(batch) == "generative":
      _, _, all_correct = scoring.generative_outputs(apply_fn, batch)
      return jnp.where(all_correct, 0.0, scoring.INVALID_SCORE)[:, None]
    return scoring.candidate_scores(apply_fn, batch, length_penalty=self.length_penalty)

  def _generative(self, params, batch, rng, deterministic):
    """(per-example answer NLL, answer tokens, correct) of a generative batch."""
    nll, tokens, all_correct = scoring.generative_outputs(
        self._apply_fn(params, rng, deterministic), batch)
    correct = all_correct == (batch["label"] > 0)
    return nll, tokens, correct.astype(jnp.float32)

  def _loss_and_correct(self, scores, batch):
    label = jnp.maximum(batch["label"], 0)
    gold = jnp.take_along_axis(scores, label[:, None].astype(jnp.int32), axis=-1)[:, 0]
    nll = jax.nn.logsumexp(scores, axis=-1) - gold
    if self.loss == "mix":
      nll = nll - gold
    prediction = jnp.argmax(scores, axis=-1)
    if "first_is_gold" in batch:  # WSC: true iff the queried span scores highest
      correct = (prediction == 0) == (batch["first_is_gold"] > 0)
    else:
      correct = prediction == batch["label"]
    return nll, correct.astype(jnp.float32)

  def loss_fn(self, params, batch, rng, deterministic: bool = False):
    """(sum of per-example CE over candidates, aux with weight_sum and metrics).

    Generative batches: the sum of answer-token NLLs over the token count (the reference's
    lm_forward_step loss), accuracy per example.
    """
    if scoring.layout_of(batch) == "generative":
      nll, tokens, correct = self._generative(params, batch, rng, deterministic)
      weights = _example_weights(batch)
      loss_sum, weight_sum = jnp.sum(nll * weights), jnp.sum(tokens * weights)
      examples = jnp.sum(weights)
      return loss_sum, {"weight_sum": weight_sum,
                        "metrics": {"accuracy": (jnp.sum(correct * weights), examples),
                                    "loss": (loss_sum, weight_sum)}}
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
    if scoring.layout_of(batch) == "generative":
      nll, tokens, correct = self._generative(params, batch, None, True)
      valid = batch.get("example_weight", jnp.ones(batch["label"].shape, jnp.float32))
      valid = valid.astype(jnp.float32)
      return {"accuracy": (jnp.sum(correct * valid), jnp.sum(valid)),
              "loss": (jnp.sum(nll * valid), jnp.sum(tokens * valid))}
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
