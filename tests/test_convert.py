"""Released checkpoints in every layout -> glm_jax (reference logits), the CLI, and HF export.

The shipped layouts (tests/fixtures/glm_layouts) are the reference's model-parallel-2 split and
an HF classification wrapper (safetensors, `glm.` prefix, heads); the other layouts are written
here from those weights the way their tools write them. Every layout of
../shared/fixtures/glm_layouts, where present, is an extra case against the full logits.
"""

import functools
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO_ROOT, shared_fixture, shipped_fixture
from glm_jax import checkpoints
from glm_jax import convert
from glm_jax.convert import readers
from glm_jax.model import GLM, GLMConfig

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

MP2 = shipped_fixture("glm_layouts", "megatron_mp2")
HF_CLASSIFIER = shipped_fixture("glm_layouts", "hf_sequence_classification")
CASES = shipped_fixture("glm_layouts", "cases_glm_tiny_a_first128.npz")
SHARED_LAYOUTS = shared_fixture("glm_layouts")
SHARED_CASES = shared_fixture("glm_reference", "cases_glm_tiny_a.npz")


def _cases():
  with np.load(CASES) as data:
    return {k: data[k] for k in data.files}


@functools.lru_cache(maxsize=None)
def _forward(config):
  """One compiled forward per config (the layouts share it)."""
  return jax.jit(lambda p, t, pos, sep: GLM(config).apply({"params": p}, t, pos, sep=sep))


def _logits(config, params, case="blank_infill", cases=None):
  c = (cases or _cases())
  return np.asarray(_forward(config)(params, c[f"{case}/input_ids"], c[f"{case}/position_ids"],
                                     c[f"{case}/attention_mask"]), np.float32)


def _check_logits(config, params, fp16=False):
  key = "blank_infill/logits_fp16_weights" if fp16 else "blank_infill/logits"
  np.testing.assert_allclose(_logits(config, params)[..., :128], _cases()[key], atol=1e-5,
                             rtol=0)


@pytest.fixture(scope="module")
def reference_state():
  """The merged reference state dict (torch tensors), from the shipped model-parallel split."""
  with convert.load_official(MP2) as checkpoint:
    return {k: torch.from_numpy(checkpoint[k]) for k in checkpoint}


def _rng_states():
  """What save_checkpoint stores besides the weights (numpy objects need the allow-list)."""
  return {"random_rng_state": (3, tuple(range(5)), None),
          "np_rng_state": ("MT19937", np.arange(624, dtype=np.uint32), 624, 0, 0.0),
          "torch_rng_state": torch.zeros(16, dtype=torch.uint8), "rng_tracker_states": {}}


def _write_layout(kind, state, root):
  """A layout `kind` of `state`, written as the reference / DeepSpeed / HF tools write it."""
  os.makedirs(root)
  hf_config = json.load(open(os.path.join(HF_CLASSIFIER, "config.json")))
  hf_config.update(architectures=["GLMModel"])
  hf_config.pop("num_labels", None)
  if kind in ("megatron", "fp16", "finetuned"):
    tag = "best" if kind == "finetuned" else "250000"
    module = ({k: v.half() for k, v in state.items()} if kind == "fp16" else
              {("model." + k if kind == "finetuned" else k): v for k, v in state.items()})
    if kind == "finetuned":
      module.update({"pool_layer.weight": torch.zeros(64, 64), "pool_layer.bias": torch.zeros(64),
                     "multichoice_head.weight": torch.zeros(1, 64),
                     "multichoice_head.bias": torch.zeros(1)})
    os.makedirs(os.path.join(root, tag))
    torch.save({"iteration": 250000, "module": module, "optimizer": None, **_rng_states()},
               os.path.join(root, tag, "mp_rank_00_model_states.pt"))
    with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as f:
      f.write(tag)
  elif kind == "deepspeed":
    step = os.path.join(root, "global_step250000")
    os.makedirs(step)
    torch.save({"module": dict(state), "buffer_names": [], "optimizer": None,
                "csr_tensor_module_names": set(), "ds_version": "0.5.0", "iteration": 250000,
                **_rng_states()}, os.path.join(step, "mp_rank_00_model_states.pt"))
    torch.save({"optimizer_state_dict": {"flat": torch.zeros(8)}, "ds_version": "0.5.0"},
               os.path.join(step, "zero_pp_rank_0_mp_rank_00_optim_states.pt"))
    with open(os.path.join(root, "latest"), "w") as f:
      f.write("global_step250000")
  elif kind in ("hf_bin", "hf_safetensors", "hf_bin_sharded", "hf_safetensors_sharded",
                "hf_bf16"):
    json.dump(hf_config, open(os.path.join(root, "config.json"), "w"))
    if kind == "hf_bin":
      torch.save(dict(state), os.path.join(root, "pytorch_model.bin"))
    elif kind in ("hf_safetensors", "hf_bf16"):
      tensors = {k: v.to(torch.bfloat16) if kind == "hf_bf16" else v for k, v in state.items()}
      safetensors_torch.save_file(tensors, os.path.join(root, "model.safetensors"),
                                  metadata={"format": "pt"})
    else:
      names = list(state)
      binary = kind == "hf_bin_sharded"
      stem, ext = ("pytorch_model", "bin") if binary else ("model", "safetensors")
      weight_map = {}
      for i, chunk in enumerate(np.array_split(np.arange(len(names)), 3)):
        file = f"{stem}-{i + 1:05d}-of-00003.{ext}"
        shard = {names[j]: state[names[j]] for j in chunk}
        path = os.path.join(root, file)
        torch.save(shard, path) if binary else safetensors_torch.save_file(
            shard, path, metadata={"format": "pt"})
        weight_map.update({n: file for n in shard})
      json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map},
                open(os.path.join(root, f"{stem}.{'bin' if binary else 'safetensors'}"
                                  ".index.json"), "w"))
  elif kind == "npz":
    np.savez(os.path.join(root, "model.npz"), **{k: v.numpy() for k, v in state.items()})
    return os.path.join(root, "model.npz")
  return root


