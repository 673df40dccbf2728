"""glm_jax: GLM (autoregressive blank infilling) in JAX/Flax.

`glm_jax.generate(texts, checkpoint=DIR)` fills the [MASK]/[sMASK]/[gMASK] blanks of texts: it
is `glm_jax.generation.generate`, imported on first use. Importing the package itself loads
nothing heavy (the command-line tools re-execute themselves before JAX starts:
glm_jax/kernels/cpu/host_memory.py).
"""

import importlib as _importlib

__version__ = "0.1.0"


def __getattr__(name):
  if name == "generate":
    return _importlib.import_module("glm_jax.generation").generate
  raise AttributeError(f"module 'glm_jax' has no attribute {name!r}")
