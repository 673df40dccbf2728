"""Transparent huge pages for host buffers: the command-line tools re-run themselves with them.

XLA:CPU allocates every large temporary with glibc malloc, which maps fresh pages for each
one and returns them on free: a GLM-Base training step on the CPU first-touches ~3 GB of 4 KiB
pages per step, and the page faults cost ~25% of the step. glibc >= 2.35 can back its heap and
large mappings with 2 MiB transparent huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1), but
reads the setting only at process start, so the entry points (train, eval, infer, benchmarks)
call `reexec_with_huge_pages()` first. GLM_JAX_HUGE_PAGES=0 turns this off.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
_DISABLE = "GLM_JAX_HUGE_PAGES"
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version():
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
  except (AttributeError, ValueError, OSError):
    return None
  if name != "glibc":
    return None
  return tuple(int(p) for p in version.split(".")[:2])


def huge_pages_supported() -> bool:
  """True on Linux with glibc >= 2.35 and transparent huge pages in 'always' or 'madvise'."""
  if not sys.platform.startswith("linux"):
    return False
  version = _glibc_version()
  if version is None or version < (2, 35):
    return False
  try:
    with open(_THP_SETTING) as f:
      setting = f.read()
  except OSError:
    return False
  return "[always]" in setting or "[madvise]" in setting


def huge_pages_enabled() -> bool:
  """Whether this process was started with glibc's huge-page malloc."""
  return "glibc.malloc.hugetlb" in os.environ.get("GLIBC_TUNABLES", "")


def reexec_with_huge_pages() -> None:
  """Replaces this process by the same command with GLIBC_TUNABLES huge pages, once.

  A no-op when already set, when GLM_JAX_HUGE_PAGES=0, or where the host cannot use them.
  """
  if (huge_pages_enabled() or os.environ.get(_DISABLE, "1") == "0"
      or not huge_pages_supported() or not getattr(sys, "orig_argv", None)):
    return
  env = dict(os.environ)
  tunables = env.get("GLIBC_TUNABLES", "")
  env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, list(sys.orig_argv), env)
