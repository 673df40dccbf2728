"""The entry points re-run themselves with the glibc malloc tunables, once, unless disabled."""

import subprocess
import sys

import pytest

import conftest
from glm_jax import host_memory

SCRIPT = """
import os, sys
from glm_jax import host_memory
print("start", os.environ.get("GLIBC_TUNABLES", ""), flush=True)
host_memory.reexec_with_tuned_malloc()
print("running", os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:])
"""


def _run(tmp_path, **env_changes):
  script = tmp_path / "probe.py"
  script.write_text(SCRIPT)
  env = conftest.multi_device_env(1)
  env.pop("GLIBC_TUNABLES", None)
  env.pop("GLM_JAX_TUNED_MALLOC", None)
  env["JAX_PLATFORMS"] = "cpu"
  env.update(env_changes)
  return subprocess.run([sys.executable, str(script), "--flag=1"], env=env, text=True,
                        capture_output=True, timeout=60, check=True).stdout.splitlines()


@pytest.mark.skipif(not host_memory.tunables(), reason="needs Linux with glibc >= 2.26")
def test_reexec_adds_the_tunables_once_before_the_users_and_keeps_the_arguments(
    tmp_path, monkeypatch):
  lines = _run(tmp_path, GLIBC_TUNABLES="glibc.malloc.arena_max=2")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  ours = ":".join(host_memory.tunables())
  # The first start prints once; the re-executed one has ours first, so the user's setting
  # (applied last by glibc) wins.
  assert lines[0] == "start glibc.malloc.arena_max=2"
  assert lines[1] == f"start {ours}:glibc.malloc.arena_max=2"
  assert lines[2] == f"running {ours}:glibc.malloc.arena_max=2 ['--flag=1']"
  assert len(lines) == 3


@pytest.mark.skipif(not host_memory.tunables(), reason="needs Linux with glibc >= 2.26")
def test_tunables_keep_freed_memory_on_cpu_and_use_huge_pages_where_supported(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  names = [t.split("=")[0] for t in host_memory.tunables()]
  assert {"glibc.malloc.mmap_max", "glibc.malloc.trim_threshold",
          "glibc.malloc.arena_max"} <= set(names)
  assert ("glibc.malloc.hugetlb" in names) == host_memory.huge_pages_supported()
  # On an accelerator only the huge pages remain.
  monkeypatch.setenv("JAX_PLATFORMS", "tpu")
  assert host_memory.tunables() == ([host_memory.HUGE_PAGES]
                                    if host_memory.huge_pages_supported() else [])


@pytest.mark.parametrize("platforms,cpu", [("cpu", True), ("cpu,cuda", True), ("tpu", False),
                                           ("cuda,cpu", False)])
def test_runs_on_cpu_follows_jax_platforms(monkeypatch, platforms, cpu):
  monkeypatch.setenv("JAX_PLATFORMS", platforms)
  assert host_memory.runs_on_cpu() is cpu


def test_disabled_by_environment(tmp_path):
  lines = _run(tmp_path, GLM_JAX_TUNED_MALLOC="0")
  assert lines == ["start ", "running  ['--flag=1']"]


def test_tuned_reads_the_environment(monkeypatch):
  monkeypatch.setenv("GLM_JAX_TUNED_MALLOC", "1")
  assert host_memory.malloc_tuned()
  monkeypatch.delenv("GLM_JAX_TUNED_MALLOC")
  assert not host_memory.malloc_tuned()
