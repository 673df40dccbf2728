"""Evaluators for `python -m glm_jax.eval`: evaluator(params, config, vocab_spec, output_dir).

Each returns a dict of metrics and writes it as JSON to output_dir (local or gs://, by
process 0). LAMBADA and WikiText score teacher-forced rows in one forward pass per batch;
XSum fills the [sMASK] with beam search and reports ROUGE-1/2/L F1 (x100) from the
rouge-score package. Under glm_jax.eval they run on its mesh (`partitioning.active()`):
parameters stay sharded, batch rows are split over the batch axes.
"""

from __future__ import annotations

import functools
import json
import math
import time
from typing import Dict, Sequence

from absl import logging
import gin
import jax
import jax.numpy as jnp
import numpy as np

from glm_jax import decoding, losses, partitioning, paths
from glm_jax.lm_eval import blank_rows, lambada as lambada_lib, wikitext as wikitext_lib
from glm_jax.lm_eval import xsum as xsum_lib
from glm_jax.model import GLM


@functools.lru_cache(maxsize=16)
def _scorer(config, out_sharding=None):
  """jit: batch -> per row (sum of weighted NLL, sum of weights, all targets argmax)."""

  def score(params, batch):
    logits = GLM(config).apply({"params": params}, batch["tokens"], batch["positions"],
                               sep=batch["sep"])  # [B, T, V] float32
    logp = jax.nn.log_softmax(logits, axis=-1)
    target_logp = jnp.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
    w = batch["loss_weights"]
    hit = losses.target_is_argmax(logits, batch["targets"]) | (w == 0)
    return -jnp.sum(target_logp * w, -1), jnp.sum(w, -1), jnp.all(hit, -1)

  return jax.jit(score, out_shardings=out_sharding)


def score_rows(params, config, rows: Sequence[dict], batch_size: int,
               partitioner=None) -> Dict[str, np.ndarray]:
  """Per-row nll, weight and all-correct over rows of one length.

  With a partitioner (default: the active one) each batch is split over its batch axes and
  the scores come back replicated to every process.
  """
  partitioner = partitioner or partitioning.active()
  fn = _scorer(config, partitioner.replicated() if partitioner else None)
  nll, weight, correct = [], [], []
  for batch, n in blank_rows.batches(rows, batch_size):
    if partitioner is None:
      out = jax.device_get(fn(params, batch))
    else:
      with partitioner.under_mesh():
        out = fn(params, partitioner.put_global(batch, "LM evaluation batch"))
      out = [np.asarray(x) for x in out]
    nll.append(out[0][:n])
    weight.append(out[1][:n])
    correct.append(out[2][:n])
  return {"nll": np.concatenate(nll), "weight": np.concatenate(weight),
          "correct": np.concatenate(correct)}


def _vocabulary(vocab_spec):
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  return vocab_lib.get_vocabulary(vocab_spec) if isinstance(vocab_spec, str) else vocab_spec


def _check_file(path: str, macro: str) -> dict:
  """{} when `path` (set by the gin macro `macro`) is a file (glm_jax.eval's check_only)."""
  if not path or not paths.resolve(path).is_file():
    raise FileNotFoundError(f"{macro} {path!r} does not exist; set --gin.{macro}=PATH to the "
                            "evaluation file.")
  return {}


def _write(output_dir, name: str, metrics: dict) -> None:
  if output_dir and jax.process_index() == 0:
    paths.write_json(paths.resolve(output_dir) / f"{name}.json", metrics)
  logging.info("%s: %s", name, metrics)


@gin.configurable
def lambada(params, config, vocab_spec, output_dir, *, path: str = gin.REQUIRED,
            bidirectional: bool = True, mask: str = "gmask", sequence_length: int = 256,
            batch_size: int = 16, max_examples: int = 0, check_only: bool = False) -> dict:
  """LAMBADA accuracy (every word token the argmax) and word perplexity."""
  if check_only:
    return _check_file(path, "LAMBADA_PATH")
  vocabulary = _vocabulary(vocab_spec)
  passages = lambada_lib.read(path)
  if max_examples:
    passages = passages[:max_examples]
  length = min(sequence_length, config.max_sequence_length)
  start = time.time()
  rows = lambada_lib.build_rows(passages, vocabulary, sequence_length=length,
                                bidirectional=bidirectional, mask=mask)
  s = score_rows(params, config, rows, batch_size)
  name = "lambada" if bidirectional else "lambada_uni"
  metrics = {f"{name}/accuracy": float(np.mean(s["correct"])),
             f"{name}/word_token_ppl": float(math.exp(s["nll"].sum() / s["weight"].sum())),
             f"{name}/num_examples": len(rows), f"{name}/seconds": time.time() - start}
  _write(output_dir, name, metrics)
  return metrics


