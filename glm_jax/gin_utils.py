"""Gin flags for the CLIs: --gin_file, --gin_bindings, --gin.MACRO=value; one-line errors.

Later gin files override earlier ones, bindings override files. `--gin.NAME=VALUE` is
shorthand for `--gin_bindings=NAME=VALUE`; a VALUE that is not a gin literal (a bare path)
is taken as a string. Gin files, their includes and search paths may be local or gs://
(read through glm_jax.paths).
"""

from __future__ import annotations

import ast
import difflib
import functools
import io
import os
import re
import sys
import tokenize
from typing import Callable, List, Optional, Sequence, Tuple

from absl import app, flags, logging  # pylint: disable=g-multiple-import
import gin
from gin import config_parser

from glm_jax import console
from glm_jax import paths as paths_lib

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
  for p in [os.getcwd(), REPO_ROOT] + [str(paths_lib.resolve(p)) for p in extra]:
    if p not in paths:
      paths.append(p)
  return paths


def _open_url(path: str):
  return paths_lib.resolve(path).open()


def _url_exists(path: str) -> bool:
  return paths_lib.is_url(path) and paths_lib.resolve(path).is_file()


def _exists(path: str) -> bool:
  return _url_exists(path) if paths_lib.is_url(path) else os.path.exists(path)


def check_required(**values) -> None:
  """Raises one line naming the macros (by parameter name) still bound to %gin.REQUIRED."""
  missing = [name for name, value in values.items() if value is gin.REQUIRED]
  if missing:
    macros = ", ".join(name.upper() for name in missing)
    raise ValueError(f"Required value(s) not set: {macros}; set them in a gin file or on the "
                     f"command line, e.g. --gin.{missing[0].upper()}=...")


def resolve_gin_file(name: str, paths: Sequence[str]) -> str:
  if paths_lib.is_url(name) or os.path.isabs(name):
    if _exists(name):
      return name
  else:
    for root in paths:
      candidate = os.path.join(root, name)
      if _exists(candidate):
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


class _SyntaxOnly(config_parser.ParserDelegate):
  """Parses gin text without resolving references: for syntax and include checks."""

  def configurable_reference(self, scoped_configurable_name, evaluate):
    return None

  def macro(self, macro_name):
    return None


def _unclosed_bracket_line(text: str) -> Optional[int]:
  """The line of the first bracket that `text` never closes (Python's tokenizer), else None."""
  openers = []
  try:
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
      if token.type == tokenize.OP and token.string in "([{":
        openers.append(token.start[0])
      elif token.type == tokenize.OP and token.string in ")]}" and openers:
        openers.pop()
  except (tokenize.TokenError, SyntaxError):
    pass
  return openers[0] if openers else None


def _check_gin_file(path: str, search: Sequence[str], seen: set) -> None:
  """Raises one line (file and line) for a syntax error or an include that is not found."""
  if path in seen:
    return
  seen.add(path)
  try:
    text = paths_lib.read_text(path)
  except UnicodeDecodeError:
    raise ValueError(f"Gin file {path} is not UTF-8 text; pass a .gin file.") from None
  parser = config_parser.ConfigParser(text, _SyntaxOnly())
  try:
    statements = list(parser)
  except SyntaxError as e:
    raise ValueError(f"Gin file {path} line {e.lineno}: {e.msg.rstrip('.')} (at "
                     f"{(e.text or '').strip()!r}); fix the syntax there.") from None
  except tokenize.TokenError:
    line = _unclosed_bracket_line(text)
    where = f" (the bracket opened on line {line})" if line else ""
    raise ValueError(f"Gin file {path} ends inside an unclosed bracket or string{where}; "
                     "close it.") from None
  for statement in statements:
    if isinstance(statement, config_parser.IncludeStatement):
      name = statement.filename
      try:
        found = resolve_gin_file(name, search)
      except FileNotFoundError:
        raise FileNotFoundError(
            f"Gin file {path} line {statement.location.line_num}: include {name!r} not found "
            f"(searched {', '.join(search)}); fix the path.") from None
      _check_gin_file(found, search, seen)


def _macro_names(value, out: set) -> set:
  """Adds the names of the macros (%NAME) a parsed gin value refers to."""
  if isinstance(value, gin.config.ConfigurableReference):
    if value.configurable.selector == "gin.macro":
      out.add(value.scoped_selector.rsplit("/", 1)[0])
  elif isinstance(value, (list, tuple, set)):
    for item in value:
      _macro_names(item, out)
  elif isinstance(value, dict):
    for item in value.values():
      _macro_names(item, out)
  return out


