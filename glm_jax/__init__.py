"""glm_jax: GLM (autoregressive blank infilling) in JAX/Flax."""

__version__ = "0.1.0"
