"""The host allocator for XLA:CPU's buffers; the command-line tools re-run themselves with it.

XLA:CPU allocates every large temporary with malloc. glibc serves each block above 32 MiB
with a fresh mmap and unmaps it on free, so every GLM-Base training step faulted in (and the
kernel zeroed) the step's 1.5 GiB of temporaries and its outputs again: ~7,600 page faults
and 1.2 s of kernel time per forward + backward, ~9% of its wall time on the 2-core host. No glibc
setting keeps such blocks without fragmenting: forcing them onto the heap (mmap_max=0 with a
huge trim threshold and one arena) removed the faults, but the resident size then grew by the
1.5 GiB temporary block every few steps (3.6 -> 8.1 GiB in 22 steps) as small allocations
split the freed block. So, where JAX runs on the CPU (JAX_PLATFORMS=cpu, or unset with no
TPU / GPU plugin installed), the tools preload mimalloc (the `cmeel-mimalloc` wheel, a
dependency on Linux x86-64) with MIMALLOC_PURGE_DELAY=-1: freed memory stays mapped and is
reused, with no faults after the first step and a resident size that stays flat (3.8 GiB
over 14 GLM-Base train steps). MIMALLOC_ALLOW_LARGE_OS_PAGES=1 asks for 2 MiB pages. glibc's
own huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1, glibc >= 2.35) stay on for everything
else. Environment values the user already set win. Both are read only at process start, so
the entry points (train, eval, infer, benchmarks) call `reexec_with_tuned_malloc()` before
JAX starts; GLM_JAX_TUNED_MALLOC=0 turns it off.
"""

from __future__ import annotations

import os
import pkgutil
import site
import sys
from typing import Dict, Optional

HUGE_PAGES = "glibc.malloc.hugetlb=1"
MIMALLOC_SETTINGS = {"MIMALLOC_PURGE_DELAY": "-1", "MIMALLOC_ALLOW_LARGE_OS_PAGES": "1"}
_SWITCH = "GLM_JAX_TUNED_MALLOC"  # '0': off; '1' (set by the re-exec): already applied
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
_MIMALLOC = os.path.join("cmeel.prefix", "lib", "libmimalloc.so.3")


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


def runs_on_cpu() -> bool:
  """Whether JAX will pick the CPU: JAX_PLATFORMS says so, or no accelerator plugin is installed."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  plugins = ("libtpu", "jax_cuda", "jax_rocm")
  return not any(m.name.startswith(plugins) for m in pkgutil.iter_modules())


def mimalloc_library() -> Optional[str]:
  """Path of the cmeel-mimalloc wheel's libmimalloc.so.3, or None where it is not installed."""
  roots = list(sys.path) + site.getsitepackages() + [site.getusersitepackages()]
  for root in roots:
    path = os.path.join(root or ".", _MIMALLOC)
    if os.path.isfile(path):
      return os.path.abspath(path)
  return None


def environment_changes(environ=None) -> Dict[str, str]:
  """The variables the re-exec sets, given the current environment (values the user set win)."""
  environ = os.environ if environ is None else environ
  changes = {}
  if huge_pages_supported():
    tunables = environ.get("GLIBC_TUNABLES", "")
    # glibc applies the entries in order, so the user's own, last, win.
    changes["GLIBC_TUNABLES"] = f"{HUGE_PAGES}:{tunables}" if tunables else HUGE_PAGES
  library = mimalloc_library() if sys.platform.startswith("linux") and runs_on_cpu() else None
  if library and library not in environ.get("LD_PRELOAD", ""):
    preload = environ.get("LD_PRELOAD", "")
    changes["LD_PRELOAD"] = f"{library}:{preload}" if preload else library
    changes.update({k: v for k, v in MIMALLOC_SETTINGS.items() if k not in environ})
  return changes


def malloc_tuned() -> bool:
  """Whether this process was started by `reexec_with_tuned_malloc`."""
  return os.environ.get(_SWITCH) == "1"


def reexec_with_tuned_malloc() -> None:
  """Replaces this process by the same command with the allocator settings above, once.

  A no-op when already applied, when GLM_JAX_TUNED_MALLOC=0, or where nothing applies.
  """
  if (malloc_tuned() or os.environ.get(_SWITCH, "1") == "0"
      or not getattr(sys, "orig_argv", None)):
    return
  changes = environment_changes()
  if not changes:
    return
  env = dict(os.environ)
  env.update(changes)
  env[_SWITCH] = "1"
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, list(sys.orig_argv), env)
