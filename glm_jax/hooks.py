"""Hooks of the training loop: preemption (SIGTERM), best-checkpoint keeping, the sample fill."""

from __future__ import annotations

import signal
from typing import Optional

import gin
import jax
import numpy as np

from glm_jax import checkpoints, paths, run_report


class Preemption:
  """Whether to save and stop after a step because of SIGTERM (a preemption notice).

  Multi-process runs use JAX's preemption sync point (orbax's reached_preemption): the
  notifier jax.distributed installs catches SIGTERM and the processes agree on the step in
  the background, so no step waits on a collective. One process watches SIGTERM itself.
  """

  def __init__(self, manager: checkpoints.CheckpointManager):
    self._manager = manager
    self._signalled = False
    self._distributed = jax.process_count() > 1
    if not self._distributed:
      try:
        signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread (tests calling train() from a thread)
        pass

  def _handle(self, signum, frame):
    del signum, frame
    self._signalled = True

  def reached(self, step: int) -> bool:
    if self._distributed:
      return self._manager.reached_preemption(step)
    return self._signalled


@gin.configurable
def print_sample_fill(params, config, vocab_spec: str,
                      text: str = "The old man looked at the [MASK] and smiled.",
                      max_new_tokens: int = run_report.SAMPLE_MAX_NEW_TOKENS,
                      strategy: str = "greedy", num_beams: int = 4,
                      length_penalty: float = 1.0) -> Optional[str]:
  """The trained model's fill of one blank (glm_jax.generate: greedy or beam search), printed
  by process 0; `python -m glm_jax.infer` with the same flags gives the same fill."""
  from glm_jax import generation  # pylint: disable=g-import-not-at-top
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  if strategy not in ("greedy", "beam"):
    raise ValueError(f"hooks.print_sample_fill.strategy must be 'greedy' or 'beam' (a "
                     f"deterministic fill), got {strategy!r}.")
  vocabulary = vocab_lib.get_vocabulary(vocab_spec)
  filled = generation.generate(text, params=params, config=config, vocabulary=vocabulary,
                               strategy=strategy, max_new_tokens=max_new_tokens,
                               num_beams=num_beams, length_penalty=length_penalty)
  if jax.process_index() == 0:
    print(f"Sample blank: {text}\nModel's fill: {filled}", flush=True)
  return filled


BEST_DIR = "best"  # MODEL_DIR/best: the params of the best evaluation (KEEP_BEST_METRIC)


def keep_if_best(model_dir, metric, mode, results, state, config, vocab_spec) -> bool:
  """Saves params to MODEL_DIR/best when `metric` beats the best kept so far (never a NaN)."""
  value = float(results[metric])
  if not np.isfinite(value):
    return False
  best_dir = paths.resolve(model_dir) / BEST_DIR
  record_path = best_dir / "best.json"
  if record_path.exists():
    best = paths.read_json(record_path)["value"]
    if (value <= best) if mode == "max" else (value >= best):
      return False
  step = int(jax.device_get(state.step))
  checkpoints.save_params_checkpoint(str(best_dir), state.params, config, vocab_spec, step=step)
  if jax.process_index() == 0:
    paths.write_json(record_path, {"metric": metric, "value": value, "mode": mode, "step": step})
  return True
