"""Mesh sizing, the logical-axis rules and batch/param shardings."""

import json

import jax
from jax.sharding import PartitionSpec as P
import pytest

from glm_jax import models, partitioning
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
  shardings = partitioner.param_shardings(models.BlankInfillingModel(cfg).abstract_params())
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
from glm_jax import models, partitioning
from glm_jax.model import GLMConfig
cfg = GLMConfig(vocab_size=60, num_layers=1, hidden_size=16, num_heads=2, max_sequence_length=16)
out = {}
p = partitioning.Partitioner(partitioning.MeshConfig(data=2, fsdp=2, tensor=2))
sh = p.param_shardings(models.BlankInfillingModel(cfg).abstract_params())
out['emb'] = str(sh['word_embeddings'].spec)       # vocab 60 divisible by tensor 2
out['pos'] = str(sh['position_embeddings'].spec)   # 17 rows: 'positions' replicated
out['slice'] = list(p.local_batch_slice(16))
try:
  p.check_batch_size(6)
except ValueError as e:
  out['err'] = str(e)
p3 = partitioning.Partitioner(partitioning.MeshConfig(data=1, fsdp=1, tensor=8))
sh3 = p3.param_shardings(models.BlankInfillingModel(cfg).abstract_params())
out["emb_t8"] = str(sh3["word_embeddings"].spec)   # 60 % 8 != 0 -> vocab replicated
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
