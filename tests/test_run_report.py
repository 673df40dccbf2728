"""The eval baseline and the end-of-run summary (glm_jax/run_report.py)."""

import gin
import numpy as np
import pytest

from glm_jax import run_report


def _batch(targets, weights):
  return {"targets": np.array(targets, np.int32), "loss_weights": np.array(weights, np.float32)}


def test_baseline_is_the_weighted_share_of_the_most_frequent_target():
  baseline = run_report.TargetBaseline(vocab_size=10)
  batch = _batch([[4, 5, 4, 0], [7, 4, 7, 7]], [[1, 1, 1, 0], [1, 1, 1, 1]])
  assert baseline.add(batch) is batch
  # Weighted targets: 4 x3, 5 x1, 7 x3; the padding (weight 0) target 0 is not counted.
  accuracy, token = baseline.result()
  assert token in (4, 7) and accuracy == pytest.approx(3 / 7)
  baseline.add(_batch([[7, 0]], [[2.0, 0.0]]))  # weights count, as in the loss
  assert baseline.result() == (pytest.approx(5 / 9), 7)


def test_baseline_errors_and_empty_input():
  baseline = run_report.TargetBaseline(vocab_size=8)
  assert baseline.result() == (0.0, -1)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    baseline.add(_batch([[9]], [[1.0]]))


def _report(**kwargs):
  defaults = dict(model_dir="runs/quickstart", train_steps=300,
                  mixture_or_task_name="glm_builtin_doc", sequence_length=64,
                  eval_batch_size=32, eval_steps=8)
  defaults.update(kwargs)
  return run_report.RunReport(**defaults)


def test_eval_results_carry_the_baseline_and_the_line_shows_both():
  report = _report()
  baseline = run_report.TargetBaseline(vocab_size=10)
  baseline.add(_batch([[4, 4, 5, 6]], [[1, 1, 1, 1]]))
  report.set_baseline(baseline, "synthetic")
  results = report.eval(100, {"eval/accuracy": 0.6, "eval/loss": 2.5})
  assert results == {"eval/accuracy": 0.6, "eval/loss": 2.5, "eval/baseline_accuracy": 0.5}
  assert report.eval_line(100, results) == (
      "step 100: eval/accuracy 0.6000 (baseline 0.5000: always id 4), eval/loss 2.5000")
  # Without an accuracy (another model's metrics) no baseline is added.
  assert "eval/baseline_accuracy" not in report.eval(200, {"eval/loss": 2.0})


def test_summary_names_outputs_and_next_commands():
  report = _report()
  report.train({"loss": 4.25})
  report.eval(300, {"eval/accuracy": 0.31, "eval/loss": 4.5})
  text = report.summary(300)
  assert text.startswith("Trained to step 300/300 in ")
  assert "train loss 4.2500; step 300 eval/accuracy 0.3100, eval/loss 4.5000" in text
  for expected in (
      "checkpoint:  runs/quickstart/300",
      "metrics:     runs/quickstart/metrics.jsonl",
      "tensorboard --logdir=runs/quickstart/tensorboard",
      "python -m glm_jax.plot --metrics=runs/quickstart/metrics.jsonl "
      "--output=runs/quickstart/loss.png",
      "python -m glm_jax.eval --gin_file=configs/runs/eval.gin --gin.CHECKPOINT=runs/quickstart "
      "--gin.MIXTURE_OR_TASK_NAME=glm_builtin_doc --gin.SEQUENCE_LENGTH=64 "
      "--gin.EVAL_BATCH_SIZE=32 --gin.EVAL_STEPS=8",
      "python -m glm_jax.infer --checkpoint=runs/quickstart --text='The old man"):
    assert expected in text, expected
  assert "EVAL_INPUT" not in text  # eval.gin reads the task like the run did
  stopped = report.summary(120, stopped=True)
  assert stopped.startswith("Stopped (SIGTERM) at step 120/300; the same command resumes.")


def test_summary_passes_a_non_default_input_and_the_bound_prompt():
  def synthetic_batches():
    pass
  synthetic_batches.__module__ = "glm_jax.data.synthetic"
  gin.clear_config()
  try:
    gin.parse_config(["from glm_jax import hooks",
                      "hooks.print_sample_fill.text = 'A [MASK] day.'"])
    text = _report(eval_input=synthetic_batches, eval_steps=None).summary(5)
  finally:
    gin.clear_config()
  assert "--gin.EVAL_INPUT=@synthetic.synthetic_batches" in text
  assert "--gin.EVAL_STEPS" not in text
  assert "--text='A [MASK] day.'" in text


def test_generate_command_decodes_as_the_sample_fill():
  gin.clear_config()
  try:
    text = _report().summary(5)  # nothing bound: print_sample_fill's greedy defaults
    assert "--max_new_tokens=16" in text and "--strategy" not in text
    gin.parse_config(["from glm_jax import hooks",
                      "hooks.print_sample_fill.strategy = 'beam'",
                      "hooks.print_sample_fill.num_beams = 3",
                      "hooks.print_sample_fill.length_penalty = 0.0",
                      "hooks.print_sample_fill.max_new_tokens = 6"])
    text = _report().summary(5)
  finally:
    gin.clear_config()
  assert text.rstrip().endswith(
      "--max_new_tokens=6 --strategy=beam --num_beams=3 --length_penalty=0.0")


def test_sample_fill_refuses_a_random_strategy():
  from glm_jax import hooks  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="'greedy' or 'beam'"):
    hooks.print_sample_fill(None, None, "builtin", strategy="sample")
