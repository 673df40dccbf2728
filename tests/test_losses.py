"""The weighted cross-entropy and its argmax accuracy."""

import jax
import jax.numpy as jnp
import numpy as np

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
