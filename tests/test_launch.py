"""Launchers: the dry runs print the expected commands; the local launcher propagates exits."""

import json
import os
import random
import shlex
import socket
import subprocess
import sys

import pytest

from conftest import multi_device_env, write_tiny_gin

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
  assert bad.returncode == 2 and bad.stderr.strip().startswith("error:")
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
  lines = result.stdout.splitlines()
  for line in ("#SBATCH --nodes=4", f"#SBATCH --ntasks-per-node={tasks}",
               "#SBATCH --gpus-per-node=8", "#SBATCH --partition=h100",
               "export JAX_COORDINATOR_PORT=23456"):
    assert line in lines
  # per_gpu: JAX pins each task to GPU SLURM_LOCALID; per_node: one task sees all 8.
  assert ("export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in lines) == (mode == "per_node")
  srun = shlex.split(next(l for l in lines if l.startswith("srun ")))
  assert srun == ["srun", "--kill-on-bad-exit=1", "python", "-m", "glm_jax.train",
                  "--multihost_auto", *TRAIN_ARGS]
  default_port = _launch("slurm_gpu.py", "--dry_run", "--", *TRAIN_ARGS)
  assert "JAX_COORDINATOR_PORT" not in default_port.stdout  # JAX derives it from the job id
  missing = _launch("slurm_gpu.py", "--dry_run", "--nodes=0", "--", *TRAIN_ARGS)
  assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


def _slurm_port() -> int:
  """A free port JAX's SLURM detection picks: job id % 4096 + 61440."""
  for port in random.Random(os.getpid()).sample(range(61440, 65536), 200):
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", port))
      except OSError:
        continue
      return port
  raise RuntimeError("no free port in 61440-65535")


@pytest.mark.slow
def test_slurm_tasks_join_through_jax_cluster_detection(tmp_path):
  """The batch script's srun command, in two tasks of a (simulated) one-node SLURM job."""
  gin_file = write_tiny_gin(tmp_path, "TRAIN_STEPS = 3\nCHECKPOINT_PERIOD = 3\n")
  model_dir = tmp_path / "run"
  script = _launch("slurm_gpu.py", "--dry_run", "--nodes=1", "--gpus_per_node=2",
                   f"--python={sys.executable}", "--", f"--gin_file={gin_file}",
                   f"--gin.MODEL_DIR={model_dir}", "--gin.MESH_DATA=2").stdout
  command = shlex.split(next(l for l in script.splitlines() if l.startswith("srun ")))[2:]
  job_id = _slurm_port() - 61440
  procs = []
  for task in range(2):
    env = multi_device_env(1)
    env.update(SLURM_JOB_ID=str(job_id), SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2",
               SLURM_PROCID=str(task), SLURM_LOCALID=str(task), SLURM_STEP_NUM_NODES="1",
               JAX_PLATFORMS="cpu")
    procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  records = [json.loads(l) for l in (model_dir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
  # Both tasks joined one job: the global batch of 8 rows is split over 2 processes.
  assert sorted(os.listdir(model_dir / "3" / "state")).count("ocdbt.process_1") == 1


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
