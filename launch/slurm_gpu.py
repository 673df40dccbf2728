r"""Multi-node GPU training under SLURM: writes and submits the batch script, and starts each task.

  # On the login node: 4 nodes x 8 GPUs, one process per GPU.
  python launch/slurm_gpu.py --nodes=4 --gpus_per_node=8 --partition=gpu -- \
      --gin_file=configs/experiments/glm_large.gin --gin.MODEL_DIR=/shared/ckpt/glm_large

  # Inside the job (what the script's `srun` runs in every task):
  python launch/slurm_gpu.py --worker -- --gin_file=...

The worker derives jax.distributed's coordinator from SLURM's environment: the first host of
SLURM_JOB_NODELIST (port --port), SLURM_NTASKS processes, this task's SLURM_PROCID; with
--mode=per_gpu it pins its GPU with CUDA_VISIBLE_DEVICES=SLURM_LOCALID. --dry_run prints the
batch script (or, with --worker, the command) instead of submitting (or running) it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from typing import Dict, List, Mapping, Sequence, Tuple

from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("per_gpu", "per_node")

_WORKER = flags.DEFINE_bool("worker", False, "Run as one SLURM task (inside srun).")
_NODES = flags.DEFINE_integer("nodes", 4, "Nodes to allocate.")
_GPUS = flags.DEFINE_integer("gpus_per_node", 8, "GPUs per node.")
_MODE = flags.DEFINE_enum("mode", "per_gpu", MODES, "One process per GPU or one per node "
                          "(seeing all of its GPUs).")
_PORT = flags.DEFINE_integer("port", 12345, "Coordinator port on the first node.")
_PARTITION = flags.DEFINE_string("partition", None, "SLURM partition.")
_ACCOUNT = flags.DEFINE_string("account", None, "SLURM account.")
_TIME = flags.DEFINE_string("time", "72:00:00", "Wall-clock limit of the job.")
_CPUS = flags.DEFINE_integer("cpus_per_task", None, "CPUs per task (default: 12 per GPU).")
_JOB_NAME = flags.DEFINE_string("job_name", "glm_jax", "SLURM job name.")
_PYTHON = flags.DEFINE_string("python", "python", "Python interpreter on the nodes.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print what would be submitted or run.")


def expand_nodelist(nodelist: str) -> List[str]:
  """SLURM's compact host list ('gpu[01-03,7],login1') as host names (what scontrol prints)."""
  hosts = []
  for match in re.finditer(r"([^,\[]+)(?:\[([^\]]+)\])?([^,]*)", nodelist):
    prefix, ranges, suffix = match.groups()
    if not ranges:
      hosts.append(prefix + suffix)
      continue
    for part in ranges.split(","):
      low, _, high = part.partition("-")
      for number in range(int(low), int(high or low) + 1):
        hosts.append(f"{prefix}{number:0{len(low)}d}{suffix}")
  if not hosts:
    raise ValueError(f"Cannot read the SLURM node list {nodelist!r}.")
  return hosts


def worker_command(environ: Mapping[str, str], train_args: Sequence[str], port: int,
                   mode: str = "per_gpu", python: str = "python"
                   ) -> Tuple[Dict[str, str], List[str]]:
  """(extra environment, argv) of this SLURM task's glm_jax.train process."""
  missing = [k for k in ("SLURM_JOB_NODELIST", "SLURM_NTASKS", "SLURM_PROCID")
             if k not in environ]
  if missing:
    raise ValueError(f"{', '.join(missing)} not set; run --worker inside a SLURM job (srun).")
  coordinator = expand_nodelist(environ["SLURM_JOB_NODELIST"])[0]
  env = {}
  if mode == "per_gpu":
    # Pick this task's GPU from those SLURM left visible (all of the node's, or already one).
    visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    local = int(environ.get("SLURM_LOCALID", "0"))
    if len(visible) == 1:
      env["CUDA_VISIBLE_DEVICES"] = visible[0]
    elif visible:
      if local >= len(visible):
        raise ValueError(f"SLURM_LOCALID {local} but only GPUs {visible} are visible; use "
                         "--ntasks-per-node equal to the GPUs per node.")
      env["CUDA_VISIBLE_DEVICES"] = visible[local]
    else:
      env["CUDA_VISIBLE_DEVICES"] = str(local)
  argv = [python, "-m", "glm_jax.train", f"--coordinator_address={coordinator}:{port}",
          f"--num_processes={int(environ['SLURM_NTASKS'])}",
          f"--process_id={int(environ['SLURM_PROCID'])}", *train_args]
  return env, argv


