"""configs/runs/finetune_superglue.gin binds GLM's per-task fine-tuning recipe."""

import gin
import pytest

from glm_jax import gin_utils
import glm_jax.train  # pylint: disable=unused-import  (registers train.train for the gin files)
from glm_jax.superglue import inputs
from test_superglue_support import SUPERGLUE_DIR


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _parse(*bindings):
  gin_utils.parse_gin(["configs/runs/finetune_superglue.gin"],
                      [f"SUPERGLUE_DIR = '{SUPERGLUE_DIR}'", "INIT_CHECKPOINT = '/ck/base'",
                       *bindings])


def _macro(name):
  value = gin.query_parameter(f"%{name}")
  return value.scoped_configurable_fn() if hasattr(value, "scoped_configurable_fn") else value


@pytest.mark.parametrize("task,epochs,batch", [("rte", 50, 16), ("wic", 30, 16),
                                               ("boolq", 20, 16), ("multirc", 15, 64),
                                               ("record", 5, 64), ("copa", 50, 16)])
def test_per_task_epochs_and_batch_size(task, epochs, batch):
  _parse(f"TASK = '{task}'")
  assert _macro("EPOCHS") == epochs and _macro("BATCH_SIZE") == batch
  assert _macro("MODEL_DIR") == f"/ck/base_superglue_{task}"


def test_optimizer_schedule_and_epoch_bookkeeping():
  _parse("TASK = 'rte'")
  assert _macro("LEARNING_RATE") == 1e-5 and _macro("WEIGHT_DECAY") == 0.1
  assert (_macro("ADAM_B1"), _macro("ADAM_B2"), _macro("ADAM_EPS")) == (0.9, 0.999, 1e-8)
  assert _macro("SCHEDULE") == "linear" and _macro("FINAL_LR_FRACTION") == 0.0
  # 40 RTE train examples in the test slice, batch 16: 3 steps per epoch, 50 epochs.
  assert _macro("EVAL_PERIOD") == 3 == _macro("CHECKPOINT_PERIOD")
  assert _macro("TRAIN_STEPS") == 150 and _macro("WARMUP_STEPS") == 15
  assert gin.query_parameter("train.train.train_input").scoped_configurable_fn is not None
  assert inputs.steps_per_epoch("copa", 16) == 5  # 40 COPA examples + 40 mirrored


def test_missing_task_hyperparameter_is_a_clear_error():
  with pytest.raises(ValueError, match="configs/superglue/rte.gin"):
    inputs.hparam("rte", "epochs", {"cb": {"epochs": 1}})
