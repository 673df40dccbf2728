"""The one index-addressable source of GLM examples: example k = f(seed, split, k).

Training, evaluation, `inspect` and the seqio Tasks all read GLM corpora here. A source is
one or more prepared corpora (a mixture weights them by rate), an objective mix and a
vocabulary. Stream position k of (seed, split):

1. picks a component by its rate and draws the raw sample (`samples.SampleBuilder`) with a
   Python RNG seeded by (seed, split, k): ranged reads of that sample's documents only;
2. builds the blank-infilling example (`objectives.construct_example`) in TF with the
   stateless seed `stateless_fold_in([seed, split_id], k)`.

Nothing depends on earlier positions, so a process reads only its own rows and resuming at
any batch costs what starting does; memory is independent of the corpus size.
"""

from __future__ import annotations

import random
import threading
from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from glm_jax import sizes
from glm_jax.data import objectives
from glm_jax.data import prepared
from glm_jax.data import samples

INDEX_FEATURES = ("index", "split", "base_seed")
READ_CHUNK = 32  # stream positions per call into the Python sampler


def split_id(split: str) -> int:
  return sum(split.encode()) * 7919 + len(split)


def index_features(split: str, seed: int, k) -> dict:
  """The features of stream position(s) k that `GLMSource.examples` turns into examples."""
  return {"index": tf.cast(k, tf.int64), "split": tf.constant(split),
          "base_seed": tf.constant([seed, split_id(split)], tf.int64)}


def sample_rng(seed: int, split: str, k: int) -> random.Random:
  """The RNG that draws raw sample k of (seed, split)."""
  return random.Random(((seed % (1 << 64)) << 80) | (split_id(split) << 64) | int(k))


class GLMSource:
  """Examples of a GLM task or mixture, addressed by stream position."""

  def __init__(self, name: str, components: Sequence[Tuple[prepared.PreparedCorpus, float]],
               mix, vocabulary):
    if not components:
      raise ValueError(f"{name!r} has no corpus.")
    total = float(sum(rate for _, rate in components))
    if not total > 0 or min(rate for _, rate in components) < 0:
      raise ValueError(f"Mixing rates of {name!r} must be non-negative with a positive sum.")
    self.name = name
    self.components = [c for c, _ in components]
    self._cum = np.cumsum([rate / total for _, rate in components])
    self.mix = mix
    self.vocabulary = vocabulary
    self.special = vocabulary.special
    self._is_end = samples.sentence_end_table(self.special, vocabulary.vocab_size)
    self._builders = {}
    self._lock = threading.Lock()

  def _builder(self, component: int, split: str, raw_length: int) -> samples.SampleBuilder:
    key = (component, split, raw_length)
    with self._lock:
      if key not in self._builders:
        self._builders[key] = samples.SampleBuilder(
            self.components[component].split(split), self.special, raw_length,
            self.mix.short_seq_prob, self._is_end)
      return self._builders[key]

  def check_split(self, split: str) -> None:
    """A clear error when a component has no documents in `split`."""
    for c in self.components:
      if split not in c.splits:
        raise ValueError(f"The prepared corpus {c.directory} of {self.name!r} has no "
                         f"{split!r} documents; prepare it with --validation_input or "
                         "--holdout_every.")

  def raw_length(self, sequence_length: int) -> int:
    return self.mix.raw_length(sequence_length)

  def raw_sample(self, split: str, seed: int, k: int, sequence_length: int,
                 counters: Optional[samples.SampleCounters] = None) -> np.ndarray:
    """Raw sample k of (seed, split) for model length `sequence_length`."""
    rng = sample_rng(seed, split, k)
    component = 0
    if len(self.components) > 1:
      component = min(int(np.searchsorted(self._cum, rng.random(), side="right")),
                      len(self.components) - 1)
    builder = self._builder(component, split, self.raw_length(sequence_length))
    return builder.sample(rng, counters)

  def num_samples(self, split: str, sequence_length: int) -> int:
    """Samples of one pass over a split: its tokens over the raw sample length."""
    tokens = sum(c.num_tokens(split) for c in self.components)
    return max(1, sizes.ceil_div(tokens, self.raw_length(sequence_length)))

  @property
  def reads(self) -> int:
    """Ranged reads issued so far (index blocks and token windows)."""
    return sum(c.split(s).reads for c in self.components for s in c.splits)

  def examples(self, ds: tf.data.Dataset, sequence_length: int,
               objective_probs=None) -> tf.data.Dataset:
    """{index, split, base_seed, ...} -> GLM layout examples (objectives.py keys, unpadded;
    'index' and any other input features are kept).

    This is the seqio preprocessor of the GLM Tasks and the trainer's example map alike.
    `objective_probs` overrides the mix's (inspect --objective).
    """
    kwargs = self.mix.objective_kwargs()
    if objective_probs is not None:
      kwargs["objective_probs"] = tuple(objective_probs)

    raw_length = self.raw_length(sequence_length)

    def read(split, base_seed, ks):
      """Raw samples of stream positions `ks` (one split and seed), padded, and lengths."""
      tokens = np.zeros([len(ks), raw_length], np.int32)
      lengths = np.zeros([len(ks)], np.int32)
      for i, k in enumerate(ks):
        sample = self.raw_sample(split.decode(), int(base_seed[0]), int(k), sequence_length)
        tokens[i, :len(sample)] = sample
        lengths[i] = len(sample)
      return tokens, lengths

    def read_chunk(features):
      # One Python call per chunk: crossing into Python per example costs more than drawing.
      tokens, lengths = tf.numpy_function(
          read, [features["split"][0], features["base_seed"][0], features["index"]],
          (tf.int32, tf.int32), stateful=False)
      tokens.set_shape([None, raw_length])
      lengths.set_shape([None])
      return dict(features, raw=tokens, raw_length=lengths)

    def build(features):
      raw = features["raw"][:features["raw_length"]]
      seed = tf.random.experimental.stateless_fold_in(features["base_seed"], features["index"])
      out = objectives.construct_example(raw, seed, self.special,
                                         sequence_length=sequence_length, **kwargs)
      out["index"] = features["index"]
      dropped = INDEX_FEATURES + ("raw", "raw_length")
      out.update({k: v for k, v in features.items() if k not in dropped})
      return out

    ds = ds.batch(READ_CHUNK).map(read_chunk).unbatch()
    return ds.map(build, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
