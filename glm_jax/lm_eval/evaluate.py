"""Evaluators for `python -m glm_jax.eval`: evaluator(params, config, vocab_spec, output_dir).

Each returns a dict of metrics and writes it as JSON to output_dir (local or gs://, by
process 0). LAMBADA and WikiText score teacher-forced rows in one forward pass per batch;
XSum fills the blank with beam search and reports ROUGE-1/2/Lsum (x100) as the reference
computes them (`rouge.py`). The mask of each task follows the checkpoint's task-mask flag, or
TASK_MASK (glm_jax/task_mask.py). Under glm_jax.eval they run on its mesh
(`partitioning.active()`): parameters stay sharded, batch rows are split over the batch axes.
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
from glm_jax import task_mask as task_mask_lib
from glm_jax.lm_eval import blank_rows, lambada as lambada_lib, wikitext as wikitext_lib
from glm_jax.lm_eval import rouge as rouge_lib
from glm_jax.lm_eval import xsum as xsum_lib
from glm_jax.model import GLM


@functools.lru_cache(maxsize=16)
def _scorer(config, out_sharding=None):
  """jit: batch -> per row (sum of weighted NLL, sum of weights, all targets argmax)."""

  def score(params, batch):
    logits = GLM(config).apply({"params": params}, batch["tokens"], batch["positions"],
                               sep=batch["sep"])  # [B, T, V] float32
    target_logp = losses.target_log_probs(logits, batch["targets"])  # [B, T]
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


def _is_wordpiece(vocabulary) -> bool:
  """The reference re-tokenizes ROUGE strings for its BERT WordPiece tokenizer only."""
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  return isinstance(vocabulary, vocab_lib.WordPieceVocabulary)


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
            bidirectional: bool = True, sequence_length: int = lambada_lib.SEQUENCE_LENGTH,
            batch_size: int = 16, max_examples: int = 0, check_only: bool = False) -> dict:
  """LAMBADA accuracy (every answer token the argmax) and the answers' token perplexity."""
  if check_only:
    return _check_file(path, "LAMBADA_PATH")
  vocabulary = _vocabulary(vocab_spec)
  special = task_mask_lib.special_tokens(vocabulary)
  passages = lambada_lib.read(path)
  if max_examples:
    passages = passages[:max_examples]
  length = min(sequence_length, config.max_sequence_length)
  start = time.time()
  rows = lambada_lib.build_rows(passages, vocabulary, special, sequence_length=length,
                                bidirectional=bidirectional)
  s = score_rows(params, config, rows, batch_size)
  name = "lambada" if bidirectional else "lambada_uni"
  metrics = {f"{name}/accuracy": float(np.mean(s["correct"])),
             f"{name}/word_token_ppl": float(math.exp(s["nll"].sum() / s["weight"].sum())),
             f"{name}/num_examples": len(rows), f"{name}/seconds": time.time() - start}
  logging.info("%s: %s, sequence length %d", name, task_mask_lib.describe(special), length)
  _write(output_dir, name, metrics)
  return metrics


def _wikitext_length(sequence_length: int, convention: str, config) -> int:
  """The sequence length the model's position tables allow (see wikitext.py conventions)."""
  needed = wikitext_lib.positions_needed(sequence_length, convention)
  if needed <= config.max_sequence_length:
    return sequence_length
  if convention == "reference":
    raise ValueError(
        f"WikiText windows of --seq-length {sequence_length} need position ids up to {needed}, "
        f"but the model's tables stop at {config.max_sequence_length}; set "
        "WIKITEXT_SEQUENCE_LENGTH = 512 (the reference's zero_lm.sh) or "
        "WIKITEXT_CONVENTION = 'glm_jax' (clips the window).")
  fitted = config.max_sequence_length
  logging.warning("WikiText sequence length %d needs positions up to %d; the model has %d: "
                  "using %d.", sequence_length, needed, config.max_sequence_length, fitted)
  return fitted


