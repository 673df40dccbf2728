"""The converter CLI: reference checkpoint files -> a glm_jax checkpoint the tools load."""

import subprocess
import sys

import numpy as np
import pytest

from glm_jax import checkpoints
from glm_jax import convert
from glm_jax.model import GLM
from conftest import shipped_fixture
import reference_cases as ref

MODEL_NPZ = shipped_fixture("glm_reference", "model_glm_tiny_a.npz")


def _run(*args):
  return subprocess.run([sys.executable, "-m", "glm_jax.convert", *args], capture_output=True,
                        text=True, timeout=300)


@pytest.mark.parity
def test_cli_npz_to_checkpoint_keeps_logits(tmp_path):
  out = tmp_path / "converted"
  result = _run(f"--official={MODEL_NPZ}", "--num_heads=4",
                f"--output_dir={out}", "--vocabulary=builtin")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "2 layers, hidden 64" in result.stdout
  params, config, vocab_spec, _ = checkpoints.load_params(str(out))
  assert vocab_spec == "builtin" and config.num_heads == 4
  cases, columns = ref.cases()
  logits = GLM(config).apply({"params": params}, cases["blank_infill/input_ids"],
                             cases["blank_infill/position_ids"],
                             sep=cases["blank_infill/attention_mask"])
  np.testing.assert_allclose(ref.columns_of(logits, columns), cases["blank_infill/logits"],
                             atol=1e-5)


def test_reference_directory_layout_is_read(tmp_path):
  # latest_checkpointed_iteration.txt + <iteration>/mp_rank_00_model_states.pt; the .pt needs
  # torch, so without torch the error says how to install it.
  (tmp_path / "1000").mkdir()
  (tmp_path / "1000" / "mp_rank_00_model_states.pt").write_bytes(b"not really")
  (tmp_path / "latest_checkpointed_iteration.txt").write_text("1000\n")
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    pytest.skip("torch is installed; the missing-torch message cannot be shown")
  except ImportError:
    pass
  with pytest.raises(ImportError, match="pip install"):
    convert.load_official(str(tmp_path))
  result = _run(f"--official={tmp_path}", "--num_heads=4", f"--output_dir={tmp_path / 'o'}")
  assert result.returncode != 0
  error_lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(error_lines) == 1 and "torch" in error_lines[0]
  assert "Traceback" not in result.stderr


def test_missing_checkpoint_is_one_line(tmp_path):
  result = _run(f"--official={tmp_path / 'nope'}", "--num_heads=4",
                f"--output_dir={tmp_path / 'o'}")
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  assert any(l.startswith("error:") and "does not exist" in l for l in result.stderr.splitlines())


@pytest.mark.parity
def test_wrong_num_heads_is_reported():
  state = ref.state_dict()
  with pytest.raises(ValueError, match="num_heads=5"):
    convert.from_official_state_dict(state, num_heads=5)
