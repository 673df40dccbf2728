"""Every attention kernel computes the xla kernel's function: values and gradients, float32.

cudnn runs its very calls through jax.nn.dot_product_attention's XLA implementation and
splash runs in Pallas interpret mode: what is checked on a CPU is how each expresses GLM's
mask (per-example sep, packed rows, padding, fully bidirectional rows), and the network with
each kernel against the reference implementation's own outputs.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import multi_device_env, run_script, shipped_fixture
from glm_jax import convert
from glm_jax import losses
from glm_jax.kernels import cudnn, splash, xla
from glm_jax.kernels.cpu import attention as cpu_attention
from glm_jax.model import GLM, attention_mask

N, D = 2, 16


def _dense_mask(sep, segment_ids, batch, length):
  index = jnp.arange(length)
  sep = jnp.full((batch,), length, jnp.int32) if sep is None else sep
  return attention_mask(index, index, sep, segment_ids)


def _xla(q, k, v, sep, segment_ids):
  return xla.attention(q, k, v, _dense_mask(sep, segment_ids, q.shape[0], q.shape[1]))


def _cpu_blocked(q, k, v, sep, segment_ids):
  mask = _dense_mask(sep, segment_ids, q.shape[0], q.shape[1])
  t = lambda x: jnp.swapaxes(x, 1, 2)  # pylint: disable=unnecessary-lambda-assignment
  return t(cpu_attention.attention_core(t(q), t(k), t(v), mask, jnp.zeros((2,), jnp.uint32),
                                        0.0))


def _cudnn(q, k, v, sep, segment_ids):
  return cudnn.attention(q, k, v, sep, segment_ids, implementation="xla")


def _splash(q, k, v, sep, segment_ids):
  return splash.attention(q, k, v, sep, segment_ids)


KERNELS = {"cpu_blocked": _cpu_blocked, "cudnn": _cudnn, "splash": _splash}


def _packed_rows(rng, batch, length):
  """segment_ids (1.., 0 on padding) and per-token sep of random packed rows."""
  segment_ids = np.zeros((batch, length), np.int32)
  sep = np.zeros((batch, length), np.int32)
  for b in range(batch):
    start, segment = 0, 1
    while start < length - 8:
      size = int(rng.randint(4, length // 2))
      size = min(size, length - 4 - start)  # keep some padding at the end
      part_a = int(rng.randint(1, size + 1))
      segment_ids[b, start:start + size] = segment
      sep[b, start:start + size] = start + part_a
      start, segment = start + size, segment + 1
  return jnp.asarray(sep), jnp.asarray(segment_ids)


def _case(name, seed=0):
  rng = np.random.RandomState(seed)
  batch, length = (4, 100) if name == "padded_length" else (4, 128)
  if name == "packed":
    sep, segment_ids = _packed_rows(rng, batch, length)
  elif name == "bidirectional":
    sep, segment_ids = None, None
  else:  # one sample per row, sep anywhere from 0 (causal) to the length (bidirectional)
    sep = jnp.asarray([0, length, *rng.randint(1, length, batch - 2)], jnp.int32)
    segment_ids = None
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  q, k, v, d_out = (jax.random.normal(key, (batch, length, N, D)) for key in keys)
  return q, k, v, d_out, sep, segment_ids


def _value_and_grads(fn, q, k, v, d_out, sep, segment_ids):
  loss = lambda q, k, v: jnp.sum(fn(q, k, v, sep, segment_ids) * d_out)  # pylint: disable=unnecessary-lambda-assignment
  out = jax.jit(lambda q, k, v: fn(q, k, v, sep, segment_ids))(q, k, v)
  return out, jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize("case", ["random_sep", "padded_length", "packed", "bidirectional"])
@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_kernel_values_and_gradients_equal_xla(kernel, case):
  args = _case(case)
  out, grads = _value_and_grads(KERNELS[kernel], *args)
  ref_out, ref_grads = _value_and_grads(_xla, *args)
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
  for name, a, b in zip("qkv", grads, ref_grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f"d{name}")


def test_the_decomposition_takes_each_row_from_its_own_call():
  # Part A rows must not see Part B keys and Part B rows must see earlier Part B keys: a
  # kernel that took every row from one call would fail one of these.
  q, k, v, _, sep, _ = _case("random_sep", seed=1)
  sep = jnp.asarray([40, 40, 40, 40], jnp.int32)
  for fn in (_cudnn, _splash):
    base = fn(q, k, v, sep, None)
    moved = fn(q, k, v.at[:, 90].add(100.0), sep, None)  # a Part B key
    np.testing.assert_allclose(base[:, :90], moved[:, :90], atol=1e-5)  # unseen before 90
    assert np.abs(np.asarray(base[:, 90:] - moved[:, 90:])).max() > 1.0


# --- the network with each kernel against the reference implementation's outputs -------------

SEP_CASES = ("blank_infill", "gpt_generation", "gap_sentence", "bidirectional", "near_causal")
MASK_CASES = ("mask2d_packed_choices", "mask2d_random_zero_row")
NETWORK_KERNELS = ("xla", "cpu_blocked", "cudnn", "splash")


@pytest.fixture(scope="module")
def reference():
  with np.load(shipped_fixture("glm_reference", "model_glm_tiny_a.npz")) as data:
    config, params = convert.from_official_state_dict(dict(data), num_heads=4)
  with np.load(shipped_fixture("glm_reference", "cases_glm_tiny_a_attention.npz")) as data:
    cases = dict(data)
  return config, params, cases


@pytest.fixture(autouse=True)
def cudnn_through_xla(monkeypatch):
  monkeypatch.setattr(cudnn, "IMPLEMENTATION", "xla")


def _reference_logits(params, cases, case):
  """The reference's logits: its final hidden states times the tied word embedding."""
  return np.einsum("bth,vh->btv", cases[f"{case}/final_hidden"],
                   np.asarray(params["word_embeddings"]))


