r"""Cloud TPU pod launch: create the slice, install glm_jax on every worker, train on all of them.

  python launch/tpu_pod.py --tpu=glm-large --zone=us-west4-a --accelerator_type=v5litepod-64 \
      --steps=create,install,train -- --gin_file=configs/experiments/glm_large.gin \
      --gin.MODEL_DIR=gs://BUCKET/glm_large

Steps (any subset, in this order): create (a TPU VM, or a queued resource with --queued),
install (copy this checkout to every worker and pip-install it), train (the same
`python3 -m glm_jax.train ARGS` on all workers, --worker=all; jax.distributed initialises itself
on a pod), delete. Everything after `--` is passed to glm_jax.train. --dry_run prints the
gcloud commands instead of running them.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from typing import List, Sequence

from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("create", "install", "train", "delete")
ARCHIVE = "glm_jax_src.tar.gz"

_TPU = flags.DEFINE_string("tpu", None, "TPU VM (node) name.")
_ZONE = flags.DEFINE_string("zone", None, "Zone, e.g. us-west4-a.")
_PROJECT = flags.DEFINE_string("project", None, "GCP project (default: gcloud's).")
_ACCELERATOR = flags.DEFINE_string("accelerator_type", "v5litepod-64",
                                   "Slice type: v5litepod-64, v4-128, v5p-128, ...")
_RUNTIME = flags.DEFINE_string("runtime_version", "v2-alpha-tpuv5-lite",
                               "TPU VM image (v2-alpha-tpuv5-lite for v5e, tpu-ubuntu2204-base "
                               "for v4/v5p).")
_QUEUED = flags.DEFINE_bool("queued", False, "Create through a queued resource (waits for "
                            "capacity) instead of a direct TPU VM create.")
_SPOT = flags.DEFINE_bool("spot", False, "Spot (preemptible) capacity; resume is automatic.")
_STEPS = flags.DEFINE_list("steps", ["create", "install", "train"], f"Subset of {STEPS}.")
_JAX_SPEC = flags.DEFINE_string("jax_spec", "jax[tpu]", "pip requirement for JAX on the workers.")
_ENV = flags.DEFINE_multi_string("env", [], "KEY=VALUE exported on every worker before training, "
                                  "e.g. TFDS_DATA_DIR=gs://BUCKET/tensorflow_datasets.")
_BACKGROUND = flags.DEFINE_bool("background", False, "Start training under nohup (log in "
                                "~/glm_jax_train.log on each worker) and return.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands; run nothing.")


def _scope(zone: str, project: str = None) -> List[str]:
  return [f"--zone={zone}"] + ([f"--project={project}"] if project else [])


def create_commands(tpu: str, zone: str, accelerator_type: str, runtime_version: str,
                    project: str = None, queued: bool = False, spot: bool = False
                    ) -> List[List[str]]:
  """gcloud commands that bring up the slice (and, for a queued resource, wait for it)."""
  extra = ["--spot"] if spot else []
  if queued:
    return [["gcloud", "compute", "tpus", "queued-resources", "create", f"{tpu}-qr",
             f"--node-id={tpu}", f"--accelerator-type={accelerator_type}",
             f"--runtime-version={runtime_version}", *_scope(zone, project), *extra],
            ["gcloud", "compute", "tpus", "queued-resources", "describe", f"{tpu}-qr",
             *_scope(zone, project), "--format=value(state.state)"]]
  return [["gcloud", "compute", "tpus", "tpu-vm", "create", tpu,
           f"--accelerator-type={accelerator_type}", f"--version={runtime_version}",
           *_scope(zone, project), *extra]]


def ssh_all(tpu: str, zone: str, command: str, project: str = None) -> List[str]:
  """Runs one shell command on every worker of the slice."""
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, *_scope(zone, project),
          "--worker=all", f"--command={command}"]


def install_commands(tpu: str, zone: str, project: str = None, repo: str = REPO_ROOT,
                     jax_spec: str = "jax[tpu]") -> List[List[str]]:
  """Packs this checkout, copies it to every worker and pip-installs it there."""
  archive = os.path.join("/tmp", ARCHIVE)
  remote = (f"mkdir -p ~/glm_jax && tar xzf ~/{ARCHIVE} -C ~/glm_jax && "
            f"pip install -q -U {shlex.quote(jax_spec)} && pip install -q -e ~/glm_jax")
  return [
      ["tar", "czf", archive, "--exclude=.git", "--exclude=__pycache__", "-C", repo, "."],
      ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, f"{tpu}:~/{ARCHIVE}",
       *_scope(zone, project), "--worker=all"],
      ssh_all(tpu, zone, remote, project),
  ]


def train_command(tpu: str, zone: str, train_args: Sequence[str], project: str = None,
                  background: bool = False, env: Sequence[str] = ()) -> List[str]:
  """The same glm_jax.train command on all workers (one process per host, all its chips)."""
  for item in env:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", item):
      raise ValueError(f"--env {item!r} is not KEY=VALUE.")
  exports = "".join(f"export {k}={shlex.quote(v)} && "
                    for k, v in (item.split("=", 1) for item in env))
  train = f"python3 -m glm_jax.train --multihost_auto {shlex.join(train_args)}"
  if background:
    train = f"nohup {train} > ~/glm_jax_train.log 2>&1 &"
  return ssh_all(tpu, zone, f"cd ~/glm_jax && {exports}{train}", project)


def delete_commands(tpu: str, zone: str, project: str = None, queued: bool = False
                    ) -> List[List[str]]:
  if queued:
    return [["gcloud", "compute", "tpus", "queued-resources", "delete", f"{tpu}-qr",
             *_scope(zone, project), "--force", "--quiet"]]
  return [["gcloud", "compute", "tpus", "tpu-vm", "delete", tpu, *_scope(zone, project),
           "--quiet"]]


def plan_commands(steps: Sequence[str], tpu: str, zone: str, train_args: Sequence[str], *,
                  project: str = None, accelerator_type: str = "v5litepod-64",
                  runtime_version: str = "v2-alpha-tpuv5-lite", queued: bool = False,
                  spot: bool = False, jax_spec: str = "jax[tpu]", background: bool = False,
                  env: Sequence[str] = ()) -> List[List[str]]:
  """Every command of the chosen steps, in order."""
  unknown = [s for s in steps if s not in STEPS]
  if unknown:
    raise ValueError(f"Unknown step(s) {unknown}; choose from {', '.join(STEPS)}.")
  if not tpu or not zone:
    raise ValueError("Pass --tpu=NAME and --zone=ZONE.")
  if "train" in steps and not any(a.startswith("--gin_file") for a in train_args):
    raise ValueError("The train step needs glm_jax.train flags after `--`, at least "
                     "--gin_file=... and --gin.MODEL_DIR=gs://...")
  commands = []
  for step in STEPS:
    if step not in steps:
      continue
    if step == "create":
      commands += create_commands(tpu, zone, accelerator_type, runtime_version, project,
                                  queued, spot)
    elif step == "install":
      commands += install_commands(tpu, zone, project, jax_spec=jax_spec)
    elif step == "train":
      commands.append(train_command(tpu, zone, train_args, project, background, env))
    else:
      commands += delete_commands(tpu, zone, project, queued)
  return commands


def _wait_for_queued(describe: List[str], poll_s: float = 30.0) -> None:
  """Polls a queued resource until it is ACTIVE; raises if it fails."""
  while True:
    state = subprocess.run(describe, check=True, capture_output=True, text=True).stdout.strip()
    print(f"queued resource: {state}", flush=True)
    if state == "ACTIVE":
      return
    if state in ("FAILED", "SUSPENDED"):
      raise RuntimeError(f"The queued resource ended in state {state}; see `gcloud compute "
                         "tpus queued-resources describe`.")
    time.sleep(poll_s)


def main(argv):
  try:
    commands = plan_commands(
        _STEPS.value, _TPU.value, _ZONE.value, argv[1:], project=_PROJECT.value,
        accelerator_type=_ACCELERATOR.value, runtime_version=_RUNTIME.value,
        queued=_QUEUED.value, spot=_SPOT.value, jax_spec=_JAX_SPEC.value,
        background=_BACKGROUND.value, env=_ENV.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for command in commands:
    print(shlex.join(command), flush=True)
    if _DRY_RUN.value:
      continue
    try:
      if "describe" in command:
        _wait_for_queued(command)
      else:
        subprocess.run(command, check=True)
    except (subprocess.CalledProcessError, RuntimeError, FileNotFoundError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)


if __name__ == "__main__":
  app.run(main)
