"""Launchers: the dry runs print the expected commands; the local launcher propagates exits."""

import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_ARGS = ["--gin_file=configs/runs/pretrain.gin", "--gin.MODEL_DIR=gs://bucket/glm large"]


def _launch(script, *args, env=None):
  full_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  full_env.update(env or {})
  return subprocess.run([sys.executable, os.path.join(REPO, "launch", script), *args],
                        cwd=REPO, env=full_env, capture_output=True, text=True, timeout=60)


def _lines(result):
  assert result.returncode == 0, result.stderr[-2000:]
  return [shlex.split(l) for l in result.stdout.splitlines() if l.strip()]


def test_local_dry_run_starts_one_train_process_per_index():
  result = _launch("local_multiprocess.py", "--dry_run", "--num_processes=3",
                   "--devices_per_process=2", "--port=5555", "--", *TRAIN_ARGS)
  commands = _lines(result)
  assert len(commands) == 3
  for index, argv in enumerate(commands):
    assert argv[:2] == ["JAX_PLATFORMS=cpu",
                        "XLA_FLAGS=--xla_force_host_platform_device_count=2"]
    assert argv[3:5] == ["-m", "glm_jax.train"]
    assert argv[5:8] == ["--coordinator_address=127.0.0.1:5555", "--num_processes=3",
                         f"--process_id={index}"]
    assert argv[8:] == TRAIN_ARGS


def test_local_launcher_waits_for_all_and_reports_failure():
  ok = _launch("local_multiprocess.py", "--num_processes=2", "--python=true", "--",
               *TRAIN_ARGS)
  assert ok.returncode == 0, ok.stderr
  failed = _launch("local_multiprocess.py", "--num_processes=2", "--python=false", "--",
                   *TRAIN_ARGS)
  assert failed.returncode == 1
  bad = _launch("local_multiprocess.py", "--dry_run", "--num_processes=0")
  assert bad.returncode == 2 and bad.stderr.strip().startswith("Error:")
  assert len(bad.stderr.strip().splitlines()) == 1


def test_tpu_pod_dry_run_creates_installs_and_trains_on_all_workers():
  commands = _lines(_launch("tpu_pod.py", "--dry_run", "--tpu=glm-large", "--zone=us-west4-a",
                            "--project=proj", "--", *TRAIN_ARGS))
  create, tar, scp, install, train = commands
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "glm-large"]
  for flag in ("--accelerator-type=v5litepod-64", "--version=v2-alpha-tpuv5-lite",
               "--zone=us-west4-a", "--project=proj"):
    assert flag in create
  assert tar[0] == "tar" and "--exclude=.git" in tar and tar[-2:] == [REPO, "."]
  assert scp[4] == "scp" and "--worker=all" in scp
  assert scp[5:7] == ["/tmp/glm_jax_src.tar.gz", "glm-large:~/glm_jax_src.tar.gz"]
  for ssh in (install, train):
    assert ssh[4:6] == ["ssh", "glm-large"] and "--worker=all" in ssh
  assert "pip install -q -e ~/glm_jax" in install[-1]
  remote = train[-1]
  assert remote.startswith("--command=cd ~/glm_jax && python3 -m glm_jax.train --multihost_auto ")
  assert shlex.split(remote.split("--multihost_auto ", 1)[1]) == TRAIN_ARGS


def test_tpu_pod_dry_run_queued_resource_and_delete():
  commands = _lines(_launch("tpu_pod.py", "--dry_run", "--tpu=n", "--zone=z", "--queued",
                            "--spot", "--accelerator_type=v4-128",
                            "--runtime_version=tpu-ubuntu2204-base", "--steps=create,delete"))
  create, describe, delete = commands
  assert create[3:6] == ["queued-resources", "create", "n-qr"]
  for flag in ("--node-id=n", "--accelerator-type=v4-128", "--runtime-version=tpu-ubuntu2204-base",
               "--spot"):
    assert flag in create
  assert describe[3:5] == ["queued-resources", "describe"]
  assert delete[3:6] == ["queued-resources", "delete", "n-qr"]
  missing = _launch("tpu_pod.py", "--dry_run", "--tpu=n", "--zone=z", "--steps=train")
  assert missing.returncode == 2 and "--gin_file" in missing.stderr


