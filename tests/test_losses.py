"""The weighted cross-entropy and its argmax accuracy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax import losses


def test_target_is_argmax_equals_argmax_including_ties():
  rng = np.random.RandomState(0)
  # Rounded logits: many rows have several maxima, where argmax takes the first.
  logits = np.round(rng.randn(6, 40, 17) * 1.5).astype(np.float32)
  first_max = np.argmax(logits, -1)
  targets = np.where(rng.rand(6, 40) < 0.5, first_max, rng.randint(0, 17, (6, 40)))
  # A later copy of the maximum is not the argmax.
  last_max = 16 - np.argmax(logits[..., ::-1], -1)
  targets[:, :5] = last_max[:, :5]
  expected = np.argmax(logits, -1) == targets
  assert 0.2 < expected.mean() < 0.9 and (first_max != last_max).any()
  got = jax.jit(losses.target_is_argmax)(jnp.asarray(logits), jnp.asarray(targets))
  np.testing.assert_array_equal(np.asarray(got), expected)


def test_weighted_cross_entropy_sums_over_weighted_tokens():
  rng = np.random.RandomState(1)
  logits = rng.randn(2, 5, 11).astype(np.float32)
  targets = rng.randint(0, 11, (2, 5))
  weights = (rng.rand(2, 5) < 0.6).astype(np.float32)
  loss_sum, weight_sum, correct = losses.weighted_cross_entropy(
      jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(loss_sum, (nll * weights).sum(), rtol=1e-5)
  np.testing.assert_allclose(weight_sum, weights.sum())
  np.testing.assert_allclose(correct, ((logits.argmax(-1) == targets) * weights).sum())


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_loss_gradient_equals_autodiff_of_the_plain_formula(label_smoothing):
  rng = np.random.RandomState(2)
  logits = jnp.asarray(rng.randn(2, 6, 13).astype(np.float32) * 3)
  targets = jnp.asarray(rng.randint(0, 13, (2, 6)))
  weights = jnp.asarray((rng.rand(2, 6) < 0.5).astype(np.float32))

  def plain(logits):
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
    smooth = -jnp.mean(logp, axis=-1)
    return jnp.sum(((1 - label_smoothing) * nll + label_smoothing * smooth) * weights)

  ours = jax.value_and_grad(
      lambda l: losses.weighted_cross_entropy(l, targets, weights, label_smoothing)[0])(logits)
  ref = jax.value_and_grad(plain)(logits)
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5)
  np.testing.assert_allclose(ours[1], ref[1], rtol=1e-5, atol=1e-6)
