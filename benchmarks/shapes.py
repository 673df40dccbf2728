"""Model shapes the benchmarks measure: the gin presets plus the reference's small shape."""

import os

import gin

from glm_jax.model import GLMConfig

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "models")
# REFERENCE_PERF.md's small measured shape; not a preset.
SHAPES = {"4l_256": dict(vocab_size=16000, num_layers=4, hidden_size=256, num_heads=4,
                         max_sequence_length=512)}


def load_config(name: str, **overrides) -> GLMConfig:
  """`configs/models/<name>.gin` (or a SHAPES entry) with `overrides` applied."""
  if name in SHAPES:
    cfg = GLMConfig(**SHAPES[name])
  else:
    gin.clear_config()
    gin.parse_config_file(os.path.join(CONFIGS, f"{name}.gin"))
    cfg = GLMConfig()
    gin.clear_config()
  return cfg.replace(**overrides)
