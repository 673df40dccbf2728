"""Text-level generation: prompts with masks, the generate() API and the infer CLI."""

import os
import subprocess
import sys

import numpy as np
import pytest

import glm_jax
from glm_jax import decoding, generation

from conftest import tiny_glm

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.fixture(scope="module")
def model(vocab):
  return tiny_glm(vocab.vocab_size, max_sequence_length=64, initializer_std=0.2, seed=1)


def test_prompt_layout(vocab):
  s = vocab.special
  p = generation.build_prompt("The cat [MASK] on the [sMASK]", vocab)
  assert p.tokens[0] == s.cls and p.tokens[-2:] == (s.smask, s.eos)  # only [gMASK] drops eos
  assert [p.tokens[i] for i in p.mask_positions] == [s.mask, s.smask]
  assert generation.build_prompt("The cat [MASK]", vocab).tokens[-2:] == (s.mask, s.eos)
  assert generation.build_prompt("The cat [gMASK]", vocab).tokens[-1] == s.gmask
  assert p.pieces == ("The cat ", " on the ", "")
  inner = generation.build_prompt("a [MASK] b", vocab)
  assert inner.tokens[-1] == s.eos
  assert list(inner.tokens[1:inner.mask_positions[0]]) == list(vocab.encode("a"))
  plain = generation.build_prompt("Once upon a time", vocab)  # no mask: [gMASK] appended
  assert plain.tokens[-1] == s.gmask and plain.mask_positions == (len(plain.tokens) - 1,)
  # A model without task masks generates behind [MASK] (then eos) and has no [sMASK]/[gMASK].
  old = generation.build_prompt("Once upon a time", vocab, task_mask=False)
  assert old.tokens[-2:] == (s.mask, s.eos) and old.mask_positions == (len(old.tokens) - 2,)
  with pytest.raises(ValueError, match="without task masks"):
    generation.build_prompt("A [sMASK] B", vocab, task_mask=False)
  with pytest.raises(ValueError, match="empty"):
    generation.build_prompt("  ", vocab)


def test_fill_text():
  p = generation.Prompt((0,), (0, 0), ("The cat ", " on the ", "."))
  assert generation.fill_text(p, ["sat", "mat"]) == "The cat sat on the mat."
  g = generation.Prompt((0,), (0,), ("Once upon a time ", ""))
  assert generation.fill_text(g, ["there was"]) == "Once upon a time there was"


def test_generate_matches_fill_blanks(vocab, model):
  cfg, params = model
  texts = ["The cat [MASK] on the [MASK] today.", "Once upon a time"]
  out = generation.generate(texts, params=params, config=cfg, vocabulary=vocab,
                            max_new_tokens=5, return_fills=True)
  assert len(out) == 2 and len(out[0][1]) == 2 and len(out[1][1]) == 1
  assert out[0][0].startswith("The cat") and out[1][0].startswith("Once upon a time")
  # The same fills straight from the decoder.
  prompt = generation.build_prompt(texts[0], vocab)
  ctx, lengths, masks, blanks = generation.batch_prompts([prompt], cfg.max_sequence_length)
  res = decoding.fill_blanks(params, cfg, vocab.special, ctx, lengths, masks, blanks,
                             decode_config=decoding.DecodeConfig(max_new_tokens=5))
  fills = decoding.split_blanks(np.asarray(res.tokens)[0], int(res.lengths[0]), vocab.special)
  assert [vocab.decode(f).strip() for f in fills] == out[0][1]
  single = generation.generate(texts[1], params=params, config=cfg, vocabulary=vocab,
                               max_new_tokens=5)
  assert single == out[1][0]
  a = generation.generate(texts, params=params, config=cfg, vocabulary=vocab,
                          strategy="sample", max_new_tokens=5, seed=7)
  assert a == generation.generate(texts, params=params, config=cfg, vocabulary=vocab,
                                  strategy="sample", max_new_tokens=5, seed=7)
  with pytest.raises(ValueError, match="checkpoint"):
    generation.generate("x [MASK]", params=params)
  with pytest.raises(ValueError, match="shorten"):
    generation.generate("word " * 80, params=params, config=cfg, vocabulary=vocab)


def test_package_generate_is_the_function(vocab, model, tmp_path):
  """`glm_jax.generate(texts, checkpoint=DIR)`: the function, filling as generation.generate."""
  check = "import sys, glm_jax; assert 'jax' not in sys.modules"  # the package imports light
  light = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
  assert light.returncode == 0, light.stderr[-2000:]
  assert glm_jax.generate is generation.generate
  from glm_jax import checkpoints  # pylint: disable=g-import-not-at-top
  cfg, params = model
  ckpt = checkpoints.save_params_checkpoint(str(tmp_path / "ckpt"), params, cfg, "builtin")
  texts = ["The cat [MASK] on the mat.", "Once upon a time"]
  expected = generation.generate(texts, params=params, config=cfg, vocabulary=vocab,
                                 max_new_tokens=4)
  assert glm_jax.generate(texts, checkpoint=ckpt, max_new_tokens=4) == expected
  assert glm_jax.generate(texts[0], checkpoint=ckpt, max_new_tokens=4) == expected[0]


def _infer(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "glm_jax.infer", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)


def test_infer_cli(model, tmp_path):
  from glm_jax import checkpoints  # pylint: disable=g-import-not-at-top
  cfg, params = model
  ckpt = checkpoints.save_params_checkpoint(str(tmp_path / "ckpt"), params, cfg, "builtin")
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("The cat [MASK] on the mat.\n\nOnce upon a time\n")
  out = tmp_path / "out.txt"
  r = _infer(f"--checkpoint={ckpt}", f"--input_file={prompts}", f"--output_file={out}",
             "--strategy=beam", "--num_beams=2", "--max_new_tokens=4")
  assert r.returncode == 0, r.stderr[-2000:]
  lines = out.read_text().splitlines()
  assert len(lines) == 2 and lines[0].startswith("The cat") and lines[0].endswith("on the mat.")
  assert r.stdout.splitlines()[-2:] == lines
  bad = _infer(f"--checkpoint={tmp_path / 'nope'}", "--text=a [MASK]")
  assert bad.returncode != 0 and "does not exist" in bad.stderr
  assert "Traceback" not in bad.stderr
