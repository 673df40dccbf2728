"""Ahead-of-time planner: per-device memory divides as the rules say; CLI, errors, projection."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

from glm_jax import gin_utils, plan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(vocab_size=256, num_layers=2, hidden_size=64, num_heads=4, max_sequence_length=64)
TINY_BINDINGS = [f"--gin_bindings=model.GLMConfig.{k} = {v}" for k, v in TINY.items()]

# Runs in a subprocess with 8 CPU devices: plans for several meshes and the rules' expectation.
_MESHES_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    from glm_jax import model_api, optim, partitioning, plan, trainer
    from glm_jax.model import GLMConfig

    config = GLMConfig(**json.loads(sys.argv[1]))
    model = model_api.BlankInfillingModel(config)
    out = {"devices": len(jax.devices())}
    for name, mesh, micro in [("one", "data:1", 1), ("fsdp8", "fsdp:8", 1),
                              ("fsdp8_micro2", "fsdp:8", 2)]:
      out[name] = plan.plan_train_step(model, plan.parse_mesh(mesh), 16, 32,
                                       num_microbatches=micro)
    # Other meshes: the trainer's state shardings alone (no compile) give the parameter bytes.
    optimizer, lr_fn = optim.create_optimizer(total_steps=10)
    for name, mesh in [("data8", "data:8"), ("mixed", "data:2,fsdp:4")]:
      partitioner = partitioning.Partitioner(plan.parse_mesh(mesh))
      state = trainer.Trainer(model, partitioner, optimizer, lr_fn).abstract_state
      out[name] = {"params_bytes": plan.bytes_per_device(state.params)}
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def mesh_plans():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", _MESHES_SCRIPT, json.dumps(TINY)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  line = [l for l in result.stdout.splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT"):])


# TINY by hand (float32, 4 bytes a parameter): word table 256 x 64 = 16384; position and
# block-position tables 65 x 64 = 4160 each; per layer two LayerNorms 2 x 128, QKV 64 x 192 +
# 192, attention output 64 x 64 + 64, MLP 64 x 256 + 256 and 256 x 64 + 64 = 49984; final
# LayerNorm 128. Total 16384 + 2 x 4160 + 2 x 49984 + 128 = 124800.
TINY_PARAMS = 124800
# fsdp splits the 'embed' axis (hidden 64, divisible by 4 and 8) of every parameter that has
# one; only the QKV biases (2 x 192) and the MLP input biases (2 x 256) have none: 896 stay whole.
TINY_UNSPLIT = 2 * 192 + 2 * 256


def test_parameter_memory_divides_as_the_rules_say(mesh_plans):
  assert mesh_plans["devices"] == 8
  one, fsdp8 = mesh_plans["one"], mesh_plans["fsdp8"]
  assert one["num_params"] == TINY_PARAMS
  params_1 = one["memory_per_device"]["params_bytes"]
  assert params_1 == 4 * TINY_PARAMS == one["memory_per_device"]["params_global_bytes"]
  per_device = lambda fsdp: 4 * ((TINY_PARAMS - TINY_UNSPLIT) // fsdp + TINY_UNSPLIT)  # pylint: disable=unnecessary-lambda-assignment
  assert fsdp8["num_devices"] == 8 and fsdp8["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert fsdp8["memory_per_device"]["params_bytes"] == per_device(8) == 65536
  # 'data' replicates parameters; data:2 x fsdp:4 splits them four ways.
  assert mesh_plans["data8"]["params_bytes"] == params_1
  assert mesh_plans["mixed"]["params_bytes"] == per_device(4) == 127488


def test_optimizer_state_and_arguments_follow_the_parameters(mesh_plans):
  one, fsdp8 = mesh_plans["one"]["memory_per_device"], mesh_plans["fsdp8"]["memory_per_device"]
  # AdamW: two moments per parameter (plus a few scalar counts).
  for m in (one, fsdp8):
    assert 2 * m["params_bytes"] <= m["optimizer_bytes"] < 2 * m["params_bytes"] + 1024
  # XLA's view of the step's inputs: state + batch, sharded the same way.
  assert one["xla"]["argument_bytes"] >= one["params_bytes"] + one["optimizer_bytes"]
  assert fsdp8["xla"]["argument_bytes"] < one["xla"]["argument_bytes"] / 6
  # The state is donated: its outputs alias its inputs.
  assert fsdp8["xla"]["alias_bytes"] >= fsdp8["params_bytes"] + fsdp8["optimizer_bytes"]
  for m in (one, fsdp8):
    assert m["xla"]["temp_bytes"] > 0
    assert m["xla"]["peak_bytes"] >= m["xla"]["argument_bytes"] + m["xla"]["temp_bytes"]
  # Each device holds an eighth of the batch's activations (fixed workspace aside). That the
  # single-device CPU kernels stay off sharded meshes is tests/test_kernel_choice.py's check.
  assert fsdp8["activations_temp_bytes"] < one["activations_temp_bytes"] / 4


def test_flops_and_microbatching(mesh_plans):
  one, fsdp8 = mesh_plans["one"], mesh_plans["fsdp8"]
  assert one["flops"]["model_flops_per_step"] == fsdp8["flops"]["model_flops_per_step"] > 0
  assert fsdp8["flops"]["hardware_flops_per_device"] == pytest.approx(
      one["flops"]["hardware_flops_per_device"] / 8)
  assert one["flops"]["xla_flops_per_device"] > fsdp8["flops"]["xla_flops_per_device"] > 0
  # Two microbatches of the same global batch need fewer temporaries than one large one.
  micro2 = mesh_plans["fsdp8_micro2"]
  assert micro2["num_microbatches"] == 2
  assert (micro2["memory_per_device"]["xla"]["temp_bytes"]
          < fsdp8["memory_per_device"]["xla"]["temp_bytes"])


def _cli(*args, env_extra=None):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(env_extra or {}, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "glm_jax.plan",
                         "--gin_file=configs/models/glm_tiny.gin", *TINY_BINDINGS, *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_cli_simulates_the_mesh_devices_itself_and_writes_json(tmp_path):
  out = tmp_path / "plan.json"
  result = _cli("--mesh=data:2,fsdp:2", "--batch_size=8", "--seq_len=32",
                "--remat_policy=full", "--device=v5e", "--utilization=0.5", f"--output={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  for text in ("per-device memory", "optimizer state", "temporaries", "FLOPs per step",
               "projection on v5e", "MFU", "fits"):
    assert text in result.stdout
  report = json.loads(out.read_text())
  assert report["num_devices"] == 4 and report["device_kind"] == "cpu"
  # Planned for a TPU, compiled here: the xla kernel (seq 32 is too short for splash).
  assert report["platform"] == "tpu" and report["attention_kernel"] == "xla"
  assert report["max_scores_elements"] == report["dense_scores_elements"] > 0
  assert report["model"]["remat_policy"] == "full" and report["model"]["num_layers"] == 2
  p = report["projection"]
  assert p["peak_tflops"] == pytest.approx(197.0) and p["fits"] is True
  # Full remat recomputes the forward: MFU = 0.5 x model / hardware FLOPs.
  f = report["flops"]
  assert p["mfu"] == pytest.approx(
      0.5 * f["model_flops_per_step"] / f["hardware_flops_per_step"])
  assert f["hardware_flops_per_step"] > f["model_flops_per_step"]


@pytest.mark.parametrize("args,message", [
    (("--mesh=data:2,model:4", "--batch_size=8", "--seq_len=32"), "Bad mesh"),
    (("--mesh=data:3", "--batch_size=8", "--seq_len=32"), "not divisible by the data-parallel"),
    (("--mesh=data:1", "--batch_size=8", "--seq_len=128"), "exceeds the model's"),
    (("--mesh=data:1", "--seq_len=32"), "--batch_size"),
    (("--mesh=data:1", "--batch_size=8", "--seq_len=32", "--device=tpu9"), "Unknown device"),
    (("--mesh=data:1", "--batch_size=8", "--seq_len=32", "--lower_only"), "pass --platform"),
])
def test_cli_errors_are_one_line(args, message):
  result = _cli(*args)
  assert result.returncode == gin_utils.EXIT_USAGE  # bad settings: exit 2
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr


def test_parse_mesh_and_accelerators():
  mesh = plan.parse_mesh("data:4,fsdp:64")
  assert (mesh.data, mesh.fsdp, mesh.tensor) == (4, 64, 1)
  assert plan.mesh_size(mesh) == 256
  assert plan.mesh_size(plan.parse_mesh("tensor:2")) == 2
  for bad in ("data:0", "data4", "pipe:2"):
    with pytest.raises(ValueError):
      plan.parse_mesh(bad)
  v5e, h100 = plan.accelerator("v5e"), plan.accelerator("H100")
  assert v5e["hbm_bytes"] == 16 * plan.GIB and v5e["peak_flops"] == 197e12
  assert h100["peak_flops"] == 989e12 and h100["hbm_bytes"] == 80e9


def test_recompute_flops_by_policy():
  from glm_jax.model import GLMConfig
  config = GLMConfig(**TINY)
  h, layers, t = 64, 2, 32
  by = lambda p: plan.recompute_flops_per_token(config.replace(remat_policy=p), t)  # pylint: disable=unnecessary-lambda-assignment
  assert by("none") == by("dots") == 0.0
  assert by("dots_no_batch") == 4.0 * layers * t * h
  assert by("full") == 2.0 * layers * 12 * h * h + 4.0 * layers * t * h
  assert math.isclose(by("full") * 3, 6 * layers * 12 * h * h + 12 * layers * t * h)


def _lower(gin_file, seq_len, platform, *bindings, tmp_path=None):
  """--lower_only report (and lowered text) of a 2-row step at seq_len for `platform`."""
  mlir = tmp_path / "step.mlir"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu")
  bindings = [f"--gin_bindings=model.GLMConfig.{b}" for b in
              (f"max_sequence_length = {seq_len}", *bindings)]
  result = subprocess.run(
      [sys.executable, "-m", "glm_jax.plan", f"--gin_file={gin_file}", *bindings,
       "--mesh=data:1", "--batch_size=2", f"--seq_len={seq_len}", "--lower_only",
       f"--platform={platform}", "--json", f"--mlir_out={mlir}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout[result.stdout.index("{"):]), mlir.read_text()


# Parameters by hand (GLM_SPEC.md section 4): per layer QKV h x 3h + 3h, output h x h + h,
# MLP h x 4h + 4h and 4h x h + h, two LayerNorms 4h; word table V x h, position and
# block-position tables (P + 1) x h each, final LayerNorm 2h.
# GLM-Large (h 1024, 24 layers, V 30592): 334,688,256 at its 512 positions (the paper's 335M);
# at 1024 positions the two tables add 2 x 512 x 1024.
# GLM-10B (h 4096, 48 layers, V 50304): 9,880,682,496 at its 1024 positions; at 2048 the
# tables add 2 x 1024 x 4096.
GLM_LARGE_PARAMS_1024 = 334_688_256 + 2 * 512 * 1024
GLM_10B_PARAMS_2048 = 9_880_682_496 + 2 * 1024 * 4096


@pytest.mark.parametrize("gin_file,seq_len,heads,num_params", [
    ("configs/models/glm_large.gin", 1024, 16, GLM_LARGE_PARAMS_1024),
    ("configs/models/glm_10b.gin", 2048, 64, GLM_10B_PARAMS_2048)])
@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_fused_kernels_lower_the_train_step_without_dense_scores(tmp_path, gin_file, seq_len,
                                                                heads, num_params, platform):
  # The real train step of GLM-Large at 1024 / GLM-10B at 2048, lowered for a GPU or a TPU on
  # this CPU: 'auto' picks the fused kernel (bf16, no attention dropout), whose custom calls
  # are in the module, and no [B, N, T, T] value is left.
  report, text = _lower(gin_file, seq_len, platform, "dtype = 'bfloat16'",
                        "attention_dropout = 0.0", tmp_path=tmp_path)
  assert report["lowered_for"] == platform and "compile_seconds" not in report
  # float32 parameters, whole on one device; AdamW keeps two moments of each.
  assert report["num_params"] == num_params
  assert report["memory_per_device"]["params_bytes"] == 4 * num_params
  dense = f"2x{heads}x{seq_len}x{seq_len}x"
  assert report["dense_scores_elements"] == 2 * heads * seq_len * seq_len
  assert report["max_scores_elements"] == 0 and dense not in text
  if platform == "cuda":
    assert report["attention_kernel"] == "cudnn"
    assert report["attention_custom_calls"] == ["__cudnn$fmhaSoftmax",
                                                "__cudnn$fmhaSoftmaxBackward"]
    assert "stablehlo.custom_call @__cudnn$fmhaSoftmax(" in text
  else:
    assert report["attention_kernel"] == "splash"
    calls = report["attention_custom_calls"]
    assert any(c.startswith("splash_mha_fwd") for c in calls)
    assert any(c.startswith("splash_mha_dkv") for c in calls)
    assert "stablehlo.custom_call @tpu_custom_call(" in text


def test_the_xla_kernel_lowers_dense_scores(tmp_path):
  # With attention dropout on, 'auto' keeps the xla kernel on a GPU: its [B, N, T, T] scores
  # (stacked over the 24 scanned layers for the backward) are in the module.
  report, text = _lower("configs/models/glm_large.gin", 1024, "cuda", "dtype = 'bfloat16'",
                        tmp_path=tmp_path)
  assert report["attention_kernel"] == "xla" and report["attention_custom_calls"] == []
  assert report["max_scores_elements"] >= report["dense_scores_elements"] == 2 * 16 * 1024 ** 2
  assert "2x16x1024x1024x" in text

