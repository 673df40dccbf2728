"""What a training run tells its user: a baseline beside eval accuracy, and a closing summary.

- `TargetBaseline`: the token accuracy of always predicting the most frequent target token
  of the evaluation batches (counted once, with the loss weights), so that `eval/accuracy`
  has a number to beat; the trainer logs it as `eval/baseline_accuracy`.
- `RunReport`: the eval line of the progress output, and the summary printed when the run
  ends: final metrics, where the checkpoint, metrics.jsonl and TensorBoard events are, and
  the commands that plot, evaluate and sample from it.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from typing import Callable, Dict, Optional, Tuple

import gin
import jax
import numpy as np

BASELINE_KEY = "eval/baseline_accuracy"
DEFAULT_PROMPT = "The old man looked out of the [MASK] and saw the sea."
SAMPLE_MAX_NEW_TOKENS = 16  # hooks.print_sample_fill's default
EVAL_GIN_INPUT = "@train.task_batches"  # configs/runs/eval.gin's EVAL_INPUT


class TargetBaseline:
  """Counts the weighted targets of (local) batches; the mode's share is the baseline."""

  def __init__(self, vocab_size: int):
    self.counts = np.zeros(vocab_size, np.float64)

  def add(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Counts one batch's targets where loss_weights > 0; returns the batch unchanged."""
    weights = np.asarray(batch["loss_weights"], np.float64)
    chosen = weights > 0
    targets = np.asarray(batch["targets"])[chosen]
    if targets.size and (targets.min() < 0 or targets.max() >= len(self.counts)):
      raise ValueError(f"Eval targets outside the vocabulary [0, {len(self.counts)}); check "
                       "that the data and the model use the same vocabulary.")
    self.counts += np.bincount(targets, weights=weights[chosen], minlength=len(self.counts))
    return batch

  def result(self) -> Tuple[float, int]:
    """(accuracy of the most frequent target, its id) over every process's batches."""
    counts = self.counts
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      counts = np.asarray(multihost_utils.process_allgather(counts)).sum(0)
    total = counts.sum()
    if total <= 0:
      return 0.0, -1
    token = int(np.argmax(counts))
    return float(counts[token] / total), token


def token_label(vocab_spec: str, token_id: int) -> str:
  """'<eop>' for a role token, the piece for others, 'id N' when no vocabulary is loaded.

  The vocabulary is only consulted where the input pipeline has already loaded its module
  (it brings TensorFlow; synthetic-data runs do without).
  """
  if "glm_jax.data.vocab" not in sys.modules:
    return f"id {token_id}"
  vocab_lib = sys.modules["glm_jax.data.vocab"]
  try:
    vocab = vocab_lib.get_vocabulary(vocab_spec)
  except (ValueError, OSError):
    return f"id {token_id}"
  roles = {v: k for k, v in vocab.special.as_dict().items() if isinstance(v, int)}
  if token_id in roles:
    return f"<{roles[token_id]}>"
  return repr(vocab.id_to_piece(token_id))


def _sample_setting(name: str, default):
  try:
    return gin.query_parameter(f"hooks.print_sample_fill.{name}")
  except ValueError:
    return default


def sample_prompt() -> str:
  """The quickstart's sample blank when the config binds one, else DEFAULT_PROMPT."""
  return _sample_setting("text", DEFAULT_PROMPT)


def sample_decoding_flags() -> str:
  """The glm_jax.infer flags that decode as the config's sample fill does."""
  flags = [f"--max_new_tokens={_sample_setting('max_new_tokens', SAMPLE_MAX_NEW_TOKENS)}"]
  if _sample_setting("strategy", "greedy") == "beam":
    flags += ["--strategy=beam", f"--num_beams={_sample_setting('num_beams', 4)}",
              f"--length_penalty={_sample_setting('length_penalty', 1.0)}"]
  return " ".join(flags)


def _gin_reference(fn: Callable) -> str:
  """'@train.task_batches' for glm_jax.train.task_batches (gin's module-suffix names)."""
  module = getattr(fn, "__module__", "").rsplit(".", 1)[-1]
  return f"@{module}.{getattr(fn, '__name__', fn)}"


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


class RunReport:
  """Collects the latest train and eval metrics of a run and prints its closing summary."""

  def __init__(self, *, model_dir: str, train_steps: int, mixture_or_task_name: str,
               sequence_length: int, eval_input: Optional[Callable] = None,
               eval_batch_size: int = 8, eval_steps: Optional[int] = None,
               enabled: bool = True):
    self.model_dir, self.train_steps = model_dir, train_steps
    self.task, self.sequence_length, self.eval_input = (mixture_or_task_name, sequence_length,
                                                        eval_input)
    self.eval_batch_size, self.eval_steps = eval_batch_size, eval_steps
    self.enabled = enabled
    self.baseline: Optional[float] = None
    self.baseline_token = ""
    self.last_train: Dict[str, float] = {}
    self.last_eval: Dict[str, float] = {}
    self.last_eval_step: Optional[int] = None
    self._start = time.perf_counter()

  def set_baseline(self, baseline: TargetBaseline, vocab_spec: str) -> None:
    accuracy, token = baseline.result()
    self.baseline, self.baseline_token = accuracy, token_label(vocab_spec, token)

  def train(self, scalars: Dict[str, float]) -> None:
    if scalars:
      self.last_train = dict(scalars)

  def eval(self, step: int, results: Dict[str, float]) -> Dict[str, float]:
    """The results with eval/baseline_accuracy added (where there is accuracy to compare)."""
    results = dict(results)
    if self.baseline is not None and "eval/accuracy" in results:
      results[BASELINE_KEY] = self.baseline
    self.last_eval, self.last_eval_step = results, step
    return results

  def metrics_line(self, results: Dict[str, float]) -> str:
    """'eval/accuracy 0.3012 (baseline 0.2575: always <eop>), eval/loss 4.9100'."""
    parts = []
    for name, value in sorted(results.items()):
      if name == BASELINE_KEY:
        continue
      text = f"{name} {value:.4f}"
      if name == "eval/accuracy" and BASELINE_KEY in results:
        text += f" (baseline {results[BASELINE_KEY]:.4f}: always {self.baseline_token})"
      parts.append(text)
    return ", ".join(parts)

  def eval_line(self, step: int, results: Dict[str, float]) -> str:
    return f"step {step}: {self.metrics_line(results)}"

  def summary(self, step: int, stopped: bool = False) -> str:
    """The closing lines: what the run reached, where its outputs are, what to run next."""
    d = self.model_dir
    q = shlex.quote
    head = (f"Stopped (SIGTERM) at step {step}/{self.train_steps}; the same command resumes."
            if stopped else f"Trained to step {step}/{self.train_steps}")
    lines = [f"{head} in {_duration(time.perf_counter() - self._start)}."]
    final = []
    if "loss" in self.last_train:
      final.append(f"train loss {self.last_train['loss']:.4f}")
    if self.last_eval:
      final.append(f"step {self.last_eval_step} {self.metrics_line(self.last_eval)}")
    if final:
      lines.append("  final:       " + "; ".join(final))
    lines += [f"  checkpoint:  {os.path.join(d, str(step))}  "
              f"(python -m glm_jax.checkpoints --model_dir={q(d)})",
              f"  metrics:     {os.path.join(d, 'metrics.jsonl')}",
              f"  TensorBoard: {os.path.join(d, 'tensorboard')}  "
              f"(tensorboard --logdir={q(os.path.join(d, 'tensorboard'))})",
              "Next:"]
    # The run's own evaluation again (the same batches: the same numbers); without
    # EVAL_STEPS the evaluator reads the whole split.
    eval_cmd = (f"python -m glm_jax.eval --gin_file=configs/runs/eval.gin "
                f"--gin.CHECKPOINT={q(d)} --gin.MIXTURE_OR_TASK_NAME={q(self.task)} "
                f"--gin.SEQUENCE_LENGTH={self.sequence_length} "
                f"--gin.EVAL_BATCH_SIZE={self.eval_batch_size}")
    if self.eval_steps:
      eval_cmd += f" --gin.EVAL_STEPS={self.eval_steps}"
    if self.eval_input is not None and _gin_reference(self.eval_input) != EVAL_GIN_INPUT:
      eval_cmd += f" --gin.EVAL_INPUT={_gin_reference(self.eval_input)}"
    lines += [f"  plot:        python -m glm_jax.plot "
              f"--metrics={q(os.path.join(d, 'metrics.jsonl'))} "
              f"--output={q(os.path.join(d, 'loss.png'))}",
              f"  evaluate:    {eval_cmd}",
              f"  generate:    python -m glm_jax.infer --checkpoint={q(d)} "
              f"--text={q(sample_prompt())} {sample_decoding_flags()}"]
    return "\n".join(lines)

  def print_summary(self, step: int, stopped: bool = False) -> None:
    if self.enabled:
      print(self.summary(step, stopped), flush=True)
