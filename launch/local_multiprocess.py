r"""Runs N processes of `python -m glm_jax.train` on this machine, joined by jax.distributed.

  python launch/local_multiprocess.py --num_processes=2 --devices_per_process=4 -- \
      --gin_file=configs/runs/quickstart.gin --gin.MODEL_DIR=/tmp/glm_mp

Everything after `--` goes to every process unchanged; the launcher adds
--coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=i. Each process sees
`devices_per_process` CPU devices, so the global mesh has N x that many devices, exactly as on
a multi-host pod. --dry_run prints the commands instead of running them.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, List, Sequence, Tuple

from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 2, "Processes to start.")
_DEVICES_PER_PROCESS = flags.DEFINE_integer("devices_per_process", 1,
                                            "Simulated CPU devices in each process.")
_PORT = flags.DEFINE_integer("port", 0, "Coordinator port on 127.0.0.1 (0: a free port).")
_LOG_DIR = flags.DEFINE_string("process_logs", None, "Write process i's output to DIR/process_i.log "
                               "(default: stream it with a [i] prefix).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands; start nothing.")
_PYTHON = flags.DEFINE_string("python", sys.executable, "Python interpreter of the workers.")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def build_commands(num_processes: int, port: int, devices_per_process: int,
                   train_args: Sequence[str], python: str = sys.executable
                   ) -> List[Tuple[Dict[str, str], List[str]]]:
  """(extra environment, argv) of every process."""
  if num_processes < 1 or devices_per_process < 1:
    raise ValueError("--num_processes and --devices_per_process must be at least 1.")
  if not 0 < port < 65536:
    raise ValueError(f"Port {port} is not a valid TCP port; pass --port between 1 and 65535.")
  env = {"JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}"}
  commands = []
  for index in range(num_processes):
    argv = [python, "-m", "glm_jax.train", f"--coordinator_address=127.0.0.1:{port}",
            f"--num_processes={num_processes}", f"--process_id={index}", *train_args]
    commands.append((dict(env), argv))
  return commands


def render(env: Dict[str, str], argv: Sequence[str]) -> str:
  """A shell line that runs argv with env."""
  prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
  return f"{prefix} {shlex.join(argv)}".strip()


def _relay(index: int, stream) -> None:
  for line in stream:
    sys.stdout.write(f"[{index}] {line}")
    sys.stdout.flush()


def run_all(commands, log_dir=None) -> int:
  """Starts every process, waits for all; if one fails the others are stopped. Exit status."""
  processes, outputs, relays = [], [], []
  for index, (env, argv) in enumerate(commands):
    full_env = dict(os.environ, **env)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT,
                                                           full_env.get("PYTHONPATH")]))
    if log_dir:
      os.makedirs(log_dir, exist_ok=True)
      out = open(os.path.join(log_dir, f"process_{index}.log"), "w")  # pylint: disable=consider-using-with
      outputs.append(out)
    else:
      out = subprocess.PIPE
    proc = subprocess.Popen(argv, env=full_env, cwd=REPO_ROOT, stdout=out,
                            stderr=subprocess.STDOUT, text=True)
    processes.append(proc)
    if not log_dir:
      relays.append(threading.Thread(target=_relay, args=(index, proc.stdout), daemon=True))
      relays[-1].start()
  status = 0
  try:
    while any(p.poll() is None for p in processes):
      failed = [p for p in processes if p.poll() not in (None, 0)]
      if failed:
        status = failed[0].returncode
        for p in processes:
          if p.poll() is None:
            p.terminate()  # our own children only, by handle
        break
      time.sleep(0.2)
    for p in processes:
      p.wait()
    for thread in relays:
      thread.join(timeout=5)
  finally:
    for f in outputs:
      f.close()
  return status or next((p.returncode for p in processes if p.returncode), 0)


def main(argv):
  train_args = argv[1:]
  port = _PORT.value or free_port()
  try:
    commands = build_commands(_NUM_PROCESSES.value, port, _DEVICES_PER_PROCESS.value,
                              train_args, _PYTHON.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if _DRY_RUN.value:
    for env, command in commands:
      print(render(env, command))
    return
  sys.exit(run_all(commands, _LOG_DIR.value))


if __name__ == "__main__":
  app.run(main)
