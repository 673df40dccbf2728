"""`python -m glm_jax.parity SUBCOMMAND ...` (see glm_jax/parity/__init__.py)."""

from glm_jax.parity import cli

if __name__ == "__main__":
  cli()
