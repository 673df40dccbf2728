"""Shared test helpers: a tiny synthetic training config and subprocess runners.

The device count is fixed when JAX starts, so multi-device tests run a subprocess with
`multi_device_env(8)` (XLA_FLAGS=--xla_force_host_platform_device_count=8).
"""

import functools
import importlib.util
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 2 layers, hidden 32, vocab 128, synthetic blank-infilling batches: compiles in seconds.
TINY_TRAIN_GIN = textwrap.dedent("""\
    include 'configs/runs/pretrain.gin'
    model.GLMConfig.vocab_size = 128
    model.GLMConfig.num_layers = 2
    model.GLMConfig.hidden_size = 32
    model.GLMConfig.num_heads = 4
    model.GLMConfig.max_sequence_length = 64
    TRAIN_INPUT = @train.synthetic_batches
    MIXTURE_OR_TASK_NAME = 'synthetic'
    VOCABULARY = 'synthetic'
    SEQUENCE_LENGTH = 32
    BATCH_SIZE = 8
    TRAIN_STEPS = 12
    CHECKPOINT_PERIOD = 4
    EVAL_PERIOD = 0
    LOG_PERIOD = 1
    LEARNING_RATE = 3e-3
    WARMUP_STEPS = 3
    """)


# XLA compiles dominate the trainer tests on 2 CPU cores; identical programs (the same tiny
# model in many tests and subprocesses) are compiled once and loaded from this cache.
COMPILE_CACHE_DIR = os.environ.get(
    "GLM_JAX_TEST_COMPILE_CACHE", os.path.join(tempfile.gettempdir(), "glm_jax_test_compile_cache"))
_CACHE_ENV = {"JAX_COMPILATION_CACHE_DIR": COMPILE_CACHE_DIR,
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


def enable_compile_cache() -> None:
  """Turns on JAX's persistent compilation cache in this process (call before compiling)."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", COMPILE_CACHE_DIR)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def multi_device_env(num_devices: int = 8) -> dict:
  env = dict(os.environ)
  env.update(_CACHE_ENV)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  return env


def write_tiny_gin(directory, extra: str = "") -> str:
  path = os.path.join(str(directory), "tiny.gin")
  with open(path, "w") as f:
    f.write(TINY_TRAIN_GIN + extra)
  return path


def run_module(module: str, args, env=None, timeout: int = 240, **kwargs):
  """Runs `python -m module args` from the repository root; returns CompletedProcess."""
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                        env=env or multi_device_env(1), capture_output=True, text=True,
                        timeout=timeout, **kwargs)


def run_script(code: str, env=None, timeout: int = 240):
  """Runs a Python snippet in a fresh interpreter (e.g. with 8 CPU devices)."""
  return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT,
                        env=env or multi_device_env(1), capture_output=True, text=True,
                        timeout=timeout)


@functools.lru_cache(maxsize=None)
def load_tool(name: str):
  """The script tools/<name>.py imported as a module (once per session: absl flags)."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, "tools",
                                                                   f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture
def tiny_gin(tmp_path):
  return write_tiny_gin(tmp_path)


@pytest.fixture(scope="session")
def builtin_vocab():
  """The SentencePiece vocabulary shipped in the package."""
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  return vocab_lib.get_vocabulary("builtin")


def tiny_glm(vocab_size: int, max_sequence_length: int, initializer_std: float, seed: int):
  """(config, params) of a 2-layer, hidden-32 GLM for decoding and evaluation tests."""
  import jax  # pylint: disable=g-import-not-at-top
  from glm_jax.model import GLMConfig, init_params  # pylint: disable=g-import-not-at-top
  config = GLMConfig(vocab_size=vocab_size, num_layers=2, hidden_size=32, num_heads=4,
                     max_sequence_length=max_sequence_length, initializer_std=initializer_std)
  return config, init_params(config, jax.random.PRNGKey(seed))


# Reference fixtures. The tests read compact subsets shipped in tests/fixtures/<set>/ (so
# they run on any clone); the full sets in ../shared/fixtures/<set>/, where present, are
# optional extra cases.
SHIPPED_FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
SHARED_FIXTURES = os.path.join(os.path.dirname(REPO_ROOT), "shared", "fixtures")


def shipped_fixture(*parts) -> str:
  """Path of a file or folder in tests/fixtures (it must exist: it ships with the repo)."""
  path = os.path.join(SHIPPED_FIXTURES, *parts)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing; tests/fixtures ships with the repository.")
  return path


def shared_fixture(*parts):
  """Path in ../shared/fixtures if that optional full set is beside the checkout, else None."""
  path = os.path.join(SHARED_FIXTURES, *parts)
  return path if os.path.exists(path) else None


# A parity test that skips fails the run (tests/parity_guard.py).
from parity_guard import pytest_configure, pytest_runtest_makereport  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position
