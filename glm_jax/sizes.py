"""Integer size arithmetic shared by the data, the kernels and the evaluators."""

from __future__ import annotations


def ceil_div(x: int, divisor: int) -> int:
  """ceil(x / divisor) for integers, exact at any size."""
  return -(-x // divisor)


def round_up(x: int, multiple: int) -> int:
  """`x` rounded up to a multiple of `multiple`."""
  return ceil_div(x, multiple) * multiple
