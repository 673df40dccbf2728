"""Orbax checkpoints: round trip, keep K, corrupt-latest fallback, params-only, digests, CLI."""

import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax import checkpoints
from glm_jax.model import GLMConfig
from glm_jax.trainer import TrainState

from conftest import run_module

CFG = GLMConfig(vocab_size=64, num_layers=1, hidden_size=16, num_heads=2, max_sequence_length=16)


def _state(step: int, seed: int = 0) -> TrainState:
  rng = np.random.RandomState(seed + step)
  params = {"word_embeddings": jnp.asarray(rng.randn(64, 16), jnp.float32),
            "layers": {"wi_bias": jnp.asarray(rng.randn(1, 64), jnp.float32)}}
  opt_state = {"mu": jax.tree_util.tree_map(jnp.zeros_like, params),
               "count": jnp.asarray(step, jnp.int32)}
  return TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=opt_state)


def _abstract(state):
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _assert_same(a, b):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _manager(directory, keep=3):
  return checkpoints.CheckpointManager(str(directory), _abstract(_state(0)), period=2, keep=keep)


def test_round_trip_keeps_state_data_position_config_and_vocab(tmp_path):
  manager = _manager(tmp_path)
  assert manager.save(_state(2), next_batch=7, config=CFG, vocab_spec="builtin")
  manager.wait()
  state, meta = manager.restore_latest()
  _assert_same(state, _state(2))
  assert meta["next_batch"] == 7 and meta["step"] == 2 and meta["vocab_spec"] == "builtin"
  assert GLMConfig.from_dict(meta["glm_config"]) == CFG
  assert manager.should_save(4) and not manager.should_save(5)
  manager.close()


def test_keeps_the_last_k_and_resumes_from_the_latest(tmp_path):
  manager = _manager(tmp_path, keep=2)
  for step in (2, 4, 6):
    manager.save(_state(step), next_batch=step, config=CFG, vocab_spec="builtin")
  manager.close()
  reopened = _manager(tmp_path, keep=2)
  assert reopened.all_steps() == [4, 6]
  state, meta = reopened.restore_latest()
  assert meta["next_batch"] == 6
  _assert_same(state, _state(6))
  reopened.close()


def _corrupt(step_dir):
  for root, _, files in os.walk(os.path.join(step_dir, checkpoints.STATE_ITEM)):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(0)


def test_corrupt_latest_checkpoint_is_skipped_for_the_previous(tmp_path):
  manager = _manager(tmp_path)
  for step in (2, 4):
    manager.save(_state(step), next_batch=step, config=CFG, vocab_spec="builtin")
  manager.close()
  _corrupt(tmp_path / "4")
  reopened = _manager(tmp_path)
  resume_at_2_then_save_4(reopened, str(tmp_path),
                          # The unreadable step is set aside, so step 4 can be saved again.
                          lambda: any(n.startswith("corrupt_4") for n in os.listdir(tmp_path)))


def resume_at_2_then_save_4(reopened, directory: str, check=lambda: True):
  """Step 4 lost: `reopened` resumes step 2, `check()` holds, a new step 4 saves and loads."""
  state, meta = reopened.restore_latest()
  assert meta["step"] == 2
  _assert_same(state, _state(2))
  assert check()
  assert reopened.save(_state(4, seed=1), next_batch=4, config=CFG, vocab_spec="builtin")
  reopened.close()
  params, _, _, step = checkpoints.load_params(directory)
  assert step == 4
  _assert_same(params, _state(4, seed=1).params)