def _logits(config, params, kernel, tokens, positions, **kwargs):
  model = GLM(config.replace(attention_kernel=kernel))
  return np.asarray(jax.jit(lambda p: model.apply({"params": p}, tokens, positions,
                                                  **kwargs))(params))


@pytest.fixture(scope="module")
def xla_logits(reference):
  config, params, cases = reference
  return {case: _logits(config, params, "xla", cases[f"{case}/input_ids"],
                        cases[f"{case}/position_ids"], sep=cases[f"{case}/attention_mask"])
          for case in SEP_CASES}


@pytest.mark.parametrize("kernel", NETWORK_KERNELS)
def test_network_matches_the_reference_with_every_kernel(reference, xla_logits, kernel):
  config, params, cases = reference
  for case in SEP_CASES:
    c = lambda f, case=case: cases[f"{case}/{f}"]  # pylint: disable=unnecessary-lambda-assignment
    logits = _logits(config, params, kernel, c("input_ids"), c("position_ids"),
                     sep=c("attention_mask"))
    np.testing.assert_allclose(logits, _reference_logits(params, cases, case), atol=1e-4,
                               err_msg=case)
    np.testing.assert_allclose(logits, xla_logits[case], rtol=1e-5, atol=1e-5, err_msg=case)
    loss_sum, weight_sum, _ = losses.weighted_cross_entropy(logits, c("targets"), c("loss_mask"))
    np.testing.assert_allclose(float(loss_sum / weight_sum), float(c("loss")), rtol=1e-5)


@pytest.mark.parametrize("kernel", NETWORK_KERNELS)
def test_explicit_masks_match_the_reference_with_every_kernel(reference, kernel):
  # splash hands explicit masks to xla; cudnn passes them as a bias.
  config, params, cases = reference
  for case in MASK_CASES:
    c = lambda f, case=case: cases[f"{case}/{f}"]  # pylint: disable=unnecessary-lambda-assignment
    mask = c("attention_mask_2d")[:, 0].astype(bool)
    logits = _logits(config, params, kernel, c("input_ids"), c("position_ids"), mask=mask)
    np.testing.assert_allclose(logits, _reference_logits(params, cases, case), atol=1e-4,
                               err_msg=case)


def _packed_reference_rows(cases, case, rows, length):
  """Rows of one case packed into one row of `length` (positions restart per segment)."""
  c = lambda f: cases[f"{case}/{f}"]  # pylint: disable=unnecessary-lambda-assignment
  tokens = np.zeros((1, length), np.int32)
  positions = np.zeros((1, 2, length), np.int32)
  sep = np.zeros((1, length), np.int32)
  segment_ids = np.zeros((1, length), np.int32)
  start, spans = 0, []
  for segment, row in enumerate(rows, 1):
    n = c("input_ids").shape[1]
    tokens[0, start:start + n] = c("input_ids")[row]
    positions[0, :, start:start + n] = c("position_ids")[row]
    sep[0, start:start + n] = start + c("attention_mask")[row]
    segment_ids[0, start:start + n] = segment
    spans.append((start, row, n))
    start += n
  return tokens, positions, sep, segment_ids, spans