@pytest.mark.parametrize("mode,tasks", [("per_gpu", 8), ("per_node", 1)])
def test_slurm_dry_run_prints_the_batch_script(mode, tasks):
  result = _launch("slurm_gpu.py", "--dry_run", "--nodes=4", "--gpus_per_node=8",
                   f"--mode={mode}", "--partition=h100", "--port=23456", "--", *TRAIN_ARGS)
  assert result.returncode == 0, result.stderr
  script = result.stdout
  for line in ("#SBATCH --nodes=4", f"#SBATCH --ntasks-per-node={tasks}",
               "#SBATCH --gpus-per-node=8", "#SBATCH --partition=h100"):
    assert line in script.splitlines()
  srun = shlex.split(next(l for l in script.splitlines() if l.startswith("srun ")))
  assert srun[:3] == ["srun", "--kill-on-bad-exit=1", "python"]
  assert srun[3] == os.path.join(REPO, "launch", "slurm_gpu.py")
  assert srun[4:] == ["--worker", f"--mode={mode}", "--port=23456", "--python=python", "--",
                      *TRAIN_ARGS]


@pytest.mark.parametrize("visible,local,expected", [
    ("0,1,2,3,4,5,6,7", "5", "5"), ("3", "3", "3"), (None, "2", "2")])
def test_slurm_worker_takes_the_coordinator_from_the_environment(visible, local, expected):
  env = {"SLURM_JOB_NODELIST": "h100-[007-010],login1", "SLURM_NTASKS": "32",
         "SLURM_PROCID": "13", "SLURM_LOCALID": local}
  if visible is not None:
    env["CUDA_VISIBLE_DEVICES"] = visible
  argv = _lines(_launch("slurm_gpu.py", "--worker", "--dry_run", "--port=9999", "--",
                        *TRAIN_ARGS, env=env))[0]
  assert argv[0] == f"CUDA_VISIBLE_DEVICES={expected}"
  assert argv[1:4] == ["python", "-m", "glm_jax.train"]
  assert argv[4:7] == ["--coordinator_address=h100-007:9999", "--num_processes=32",
                       "--process_id=13"]
  assert argv[7:] == TRAIN_ARGS


def test_slurm_worker_per_node_and_missing_environment():
  env = {"SLURM_JOB_NODELIST": "gpu12", "SLURM_NTASKS": "4", "SLURM_PROCID": "0"}
  argv = _lines(_launch("slurm_gpu.py", "--worker", "--dry_run", "--mode=per_node", "--",
                        *TRAIN_ARGS, env=env))[0]
  assert argv[:4] == ["python", "-m", "glm_jax.train", "--coordinator_address=gpu12:12345"]
  missing = _launch("slurm_gpu.py", "--worker", "--dry_run", "--", *TRAIN_ARGS)
  assert missing.returncode == 2 and "SLURM_JOB_NODELIST" in missing.stderr
  assert len(missing.stderr.strip().splitlines()) == 1


def test_tpu_pod_exports_environment_and_backgrounds_training():
  commands = _lines(_launch("tpu_pod.py", "--dry_run", "--tpu=n", "--zone=z", "--steps=train",
                            "--env=TFDS_DATA_DIR=gs://bucket/tensorflow_datasets", "--background",
                            "--", *TRAIN_ARGS))
  remote = commands[0][-1]
  assert remote.startswith("--command=cd ~/glm_jax && export "
                           "TFDS_DATA_DIR=gs://bucket/tensorflow_datasets && nohup python3 -m "
                           "glm_jax.train --multihost_auto ")
  assert remote.endswith("> ~/glm_jax_train.log 2>&1 &")
  bad = _launch("tpu_pod.py", "--dry_run", "--tpu=n", "--zone=z", "--steps=train", "--env=1X",
                "--", *TRAIN_ARGS)
  assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