@gin.configurable
def wikitext(params, config, vocab_spec, output_dir, *, directory: str = gin.REQUIRED,
             split: str = "test", window: int = 1024, stride: int = 256, variants: Sequence[str] = ("bi", "uni"),
             batch_size: int = 8, max_tokens: int = 0, name: str = "wikitext2",
             check_only: bool = False) -> dict:
  """Token- and word-level perplexity, bidirectional and/or unidirectional."""
  if check_only:
    return _check_file(wikitext_lib.split_path(directory, split), "WIKITEXT_DIR")
  vocabulary = _vocabulary(vocab_spec)
  raw = wikitext_lib.read(wikitext_lib.split_path(directory, split))
  tokens = wikitext_lib.tokenize(raw, vocabulary)
  words = wikitext_lib.num_words(raw)
  if max_tokens:  # a prefix of the file; words scaled to the same share of it
    words = max(1, round(words * min(1.0, max_tokens / len(tokens))))
    tokens = tokens[:max_tokens]
  if window > config.max_sequence_length:
    logging.warning("window %d exceeds the model's %d positions; using %d.", window,
                    config.max_sequence_length, config.max_sequence_length)
    window = config.max_sequence_length
  stride = min(stride, window - 1)
  metrics = {f"{name}/num_tokens": int(len(tokens)), f"{name}/num_words": int(words),
             f"{name}/window": window, f"{name}/stride": stride}
  for variant in variants:
    if variant not in ("bi", "uni"):
      raise ValueError(f"WikiText variants are 'bi' and 'uni', got {variant!r}.")
    start = time.time()
    rows = wikitext_lib.build_rows(tokens, vocabulary.special, window=window, stride=stride,
                                   bidirectional=variant == "bi")
    s = score_rows(params, config, rows, batch_size)
    total, count = float(s["nll"].sum()), float(s["weight"].sum())
    metrics.update({f"{name}/{variant}/token_ppl": math.exp(total / count),
                    f"{name}/{variant}/word_ppl": math.exp(total / words),
                    f"{name}/{variant}/predicted_tokens": int(count),
                    f"{name}/{variant}/seconds": time.time() - start})
  _write(output_dir, name, metrics)
  return metrics


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict:
  """Mean ROUGE-1/2/L F1 x 100 (rouge-score, Porter stemmer)."""
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
  scores = [scorer.score(r, p) for p, r in zip(predictions, references)]
  return {k: 100.0 * float(np.mean([s[k].fmeasure for s in scores]))
          for k in ("rouge1", "rouge2", "rougeL")}


@gin.configurable
def xsum(params, config, vocab_spec, output_dir, *, path: str = gin.REQUIRED,
         split: str = "validation", num_examples: int = 0, source_length: int = 448,
         decode_config: decoding.DecodeConfig = decoding.DecodeConfig(
             strategy="beam", num_beams=6, length_penalty=1.0, min_length=10,
             no_repeat_ngram_size=3, max_new_tokens=60),
         batch_size: int = 4, check_only: bool = False) -> dict:
  """Beam-search summaries of the [sMASK] and their ROUGE against the references."""
  if check_only:
    return _check_file(path, "XSUM_PATH")
  vocabulary = _vocabulary(vocab_spec)
  pairs = xsum_lib.read(path, split)
  if num_examples:
    pairs = pairs[:num_examples]
  source_length = min(source_length, config.max_sequence_length)
  params, config = decoding.unstack_layers(params, config)
  special = vocabulary.special
  predictions, start = [], time.time()
  for lo in range(0, len(pairs), batch_size):
    chunk = pairs[lo:lo + batch_size]
    contexts = [xsum_lib.part_a(d, vocabulary, source_length) for d, _ in chunk]
    width = min(config.max_sequence_length, -(-max(len(c) for c in contexts) // 32) * 32)
    context = np.zeros((len(chunk), width), np.int32)
    for i, c in enumerate(contexts):
      context[i, :len(c)] = c
    out = decoding.fill_blanks(params, config, special, context,
                               np.array([len(c) for c in contexts], np.int32),
                               np.ones((len(chunk), 1), np.int32), decode_config=decode_config)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    for i in range(len(chunk)):
      fill = decoding.split_blanks(tokens[i], lengths[i], special, decode_config)
      predictions.append(vocabulary.decode(fill[0] if fill else []).strip())
  scores = rouge(predictions, [s for _, s in pairs])
  metrics = {f"xsum/{k}": v for k, v in scores.items()}
  metrics.update({"xsum/num_examples": len(pairs), "xsum/seconds": time.time() - start})
  _write(output_dir, "xsum", metrics)
  if output_dir and jax.process_index() == 0:
    paths.write_text(paths.resolve(output_dir) / "xsum_predictions.jsonl", "".join(
        json.dumps({"prediction": p, "reference": ref}) + "\n"
        for p, (_, ref) in zip(predictions, pairs)))
  return metrics
