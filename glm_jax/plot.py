"""Loss curves from metrics.jsonl as a PNG.

  python -m glm_jax.plot --metrics=runs/quickstart/metrics.jsonl --output=loss.png

A line that is not a metrics record stops it with the file and line named (a last line cut
short by a running or killed trainer is left out).
"""

from __future__ import annotations

import os
from typing import Dict, List, Tuple

from absl import flags

from glm_jax import gin_utils, metrics_writer, paths

FLAGS = flags.FLAGS


def read_curves(path: str) -> Dict[str, List[Tuple[int, float]]]:
  """{metric: [(step, value)]} for train loss, eval/* metrics and learning rate."""
  if not paths.resolve(path).is_file():
    raise FileNotFoundError(f"Metrics file {path!r} not found; pass MODEL_DIR/metrics.jsonl.")
  read = metrics_writer.read_records(path)
  # A last line cut short (a trainer writing or killed) is left out, after records only.
  bad = [(n, why) for n, why in read.bad if n != read.cut_line or not read.records]
  if bad:
    number, why = bad[0]
    more = f" (and {len(bad) - 1} more bad lines)" if len(bad) > 1 else ""
    raise ValueError(f"{path} line {number} is {why}{more}; a metrics.jsonl has one JSON "
                     "object with a 'step' per line: fix or delete that line.")
  curves: Dict[str, List[Tuple[int, float]]] = {}
  for _, record, _ in read.records:
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
        curves.setdefault(key, []).append((record["step"], float(value)))
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
  gin_utils.begin_cli(argv, "--metrics, --output")
  curves = read_curves(FLAGS.metrics)
  try:
    plot(curves, FLAGS.output, title=FLAGS.title or os.path.dirname(FLAGS.metrics))
  except OSError as e:
    raise ValueError(f"Cannot write --output={FLAGS.output} ({e.strerror or e}); choose a "
                     "writable path.") from None
  print(f"Wrote {FLAGS.output}")


if __name__ == "__main__":
  flags.DEFINE_string("metrics", None, "Path of a metrics.jsonl.", required=True)
  flags.DEFINE_string("output", "loss.png", "PNG to write.")
  flags.DEFINE_string("title", None, "Figure title (default: the run directory).")
  gin_utils.run(main)