def unused_macros() -> Tuple[List[str], List[str]]:
  """(macros the parsed config sets, macros some binding refers to), both sorted."""
  config = gin.config._CONFIG  # pylint: disable=protected-access
  defined = sorted(scope for scope, selector in config if selector == "gin.macro")
  used = set()
  for bindings in config.values():
    for value in bindings.values():
      _macro_names(value, used)
  return defined, sorted(used)


def _binding_macro(binding: str) -> Optional[str]:
  """NAME of a command-line binding `NAME = VALUE` that sets a macro, else None."""
  name = binding.split("=", 1)[0].strip()
  return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else None


def check_macros(gin_bindings: Sequence[str]) -> None:
  """A macro set on the command line must be one the config uses (so a typo fails).

  Macros a gin file sets that nothing uses get a warning (a preset's macro may serve another
  run's file).
  """
  defined, used = unused_macros()
  unused = [m for m in defined if m not in used]
  if not unused:
    return
  from_command_line = {_binding_macro(b) for b in gin_bindings} - {None}
  for name in unused:
    close = difflib.get_close_matches(name, used, n=1)
    hint = f" Did you mean {close[0]}?" if close else ""
    if name in from_command_line:
      raise ValueError(f"--gin.{name} sets a macro that nothing in the gin config uses.{hint} "
                       f"Macros this config reads: {', '.join(used)}.")
    logging.warning("The gin macro %s is set but nothing in the config uses it.%s", name, hint)


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str] = (),
              extra_search_paths: Sequence[str] = (), check_unused: bool = True) -> None:
  """Parses files then bindings; raises FileNotFoundError / ValueError with one clear line.

  Syntax errors and missing includes name the file and line; with `check_unused`, a macro set
  on the command line that no binding uses (a misspelt --gin.NAME) is refused.
  """
  if not gin_files:
    raise ValueError("No --gin_file given; pass e.g. --gin_file=configs/runs/quickstart.gin.")
  paths = search_paths(extra_search_paths)
  gin.config.register_file_reader(_open_url, _url_exists)  # gs:// files and includes
  for p in paths:
    gin.add_config_file_search_path(p)
  files = [resolve_gin_file(f, paths) for f in gin_files]
  seen = set()
  for f in files:
    _check_gin_file(f, paths, seen)
  for binding in gin_bindings:
    try:
      list(config_parser.ConfigParser(binding, _SyntaxOnly()))
    except (SyntaxError, tokenize.TokenError) as e:
      raise ValueError(f"Gin binding {binding!r} is not valid gin ({_first_line(e)}); write "
                       "NAME=VALUE with a gin literal (quote strings).") from None
  try:
    gin.parse_config_files_and_bindings(files, list(gin_bindings), finalize_config=False)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"A gin include was not found: {_first_line(e)}") from None
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"Gin config error: {_first_line(e)}{_gin_location(e)}") from None
  if check_unused:
    check_macros(gin_bindings)


def _gin_location(error: BaseException) -> str:
  """' (in FILE, line N)' from the location gin appends to an error's message, else ''."""
  match = re.search(r'In (?:file|bindings string) "?([^",]*)"?, line (\d+)', str(error))
  if not match or match.group(0) in _first_line(error):
    return ""
  return f" (in {match.group(1) or 'the bindings'}, line {match.group(2)})"


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0].strip() if text else type(error).__name__


# Exit codes of every CLI: a setting, flag or input to fix (nothing was done), or a fault during
# a run (the last complete checkpoint is kept). docs/faults.md lists them.
EXIT_USAGE = 2
EXIT_FAULT = 1


class RunFault(RuntimeError):
  """A fault while a run works (disk full, a lost lock, a failed check); CLIs exit 1."""


def exit_code(error: BaseException) -> int:
  return EXIT_FAULT if isinstance(error, (RunFault, FloatingPointError)) else EXIT_USAGE


def exit_with_error(error: BaseException) -> None:
  """Prints `error: <one line>` to stderr and exits 2 (input) or 1 (a fault during a run).

  GLM_JAX_TRACEBACK=1 raises the error instead (its traceback).
  """
  if os.environ.get("GLM_JAX_TRACEBACK"):
    raise error
  print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
  sys.exit(exit_code(error))


