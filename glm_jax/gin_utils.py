"""Gin flags for the CLIs: --gin_file, --gin_bindings, --gin.MACRO=value; one-line errors.

Later gin files override earlier ones, bindings override files. `--gin.NAME=VALUE` is
shorthand for `--gin_bindings=NAME=VALUE`; a VALUE that is not a gin literal (a bare path)
is taken as a string.
"""

from __future__ import annotations

import ast
import os
import re
import sys
from typing import Callable, List, Optional, Sequence

from absl import flags
import gin

from glm_jax import console

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def define_flags():
  """Defines --gin_file, --gin_bindings and --gin_search_paths (once per process)."""
  if "gin_file" in flags.FLAGS:
    return
  flags.DEFINE_multi_string("gin_file", [], "Gin config files; later ones override earlier.")
  flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, e.g. 'TRAIN_STEPS=100'.")
  flags.DEFINE_list("gin_search_paths", [], "Extra directories to resolve gin files in.")


def _as_gin_value(value: str) -> str:
  """Quotes a value that is not already a gin literal, reference or macro."""
  stripped = value.strip()
  if not stripped or stripped[0] in "@%" or stripped in ("True", "False", "None"):
    return value
  try:
    ast.literal_eval(stripped)
    return value
  except (ValueError, SyntaxError):
    return repr(value)


def rewrite_gin_args(argv: Sequence[str]) -> List[str]:
  """Turns `--gin.NAME=VALUE` into `--gin_bindings=NAME = VALUE`."""
  out = []
  for arg in argv:
    if arg.startswith("--gin."):
      name, sep, value = arg[len("--gin."):].partition("=")
      if not sep or not name:
        raise ValueError(f"Malformed flag {arg!r}; write --gin.NAME=VALUE.")
      out.append(f"--gin_bindings={name} = {_as_gin_value(value)}")
    else:
      out.append(arg)
  return out


def search_paths(extra: Sequence[str] = ()) -> List[str]:
  paths = []
  for p in [os.getcwd(), REPO_ROOT] + [os.path.abspath(p) for p in extra]:
    if p not in paths:
      paths.append(p)
  return paths


def check_required(**values) -> None:
  """Raises one line naming the macros (by parameter name) still bound to %gin.REQUIRED."""
  missing = [name for name, value in values.items() if value is gin.REQUIRED]
  if missing:
    macros = ", ".join(name.upper() for name in missing)
    raise ValueError(f"Required value(s) not set: {macros}; set them in a gin file or on the "
                     f"command line, e.g. --gin.{missing[0].upper()}=...")


def resolve_gin_file(name: str, paths: Sequence[str]) -> str:
  if os.path.isabs(name) and os.path.exists(name):
    return name
  for root in paths:
    candidate = os.path.join(root, name)
    if os.path.exists(candidate):
      return candidate
  hint = ""
  directory = os.path.dirname(name) or "configs/runs"
  for root in paths:
    full = os.path.join(root, directory)
    if os.path.isdir(full):
      names = sorted(f for f in os.listdir(full) if f.endswith(".gin"))
      hint = f" Files in {directory}/: {', '.join(names)}." if names else ""
      break
  raise FileNotFoundError(f"Gin file {name!r} not found (searched {', '.join(paths)}); "
                          f"check the path.{hint}")


def one_line(error: BaseException) -> str:
  """The first meaningful line of a (gin-augmented) error, with a fix for common gin cases."""
  text = str(error).strip()
  first = text.splitlines()[0].strip() if text else type(error).__name__
  missing = re.search(r"Required bindings for `([^`]+)` not provided in config: \[([^\]]*)\]",
                      text)
  if missing:
    fn, names = missing.group(1), missing.group(2).replace("'", "")
    return (f"Required gin value(s) {names} of {fn} not set; bind them in a gin file or on "
            f"the command line (e.g. --gin.MODEL_DIR=/path for the required macros).")
  if "No configurable matching" in first:
    return f"{first} Check the spelling in your gin file or --gin_bindings."
  if "doesn't have a parameter named" in first or "does not have a parameter named" in first:
    return f"{first} Check the spelling of the binding."
  macro = re.search(r"[Uu]nable to find a configurable named '?([^'\s]+)", first)
  if macro:
    return f"{first} Define it with --gin.{macro.group(1)}=VALUE or in a gin file."
  return first


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str] = (),
              extra_search_paths: Sequence[str] = ()) -> None:
  """Parses files then bindings; raises FileNotFoundError / ValueError with one clear line."""
  if not gin_files:
    raise ValueError("No --gin_file given; pass e.g. --gin_file=configs/runs/quickstart.gin.")
  paths = search_paths(extra_search_paths)
  for p in paths:
    gin.add_config_file_search_path(p)
  files = [resolve_gin_file(f, paths) for f in gin_files]
  try:
    gin.parse_config_files_and_bindings(files, list(gin_bindings), finalize_config=False)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"A gin include was not found: {_first_line(e)}") from None
  except (ValueError, SyntaxError, KeyError, TypeError, ImportError) as e:
    raise ValueError(f"Gin config error: {_first_line(e)}") from None


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0].strip() if text else type(error).__name__


def run(main: Callable, argv: Optional[Sequence[str]] = None) -> None:
  """console.run (the quiet start, then app.run) with --gin.NAME=VALUE support."""
  argv = list(sys.argv if argv is None else argv)
  try:
    argv = rewrite_gin_args(argv)
  except ValueError as e:
    print(f"Error: {e}", file=sys.stderr)
    sys.exit(2)
  console.run(main, argv=argv)


def exit_with_error(error: BaseException) -> None:
  """Prints `Error: <one line>` to stderr and exits 1 (set GLM_JAX_TRACEBACK=1 for more)."""
  if os.environ.get("GLM_JAX_TRACEBACK"):
    raise error
  print(f"Error: {one_line(error)}", file=sys.stderr)
  sys.exit(1)


def begin_cli(argv: Sequence[str], options: str) -> None:
  """Common start of a CLI's main: no positional arguments (console.run quiets the logs).

  `options` names typical flags for the error message, e.g. '--gin_file, --gin.NAME=VALUE'.
  """
  if len(argv) > 1:
    exit_with_error(ValueError(f"Unexpected arguments {list(argv[1:])}; every option is a flag "
                               f"({options}, ...)."))
