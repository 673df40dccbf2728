"""glm_jax.eval: restores a checkpoint and runs the (pluggable) evaluator."""

import functools
import json
import os

import jax
import numpy as np
import pytest

from glm_jax import checkpoints, eval as eval_lib, losses
from glm_jax.model import GLM, GLMConfig, init_params
from glm_jax.data.synthetic import synthetic_batches

from conftest import enable_compile_cache, run_module

enable_compile_cache()

CFG = GLMConfig(vocab_size=128, num_layers=2, hidden_size=32, num_heads=4,
                max_sequence_length=64)


@pytest.fixture(scope="module")
def params_checkpoint(tmp_path_factory):
  params = init_params(CFG, jax.random.PRNGKey(3))
  path = checkpoints.save_params_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "params"),
                                            params, CFG, "synthetic", step=17)
  return path, params


def _direct_metrics(params, batches):
  """Loss and accuracy straight from the network, without the eval machinery."""
  loss, correct, weight = 0.0, 0.0, 0.0
  for b in batches:
    logits = GLM(CFG).apply({"params": params}, b["tokens"], b["positions"], sep=b["sep"])
    l, w, c = losses.weighted_cross_entropy(logits, b["targets"], b["loss_weights"])
    loss, weight, correct = loss + float(l), weight + float(w), correct + float(c)
  return loss / weight, correct / weight


def test_infilling_evaluator_matches_a_direct_computation(params_checkpoint, tmp_path):
  path, params = params_checkpoint
  evaluator = functools.partial(eval_lib.infilling_evaluator, mixture_or_task_name="synthetic",
                                input_fn=synthetic_batches, sequence_length=32, batch_size=8,
                                num_batches=3)
  results = eval_lib.evaluate_checkpoint(checkpoint=path, evaluator=evaluator,
                                         output_dir=str(tmp_path / "out"))
  batches = list(synthetic_batches("synthetic", "validation", sequence_length=32,
                                   batch_size=8, seed=0, num_batches=3))
  loss, accuracy = _direct_metrics(params, batches)
  assert results["eval/loss"] == pytest.approx(loss, rel=1e-5)
  assert results["eval/accuracy"] == pytest.approx(accuracy, abs=1e-6)
  written = json.load(open(tmp_path / "out" / "metrics.json"))
  assert written["step"] == 17 and written["eval/loss"] == pytest.approx(loss, rel=1e-5)


def test_custom_evaluator_gets_params_config_vocab_and_output_dir(params_checkpoint):
  path, params = params_checkpoint
  seen = {}

  def evaluator(p, config, vocab_spec, output_dir):
    seen.update(config=config, vocab=vocab_spec, output_dir=output_dir,
                same=all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
                    jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(params))))
    return {"score": 0.5, "label": "ok"}

  results = eval_lib.evaluate_checkpoint(checkpoint=path, evaluator=evaluator)
  assert results == {"score": 0.5, "label": "ok"}
  assert seen["config"] == CFG and seen["vocab"] == "synthetic" and seen["same"]
  assert seen["output_dir"] == os.path.join(path, "eval")


def test_eval_cli(params_checkpoint, tmp_path):
  path, params = params_checkpoint
  result = run_module("glm_jax.eval", [
      "--gin_file=configs/runs/eval.gin", f"--gin.CHECKPOINT={path}",
      "--gin.EVAL_INPUT=@synthetic.synthetic_batches", "--gin.SEQUENCE_LENGTH=32",
      "--gin.EVAL_STEPS=2", f"--gin.OUTPUT_DIR={tmp_path}"], timeout=180)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "eval/loss" in result.stdout
  written = json.load(open(tmp_path / "metrics.json"))
  batches = list(synthetic_batches("synthetic", "validation", sequence_length=32,
                                   batch_size=8, seed=0, num_batches=2))
  loss, _ = _direct_metrics(params, batches)
  assert written["eval/loss"] == pytest.approx(loss, rel=1e-5)
