"""Shared test helpers: a tiny synthetic training config and subprocess runners.

The device count is fixed when JAX starts, so multi-device tests run a subprocess with
`multi_device_env(8)` (XLA_FLAGS=--xla_force_host_platform_device_count=8).
"""

import functools
import importlib.util
import os
import shlex
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
    TRAIN_INPUT = @synthetic.synthetic_batches
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
def clean_gin():
  """An empty gin config before and after the test (use: pytestmark = usefixtures)."""
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture
def tiny_gin(tmp_path):
  return write_tiny_gin(tmp_path)


@pytest.fixture(scope="session")
def builtin_vocab():
  """The SentencePiece vocabulary shipped in the package."""
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  return vocab_lib.get_vocabulary("builtin")


@pytest.fixture(scope="session")
def vocab(builtin_vocab):
  """The built-in vocabulary, for tests that take any text vocabulary."""
  return builtin_vocab


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
# A local GCS: `python -m glm_jax.testing.gcs_emulator` on free ports for the whole session.
GCS_BUCKET = "glm-test"


def free_port() -> int:
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class GcsEmulator:
  """A running emulator: `env` points tensorstore, TensorFlow's gfile and the GCS SDKs at it."""

  def __init__(self, root):
    self.root = str(root)
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "glm_jax.testing.gcs_emulator", f"--port={free_port()}",
         f"--proxy_port={free_port()}", f"--root={root}", f"--bucket={GCS_BUCKET}"],
        cwd=REPO_ROOT, env=multi_device_env(1), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    self.env, self.exports = {}, []
    for line in self.proc.stdout:
      if line.startswith("export "):
        self.exports.append(line.strip())
        name, _, value = line[len("export "):].strip().partition("=")
        self.env[name] = shlex.split(value)[0]
      elif line.startswith("#"):
        self.banner = line.strip()
        return
    raise RuntimeError(f"The GCS emulator did not start: {self.proc.stderr.read()[-2000:]}")

  def url(self, *parts) -> str:
    return "/".join([f"gs://{GCS_BUCKET}", *parts])

  def subprocess_env(self, num_devices: int = 1) -> dict:
    env = multi_device_env(num_devices)
    env.update(self.env)
    return env

  def stop(self):
    self.proc.terminate()  # our own child, by handle
    try:
      self.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
  emulator = GcsEmulator(tmp_path_factory.mktemp("gcs"))
  yield emulator
  emulator.stop()


@pytest.fixture
def gcs(gcs_emulator, monkeypatch):
  """The session's emulator with its environment set in this process for the test."""
  for name, value in gcs_emulator.env.items():
    monkeypatch.setenv(name, value)
  return gcs_emulator


# The released GLM vocabularies, shipped xz-compressed in tests/fixtures/glm_vocab/.
VOCAB_FILES = {"gpt2": ("gpt2-vocab.json", "gpt2-merges.txt"),
               "roberta": ("roberta-vocab.json", "gpt2-merges.txt:roberta-merges.txt"),
               "chinese_sp": ("cog-pretrain.model",), "wordpiece": ("bert-base-uncased-vocab.txt",)}


@pytest.fixture(scope="session")
def vocab_paths(tmp_path_factory):
  """{family: the path its spec takes}: the real vocabulary files, unpacked once per session.

  RoBERTa's merges file is byte-identical to GPT-2's, so it ships once.
  """
  import lzma  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("vocab")
  paths = {}
  for family, names in VOCAB_FILES.items():
    folder = root / family
    folder.mkdir()
    for name in names:
      source, _, target = name.partition(":")
      with lzma.open(shipped_fixture("glm_vocab", source + ".xz")) as f:
        (folder / (target or source)).write_bytes(f.read())
    paths[family] = str(folder / names[0]) if len(names) == 1 else str(folder)
  return paths


def read_xz_json(path: str, lines: bool = False):
  """A (JSON-lines) fixture file, xz-compressed or plain."""
  import json  # pylint: disable=g-import-not-at-top
  import lzma  # pylint: disable=g-import-not-at-top
  opener = lzma.open if path.endswith(".xz") else open
  with opener(path, "rt", encoding="utf-8") as f:
    return [json.loads(l) for l in f if l.strip()] if lines else json.load(f)


@pytest.fixture(scope="session", autouse=True)
def prepared_cache_dir(tmp_path_factory):
  """Corpora prepared on first use (built-in, text:) go to a per-session cache, not ~/.cache."""
  path = str(tmp_path_factory.mktemp("glm_jax_cache"))
  previous = os.environ.get("GLM_JAX_CACHE_DIR")
  os.environ["GLM_JAX_CACHE_DIR"] = path
  yield path
  if previous is None:
    os.environ.pop("GLM_JAX_CACHE_DIR", None)
  else:
    os.environ["GLM_JAX_CACHE_DIR"] = previous


TINY_CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                           "tiny_corpus.txt")


def prepare_in_process(output_dir, inputs=(TINY_CORPUS,), vocabulary="builtin", **kwargs):
  """Prepares a corpus in this process (the units the Beam pipeline runs); returns the dir."""
  from glm_jax.data import prepare  # pylint: disable=g-import-not-at-top
  prepare.prepare(list(inputs), vocabulary, str(output_dir), in_process=True, **kwargs)
  return str(output_dir)


@pytest.fixture(scope="session")
def bert_vocab_file(vocab_paths):
  """The real BERT uncased WordPiece vocab.txt (GLM-Base/Large), unpacked from tests/fixtures."""
  return vocab_paths["wordpiece"]


def write_damaged_corpora(directory) -> dict:
  """Corpus files with bad lines: {'binary': 99 of 100 lines invalid UTF-8 (text), 'broken':
  30 of 90 JSONL lines cut short, 'few': 1 of 300 JSONL lines cut short}."""
  import json  # pylint: disable=g-import-not-at-top
  paths = {name: os.path.join(str(directory), name)
           for name in ("binary.txt", "broken.jsonl", "few.jsonl")}
  with open(paths["binary.txt"], "wb") as f:
    f.write(b"The one line of text in this file.\n")
    f.write(b"".join(b"\x89PNG\xff\xfe\x00 %d \x80\x81\n" % i for i in range(99)))
  for name, count, every in (("broken.jsonl", 90, 3), ("few.jsonl", 300, 300)):
    with open(paths[name], "w", encoding="utf-8") as f:
      for i in range(count):
        line = json.dumps({"text": f"Document {i} is about the sea and the {i % 7} ships."})
        f.write((line[:-7] if i % every == every - 1 else line) + "\n")
  return {name.split(".")[0]: path for name, path in paths.items()}