WRITTEN = ("megatron", "fp16", "finetuned", "deepspeed", "hf_bin", "hf_safetensors",
           "hf_bin_sharded", "hf_safetensors_sharded", "npz")


@pytest.mark.parametrize("kind", WRITTEN)
def test_every_layout_reproduces_the_reference_logits(reference_state, tmp_path, kind):
  path = _write_layout(kind, reference_state, str(tmp_path / kind))
  with convert.load_official(path) as checkpoint:
    config, params = convert.from_official_state_dict(checkpoint, checkpoint.num_heads or 4)
  assert (config.num_layers, config.hidden_size, config.vocab_size) == (2, 64, 1000)
  assert config.param_dtype == ("float16" if kind == "fp16" else "float32")  # kept as stored
  _check_logits(config, params, fp16=kind == "fp16")


def test_shipped_layouts_model_parallel_and_wrapper_heads(caplog):
  with convert.load_official(MP2) as mp2:
    assert mp2.layout == "megatron (model parallel 2)" and mp2.model_parallel == 2
    assert mp2.shape("transformer.layers.0.attention.query_key_value.weight") == (192, 64)
    config, params = convert.from_official_state_dict(mp2, num_heads=4)
  _check_logits(config, params)
  with convert.load_official(HF_CLASSIFIER) as hf:
    assert hf.layout == "hf" and hf.num_heads == 4 and hf.vocabulary is None
    converted = convert.convert_state_dict(hf, hf.num_heads)
  assert converted.skipped == ["multichoice_head.bias", "multichoice_head.weight",
                               "pool_layer.bias", "pool_layer.weight"]
  assert "Skipped 4 parameters outside the GLM backbone" in caplog.text
  _check_logits(converted.config, converted.params)
  # One rank file is enough to find its siblings; ranks are merged with stride 3 in QKV.
  with convert.load_official(os.path.join(MP2, "250000", "mp_rank_00_model_states.pt")) as one:
    assert one.model_parallel == 2


def test_stride_three_merge_is_not_a_plain_concatenation(reference_state):
  with convert.load_official(MP2) as mp2:
    ranks = [r["transformer.layers.0.attention.query_key_value.bias"][0]
             for r in mp2._ranks]  # pylint: disable=protected-access
    parts = [r.read("transformer.layers.0.attention.query_key_value.bias") for r in ranks]
  merged = reference_state["transformer.layers.0.attention.query_key_value.bias"].numpy()
  assert not np.array_equal(np.concatenate(parts), merged)
  np.testing.assert_array_equal(np.concatenate([parts[0][:32], parts[1][:32]]), merged[:64])


@pytest.mark.skipif(SHARED_LAYOUTS is None, reason="../shared/fixtures/glm_layouts missing")
@pytest.mark.parametrize("layout", sorted(d for d in os.listdir(SHARED_LAYOUTS or ".")
                                          if os.path.isdir(os.path.join(SHARED_LAYOUTS, d)))
                         if SHARED_LAYOUTS else [])
