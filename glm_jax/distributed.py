"""Multi-process start-up shared by the CLIs: explicit jax.distributed flags or JAX's detection.

  --coordinator_address=HOST:PORT --num_processes=N --process_id=I   (explicit)
  --multihost_auto   jax.distributed.initialize() finds the cluster itself (Cloud TPU pods,
                     SLURM, Open MPI, Kubernetes); JAX_COORDINATOR_PORT and
                     JAX_LOCAL_DEVICE_IDS adjust what it detects.
"""

from __future__ import annotations

from absl import flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the multi-process flags (once per process)."""
  if "coordinator_address" in FLAGS:
    return
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
  flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
  flags.DEFINE_integer("process_id", None, "Index of this process (multi-host).")
  flags.DEFINE_bool("multihost_auto", False,
                    "Call jax.distributed.initialize() with JAX's cluster auto-detection "
                    "(Cloud TPU pods, SLURM, Open MPI, Kubernetes).")


def initialize() -> None:
  """jax.distributed from the flags; nothing for a single process."""
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.coordinator_address:
    if FLAGS.num_processes is None or FLAGS.process_id is None:
      raise ValueError("--coordinator_address needs --num_processes and --process_id too.")
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  elif FLAGS.multihost_auto:
    try:
      jax.distributed.initialize()
    except ValueError as e:
      raise ValueError(f"--multihost_auto found no cluster to join ({e}); run under a TPU "
                       "pod, SLURM or MPI, or pass --coordinator_address, --num_processes "
                       "and --process_id.") from None