def test_load_params_from_model_dir_step_dir_and_params_only(tmp_path):
  manager = _manager(tmp_path / "run")
  for step in (2, 4):
    manager.save(_state(step), next_batch=step, config=CFG, vocab_spec="builtin")
  manager.close()
  params, config, vocab, step = checkpoints.load_params(str(tmp_path / "run"))
  assert (config, vocab, step) == (CFG, "builtin", 4)
  _assert_same(params, _state(4).params)
  params, _, _, step = checkpoints.load_params(str(tmp_path / "run" / "2"))
  assert step == 2
  _assert_same(params, _state(2).params)

  path = checkpoints.save_params_checkpoint(str(tmp_path / "converted"), _state(9).params, CFG,
                                            "bert-base-uncased", step=9)
  params, config, vocab, step = checkpoints.load_params(path)
  assert (config, vocab, step) == (CFG, "bert-base-uncased", 9)
  _assert_same(params, _state(9).params)
  assert checkpoints.params_digest(params) == checkpoints.params_digest(_state(9).params)
  assert checkpoints.params_digest(params) != checkpoints.params_digest(_state(8).params)

  with pytest.raises(FileNotFoundError, match="does not exist"):
    checkpoints.load_params(str(tmp_path / "missing"))
  os.makedirs(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="No checkpoint found"):
    checkpoints.load_params(str(tmp_path / "empty"))