def test_shared_layouts(layout):
  """Every layout of ../shared: the weights of the reference npz (fp16: rounded), and logits."""
  with convert.load_official(os.path.join(SHARED_LAYOUTS, layout)) as checkpoint:
    config, params = convert.from_official_state_dict(checkpoint, checkpoint.num_heads or 4)
  with np.load(shared_fixture("glm_reference", "model_glm_tiny_a.npz")) as data:
    npz_config, expected = convert.from_official_state_dict(dict(data), 4)
  if layout == "fp16":
    expected = jax.tree_util.tree_map(lambda x: x.astype(np.float16), expected)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, expected)
  with np.load(SHARED_CASES) as data:
    cases = {k: data[k] for k in data.files}
  if layout == "fp16":
    with np.load(os.path.join(SHARED_LAYOUTS, "fp16", "expected_logits_fp16_weights.npz")) as e:
      cases.update({k: e[k] for k in e.files})
  for case in ("blank_infill", "gpt_generation", "bidirectional"):
    np.testing.assert_allclose(_logits(config, params, case, cases), cases[f"{case}/logits"],
                               atol=1e-5, rtol=0)
  assert npz_config.num_layers == config.num_layers


def test_bfloat16_and_dtype_overrides(reference_state, tmp_path):
  path = _write_layout("hf_bf16", reference_state, str(tmp_path / "bf16"))
  with convert.load_official(path) as checkpoint:
    config, params = convert.from_official_state_dict(checkpoint, 4)
    up, up_params = convert.from_official_state_dict(checkpoint, 4, param_dtype="float32")
  assert config.param_dtype == "bfloat16" and str(params["word_embeddings"].dtype) == "bfloat16"
  assert up.param_dtype == "float32" and up_params["word_embeddings"].dtype == np.float32
  np.testing.assert_allclose(_logits(up, up_params)[..., :128], _cases()["blank_infill/logits"],
                             atol=2e-2)  # bfloat16 weights: 8 bits of mantissa


def test_reads_release_their_mappings_and_stay_exact(monkeypatch):
  monkeypatch.setattr(readers, "RELEASE_BYTES", 1)  # re-map the file before every read
  opened = []
  real = readers.torch_load
  monkeypatch.setattr(readers, "torch_load", lambda p: opened.append(p) or real(p))
  with convert.load_official(MP2) as mp2:
    config, params = convert.from_official_state_dict(mp2, num_heads=4)
  assert len(opened) > 2 * 29
  _check_logits(config, params)


def test_unscanned_and_round_trip_exact(reference_state):
  state = {k: v.numpy() for k, v in reference_state.items()}
  config, params = convert.from_official_state_dict(state, num_heads=4, scan_layers=False)
  assert "layers_1" in params
  back = convert.to_official_state_dict(config, params)
  assert set(back) == set(state)
  for k in state:
    np.testing.assert_array_equal(back[k], state[k])


class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pt"
  torch.save({"module": {"word_embeddings.weight": torch.zeros(2, 2)},
              "payload": _RunsCode(str(marker))}, path)
  with pytest.raises(convert.CheckpointError, match="Refusing") as error:
    convert.load_official(str(path))
  assert len(str(error.value).splitlines()) == 1 and "system" in str(error.value)
  assert not marker.exists()


def test_layout_errors_are_one_line(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="No checkpoint found"):
    convert.load_official(str(tmp_path / "empty"))
  run = tmp_path / "run"
  run.mkdir()
  (run / "latest").write_text("global_step9")
  with pytest.raises(FileNotFoundError, match="--tag"):
    convert.load_official(str(run))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    convert.load_official(str(tmp_path / "nope"))
  with pytest.raises(ValueError, match="num_heads=5"):
    with convert.load_official(MP2) as mp2:
      convert.from_official_state_dict(mp2, num_heads=5)


def test_tag_picks_another_step(reference_state, tmp_path):
  root = _write_layout("megatron", reference_state, str(tmp_path / "run"))
  os.rename(os.path.join(root, "250000"), os.path.join(root, "1000"))
  with pytest.raises(FileNotFoundError, match="250000"):
    convert.load_official(root)
  with convert.load_official(root, tag="1000") as checkpoint:
    assert checkpoint.layout == "megatron" and len(checkpoint) == 29


# --- The command line --------------------------------------------------------------------------

def _cli(*args):
  env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "glm_jax.convert", *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def _error_line(result):
  assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, result.stderr[-2000:]
  return lines[0]


