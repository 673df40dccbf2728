"""The entry points re-run themselves with glibc's huge-page malloc, once, unless disabled."""

import subprocess
import sys

import pytest

import conftest
from glm_jax import host_memory

SCRIPT = """
import os, sys
from glm_jax import host_memory
print("start", os.environ.get("GLIBC_TUNABLES", ""), flush=True)
host_memory.reexec_with_huge_pages()
print("running", os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:])
"""


def _run(tmp_path, **env_changes):
  script = tmp_path / "probe.py"
  script.write_text(SCRIPT)
  env = conftest.multi_device_env(1)
  env.pop("GLIBC_TUNABLES", None)
  env.update(env_changes)
  return subprocess.run([sys.executable, str(script), "--flag=1"], env=env, text=True,
                        capture_output=True, timeout=60, check=True).stdout.splitlines()


@pytest.mark.skipif(not host_memory.huge_pages_supported(),
                    reason="needs Linux, glibc >= 2.35 and transparent huge pages")
def test_reexec_adds_the_tunable_once_and_keeps_the_arguments(tmp_path):
  lines = _run(tmp_path, GLIBC_TUNABLES="glibc.malloc.arena_max=2")
  # The first start prints once, the re-executed one prints 'start' with the tunable set.
  assert lines[0] == "start glibc.malloc.arena_max=2"
  assert lines[1] == f"start glibc.malloc.arena_max=2:{host_memory.TUNABLE}"
  assert lines[2] == f"running glibc.malloc.arena_max=2:{host_memory.TUNABLE} ['--flag=1']"
  assert len(lines) == 3


def test_disabled_by_environment(tmp_path):
  lines = _run(tmp_path, GLM_JAX_HUGE_PAGES="0")
  assert lines == ["start ", "running  ['--flag=1']"]


def test_enabled_reads_the_environment(monkeypatch):
  monkeypatch.setenv("GLIBC_TUNABLES", host_memory.TUNABLE)
  assert host_memory.huge_pages_enabled()
  monkeypatch.delenv("GLIBC_TUNABLES")
  assert not host_memory.huge_pages_enabled()
