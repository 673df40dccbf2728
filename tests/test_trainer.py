"""Train step: accumulation equals the large batch, NaN skipping, determinism, sharding invariance."""

import json

import jax
import numpy as np
import optax
import pytest

from glm_jax import model_api, optim, partitioning, trainer as trainer_lib
from glm_jax.model import GLMConfig
from glm_jax.data.synthetic import synthetic_batches

from conftest import enable_compile_cache, multi_device_env, run_script

enable_compile_cache()

CFG = GLMConfig(vocab_size=128, num_layers=2, hidden_size=32, num_heads=4,
                max_sequence_length=64, embedding_dropout=0.0, attention_dropout=0.0,
                hidden_dropout=0.0)


def _trainer(cfg=CFG, microbatches=1, devices=None, mesh=None, seed=0, **options):
  partitioner = partitioning.Partitioner(mesh or partitioning.MeshConfig(), devices=devices)
  tx, lr = optim.create_optimizer(learning_rate=3e-3, warmup_steps=2, total_steps=20)
  return trainer_lib.Trainer(model_api.BlankInfillingModel(cfg), partitioner, tx, lr, seed=seed,
                             num_microbatches=microbatches, **options)


def _batches(n, batch_size=8):
  return list(synthetic_batches("synthetic", "train", sequence_length=32,
                                batch_size=batch_size, seed=1, num_batches=n))


def _run(t, batches, steps=None):
  state = t.init_state(jax.random.PRNGKey(0))
  losses = []
  for b in batches[:steps]:
    state, m = t.train_step(state, t.partitioner.shard_batch(b, b["tokens"].shape[0]))
    losses.append(float(m["loss"]))
  return state, losses


def test_synthetic_batches_contract():
  full = _batches(3)
  again = list(synthetic_batches("synthetic", "train", sequence_length=32, batch_size=8,
                                 seed=1, start_batch=2, num_batches=1))
  for k in full[2]:
    np.testing.assert_array_equal(full[2][k], again[0][k])  # resume without replay
  shard = list(synthetic_batches("synthetic", "train", sequence_length=32, batch_size=8,
                                 seed=1, shard_index=1, num_shards=2, num_batches=1))[0]
  np.testing.assert_array_equal(shard["tokens"], full[0]["tokens"][4:])
  b = full[0]
  assert b["tokens"].shape == (8, 32) and b["positions"].shape == (8, 2, 32)
  for row in range(8):
    sep = b["sep"][row]
    assert b["loss_weights"][row, :sep].sum() == 0 and b["loss_weights"][row, sep] == 1
    assert b["tokens"][row, sep] == 3  # sop opens Part B


