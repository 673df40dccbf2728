"""A quiet start for the command-line tools: no TensorFlow / CUDA start-up chatter.

TensorFlow (loaded by seqio for the data pipeline) writes its start-up lines through C++
logging before that logging is initialised, so TF_CPP_MIN_LOG_LEVEL does not hide them
(`All log messages before absl::InitializeLog() ...`, oneDNN, `Could not find cuda
drivers`, and on a machine without a GPU `failed call to cuInit ... (303)`). `quiet_startup()`,
called first by every entry point (through `glm_jax.gin_utils.run`), therefore:
- sets TF_CPP_MIN_LOG_LEVEL=2 (TensorFlow's later INFO and WARNING lines) unless set;
- imports TensorFlow, whenever something first imports it, with stderr captured, and
  writes back every captured line except the known start-up lines (NOISE below): errors
  and warnings about the run still show;
- hides every GPU from TensorFlow at that import, inside the same capture: TensorFlow only
  feeds data here, and on a GPU machine it would otherwise reserve the memory JAX needs.
GLM_JAX_STARTUP_LOGS=1 shows everything.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
from typing import Iterator

# Start-up lines of TensorFlow and its CUDA stubs that say nothing about the user's run.
NOISE = tuple(re.compile(p) for p in (
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"oneDNN custom operations are on",
    r"Could not find cuda drivers on your machine",
    r"failed call to cuInit",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation placer already registered",
    r"TF-TRT Warning: Could not find TensorRT",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions: .* rebuild TensorFlow",
    r"cudart_stub\.cc",
))
_SHOW_ALL = "GLM_JAX_STARTUP_LOGS"


def is_noise(line: str) -> bool:
  return any(p.search(line) for p in NOISE)


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
  """Captures file descriptor 2 (C++ and Python writes alike); writes back all but NOISE."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      lines = capture.read().decode("utf-8", errors="replace").splitlines()
      kept = [line for line in lines if line.strip() and not is_noise(line)]
      if kept:
        sys.stderr.write("\n".join(kept) + "\n")
        sys.stderr.flush()


def hide_gpus_from_tensorflow(tf) -> None:
  """TensorFlow sees the CPU only (as T5X does); a no-op once its runtime has started."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):
    pass


class _QuietLoader(importlib.abc.Loader):
  """Runs the real loader of `tensorflow` inside filtered_stderr, then hides the GPUs."""

  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    with filtered_stderr():
      self._loader.exec_module(module)
      hide_gpus_from_tensorflow(module)

  def __getattr__(self, name):  # get_resource_reader, is_package, ... of the real loader
    return getattr(self._loader, name)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
  """Finds the top-level `tensorflow` package as usual and wraps its loader."""

  def find_spec(self, fullname, path, target=None):
    del target
    if fullname != "tensorflow":
      return None
    spec = importlib.machinery.PathFinder.find_spec(fullname, path)
    if spec is not None and spec.loader is not None:
      spec.loader = _QuietLoader(spec.loader)
    return spec


def quiet_startup() -> None:
  """Sets up the quiet start (idempotent); call before anything imports TensorFlow."""
  if os.environ.get(_SHOW_ALL) == "1":
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if "tensorflow" in sys.modules:  # imported before the tool started (a module import)
    with filtered_stderr():
      hide_gpus_from_tensorflow(sys.modules["tensorflow"])
    return
  if not any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietTensorFlowFinder())