def test_cli_lists_steps_parameter_counts_and_digests(tmp_path):
  manager = _manager(tmp_path)
  for step in (2, 4):
    manager.save(_state(step), next_batch=step, config=CFG, vocab_spec="builtin")
  manager.close()
  result = run_module("glm_jax.checkpoints", [f"--model_dir={tmp_path}"], timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
  assert [r[0] for r in rows] == ["2", "4"]
  assert rows[0][1] == f"{64 * 16 + 64:,}"
  assert rows[1][2] == checkpoints.params_digest(_state(4).params)
  missing = run_module("glm_jax.checkpoints", [f"--model_dir={tmp_path}/nope"], timeout=120)
  assert missing.returncode == 2
  assert missing.stderr.strip().splitlines()[-1].startswith("error: MODEL_DIR")
  assert len(missing.stderr.strip().splitlines()) == 1


def test_a_model_that_does_not_match_raises_and_renames_nothing(tmp_path):
  manager = _manager(tmp_path)
  for step in (2, 4):
    manager.save(_state(step), next_batch=step, config=CFG, vocab_spec="builtin")
  manager.close()
  wider = _state(0)
  wider = wider.replace(params={**wider.params, "word_embeddings": jnp.zeros((64, 32))})
  other = checkpoints.CheckpointManager(str(tmp_path), _abstract(wider), period=2)
  with pytest.raises(ValueError, match="cannot be restored into this run's train state"):
    other.restore_latest()
  other.close()
  assert sorted(os.listdir(tmp_path)) == ["2", "4"]  # nothing set aside
  with pytest.raises(ValueError, match="made for this model"):
    checkpoints.load_params(str(tmp_path), _abstract(wider).params)


def test_only_unfinished_step_directories_are_removed(tmp_path):
  manager = _manager(tmp_path)
  manager.save(_state(2), next_batch=2, config=CFG, vocab_spec="builtin")
  manager.close()
  partial = tmp_path / "4.orbax-checkpoint-tmp-1234"  # a save cut short by kill -9
  (partial / "state").mkdir(parents=True)
  for other in ("tensorboard", "best", "eval", "corrupt_3_1"):
    (tmp_path / other).mkdir()
  reopened = _manager(tmp_path)
  assert reopened.all_steps() == [2]
  reopened.close()
  assert sorted(os.listdir(tmp_path)) == ["2", "best", "corrupt_3_1", "eval", "tensorboard"]


def test_unreadable_reason_tells_lost_bytes_from_other_errors():
  assert checkpoints.unreadable_reason(ValueError("DATA_LOSS: Error decoding manifest"))
  assert checkpoints.unreadable_reason(ValueError("NOT_FOUND: Error reading local file"))
  wrapped = RuntimeError("restore failed")
  wrapped.__cause__ = json.JSONDecodeError("Expecting value", "", 0)
  assert checkpoints.unreadable_reason(wrapped)
  for error in (ValueError("Requested shape: (64, 32) is not compatible with the stored shape"),
                ValueError("UNAVAILABLE: connection reset"), MemoryError(), KeyError("params")):
    assert checkpoints.unreadable_reason(error) is None


def test_writes_orphaned_by_a_reported_failed_save_are_silenced(monkeypatch):
  """asyncio's "never retrieved" logs are dropped only after a failed save was reported."""
  import logging  # pylint: disable=g-import-not-at-top

  def record(message: str):
    return logging.LogRecord("asyncio", logging.ERROR, "base_events.py", 1, message, (), None)

  orphaned = checkpoints._ORPHANED_WRITES  # pylint: disable=protected-access
  monkeypatch.setattr(orphaned, "after_failed_save", False)
  never = [record(f"{kind} exception was never retrieved\nfuture: <{kind} finished "
                  "exception=ValueError('RESOURCE_EXHAUSTED: ... No space left on device')>")
           for kind in ("Task", "Future", "_GatheringFuture")]  # what asyncio names
  assert all(orphaned.filter(r) for r in never)  # no failed save: a real problem, shown
  monkeypatch.setattr(orphaned, "after_failed_save", True)
  assert not any(orphaned.filter(r) for r in never)
  assert orphaned.filter(record("Unclosed client session"))


def test_a_long_error_line_keeps_the_os_reason():
  spec = '{"driver":"zarr","metadata":' + '"x",' * 200 + '"open":true}'
  error = ValueError(f'RESOURCE_EXHAUSTED: Error opening "zarr" driver: Error writing "nu/.zarray"'
                     f' in OCDBT database at local file "/run/8.orbax-checkpoint-tmp/": Failed to '
                     f"write 9549 bytes to file 5: No space left on device [os_error_code='28'] "
                     f"[tensorstore_spec='{spec}']")
  line = checkpoints.first_line(error)
  assert line.startswith("ValueError: RESOURCE_EXHAUSTED: Error opening") and len(line) < 360
  assert line.endswith("No space left on device [os_error_code='28']"), line
  assert checkpoints.first_line(ValueError("x" * 400)).endswith("x" * 150)


@pytest.mark.usefixtures("clean_gin")
def test_checkpoint_config_gives_the_fine_tuning_runs_their_network(tmp_path):
  """checkpoints.checkpoint_config: the saved GLMConfig, dropout replaced; bound by both runs."""
  import gin  # pylint: disable=g-import-not-at-top
  from glm_jax import gin_utils, model as model_lib  # pylint: disable=g-import-not-at-top
  importlib.import_module("glm_jax.train")  # registers train.train for the gin files
  from glm_jax.model_api import BlankInfillingModel  # pylint: disable=g-import-not-at-top
  from glm_jax.superglue.cloze_model import ClozeModel  # pylint: disable=g-import-not-at-top
  saved = CFG.replace(embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0)
  ckpt = checkpoints.save_params_checkpoint(
      str(tmp_path / "ckpt"), model_lib.init_params(saved, jax.random.PRNGKey(0)), saved,
      "builtin")
  assert checkpoints.checkpoint_config(ckpt) == saved
  tuned = saved.replace(embedding_dropout=0.1, attention_dropout=0.1, hidden_dropout=0.1)
  assert checkpoints.checkpoint_config(ckpt, dropout=0.1) == tuned
  with pytest.raises(ValueError, match="INIT_CHECKPOINT"):
    checkpoints.checkpoint_config(None)
  with pytest.raises(FileNotFoundError, match="No GLM checkpoint"):
    checkpoints.checkpoint_config(str(tmp_path / "missing"))
  for gin_file, model_class, bindings in (
      ("configs/runs/finetune_superglue.gin", ClozeModel, ["TASK = 'rte'"]),
      ("configs/runs/finetune_xsum.gin", BlankInfillingModel, [f"MODEL_DIR = '{tmp_path}'"])):
    gin.clear_config()
    gin_utils.parse_gin([gin_file], [f"INIT_CHECKPOINT = '{ckpt}'", *bindings])
    model = gin.query_parameter("train.train.model").scoped_configurable_fn()
    assert type(model) is model_class and model.config == tuned, gin_file