def batch_script(train_args: Sequence[str], *, nodes: int, gpus_per_node: int, mode: str,
                 port: int, time_limit: str, job_name: str = "glm_jax",
                 partition: str = None, account: str = None, cpus_per_task: int = None,
                 python: str = "python", repo: str = REPO_ROOT) -> str:
  """The sbatch script: allocate the nodes and srun one worker per GPU (or per node)."""
  if nodes < 1 or gpus_per_node < 1:
    raise ValueError("--nodes and --gpus_per_node must be at least 1.")
  if not any(a.startswith("--gin_file") for a in train_args):
    raise ValueError("Pass glm_jax.train flags after `--`, at least --gin_file=... and "
                     "--gin.MODEL_DIR=...")
  tasks = gpus_per_node if mode == "per_gpu" else 1
  cpus = cpus_per_task or 12 * (gpus_per_node // tasks)
  lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}", f"#SBATCH --nodes={nodes}",
           f"#SBATCH --ntasks-per-node={tasks}", f"#SBATCH --gpus-per-node={gpus_per_node}",
           f"#SBATCH --cpus-per-task={cpus}", f"#SBATCH --time={time_limit}",
           "#SBATCH --exclusive", f"#SBATCH --output={job_name}-%j.out"]
  if partition:
    lines.append(f"#SBATCH --partition={partition}")
  if account:
    lines.append(f"#SBATCH --account={account}")
  worker = [python, os.path.join(repo, "launch", "slurm_gpu.py"), "--worker", f"--mode={mode}",
            f"--port={port}", f"--python={python}", "--", *train_args]
  lines += ["set -euo pipefail", f"cd {shlex.quote(repo)}",
            f"srun --kill-on-bad-exit=1 {shlex.join(worker)}", ""]
  return "\n".join(lines)


def main(argv):
  train_args = argv[1:]
  try:
    if _WORKER.value:
      env, command = worker_command(os.environ, train_args, _PORT.value, _MODE.value,
                                    _PYTHON.value)
      line = " ".join([*(f"{k}={v}" for k, v in env.items()), shlex.join(command)])
      print(line, flush=True)
      if not _DRY_RUN.value:
        os.chdir(REPO_ROOT)
        os.execvpe(command[0], command, dict(os.environ, **env))
      return
    script = batch_script(train_args, nodes=_NODES.value, gpus_per_node=_GPUS.value,
                          mode=_MODE.value, port=_PORT.value, time_limit=_TIME.value,
                          job_name=_JOB_NAME.value, partition=_PARTITION.value,
                          account=_ACCOUNT.value, cpus_per_task=_CPUS.value,
                          python=_PYTHON.value)
  except ValueError as e:
    print(f"Error: {e}", file=sys.stderr)
    sys.exit(2)
  if _DRY_RUN.value:
    print(script)
    print("sbatch <the script above>")
    return
  with tempfile.NamedTemporaryFile("w", suffix=".sbatch", prefix="glm_jax_", dir=".",
                                   delete=False) as f:
    f.write(script)
  print(f"sbatch {f.name}", flush=True)
  try:
    subprocess.run(["sbatch", f.name], check=True)
  except (subprocess.CalledProcessError, FileNotFoundError) as e:
    print(f"Error: sbatch failed ({e}); the script is {f.name}.", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