@pytest.mark.parametrize("kernel", NETWORK_KERNELS)
def test_packed_rows_match_the_reference_examples(reference, kernel):
  # Three blank-infilling examples in one packed row of 256 (padding after them): each
  # segment's logits are that example's reference logits.
  config, params, cases = reference
  config = config.replace(max_sequence_length=256)
  params = dict(params)
  for table in ("position_embeddings", "block_position_embeddings"):
    params[table] = jnp.pad(params[table], ((0, 256 - 64), (0, 0)))
  tokens, positions, sep, segment_ids, spans = _packed_reference_rows(
      cases, "blank_infill", (0, 1, 2), 256)
  logits = _logits(config, params, kernel, tokens, positions, sep=sep,
                   segment_ids=segment_ids)
  expected = _reference_logits(params, cases, "blank_infill")
  for start, row, n in spans:
    np.testing.assert_allclose(logits[0, start:start + n], expected[row], atol=1e-4)


@pytest.mark.parametrize("kernel", ["cpu_blocked", "cudnn", "splash"])
def test_network_gradients_equal_xla(reference, kernel):
  config, params, cases = reference
  c = lambda f: cases[f"blank_infill/{f}"]  # pylint: disable=unnecessary-lambda-assignment

  def grads(name):
    model = GLM(config.replace(attention_kernel=name))

    def loss(p):
      logits = model.apply({"params": p}, c("input_ids"), c("position_ids"),
                           sep=c("attention_mask"))
      loss_sum, weight_sum, _ = losses.weighted_cross_entropy(logits, c("targets"),
                                                              c("loss_mask"))
      return loss_sum / weight_sum

    return jax.jit(jax.value_and_grad(loss))(params)

  (value, grad), (ref_value, ref_grad) = grads(kernel), grads("xla")
  np.testing.assert_allclose(value, ref_value, rtol=1e-6)
  for path, a in jax.tree_util.tree_leaves_with_path(grad):
    b = ref_grad
    for key in path:
      b = b[key.key]
    scale = float(np.abs(np.asarray(b)).max())
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale,
                               err_msg=jax.tree_util.keystr(path))


_SHARDED_SCRIPT = """
import json
import jax, jax.numpy as jnp, numpy as np
from glm_jax import partitioning
from glm_jax.kernels import cudnn
from glm_jax.model import GLM, GLMConfig, init_params
cudnn.IMPLEMENTATION = "xla"
cfg = GLMConfig(vocab_size=64, num_layers=2, hidden_size=32, num_heads=4, max_sequence_length=128,
                embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0)
params = init_params(cfg, jax.random.PRNGKey(0))
tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 128), 0, 64)
positions = jnp.stack([jnp.tile(jnp.arange(128), (4, 1)), jnp.zeros((4, 128), jnp.int32)], 1)
sep = jnp.asarray([0, 128, 37, 90], jnp.int32)
segments = jnp.asarray(np.tile(np.repeat([[1, 2, 3, 0]], 32, axis=1), (4, 1)), jnp.int32)
packed_sep = jnp.asarray(np.tile(np.repeat([[10, 40, 90, 0]], 32, axis=1), (4, 1)), jnp.int32)
partitioner = partitioning.Partitioner(partitioning.MeshConfig(data=2, fsdp=2, tensor=2))
out = {}
for kernel in ("xla", "splash", "cudnn"):
  model = GLM(cfg.replace(attention_kernel=kernel))
  def loss(p, s, seg):
    return jnp.mean(model.apply({"params": p}, tokens, positions, sep=s, segment_ids=seg) ** 2)
  with jax.set_mesh(partitioner.mesh), partitioner.axis_rules():
    step = jax.jit(jax.value_and_grad(loss))
    for name, s, seg in (("sep", sep, None), ("packed", packed_sep, segments)):
      value, grads = step(params, s, seg)
      out[kernel + "/" + name] = [float(value)] + [float(jnp.sum(g * g)) for g in
                                                   jax.tree_util.tree_leaves(grads)]
    if kernel == "splash":
      out["jaxpr"] = "shard_map" in str(jax.make_jaxpr(step)(params, sep, None))
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_fused_kernels_on_a_sharded_mesh_equal_xla():
  # splash runs under shard_map over the batch and heads axes (data x fsdp, tensor).
  result = run_script(_SHARDED_SCRIPT, env=multi_device_env(8), timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  out = [line for line in result.stdout.splitlines() if line.startswith("RESULT")][-1]
  out = json.loads(out[len("RESULT"):])
  assert out.pop("jaxpr")
  for name in ("sep", "packed"):
    for kernel in ("splash", "cudnn"):
      np.testing.assert_allclose(out[f"{kernel}/{name}"], out[f"xla/{name}"], rtol=2e-5,
                                 err_msg=f"{kernel}/{name}")
