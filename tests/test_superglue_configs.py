"""configs/runs/finetune_superglue*.gin bind the reference's per-task fine-tuning recipes."""

import gin
import pytest

from glm_jax import gin_utils
import glm_jax.train  # pylint: disable=unused-import  (registers train.train for the gin files)
from glm_jax.superglue import evaluate, inputs, patterns, sources
from test_superglue_support import SUPERGLUE_DIR


pytestmark = pytest.mark.usefixtures("clean_gin")


def _parse(*bindings, files=("configs/runs/finetune_superglue.gin",)):
  gin_utils.parse_gin(list(files),
                      [f"SUPERGLUE_DIR = '{SUPERGLUE_DIR}'", "INIT_CHECKPOINT = '/ck/base'",
                       *bindings])


def _macro(name):
  value = gin.query_parameter(f"%{name}")
  return value.scoped_configurable_fn() if hasattr(value, "scoped_configurable_fn") else value


# config_tasks/task_<task>.sh: EPOCH_SINGLE, BATCH_SIZE, MAX_SEQ_LEN, --pattern-id, XXLARGE_EPOCH.
REFERENCE = {"boolq": (20, 16, 256, 4, 24), "cb": (50, 16, 256, 3, 100),
             "copa": (50, 16, 256, 0, 100), "multirc": (15, 64, 512, 0, 12),
             "record": (5, 64, 512, 0, 3), "rte": (50, 16, 256, 0, 50),
             "wic": (30, 16, 256, 1, 40), "wsc": (50, 16, 128, 2, 100)}


@pytest.mark.parametrize("task", sorted(REFERENCE))
def test_per_task_recipe_is_the_references(task):
  epochs, batch, length, pattern, epochs_10b = REFERENCE[task]
  _parse(f"TASK = '{task}'")
  assert (_macro("EPOCHS"), _macro("BATCH_SIZE"), _macro("SEQUENCE_LENGTH"),
          _macro("PATTERN_ID")) == (epochs, batch, length, pattern)
  assert _macro("MODEL_DIR") == f"/ck/base_superglue_{task}"
  wsc = task == "wsc"  # --loss-func mix --length-penalty 1
  assert (_macro("CLOZE_LOSS"), _macro("LENGTH_PENALTY")) == (
      ("mix", 1.0) if wsc else ("cross_entropy", 0.0))
  # The Python defaults of the evaluator and patterns say the same.
  assert patterns.DEFAULT_PATTERNS[task] == pattern
  assert evaluate.DEFAULT_LENGTHS[task] == length
  assert evaluate.DEFAULT_LOSSES.get(task, "cross_entropy") == _macro("CLOZE_LOSS")
  assert evaluate.DEFAULT_LENGTH_PENALTIES.get(task, 0.0) == _macro("LENGTH_PENALTY")
  gin.clear_config()
  _parse(f"TASK = '{task}'", files=("configs/runs/finetune_superglue_10b.gin",))
  assert (_macro("EPOCHS"), _macro("PATTERN_ID"), _macro("BATCH_SIZE")) == (epochs_10b, 0, 64)


def test_optimizer_schedule_and_epoch_bookkeeping():
  _parse("TASK = 'rte'")
  assert _macro("LEARNING_RATE") == 1e-5 and _macro("WEIGHT_DECAY") == 0.1
  assert (_macro("ADAM_B1"), _macro("ADAM_B2"), _macro("ADAM_EPS")) == (0.9, 0.999, 1e-8)
  # Linear decay to 10% (--lr-decay-ratio 0.1), warmup 0.1 of the updates, AnnealingLR's rules.
  assert _macro("SCHEDULE") == "linear" and _macro("FINAL_LR_FRACTION") == 0.1
  assert _macro("WARMUP_FRACTION") == 0.1 and _macro("SCHEDULE_CONVENTION") == "reference"
  # 40 RTE train examples in the test slice, batch 16: 3 steps per epoch, 50 epochs.
  assert _macro("EVAL_PERIOD") == 3 == _macro("CHECKPOINT_PERIOD")
  assert _macro("TRAIN_STEPS") == 150
  # train.train reads %TRAIN_INPUT, which is the SuperGLUE cloze batches.
  assert str(gin.query_parameter("train.train.train_input")) == "%TRAIN_INPUT"
  assert gin.query_parameter("%TRAIN_INPUT").configurable.wrapped is inputs.get_batches.__wrapped__
  assert inputs.steps_per_epoch("copa", 16) == 5  # 40 COPA examples + 40 mirrored


def test_10b_recipe_optimizer():
  _parse("TASK = 'rte'", files=("configs/runs/finetune_superglue_10b.gin",))
  # config_blocklm_10B.json's optimizer replaces --lr / --weight-decay.
  assert (_macro("LEARNING_RATE"), _macro("WEIGHT_DECAY")) == (5e-6, 0.01)
  assert (_macro("ADAM_B1"), _macro("ADAM_B2"), _macro("ADAM_EPS")) == (0.9, 0.95, 1e-8)
  assert _macro("FINAL_LR_FRACTION") == 0.1 and _macro("WARMUP_FRACTION") == 0.1


def test_wsc_generative_variant():
  _parse("TASK = 'wsc'", files=("configs/runs/finetune_superglue.gin",
                                "configs/superglue/wsc_generative.gin"))
  assert (_macro("CLOZE_LOSS"), _macro("PATTERN_ID"), _macro("LENGTH_PENALTY")) == (
      "generative", 0, 0.0)


def test_missing_task_hyperparameter_is_a_clear_error():
  with pytest.raises(ValueError, match="configs/superglue/rte.gin"):
    inputs.hparam("rte", "epochs", {"cb": {"epochs": 1}})