# What our own checks raise: their message is the one line. Anything else is unexpected.
_EXPECTED = (ValueError, FileNotFoundError, FloatingPointError, RunFault, TypeError,
             ImportError, PermissionError)


def _unexpected(error: BaseException) -> None:
  if os.environ.get("GLM_JAX_TRACEBACK"):
    raise error
  print(f"error: {type(error).__name__}: {_first_line(error)} (unexpected; run again with "
        "GLM_JAX_TRACEBACK=1 for the traceback)", file=sys.stderr, flush=True)
  sys.exit(EXIT_FAULT)


def guarded(main: Callable) -> Callable:
  """`main(argv)` with every exception turned into one `error:` line (exit 2, 1; 130 on
  Ctrl-C), absl INFO logging off unless --verbosity is given."""

  @functools.wraps(main)
  def run_main(argv):
    if not flags.FLAGS["verbosity"].present:  # orbax and seqio log at INFO on every save, load
      logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except SystemExit:
      raise
    except KeyboardInterrupt:
      print("error: interrupted.", file=sys.stderr, flush=True)
      sys.exit(130)
    except _EXPECTED as e:
      exit_with_error(e)
    except Exception as e:  # pylint: disable=broad-except
      _unexpected(e)

  return run_main


def parse_flags(argv: Sequence[str]) -> List[str]:
  """absl's flag parsing with a bad or missing flag as one `error:` line (exit 2)."""
  try:
    return flags.FLAGS(list(argv))
  except flags.Error as e:
    print(f"error: {_first_line(e)} (see --helpfull).", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def _late_callback(error: BaseException) -> bool:
  """A future's callback that ran after its asyncio loop closed (an aborted orbax write)."""
  return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _abandoned_orbax_read(unraisable) -> bool:
  """An orbax read coroutine finalised after its restore already failed (reported once)."""
  code = getattr(unraisable.object, "cr_code", None)
  return code is not None and "orbax" in code.co_filename


def quiet_late_callbacks() -> None:
  """Drops the tracebacks of tensorstore callbacks reaching a closed asyncio loop.

  When a checkpoint write fails (a full disk), tensorstore's futures still complete and call
  into orbax's closed event loop, and each prints `RuntimeError: Event loop is closed` (through
  sys.excepthook or sys.unraisablehook): hundreds of lines that hide the one that matters.
  Orbax's read coroutines of a restore that failed are finalised the same way.
  """
  previous_hook, previous_unraisable = sys.excepthook, sys.unraisablehook

  def excepthook(kind, value, tb):
    if not _late_callback(value):
      previous_hook(kind, value, tb)

  def unraisablehook(unraisable):
    if not (_late_callback(unraisable.exc_value) or _abandoned_orbax_read(unraisable)):
      previous_unraisable(unraisable)

  sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


def run(main: Callable, argv: Optional[Sequence[str]] = None) -> None:
  """The start of every command-line tool: the quiet start (glm_jax.console), then app.run
  with --gin.NAME=VALUE support and the one-line errors (`error: ...`, exit 2 / 1)."""
  console.quiet_startup()
  quiet_late_callbacks()
  argv = list(sys.argv if argv is None else argv)
  try:
    argv = rewrite_gin_args(argv)
  except ValueError as e:
    exit_with_error(e)
  app.run(guarded(main), argv=argv, flags_parser=parse_flags)


def begin_cli(argv: Sequence[str], options: str) -> None:
  """Common start of a CLI's main: no positional arguments.

  `options` names typical flags for the error message, e.g. '--gin_file, --gin.NAME=VALUE'.
  """
  if len(argv) > 1:
    exit_with_error(ValueError(f"Unexpected arguments {list(argv[1:])}; every option is a flag "
                               f"({options}, ...)."))


def gin_cli(fn: Callable[[], object]) -> None:
  """`python -m` of a gin-configured entry point (train, eval): the gin and multi-host flags,
  then `fn()` under the parsed config, with the one-line errors of `run`."""
  from glm_jax import distributed  # pylint: disable=g-import-not-at-top
  define_flags()
  distributed.define_flags()

  def main(argv):
    begin_cli(argv, "--gin_file, --gin.NAME=VALUE")
    distributed.initialize()
    parse_gin(flags.FLAGS.gin_file, flags.FLAGS.gin_bindings, flags.FLAGS.gin_search_paths)
    fn()

  run(main)
