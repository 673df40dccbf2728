"""Parity with the reference implementation (THUDM/GLM) on the numbers it recorded.

  python -m glm_jax.parity SUBCOMMAND --flag=VALUE ...
  python -m glm_jax.parity trajectory --fixture_dir=DIR --name=NAME --init=MODEL.npz --output=OUT.npz
  python -m glm_jax.parity inputs --fixture_dir=DIR --output_dir=OUT --vocabulary=wordpiece:PATH

A subcommand is a module with `define_flags()` and `main(argv)`, listed in SUBCOMMANDS; only
the chosen one's flags are defined. Errors are one `error: ...` line (glm_jax/gin_utils.py).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Optional, Sequence

# name -> module; each module: define_flags(), main(argv), a one-line docstring summary.
SUBCOMMANDS = {
    "trajectory": "glm_jax.parity.trajectory",  # our trainer on a reference training run
    "inputs": "glm_jax.parity.inputs",  # our task inputs on the reference's (glm_protocol)
}


def cli(argv: Optional[Sequence[str]] = None) -> None:
  """Dispatches `python -m glm_jax.parity NAME ...` to the subcommand NAME."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow start-up chatter
  from glm_jax import gin_utils  # pylint: disable=g-import-not-at-top
  argv = list(sys.argv if argv is None else argv)
  names = ", ".join(sorted(SUBCOMMANDS))
  if len(argv) < 2 or argv[1].startswith("-"):
    gin_utils.exit_with_error(ValueError(
        f"Name a subcommand first: python -m glm_jax.parity {{{names}}} --help."))
  name = argv[1]
  if name not in SUBCOMMANDS:
    gin_utils.exit_with_error(ValueError(f"Unknown subcommand {name!r}; choose one of: {names}."))
  module = importlib.import_module(SUBCOMMANDS[name])
  module.define_flags()
  gin_utils.run(module.main, [f"{argv[0]} {name}"] + argv[2:])
