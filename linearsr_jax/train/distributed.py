"""Multi-process start-up: one JAX process per host (TPU pod, GPU node) or per local CPU process.

The launchers in launch/ set the environment; a plain single-process run sets nothing and
this is a no-op.
"""

import logging
import os

import jax

log = logging.getLogger(__name__)


def maybe_initialize() -> None:
  """Calls jax.distributed.initialize when the environment asks for several processes.

  LINEARSR_COORDINATOR=host:port, LINEARSR_NUM_PROCESSES, LINEARSR_PROCESS_ID: explicit
  (local multi-process CPU runs, GPU nodes). LINEARSR_DISTRIBUTED=auto: let JAX discover the
  cluster (Cloud TPU pods, SLURM).
  """
  coordinator = os.environ.get("LINEARSR_COORDINATOR")
  if coordinator:
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
      # CPU processes exchange data through gloo; the default has no cross-process collectives.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=int(os.environ["LINEARSR_NUM_PROCESSES"]),
                               process_id=int(os.environ["LINEARSR_PROCESS_ID"]))
  elif os.environ.get("LINEARSR_DISTRIBUTED") == "auto":
    jax.distributed.initialize()
  else:
    return
  log.info("process %d of %d processes, %d local of %d global devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