def test_gradient_accumulation_equals_large_batch():
  batches = _batches(3)
  state_1, loss_1 = _run(_trainer(microbatches=1), batches)
  state_4, loss_4 = _run(_trainer(microbatches=4), batches)
  np.testing.assert_allclose(loss_4, loss_1, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(state_1.params),
                  jax.tree_util.tree_leaves(state_4.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_loss_falls_and_runs_are_bitwise_reproducible():
  cfg = CFG.replace(embedding_dropout=0.1, attention_dropout=0.1, hidden_dropout=0.1)
  batches = _batches(6)
  state_a, losses = _run(_trainer(cfg), batches)
  state_b, losses_b = _run(_trainer(cfg), batches)
  assert losses == losses_b
  for a, b in zip(jax.tree_util.tree_leaves(state_a), jax.tree_util.tree_leaves(state_b)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert losses[-1] < losses[0] - 0.1
  assert int(state_a.step) == 6


def test_nonfinite_step_is_skipped():
  t = _trainer()
  state = t.init_state(jax.random.PRNGKey(0))
  before = jax.tree_util.tree_map(np.asarray, state.params)
  batch = dict(_batches(1)[0])
  batch["loss_weights"] = batch["loss_weights"] * np.float32("nan")
  state, metrics = t.train_step(state, t.partitioner.shard_batch(batch, 8))
  assert bool(metrics["nonfinite"])
  assert int(state.step) == 1
  for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(state.params)):
    np.testing.assert_array_equal(a, np.asarray(b))
  state, metrics = t.train_step(state, t.partitioner.shard_batch(_batches(1)[0], 8))
  assert not bool(metrics["nonfinite"]) and np.isfinite(float(metrics["loss"]))


def test_eval_step_sums_numerators_and_denominators():
  t = _trainer()
  state = t.init_state(jax.random.PRNGKey(0))
  b = _batches(1)[0]
  metrics = t.eval_step(state.params, t.partitioner.shard_batch(b, 8))
  loss_sum, weight_sum = (float(x) for x in metrics["loss"])
  assert weight_sum == pytest.approx(float(b["loss_weights"].sum()))
  assert 3.0 < loss_sum / weight_sum < 6.0  # near log(128) = 4.85 at initialisation
  _, accuracy_den = metrics["accuracy"]
  assert float(accuracy_den) == weight_sum


def _micro_gradients(params, batch, microbatches=2):
  """Per microbatch (rows m, m + M, ...): (token-mean gradient, token-mean loss, weight)."""
  model = model_api.BlankInfillingModel(CFG)
  grad_fn = jax.jit(jax.value_and_grad(
      lambda p, b: model.loss_fn(p, b, None, deterministic=True), has_aux=True))
  out = []
  for m in range(microbatches):
    micro = {k: v[m::microbatches] for k, v in batch.items()}
    (loss_sum, aux), grads = grad_fn(params, micro)
    weight = float(aux["weight_sum"])
    out.append((jax.tree_util.tree_map(lambda g, w=weight: g / w, grads),
                float(loss_sum) / weight, weight))
  return out


def _norm(tree):
  return float(optax.global_norm(tree))


def _tree_sum(a, b, scale_a=1.0):
  return jax.tree_util.tree_map(lambda x, y: scale_a * x + y, a, b)


def test_microbatch_mean_normalisation_is_the_reference_s():
  """'microbatch_mean': loss and gradient are the mean of each microbatch's token mean."""
  batch = _batches(1)[0]
  t = _trainer(microbatches=2, loss_normalization="microbatch_mean", clip_norm=None)
  state = t.init_state(jax.random.PRNGKey(0))
  (g0, l0, w0), (g1, l1, w1) = _micro_gradients(state.params, batch)
  assert w0 != w1  # so the two normalisations differ
  _, metrics = t.train_step(state, t.partitioner.shard_batch(batch, 8))
  assert float(metrics["loss"]) == pytest.approx((l0 + l1) / 2, rel=1e-6)
  mean = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, g0, g1)
  assert float(metrics["grad_norm"]) == pytest.approx(_norm(mean), rel=1e-5)
  tokens = _trainer(microbatches=2, clip_norm=None)
  _, metrics = tokens.train_step(tokens.init_state(jax.random.PRNGKey(0)),
                                 tokens.partitioner.shard_batch(batch, 8))
  assert float(metrics["loss"]) == pytest.approx((l0 * w0 + l1 * w1) / (w0 + w1), rel=1e-6)
  assert abs(float(metrics["loss"]) - (l0 + l1) / 2) > 1e-4


@pytest.mark.parametrize("clip", [0.05, None])
def test_step_is_optax_clip_then_adamw_on_the_mean_gradient(clip):
  batch = _batches(1)[0]
  t = _trainer(clip_norm=clip)
  state = t.init_state(jax.random.PRNGKey(0))
  ((grads, _, _),) = _micro_gradients(state.params, batch, microbatches=1)
  if clip:
    assert _norm(grads) > 10 * clip  # the clip really scales
  tx, _ = optim.create_optimizer(learning_rate=3e-3, warmup_steps=2, total_steps=20)
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  updates, _ = tx.update(grads, tx.init(state.params), state.params)
  expected = optax.apply_updates(state.params, updates)
  new_state, metrics = t.train_step(state, t.partitioner.shard_batch(batch, 8))
  assert float(metrics["grad_norm"]) == pytest.approx(_norm(grads), rel=1e-5)  # before the clip
  for got, want in zip(jax.tree_util.tree_leaves(new_state.params),
                       jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_each_microbatch_clip_is_the_reference_s_non_deepspeed_path():
  """'each': the half-gradient of microbatch 0 is clipped before microbatch 1's is added."""
  batch = _batches(1)[0]
  clip = 0.05
  (g0, _, _), (g1, _, _) = _micro_gradients(
      _trainer().init_state(jax.random.PRNGKey(0)).params, batch)
  first = _norm(g0) / 2
  assert first > clip  # the first clip really scales
  clipped = _tree_sum(g0, g1, scale_a=clip / first)
  results = {}
  for mode in ("each", "accumulated"):
    t = _trainer(microbatches=2, loss_normalization="microbatch_mean", clip_norm=clip,
                 microbatch_clip=mode)
    _, metrics = t.train_step(t.init_state(jax.random.PRNGKey(0)),
                              t.partitioner.shard_batch(batch, 8))
    results[mode] = float(metrics["grad_norm"])  # the norm before the step's last clip
  assert results["each"] == pytest.approx(_norm(clipped) / 2, rel=1e-5)
  assert results["accumulated"] == pytest.approx(_norm(_tree_sum(g0, g1)) / 2, rel=1e-5)


def test_logged_learning_rate_is_the_one_applied_after_a_skipped_step():
  """A skipped step leaves the optimizer's count, so the next update and its log use it."""
  t = _trainer(clip_norm=None)
  state = t.init_state(jax.random.PRNGKey(0))
  bad = dict(_batches(1)[0])
  bad["loss_weights"] = bad["loss_weights"] * np.float32("nan")
  state, metrics = t.train_step(state, t.partitioner.shard_batch(bad, 8))
  assert int(metrics["optimizer_updates"]) == 0 and int(metrics["skipped_updates"]) == 1
  before = jax.tree_util.tree_map(np.asarray, state.params)
  state, metrics = t.train_step(state, t.partitioner.shard_batch(_batches(2)[1], 8))
  assert int(state.step) == 2 and int(metrics["optimizer_updates"]) == 0
  assert int(metrics["skipped_updates"]) == 1
  logged = t.learning_rate(int(metrics["optimizer_updates"]))
  assert logged == pytest.approx(3e-3 / 2) and logged != t.learning_rate(1)
  # Adam's first (bias-corrected) update of a bias is -lr * g / (|g| + eps): |step| = lr.
  step = np.abs(np.asarray(state.params["final_layernorm"]["bias"])
                - before["final_layernorm"]["bias"])
  assert float(np.max(step)) == pytest.approx(logged, rel=1e-3)


def test_bad_options_are_clear_errors():
  with pytest.raises(ValueError, match="nan_action must be one of"):
    trainer_lib.Trainer(model_api.BlankInfillingModel(CFG),
                        partitioning.Partitioner(partitioning.MeshConfig()),
                        *optim.create_optimizer(), nan_action="ignore")
  with pytest.raises(ValueError, match="loss_normalization must be one of"):
    _trainer(loss_normalization="mean")
  with pytest.raises(ValueError, match="microbatch_clip must be one of"):
    _trainer(microbatch_clip="every")
  with pytest.raises(ValueError, match="needs LOSS_NORMALIZATION='microbatch_mean'"):
    _trainer(microbatches=2, microbatch_clip="each")


_MESHES = r"""
import json, jax, numpy as np
from glm_jax import model_api, optim, partitioning, trainer as trainer_lib
from glm_jax.model import GLMConfig
from glm_jax.data.synthetic import synthetic_batches
cfg = GLMConfig(vocab_size=128, num_layers=2, hidden_size=32, num_heads=4, max_sequence_length=64,
                embedding_dropout=0.1, attention_dropout=0.1, hidden_dropout=0.1)
batches = list(synthetic_batches('s', 'train', sequence_length=32, batch_size=8, seed=1,
                                 num_batches=3))
runs = {'1dev': (dict(), jax.devices()[:1], 1),
        'data2_fsdp4': (dict(data=2, fsdp=4), None, 1),
        'data2_fsdp2_tensor2': (dict(data=2, fsdp=2, tensor=2), None, 1),
        'fsdp2_tensor4_micro2': (dict(data=1, fsdp=2, tensor=4), None, 2)}
out = {}
for name, (mesh, devices, micro) in runs.items():
  p = partitioning.Partitioner(partitioning.MeshConfig(**mesh), devices=devices)
  tx, lr = optim.create_optimizer(learning_rate=3e-3, warmup_steps=2, total_steps=20)
  t = trainer_lib.Trainer(model_api.BlankInfillingModel(cfg), p, tx, lr, seed=0,
                          num_microbatches=micro)
  state = t.init_state(jax.random.PRNGKey(0))
  losses = []
  for b in batches:
    state, m = t.train_step(state, p.shard_batch(b, 8))
    losses.append(float(m['loss']))
  emb = state.params['word_embeddings']
  out[name] = {'losses': losses, 'emb_sum': float(np.asarray(emb).sum()),
               'n_shards': len(emb.sharding.device_set)}
print(json.dumps(out))
"""


def test_one_device_and_three_eight_device_meshes_give_the_same_losses():
  result = run_script(_MESHES, env=multi_device_env(8), timeout=400)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  reference = out.pop("1dev")
  assert reference["n_shards"] == 1
  micro = out.pop("fsdp2_tensor4_micro2")
  assert len(out) == 2 and len(reference["losses"]) == 3
  for name, run in out.items():
    np.testing.assert_allclose(run["losses"], reference["losses"], atol=1e-5, err_msg=name)
    assert run["emb_sum"] == pytest.approx(reference["emb_sum"], abs=1e-3), name
    assert run["n_shards"] == 8, name  # the embedding really is spread over the mesh
  # Microbatches draw other dropout masks, so losses differ slightly from the large batch.
  assert micro["n_shards"] == 8
  np.testing.assert_allclose(micro["losses"], reference["losses"], atol=0.05)