@gin.configurable
def wikitext(params, config, vocab_spec, output_dir, *, directory: str = gin.REQUIRED,
             split: str = "test", sequence_length: int = wikitext_lib.SEQUENCE_LENGTH,
             overlap: int = wikitext_lib.OVERLAP, variants: Sequence[str] = ("bi", "uni"),
             convention: str = "glm_jax", batch_size: int = 8, max_tokens: int = 0,
             name: str = "wikitext2", check_only: bool = False) -> dict:
  """Token- and word-level perplexity, bidirectional and/or unidirectional.

  Word perplexity = exp(total loss / (num_original_tokens - 1)), the reference's
  "adjusted ppl"; token perplexity = exp(total loss / (L - 1)).
  """
  wikitext_lib.check_convention(convention)
  if check_only:
    _wikitext_length(sequence_length, convention, config)
    return _check_file(wikitext_lib.split_path(directory, split), "WIKITEXT_DIR")
  vocabulary = _vocabulary(vocab_spec)
  special = task_mask_lib.special_tokens(vocabulary)
  raw = wikitext_lib.read(wikitext_lib.split_path(directory, split))
  tokens = wikitext_lib.tokenize(raw, vocabulary, convention)
  words = wikitext_lib.word_count(raw)
  if max_tokens:  # a prefix of the file; words scaled to the same share of it
    words = max(1, round(words * min(1.0, max_tokens / len(tokens))))
    tokens = tokens[:max_tokens]
  length = _wikitext_length(sequence_length, convention, config)
  metrics = {f"{name}/num_tokens": int(len(tokens)), f"{name}/num_words": int(words),
             f"{name}/sequence_length": length, f"{name}/overlap": overlap}
  for variant in variants:
    if variant not in ("bi", "uni"):
      raise ValueError(f"WikiText variants are 'bi' and 'uni', got {variant!r}.")
    start = time.time()
    rows = wikitext_lib.build_rows(tokens, special, sequence_length=length, overlap=overlap,
                                   bidirectional=variant == "bi", convention=convention)
    s = score_rows(params, config, rows, batch_size)
    total, count = float(s["nll"].sum()), float(s["weight"].sum())
    metrics.update({f"{name}/{variant}/token_ppl": math.exp(total / count),
                    f"{name}/{variant}/word_ppl": math.exp(total / words),
                    f"{name}/{variant}/predicted_tokens": int(count),
                    f"{name}/{variant}/seconds": time.time() - start})
  logging.info("%s: %s, %s convention", name, task_mask_lib.describe(special), convention)
  _write(output_dir, name, metrics)
  return metrics


# The reference's XSum decoding (config_tasks/seq_xsum.sh, tasks/seq2seq/evaluate.py): eop is
# the only end token and the length penalty divides by the tokens before it.
XSUM_DECODING = decoding.DecodeConfig(
    strategy="beam", num_beams=6, length_penalty=1.0, min_length=10, no_repeat_ngram_size=3,
    max_new_tokens=xsum_lib.TARGET_LENGTH, stop_at_eos=False, penalty_counts_end=False)


@gin.configurable
def xsum(params, config, vocab_spec, output_dir, *, path: str = gin.REQUIRED,
         split: str = "validation", num_examples: int = 0,
         source_length: int = xsum_lib.SOURCE_LENGTH,
         decode_config: decoding.DecodeConfig = XSUM_DECODING, batch_size: int = 4,
         check_only: bool = False) -> dict:
  """Beam-search summaries of the blank and their ROUGE as the reference computes it."""
  if check_only:
    return _check_file(path, "XSUM_PATH")
  vocabulary = _vocabulary(vocab_spec)
  special = task_mask_lib.special_tokens(vocabulary)
  pairs = xsum_lib.read(path, split)
  if num_examples:
    pairs = pairs[:num_examples]
  if source_length > config.max_sequence_length:
    logging.warning("XSum source length %d exceeds the model's %d positions; using %d.",
                    source_length, config.max_sequence_length, config.max_sequence_length)
    source_length = config.max_sequence_length
  params, config = decoding.unstack_layers(params, config)
  predictions, start = [], time.time()
  for lo in range(0, len(pairs), batch_size):
    chunk = pairs[lo:lo + batch_size]
    parts = [xsum_lib.source_part(s, vocabulary, special, source_length) for s, _ in chunk]
    context = np.asarray([a for a, _ in parts], np.int32)  # padding inside Part A, visible
    out = decoding.fill_blanks(params, config, special, context,
                               np.full((len(chunk),), source_length, np.int32),
                               np.asarray([[m] for _, m in parts], np.int32),
                               decode_config=decode_config)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    for i in range(len(chunk)):
      fill = decoding.split_blanks(tokens[i], lengths[i], special, decode_config)
      fill = [t for t in (fill[0] if fill else []) if t not in (special.eop, special.pad)]
      predictions.append(vocabulary.decode(fill).strip())
  # The references as the reference scores them: its tokenizer's spelling of the summary.
  references = [vocabulary.decode(vocabulary.encode(t)) for _, t in pairs]
  scores = rouge_lib.rouge(predictions, references, fix=_is_wordpiece(vocabulary))
  metrics = {f"xsum/{k}": v for k, v in scores.items()}
  metrics.update({"xsum/num_examples": len(pairs), "xsum/seconds": time.time() - start})
  logging.info("xsum: %s, source length %d", task_mask_lib.describe(special), source_length)
  _write(output_dir, "xsum", metrics)
  if output_dir and jax.process_index() == 0:
    paths.write_text(paths.resolve(output_dir) / "xsum_predictions.jsonl", "".join(
        json.dumps({"prediction": p, "reference": ref}) + "\n"
        for p, ref in zip(predictions, references)))
  return metrics
