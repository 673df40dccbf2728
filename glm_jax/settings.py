"""Checks of gin-bound settings before a run works: types from annotations, ranges, choices.

Each failure is a `SettingError` (a ValueError) whose one line names the setting as the user
wrote it (the macro a configurable's parameter is bound to, e.g. TRAIN_STEPS, else
`module.fn.param`) and the fix, e.g.

  TRAIN_STEPS must be an integer, got 'four' (str); e.g. --gin.TRAIN_STEPS=1000.
"""

from __future__ import annotations

import math
import typing
from typing import Any, Callable, Iterable, Optional, Sequence

import gin


class SettingError(ValueError):
  """A setting with a wrong type, range or choice (one line: the setting and the fix)."""


def setting_name(fn: Callable, param: str) -> str:
  """The macro `param` of configurable `fn` is bound to (e.g. 'TRAIN_STEPS'), else fn.param."""
  try:
    bindings = gin.get_bindings(fn, resolve_references=False)
  except (ValueError, TypeError, KeyError):
    bindings = {}
  value = bindings.get(param)
  if isinstance(value, gin.config.ConfigurableReference) and \
      value.configurable.selector == "gin.macro":
    return value.scoped_selector.rsplit("/", 1)[0]
  wrapped = getattr(fn, "__wrapped__", fn)
  module = wrapped.__module__.replace("glm_jax.", "")
  return f"{module}.{wrapped.__qualname__.replace('.__init__', '')}.{param}"


def _example(name: str, example: str) -> str:
  return f"--gin.{name}={example}" if "." not in name else f"--gin_bindings='{name} = {example}'"


def _type_name(value: Any) -> str:
  return type(value).__name__


def _fails(expected, value) -> Optional[str]:
  """What `value` should be instead (a phrase), or None when it has type `expected`."""
  origin = typing.get_origin(expected)
  if origin is typing.Union:
    options = typing.get_args(expected)
    if all(_fails(option, value) for option in options):
      named = [_fails(option, object()) for option in options if option is not type(None)]
      return " or ".join(n for n in named if n) + (" or None" if type(None) in options else "")
    return None
  if expected is type(None):
    return None if value is None else "None"
  if expected is bool:
    return None if isinstance(value, bool) else "True or False"
  if expected is int:
    return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
  if expected is float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return None if ok else "a number"
  if expected is str:
    return None if isinstance(value, str) else "a string"
  return None  # callables, models, configs: their own code checks them


def check_types(fn: Callable, values: dict, skip: Iterable[str] = ()) -> None:
  """Checks `values` (parameter -> value) against `fn`'s annotations (int, float, str, bool,
  Optional[...]); a value still gin.REQUIRED is left to gin_utils.check_required."""
  target = getattr(fn, "__wrapped__", fn)
  hints = typing.get_type_hints(target.__init__ if isinstance(target, type) else target)
  skip = set(skip)
  for param, value in values.items():
    if param in skip or param not in hints or value is gin.REQUIRED:
      continue
    wanted = _fails(hints[param], value)
    if wanted:
      name = setting_name(fn, param)
      raise SettingError(f"{name} must be {wanted}, got {value!r} ({_type_name(value)}); "
                         f"set e.g. {_example(name, _EXAMPLES.get(wanted, '...'))}.")


_EXAMPLES = {"an integer": "1000", "a number": "0.001", "True or False": "True",
             "a string": "'text'"}


def at_least(fn: Callable, param: str, value, minimum, what: str = "") -> None:
  """`value` >= minimum (None passes: the setting is off)."""
  if value is not None and value < minimum:
    name = setting_name(fn, param)
    raise SettingError(f"{name} must be at least {minimum}{what}, got {value}; "
                       f"set e.g. {_example(name, str(max(minimum, 1)))}.")


def in_range(fn: Callable, param: str, value, low, high, *, low_open: bool = False,
             high_open: bool = True) -> None:
  """low <= value < high (brackets as given); None passes."""
  if value is None:
    return
  ok = (value > low if low_open else value >= low) and (value < high if high_open else
                                                       value <= high)
  if not ok or (isinstance(value, float) and not math.isfinite(value)):
    name = setting_name(fn, param)
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    raise SettingError(f"{name} must lie in {interval}, got {value}; fix it.")


def one_of(fn: Callable, param: str, value, choices: Sequence) -> None:
  if value not in choices:
    name = setting_name(fn, param)
    raise SettingError(f"{name} must be one of {', '.join(map(repr, choices))}, got "
                       f"{value!r}.")
