"""`python -m glm_jax.parity trajectory`: our trainer follows the reference's recorded runs.

Runs on the shipped subsets in tests/fixtures/glm_trajectory (all 24 steps of the main run
without its final weights, both 6-step accumulation runs complete); where
../shared/fixtures/glm_trajectory is present its full files replace them (final weights of
the 24-step run included) and its other trajectories are extra cases.
"""

import copy
import json
import os

import numpy as np
import pytest

from glm_jax import gin_utils
from glm_jax.parity import trajectory

from conftest import run_module, shared_fixture, shipped_fixture

SHIPPED = ("tiny_a", "tiny_a_accum2_deepspeed", "tiny_a_accum2_nodeepspeed")
INIT = shipped_fixture("glm_reference", "model_glm_tiny_a.npz")


def _names(directory):
  return sorted(f[len("trajectory_"):-len(".json")] for f in os.listdir(directory)
                if f.startswith("trajectory_") and f.endswith(".json"))


def _cases():
  cases = {name: ("shipped", shipped_fixture("glm_trajectory")) for name in SHIPPED}
  shared = shared_fixture("glm_trajectory")
  if shared:
    cases.update({name: ("shared", shared) for name in _names(shared)})
  return [pytest.param(name, directory, id=f"{name}-{where}")
          for name, (where, directory) in sorted(cases.items())]


def _spec(name):
  return trajectory.load_fixture(shipped_fixture("glm_trajectory"), name)


def _parity(tmp_path, name, directory, *extra):
  out = tmp_path / f"{name}.npz"
  result = run_module("glm_jax.parity", [
      "trajectory", f"--fixture_dir={directory}", f"--name={name}", f"--init={INIT}",
      f"--output={out}", f"--model_dir={tmp_path / 'run'}", *extra], timeout=400)
  return result, out


@pytest.mark.slow
@pytest.mark.parametrize("name,directory", _cases())
def test_trajectory_matches_the_reference(tmp_path, name, directory):
  result, out = _parity(tmp_path, name, directory)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"trajectory {name}:" in result.stdout and "FAILED" not in result.stdout
  _, reference = trajectory.load_fixture(directory, name)
  with np.load(out) as data:
    ours = {k: data[k] for k in data.files}
  steps = int(reference["meta/num_steps"])
  assert sum(k.endswith("/loss") for k in ours) == steps
  for k in range(1, steps + 1):
    ref = lambda q, k=k: float(reference[f"step{k}/{q}"])
    assert float(ours[f"step{k}/loss"]) == pytest.approx(ref("loss"), rel=1e-5), k
    assert float(ours[f"step{k}/lr"]) == pytest.approx(ref("lr"), rel=1e-9, abs=0), k
    assert float(ours[f"step{k}/grad_norm"]) == pytest.approx(ref("grad_norm"), rel=1e-4), k
  assert float(ours["step1/lr"]) == 0.0  # AnnealingLR's first update
  finals = [k for k in reference if k.startswith("final/")]
  assert finals or name == "tiny_a"  # only the shipped 24-step subset lacks them
  for key in finals:
    np.testing.assert_allclose(ours[key], reference[key], atol=1e-5, rtol=0, err_msg=key)
  # The rate in metrics.jsonl is the one the optimizer applied, in float64.
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    logged = [json.loads(line) for line in f]
  assert [r["learning_rate"] for r in logged] == [float(ours[f"step{k}/lr"])
                                                  for k in range(1, steps + 1)]
  assert all(r["skipped_updates"] == 0 for r in logged)


@pytest.mark.slow
def test_our_defaults_are_not_the_reference_s(tmp_path):
  """The check can fail: our own schedule convention and normalisation diverge."""
  result, out = _parity(tmp_path, "tiny_a_accum2_deepspeed", shipped_fixture("glm_trajectory"),
                        "--gin.SCHEDULE_CONVENTION='glm_jax'",
                        "--gin.LOSS_NORMALIZATION='tokens'")
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: Trajectory tiny_a_accum2_deepspeed is outside the tolerances")
  assert "loss" in last and "lr" in last and "final" in last
  assert os.path.exists(out)  # written before the check, for inspection


def test_recipe_follows_the_reference_arguments():
  main = trajectory.recipe_from_spec(*_spec("tiny_a"))
  assert (main.num_steps, main.batch_size, main.num_microbatches) == (24, 4, 1)
  assert main.warmup == 4.0 and main.decay_span == 20.0
  assert "WARMUP_FRACTION = 0.16666666666666666" in main.bindings
  assert "DECAY_STEPS = 24" in main.bindings and "FINAL_LR_FRACTION = 0.1" in main.bindings
  assert "SCHEDULE = 'cosine'" in main.bindings and "CLIP_NORM = 1.0" in main.bindings
  deepspeed = trajectory.recipe_from_spec(*_spec("tiny_a_accum2_deepspeed"))
  plain = trajectory.recipe_from_spec(*_spec("tiny_a_accum2_nodeepspeed"))
  for recipe in (deepspeed, plain):  # 6 of the 24 steps the schedule is laid out for
    assert (recipe.num_steps, recipe.batch_size, recipe.num_microbatches) == (6, 4, 2)
    assert "DECAY_STEPS = 24" in recipe.bindings
  assert "MICROBATCH_CLIP = 'accumulated'" in deepspeed.bindings
  assert "MICROBATCH_CLIP = 'each'" in plain.bindings


