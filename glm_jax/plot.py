"""Loss curves from metrics.jsonl as a PNG.

  python -m glm_jax.plot --metrics=runs/quickstart/metrics.jsonl --output=loss.png
"""

from __future__ import annotations

import json
import os
import sys
from typing import Dict, List, Tuple

from absl import flags

from glm_jax import console

FLAGS = flags.FLAGS


def read_curves(path: str) -> Dict[str, List[Tuple[int, float]]]:
  """{metric: [(step, value)]} for train loss, eval/* metrics and learning rate."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Metrics file {path!r} not found; pass MODEL_DIR/metrics.jsonl.")
  curves: Dict[str, List[Tuple[int, float]]] = {}
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)):
          curves.setdefault(key, []).append((int(record["step"]), float(value)))
  if "loss" not in curves:
    raise ValueError(f"{path!r} has no 'loss' entries; is it a glm_jax metrics.jsonl?")
  return curves


def plot(curves: Dict[str, List[Tuple[int, float]]], output: str, title: str = "") -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  losses = [k for k in ("loss", "eval/loss") if k in curves]
  has_lr = "learning_rate" in curves
  fig, axes = plt.subplots(1, 2 if has_lr else 1, figsize=(11 if has_lr else 6, 4),
                           squeeze=False)
  ax = axes[0][0]
  for key in losses:
    steps, values = zip(*curves[key])
    ax.plot(steps, values, marker="o" if key.startswith("eval") else None,
            label="train loss" if key == "loss" else "eval loss")
  ax.set_xlabel("step")
  ax.set_ylabel("cross-entropy (nats / Part B token)")
  ax.grid(alpha=0.3)
  ax.legend()
  if has_lr:
    steps, values = zip(*curves["learning_rate"])
    axes[0][1].plot(steps, values, color="tab:green")
    axes[0][1].set_xlabel("step")
    axes[0][1].set_ylabel("learning rate")
    axes[0][1].grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(output, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  try:
    curves = read_curves(FLAGS.metrics)
    plot(curves, FLAGS.output, title=FLAGS.title or os.path.dirname(FLAGS.metrics))
  except (ValueError, FileNotFoundError, OSError) as e:
    print(f"Error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"Wrote {FLAGS.output}")


if __name__ == "__main__":
  flags.DEFINE_string("metrics", None, "Path of a metrics.jsonl.", required=True)
  flags.DEFINE_string("output", "loss.png", "PNG to write.")
  flags.DEFINE_string("title", None, "Figure title (default: the run directory).")
  console.run(main)
