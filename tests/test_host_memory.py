"""The entry points re-run themselves once with the host allocator settings, unless disabled."""

import subprocess
import sys

import pytest

import conftest
from glm_jax.kernels.cpu import host_memory

SCRIPT = """
import os, sys
from glm_jax.kernels.cpu import host_memory
print("start", os.environ.get("GLIBC_TUNABLES", ""), flush=True)
host_memory.reexec_with_tuned_malloc()
maps = open("/proc/self/maps").read() if os.path.exists("/proc/self/maps") else ""
print("running", os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:], "libmimalloc" in maps)
"""
_MIMALLOC = host_memory.mimalloc_library() is not None


def _run(tmp_path, **env_changes):
  script = tmp_path / "probe.py"
  script.write_text(SCRIPT)
  env = conftest.multi_device_env(1)
  for name in ("GLIBC_TUNABLES", "GLM_JAX_TUNED_MALLOC", "LD_PRELOAD", "MIMALLOC_PURGE_DELAY"):
    env.pop(name, None)
  env["JAX_PLATFORMS"] = "cpu"
  env.update(env_changes)
  return subprocess.run([sys.executable, str(script), "--flag=1"], env=env, text=True,
                        capture_output=True, timeout=60, check=True).stdout.splitlines()


@pytest.mark.skipif(not host_memory.huge_pages_supported(),
                    reason="needs Linux, glibc >= 2.35 and transparent huge pages")
def test_reexec_once_keeps_the_arguments_and_the_users_tunables_last(tmp_path):
  lines = _run(tmp_path, GLIBC_TUNABLES="glibc.malloc.arena_max=2")
  # The first start prints once; the re-executed one has ours first, so the user's setting
  # (applied last by glibc) wins.
  assert lines[0] == "start glibc.malloc.arena_max=2"
  assert lines[1] == f"start {host_memory.HUGE_PAGES}:glibc.malloc.arena_max=2"
  assert lines[2] == (f"running {host_memory.HUGE_PAGES}:glibc.malloc.arena_max=2 "
                      f"['--flag=1'] {_MIMALLOC}")
  assert len(lines) == 3


@pytest.mark.skipif(not _MIMALLOC, reason="cmeel-mimalloc is not installed")
def test_mimalloc_is_preloaded_on_cpu_and_keeps_freed_memory(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  for name in ("LD_PRELOAD", "MIMALLOC_PURGE_DELAY", "MIMALLOC_ALLOW_LARGE_OS_PAGES"):
    monkeypatch.delenv(name, raising=False)
  changes = host_memory.environment_changes()
  assert changes["LD_PRELOAD"] == host_memory.mimalloc_library()
  assert changes["MIMALLOC_PURGE_DELAY"] == "-1"
  # Existing preloads are kept, the user's own mimalloc settings win.
  monkeypatch.setenv("LD_PRELOAD", "/opt/other.so")
  monkeypatch.setenv("MIMALLOC_PURGE_DELAY", "100")
  changes = host_memory.environment_changes()
  assert changes["LD_PRELOAD"] == f"{host_memory.mimalloc_library()}:/opt/other.so"
  assert "MIMALLOC_PURGE_DELAY" not in changes
  # On an accelerator the device holds the big buffers: no preload.
  monkeypatch.setenv("JAX_PLATFORMS", "tpu")
  assert "LD_PRELOAD" not in host_memory.environment_changes()


@pytest.mark.skipif(not _MIMALLOC, reason="cmeel-mimalloc is not installed")
def test_the_reexecuted_process_runs_on_mimalloc(tmp_path):
  assert _run(tmp_path)[-1].endswith("['--flag=1'] True")


@pytest.mark.parametrize("platforms,cpu", [("cpu", True), ("cpu,cuda", True), ("tpu", False),
                                           ("cuda,cpu", False)])
def test_runs_on_cpu_follows_jax_platforms(monkeypatch, platforms, cpu):
  monkeypatch.setenv("JAX_PLATFORMS", platforms)
  assert host_memory.runs_on_cpu() is cpu


def test_disabled_by_environment(tmp_path):
  lines = _run(tmp_path, GLM_JAX_TUNED_MALLOC="0")
  assert lines == ["start ", "running  ['--flag=1'] False"]


def test_tuned_reads_the_environment(monkeypatch):
  monkeypatch.setenv("GLM_JAX_TUNED_MALLOC", "1")
  assert host_memory.malloc_tuned()
  monkeypatch.delenv("GLM_JAX_TUNED_MALLOC")
  assert not host_memory.malloc_tuned()
