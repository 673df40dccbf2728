"""glm_jax.kernels.select: the kernel comes from GLMConfig and the traced mesh's platform."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax.kernels import cudnn, select
from glm_jax.model import GLM, GLMConfig, init_params

CFG = GLMConfig(vocab_size=64, num_layers=2, hidden_size=32, num_heads=4,
                max_sequence_length=32, embedding_dropout=0.1, attention_dropout=0.2,
                hidden_dropout=0.1, remat_policy="dots_no_batch")


def _mesh(size, platform="cpu"):
  device = jax.sharding.AbstractDevice(device_kind=platform, num_cores=None, platform=platform)
  return jax.sharding.AbstractMesh((size,), ("data",), abstract_device=device)


def test_target_is_the_traced_meshs_platform():
  assert select.current_target() == select.Target("cpu", 1)
  with jax.sharding.use_abstract_mesh(_mesh(2)):
    assert select.current_target() == select.Target("cpu", 2)
  with jax.sharding.use_abstract_mesh(_mesh(4, "tpu")):
    assert select.current_target() == select.Target("tpu", 4)
  with jax.sharding.use_abstract_mesh(_mesh(1, "gpu")):
    assert select.current_target().platform == "cuda"  # no ROCm backend here


BF16 = CFG.replace(dtype="bfloat16")
CUDA = select.Target("cuda", 8, local=False)
TPU = select.Target("tpu", 8)


@pytest.mark.parametrize("config,target,kwargs,expected", [
    (CFG, select.Target("cpu", 1), {}, ("cpu_blocked", True)),
    (CFG.replace(dropout_implementation="threefry"), select.Target("cpu", 1),
     {"attention_dropout": True}, ("xla", True)),
    (CFG, select.Target("cpu", 8), {}, ("xla", False)),
    (BF16, CUDA, {}, ("cudnn", False)),
    (BF16, CUDA, {"packed": True}, ("cudnn", False)),
    (BF16, CUDA, {"packed": True, "seq_len": 127}, ("xla", False)),  # the bias needs even T
    (CFG, CUDA, {}, ("xla", False)),  # cuDNN takes half precision only
    (BF16, CUDA, {"attention_dropout": True}, ("xla", False)),
    (BF16, select.Target("rocm", 8), {}, ("xla", False)),
    (CFG, TPU, {}, ("splash", False)),
    (CFG, TPU, {"seq_len": 200}, ("xla", False)),  # not a multiple of splash's 128
    (CFG, TPU, {"dense_mask": True}, ("xla", False)),
    (CFG, TPU, {"attention_dropout": True}, ("xla", False)),
    (CFG.replace(attention_kernel="xla"), select.Target("cpu", 1), {}, ("xla", False)),
    (CFG.replace(attention_kernel="splash"), select.Target("cpu", 1), {}, ("splash", False)),
    (CFG.replace(attention_kernel="splash"), TPU, {"dense_mask": True}, ("xla", False)),
    (CFG.replace(attention_kernel="cudnn"), select.Target("cpu", 1), {}, ("cudnn", False)),
])
def test_choose(config, target, kwargs, expected):
  kwargs = {"seq_len": 256, "attention_dropout": False, **kwargs}
  choice = select.choose(config, target, **kwargs)
  assert (choice.attention, choice.cpu_layer) == expected


def test_auto_on_a_local_gpu_without_cudnn_falls_back_to_xla():
  # This machine has no CUDA plugin: probing it says so.
  assert select.choose(BF16, select.Target("cuda", 1, local=True), seq_len=256,
                       attention_dropout=False).attention == "xla"


@pytest.mark.parametrize("config,target,message", [
    (CFG.replace(attention_kernel="cudnn"), CUDA, "takes no attention dropout"),
    (CFG.replace(attention_kernel="splash"), TPU, "takes no attention dropout"),
    (CFG.replace(attention_kernel="cpu_blocked", dropout_implementation="threefry"),
     select.Target("cpu", 1), "draws hash dropout"),
    (CFG.replace(attention_kernel="cpu_blocked"), select.Target("cpu", 8), "is for one device"),
])
def test_explicit_kernels_that_cannot_run_are_clear_errors(config, target, message):
  with pytest.raises(ValueError, match=message):
    select.choose(config, target, seq_len=256, attention_dropout=True)


def test_auto_says_which_kernel_it_picked(caplog):
  # absl's logger: an earlier test may have raised its level (absl.logging.set_verbosity).
  with caplog.at_level(logging.INFO, logger="absl"):
    select.choose(CFG, TPU, seq_len=256, attention_dropout=False)
  assert "attention_kernel 'auto' -> 'splash' on tpu x 8" in caplog.text


def _batch():
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 24), 0, 64)
  positions = jnp.stack([jnp.tile(jnp.arange(24), (2, 1)), jnp.zeros((2, 24), jnp.int32)], 1)
  return tokens, positions, jnp.asarray([10, 16], jnp.int32)


def _loss(config):
  tokens, positions, sep = _batch()

  def loss(p):
    logits = GLM(config).apply({"params": p}, tokens, positions, sep=sep, deterministic=False,
                               rngs={"dropout": jax.random.PRNGKey(2)})
    return jnp.mean(jax.nn.log_softmax(logits)[..., 3])

  return loss


def test_the_same_jitted_step_follows_the_mesh_it_is_traced_under():
  params = init_params(CFG, jax.random.PRNGKey(0))
  step = jax.jit(jax.value_and_grad(_loss(CFG)))
  # The CPU layer's blocked core and planned projections are custom_vjp calls; a sharded
  # mesh traces the same function again, with plain ops (nothing global to forget).
  assert "custom_vjp_call" in str(step.trace(params).jaxpr)
  with jax.sharding.use_abstract_mesh(_mesh(2)):
    assert "custom_vjp_call" not in str(step.trace(params).jaxpr)
  assert "custom_vjp_call" in str(step.trace(params).jaxpr)


def test_the_cpu_layer_and_plain_ops_give_the_same_values():
  params = init_params(CFG, jax.random.PRNGKey(0))
  loss_cpu, grads_cpu = jax.jit(jax.value_and_grad(_loss(CFG)))(params)
  plain = CFG.replace(attention_kernel="xla")
  assert "custom_vjp_call" not in str(jax.make_jaxpr(jax.grad(_loss(plain)))(params))
  loss_xla, grads_xla = jax.jit(jax.value_and_grad(_loss(plain)))(params)
  np.testing.assert_allclose(loss_cpu, loss_xla, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(grads_cpu), jax.tree_util.tree_leaves(grads_xla)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_network_errors_name_the_fix():
  params = init_params(CFG, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="takes no attention dropout"):
    _loss(CFG.replace(attention_kernel="splash"))(params)
  tokens, positions, sep = _batch()
  apply = lambda c: GLM(c).apply({"params": params}, tokens, positions, sep=sep)  # pylint: disable=unnecessary-lambda-assignment
  with pytest.raises(ValueError, match="takes bfloat16 or float16"):
    apply(CFG.replace(attention_kernel="cudnn"))
  assert cudnn.cudnn_version() is None
  with pytest.raises(ValueError, match="needs JAX's CUDA plugin"):
    apply(BF16.replace(attention_kernel="cudnn"))
  with cudnn.declared_cudnn_version(91000):
    assert cudnn.cudnn_version() == 91000
  assert cudnn.cudnn_version() is None
