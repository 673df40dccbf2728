"""Fine-tuning through the cloze head: a tiny GLM fits a few dozen RTE / COPA train examples."""

import collections

import gin
import jax
import numpy as np
import optax
import pytest

from glm_jax.model import GLMConfig
from glm_jax.superglue import inputs
from glm_jax.superglue.cloze_model import ClozeModel
from test_superglue_support import SUPERGLUE_DIR, tiny_vocab

CFG = GLMConfig(vocab_size=1024, num_layers=2, hidden_size=64, num_heads=4,
                max_sequence_length=128, embedding_dropout=0.0, attention_dropout=0.0,
                hidden_dropout=0.0)


@pytest.fixture(autouse=True)
def data_dir():
  with gin.unlock_config():
    gin.bind_parameter("glm_jax.superglue.sources.data_dirs.superglue_dir", SUPERGLUE_DIR)
  yield
  gin.clear_config()


def _fit(task, steps, batch_size, length, lr):
  model = ClozeModel(CFG)
  params = model.init_params(jax.random.PRNGKey(0))
  optimizer = optax.adam(lr)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, batch, rng):
    def loss(p):
      loss_sum, aux = model.loss_fn(p, batch, rng, deterministic=True)
      return loss_sum / aux["weight_sum"]
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  batches = inputs.get_batches(task, "train", sequence_length=length, batch_size=batch_size,
                               seed=0, vocabulary=tiny_vocab())
  losses = []
  for i in range(steps):
    params, opt_state, value = step(params, opt_state, next(batches), jax.random.PRNGKey(i))
    losses.append(float(value))
  # Training accuracy: one ordered pass over the same train examples, in eval form.
  eval_fn = jax.jit(model.eval_fn)
  totals = collections.Counter()
  for batch in inputs.get_batches(task, "train", sequence_length=length, batch_size=batch_size,
                                  vocabulary=tiny_vocab(), train=False):
    num, den = eval_fn(params, batch)["accuracy"]
    totals["num"] += float(num)
    totals["den"] += float(den)
  return losses, totals["num"] / totals["den"], int(totals["den"])


def test_rte_training_accuracy_well_above_majority():
  split = inputs.prepare_split("rte", "train", sequence_length=64, vocabulary=tiny_vocab(),
                               train=True)
  labels = [e.label for e in split.examples]
  majority = max(np.bincount(labels)) / len(labels)
  losses, acc, n = _fit("rte", steps=60, batch_size=20, length=64, lr=3e-3)
  assert n == 40
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
  assert acc >= 0.9 > majority + 0.2, (acc, majority)


def test_copa_multi_token_training_fits():
  losses, acc, n = _fit("copa", steps=40, batch_size=20, length=96, lr=3e-3)
  assert n == 40  # the eval pass has no mirrored copies
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
  assert acc >= 0.85, acc


def test_never_trains_on_validation():
  with pytest.raises(ValueError, match="Refusing to train"):
    next(inputs.get_batches("rte", "validation", sequence_length=64, batch_size=4,
                            vocabulary=tiny_vocab(), train=True))
