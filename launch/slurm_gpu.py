r"""Multi-node GPU training under SLURM: writes and submits the batch script.

  # On the login node: 4 nodes x 8 GPUs, one process per GPU.
  python launch/slurm_gpu.py --nodes=4 --gpus_per_node=8 --partition=gpu -- \
      --gin_file=configs/experiments/glm_large.gin --gin.MODEL_DIR=/shared/ckpt/glm_large

Every task of the job runs `python -m glm_jax.train --multihost_auto ...`: JAX's own SLURM
detection in jax.distributed.initialize() takes the coordinator (first host of
SLURM_STEP_NODELIST; port from the job id, or JAX_COORDINATOR_PORT=--port), the process
count (SLURM_NTASKS) and index (SLURM_PROCID), and with --mode=per_gpu pins each task to the
GPU SLURM_LOCALID. --mode=per_node runs one task per node with all of its GPUs
(JAX_LOCAL_DEVICE_IDS). --dry_run prints the batch script instead of submitting it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from typing import Optional, Sequence

from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("per_gpu", "per_node")

_NODES = flags.DEFINE_integer("nodes", 4, "Nodes to allocate.")
_GPUS = flags.DEFINE_integer("gpus_per_node", 8, "GPUs per node.")
_MODE = flags.DEFINE_enum("mode", "per_gpu", MODES, "One process per GPU or one per node "
                          "(seeing all of its GPUs).")
_PORT = flags.DEFINE_integer("port", None, "Coordinator port on the first node (default: "
                             "JAX's choice from the job id).")
_PARTITION = flags.DEFINE_string("partition", None, "SLURM partition.")
_ACCOUNT = flags.DEFINE_string("account", None, "SLURM account.")
_TIME = flags.DEFINE_string("time", "72:00:00", "Wall-clock limit of the job.")
_CPUS = flags.DEFINE_integer("cpus_per_task", None, "CPUs per task (default: 12 per GPU).")
_JOB_NAME = flags.DEFINE_string("job_name", "glm_jax", "SLURM job name.")
_PYTHON = flags.DEFINE_string("python", "python", "Python interpreter on the nodes.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the batch script; submit nothing.")


def train_command(train_args: Sequence[str], python: str = "python") -> list:
  """What every task runs: glm_jax.train with JAX's cluster detection."""
  return [python, "-m", "glm_jax.train", "--multihost_auto", *train_args]


def batch_script(train_args: Sequence[str], *, nodes: int, gpus_per_node: int, mode: str,
                 port: Optional[int], time_limit: str, job_name: str = "glm_jax",
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
  lines += ["set -euo pipefail", f"cd {shlex.quote(repo)}"]
  if port is not None:
    lines.append(f"export JAX_COORDINATOR_PORT={int(port)}")
  if mode == "per_node":  # one task drives every GPU of its node
    lines.append(f"export JAX_LOCAL_DEVICE_IDS={','.join(map(str, range(gpus_per_node)))}")
  lines += [f"srun --kill-on-bad-exit=1 {shlex.join(train_command(train_args, python))}", ""]
  return "\n".join(lines)


def main(argv):
  train_args = argv[1:]
  try:
    script = batch_script(train_args, nodes=_NODES.value, gpus_per_node=_GPUS.value,
                          mode=_MODE.value, port=_PORT.value, time_limit=_TIME.value,
                          job_name=_JOB_NAME.value, partition=_PARTITION.value,
                          account=_ACCOUNT.value, cpus_per_task=_CPUS.value,
                          python=_PYTHON.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
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
    print(f"error: sbatch failed ({e}); the script is {f.name}.", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