@pytest.mark.parametrize("change,message", [
    ({"--fp16": True}, "only float32 runs"),
    ({"--hidden-dropout": 0.1}, "dropout"),
    ({"--lr-decay-style": "polynomial"}, "Unknown --lr-decay-style"),
    ({"--warmup": 0.25}, "inconsistent"),
    ({"--lr": None}, "lack --lr"),  # None: the argument is missing
])
def test_recipe_refuses_what_cannot_match(change, message):
  spec, arrays = _spec("tiny_a")
  spec = copy.deepcopy(spec)
  for key, value in change.items():
    if value is None:
      del spec["reference_arguments"][key]
    else:
      spec["reference_arguments"][key] = value
  with pytest.raises(ValueError, match=message):
    trajectory.recipe_from_spec(spec, arrays)


def test_microbatches_are_the_reference_s_row_blocks():
  spec, arrays = _spec("tiny_a_accum2_deepspeed")
  batch = trajectory.fixture_batches(arrays, 1, 2)[0]
  tokens = arrays["step1/tokens"]
  # Our microbatch m takes rows m, m + 2: the reference's rows 0-1 and 2-3.
  np.testing.assert_array_equal(batch["tokens"][0::2], tokens[0:2])
  np.testing.assert_array_equal(batch["tokens"][1::2], tokens[2:4])
  assert batch["loss_weights"].dtype == np.float32 and batch["positions"].shape[1] == 2
  with pytest.raises(ValueError, match="equal blocks"):
    trajectory.fixture_batches(dict(arrays, **{"meta/micro_rows": np.array([[0, 1], [1, 4]])}),
                               1, 2)
  del spec


def test_decay_groups_are_checked_against_the_fixture():
  from glm_jax import convert  # pylint: disable=g-import-not-at-top
  spec, _ = _spec("tiny_a")
  with np.load(INIT) as data:
    config, params = convert.from_official_state_dict(dict(data), num_heads=4)
  trajectory.check_decay_groups(spec, config, params)
  spec = copy.deepcopy(spec)
  spec["param_groups"][0]["params"].remove("transformer.position_embeddings.weight")
  with pytest.raises(ValueError, match="differ from optim.decay_mask on 1 tensor"):
    trajectory.check_decay_groups(spec, config, params)


def test_compare_is_exact_about_a_zero_rate_and_flags_differences():
  reference = {"step1/loss": np.float32(2.0), "step1/lr": np.float64(0.0),
               "step1/grad_norm": np.float64(3.0), "final/w": np.zeros(3, np.float32)}
  ours = dict(reference)
  assert all(r["ok"] for r in trajectory.compare(ours, reference))
  ours["step1/lr"] = np.float64(1e-30)  # any rate where the reference's is exactly 0 fails
  ours["final/w"] = np.array([0.0, 2e-5, 0.0], np.float32)
  rows = {r["quantity"]: r for r in trajectory.compare(ours, reference)}
  assert not rows["lr"]["ok"] and not rows["final"]["ok"] and rows["loss"]["ok"]
  assert rows["final"]["where"] == "w"


def test_shipped_subsets_are_the_shared_numbers():
  shared = shared_fixture("glm_trajectory")
  if not shared:
    pytest.skip("../shared/fixtures/glm_trajectory is not beside this checkout")
  for name in SHIPPED:
    _, subset = trajectory.load_fixture(shipped_fixture("glm_trajectory"), name)
    _, full = trajectory.load_fixture(shared, name)
    assert set(subset) <= set(full)
    for key, value in subset.items():
      np.testing.assert_array_equal(value, full[key], err_msg=f"{name}: {key}")


@pytest.mark.parametrize("args,message", [
    ([], "Name a subcommand first"),
    (["trajectories"], "Unknown subcommand 'trajectories'; choose one of: inputs, trajectory"),
    (["trajectory", "--name=tiny_a"], "Missing --fixture_dir, --init, --output"),
    (["inputs", "--output_dir=/tmp/x"], "--fixture_dir, --vocabulary required"),
])
def test_cli_errors_are_one_line(args, message):
  result = run_module("glm_jax.parity", args, timeout=120)
  assert result.returncode == gin_utils.EXIT_USAGE, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, last


def test_unknown_trajectory_name_lists_the_names(tmp_path):
  result = run_module("glm_jax.parity", [
      "trajectory", f"--fixture_dir={shipped_fixture('glm_trajectory')}", "--name=tiny_b",
      f"--init={INIT}", f"--output={tmp_path / 'o.npz'}"], timeout=120)
  assert result.returncode == gin_utils.EXIT_USAGE
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: No trajectory_tiny_b.json") and "tiny_a_accum2_deepspeed" in last