@pytest.mark.slow
def test_cli_model_parallel_to_checkpoint_keeps_logits(tmp_path):
  out = tmp_path / "converted"
  result = _cli(f"--official={MP2}", "--num_heads=4", f"--output_dir={out}",
                "--vocabulary=builtin", "--nocheck_vocab_size")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "model parallel 2" in result.stdout and "2 layers, hidden 64" in result.stdout
  params, config, vocab_spec, _ = checkpoints.load_params(str(out))
  assert vocab_spec == "builtin" and config.num_heads == 4
  assert checkpoints.read_vocabulary(str(out)).special.task_mask
  _check_logits(config, params)


@pytest.mark.slow
def test_cli_error_is_one_line(tmp_path):
  line = _error_line(_cli(f"--official={MP2}", "--num_heads=4", f"--output_dir={tmp_path / 'o'}"))
  assert "--vocabulary" in line and "megatron (model parallel 2)" in line
  assert not (tmp_path / "o").exists()


def test_refusals(tmp_path):
  with pytest.raises(ValueError, match="1000 rows .* pads to 8064"):
    convert.convert_checkpoint(MP2, str(tmp_path / "o"), vocabulary="builtin", num_heads=4)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    convert.convert_checkpoint(str(tmp_path / "nope"), str(tmp_path / "o"))
  with pytest.raises(ValueError, match="--num_heads"):
    convert.convert_checkpoint(MP2, str(tmp_path / "o"), vocabulary="builtin")
  assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_cli_reports_skipped_heads(tmp_path):
  result = _cli(f"--official={HF_CLASSIFIER}", f"--output_dir={tmp_path / 'o'}",
                "--vocabulary=builtin", "--nocheck_vocab_size")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "Skipped 4 parameters outside the GLM backbone" in result.stdout
  assert "4 heads" in result.stdout  # from config.json, no --num_heads


def _bpe_sized_state(vocab_rows, hidden=8, heads=2, seed=0):
  """A random 1-layer GLM state dict whose embedding table has a real vocabulary's size."""
  from glm_jax.convert import keys  # pylint: disable=g-import-not-at-top
  config = GLMConfig(vocab_size=vocab_rows, num_layers=1, hidden_size=hidden, num_heads=heads,
                     max_sequence_length=16)
  rng = np.random.default_rng(seed)
  names = [(leaf.name, leaf.shape(config)) for leaf in keys.TOP_LEAVES] + [
      (f"transformer.layers.0.{leaf.name}", leaf.shape(config)) for leaf in keys.LAYER_LEAVES]
  return config, {n: rng.normal(0, 0.02, s).astype(np.float32) for n, s in names}


@pytest.mark.parametrize("family,task_mask", [("gpt2", True), ("roberta", False)])
def test_hf_snapshot_names_its_vocabulary(vocab_paths, tmp_path, family, task_mask):
  config, state = _bpe_sized_state(50304)
  snapshot = tmp_path / "snapshot"
  snapshot.mkdir()
  safetensors_torch.save_file({k: torch.from_numpy(np.array(v, order="C"))
                               for k, v in state.items()}, str(snapshot / "model.safetensors"))
  json.dump({"model_type": "glm", "num_layers": 1, "hidden_size": 8, "num_attention_heads": 2,
             "vocab_size": 50304, "max_sequence_length": 16, "output_dropout_prob": 0.0},
            open(snapshot / "config.json", "w"))
  for name in ("vocab.json", "merges.txt"):  # the hub's names for the tokenizer files
    shutil.copy(os.path.join(vocab_paths[family], f"{family}-{name}"), snapshot / name)
  # Beside the safetensors, a pickle that would run code: safetensors is read, never it.
  marker = tmp_path / "pwned"
  torch.save({"payload": _RunsCode(str(marker))}, snapshot / "pytorch_model.bin")
  out = tmp_path / "out"
  done = convert.convert_checkpoint(str(snapshot), str(out))  # no --vocabulary, --num_heads
  assert not marker.exists()
  assert done.vocab_spec == f"{family}:{snapshot}@finetune_eval"
  assert done.task_mask == task_mask and done.config.num_heads == 2
  vocabulary = checkpoints.read_vocabulary(str(out))
  assert vocabulary.special.task_mask == task_mask
  assert checkpoints.read_config(str(out))[0].hidden_dropout == 0.0  # from config.json
  with pytest.raises(ValueError, match="50304 rows .* pads to 30592"):
    convert.convert_checkpoint(str(snapshot), str(tmp_path / "w"),
                               vocabulary=f"wordpiece:{vocab_paths['wordpiece']}")


