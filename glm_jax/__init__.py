"""glm_jax: GLM (autoregressive blank infilling) in JAX/Flax.

`glm_jax.generate(texts, checkpoint=DIR)` fills the [MASK]/[sMASK]/[gMASK] blanks of texts.
`glm_jax.generate` is also the module that implements it (`glm_jax.generate.build_prompt`,
...): the module is made callable so that both spellings work.
"""

import types as _types

__version__ = "0.1.0"


class _CallableModule(_types.ModuleType):

  def __call__(self, *args, **kwargs):
    return self.generate(*args, **kwargs)


from glm_jax import generate as _generate_module  # pylint: disable=g-import-not-at-top,wrong-import-position

_generate_module.__class__ = _CallableModule
