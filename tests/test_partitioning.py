"""Mesh sizing, the logical-axis rules and batch/param shardings."""

import json

from jax.sharding import PartitionSpec as P
import pytest

from glm_jax import model_api, partitioning
from glm_jax.model import GLMConfig

from conftest import multi_device_env, run_script


def test_mesh_shape_fills_minus_one():
  assert partitioning.MeshConfig().shape(8) == (8, 1, 1)
  assert partitioning.MeshConfig(data=2, fsdp=-1, tensor=2).shape(8) == (2, 2, 2)
  assert partitioning.MeshConfig(data=1, fsdp=2, tensor=4).shape(8) == (1, 2, 4)


@pytest.mark.parametrize("mesh,match", [
    (dict(data=4, fsdp=4, tensor=1), "needs 16 devices"),
    (dict(data=2, fsdp=1, tensor=1), "uses 2 of 8 devices"),
    (dict(data=-1, fsdp=-1, tensor=1), "At most one mesh axis"),
    (dict(data=0, fsdp=1, tensor=1), "positive or -1"),
])
def test_bad_mesh_sizes_are_clear_errors(mesh, match):
  with pytest.raises(ValueError, match=match):
    partitioning.MeshConfig(**mesh).shape(8)


def test_param_shardings_follow_the_rules_table():
  cfg = GLMConfig(vocab_size=64, num_layers=2, hidden_size=16, num_heads=2,
                  max_sequence_length=16)
  partitioner = partitioning.Partitioner(partitioning.MeshConfig())
  shardings = partitioner.param_shardings(model_api.BlankInfillingModel(cfg).abstract_params())
  # One device: every axis has size 1, so each rule applies (1 divides everything).
  assert shardings["word_embeddings"].spec == P("tensor", "fsdp")
  assert shardings["position_embeddings"].spec == P(None, "fsdp")
  attention = shardings["layers"]["attention"]
  assert attention["qkv_kernel"].spec == P(None, "fsdp", None, "tensor", None)  # layers first
  assert attention["out_kernel"].spec == P(None, "tensor", None, "fsdp")
  assert shardings["layers"]["mlp"]["wi_kernel"].spec == P(None, "fsdp", "tensor")


def test_batch_size_must_divide_data_axes():
  partitioner = partitioning.Partitioner(partitioning.MeshConfig())
  partitioner.check_batch_size(8, num_microbatches=4)
  with pytest.raises(ValueError, match="not divisible by NUM_MICROBATCHES"):
    partitioner.check_batch_size(6, num_microbatches=4)


_EIGHT_DEVICES = r"""
import json, jax
from glm_jax import model_api, partitioning
from glm_jax.model import GLMConfig
cfg = GLMConfig(vocab_size=60, num_layers=1, hidden_size=16, num_heads=2, max_sequence_length=16)
out = {}
p = partitioning.Partitioner(partitioning.MeshConfig(data=2, fsdp=2, tensor=2))
sh = p.param_shardings(model_api.BlankInfillingModel(cfg).abstract_params())
out['emb'] = str(sh['word_embeddings'].spec)       # vocab 60 divisible by tensor 2
out['pos'] = str(sh['position_embeddings'].spec)   # 17 rows: 'positions' replicated
out['slice'] = list(p.local_batch_slice(16))
try:
  p.check_batch_size(6)
except ValueError as e:
  out['err'] = str(e)
p3 = partitioning.Partitioner(partitioning.MeshConfig(data=1, fsdp=1, tensor=8))
sh3 = p3.param_shardings(model_api.BlankInfillingModel(cfg).abstract_params())
out["emb_t8"] = str(sh3["word_embeddings"].spec)   # 60 % 8 != 0 -> vocab replicated
p3.param_shardings(model_api.BlankInfillingModel(cfg).abstract_params())  # warned once per run
import numpy as np
rows = p.put_global({"tokens": np.arange(12).reshape(3, 4)}, "decoding batch")
out["rows"] = [str(rows["tokens"].sharding.spec), rows["tokens"].tolist()[2]]
p.put_global(np.zeros((3, 1)), "decoding batch")
out["even"] = str(p.put_global(np.zeros((8, 1))).sharding.spec)
print(json.dumps(out))
"""


def test_eight_device_shardings_and_fallback():
  result = run_script(_EIGHT_DEVICES, env=multi_device_env(8))
  assert result.returncode == 0, result.stderr[-2000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["emb"] == str(P("tensor", "fsdp"))
  assert out["pos"] == str(P(None, "fsdp"))
  assert out["slice"] == [0, 1]  # one process holds every row
  assert "not divisible by the data-parallel mesh size 4" in out["err"]
  assert out["emb_t8"] == str(P(None, "fsdp"))  # fsdp has size 1 there
  # Each dimension that cannot be sharded as the rules ask: one visible warning per run.
  warnings = [l for l in result.stderr.splitlines() if "is not divisible by mesh axes" in l]
  names = [l.split("WARNING:absl:")[-1].split(":")[0] for l in warnings]
  assert sorted(names) == sorted(set(names)), names  # param_shardings ran twice
  assert set(names) == {"parameter word_embeddings", "parameter layers/attention/qkv_kernel",
                        "parameter layers/attention/qkv_bias",
                        "parameter layers/attention/out_kernel", "decoding batch"}
  assert any("parameter word_embeddings: dimension 0 (size 60) is not divisible by mesh axes "
             "tensor (8 devices) of the mesh data:1 x fsdp:1 x tensor:8" in l for l in warnings)
  assert any("decoding batch: dimension 0 (size 3) is not divisible by mesh axes data/fsdp "
             "(4 devices) of the mesh data:2 x fsdp:2 x tensor:2" in l for l in warnings)
  assert out["rows"] == [str(P(None, None)), [8, 9, 10, 11]]  # 3 rows, 4 batch shards: replicated
  assert out["even"] == str(P(("data", "fsdp"), None))