def test_split_that_lost_vocabulary_rows_is_refused(vocab_paths, tmp_path):
  # The reference's change_mp.py splitting GLM-10B's 50304 rows 5 ways keeps 5 x 10060.
  _, state = _bpe_sized_state(50304, hidden=10, heads=5)
  from glm_jax.convert import model_parallel  # pylint: disable=g-import-not-at-top
  ranks = 5
  step = tmp_path / "run" / "7"
  step.mkdir(parents=True)
  (tmp_path / "run" / "latest_checkpointed_iteration.txt").write_text("7")
  for r in range(ranks):
    module = {}
    for k, v in state.items():
      kind = model_parallel.rule(k, v.ndim)
      if kind == "rows":
        part = v.shape[0] // ranks
        v = v[r * part:(r + 1) * part]
      elif kind == "columns":
        v = np.split(v, ranks, axis=1)[r]
      elif kind == "qkv":
        v = np.concatenate([np.split(t, ranks, axis=0)[r] for t in np.split(v, 3, axis=0)])
      module[k] = torch.from_numpy(np.array(v, order="C"))
    torch.save({"module": module}, step / f"mp_rank_{r:02d}_model_states.pt")
  with pytest.raises(ValueError, match="lost vocabulary rows") as error:
    convert.convert_checkpoint(str(tmp_path / "run"), str(tmp_path / "o"), num_heads=5,
                               vocabulary=f"gpt2:{vocab_paths['gpt2']}")
  assert "50300" in str(error.value) and len(str(error.value).splitlines()) == 1


@pytest.mark.slow
def test_export_to_the_hub_layout_and_back(tmp_path):
  with convert.load_official(MP2) as mp2:
    config, params = convert.from_official_state_dict(mp2, num_heads=4)
  ours = tmp_path / "ours"
  checkpoints.save_params_checkpoint(str(ours), params, config, "builtin")
  hub = tmp_path / "hub"
  result = _cli(f"--checkpoint={ours}", f"--hf_output_dir={hub}", "--max_shard_size=200KB")
  assert result.returncode == 0, result.stderr[-2000:]
  index = json.load(open(hub / "model.safetensors.index.json"))
  assert len(set(index["weight_map"].values())) > 1  # sharded at 200 KB
  written = json.load(open(hub / "config.json"))
  reference = json.load(open(os.path.join(HF_CLASSIFIER, "config.json")))
  for field in set(reference) - {"architectures", "num_labels", "transformers_version"}:
    assert type(written[field]) is type(reference[field]), field
    assert written[field] == reference[field], field
  assert written["glm_jax_vocabulary"] == {"kind": "spm", "configuration": None,
                                           "task_mask": True}
  # The tensors are the reference's 29 names, without prefix, as the hub stores them.
  with convert.load_official(str(hub)) as back:
    assert back.layout == "hf sharded" and back.vocabulary == f"spm:{hub / 'spm.model'}"
    with convert.load_official(HF_CLASSIFIER) as classifier:
      assert {"glm." + k for k in back} == {k for k in classifier if k.startswith("glm.")}
    config2, params2 = convert.from_official_state_dict(back, back.num_heads)
  assert config2 == config
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, params2)
  # Converting the export back needs no --vocabulary or --num_heads.
  again = convert.convert_checkpoint(str(hub), str(tmp_path / "again"), check_vocab_size=False)
  assert again.vocab_spec == f"spm:{hub / 'spm.model'}" and again.layout == "hf sharded"


def test_export_keeps_the_vocabulary_configuration(vocab_paths, tmp_path):
  config, state = _bpe_sized_state(50304)
  params = convert.from_official_state_dict(state, 2)[1]
  spec = f"chinese_sp:{vocab_paths['chinese_sp']}@10b_chinese"
  files = convert.save_hf(str(tmp_path / "hub"), config, params, spec, dtype="float16")
  assert "cog-pretrain.model" in files and "model.safetensors" in files
  with convert.load_official(str(tmp_path / "hub")) as back:
    assert back.vocabulary.endswith("cog-pretrain.model@10b_chinese")
    assert back.dtype("word_embeddings.weight") == np.float16
  assert json.load(open(tmp_path / "hub" / "config.json"))["torch_dtype"] == "float16"


def test_remote_files_are_copied_to_a_temp_dir_and_removed(monkeypatch):
  # gs:// files go through the same path: torch and safetensors map local copies.
  monkeypatch.setattr(readers, "_is_local", lambda path: False)
  with convert.load_official(HF_CLASSIFIER) as checkpoint:
    copies = list(checkpoint._files._copies.values())  # pylint: disable=protected-access
    assert len(copies) == 1 and os.path.exists(copies[0]) and not copies[0].startswith(
        HF_CLASSIFIER)
    config, params = convert.from_official_state_dict(checkpoint, checkpoint.num_heads)
  assert not os.path.exists(copies[0])
  _check_logits(config, params)
