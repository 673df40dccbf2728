"""The converter CLI: reference checkpoint files -> a glm_jax checkpoint the tools load."""

import os
import subprocess
import sys

import numpy as np
import pytest

from glm_jax import checkpoints
from glm_jax import convert
from glm_jax.model import GLM

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures",
                        "glm_reference")
pytestmark = pytest.mark.skipif(not os.path.isdir(FIXTURES), reason="shared fixtures missing")


def _run(*args):
  return subprocess.run([sys.executable, "-m", "glm_jax.convert", *args], capture_output=True,
                        text=True, timeout=300)


def test_cli_npz_to_checkpoint_keeps_logits(tmp_path):
  out = tmp_path / "converted"
  result = _run(f"--official={FIXTURES}/model_glm_tiny_a.npz", "--num_heads=4",
                f"--output_dir={out}", "--vocabulary=builtin")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "2 layers, hidden 64" in result.stdout
  params, config, vocab_spec, _ = checkpoints.load_params(str(out))
  assert vocab_spec == "builtin" and config.num_heads == 4
  with np.load(os.path.join(FIXTURES, "cases_glm_tiny_a.npz")) as cases:
    logits = GLM(config).apply({"params": params}, cases["blank_infill/input_ids"],
                               cases["blank_infill/position_ids"],
                               sep=cases["blank_infill/attention_mask"])
    np.testing.assert_allclose(np.asarray(logits), cases["blank_infill/logits"], atol=1e-5)


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


def test_wrong_num_heads_is_reported():
  with np.load(os.path.join(FIXTURES, "model_glm_tiny_a.npz")) as data:
    state = {k: data[k] for k in data.files}
  with pytest.raises(ValueError, match="num_heads=5"):
    convert.from_official_state_dict(state, num_heads=5)
