"""One of two processes (jax.distributed over gloo, one CPU device each) of
test_multihost_decisions.py: each makes the decisions a multi-host run makes, process 1 seeing
other storage than process 0, and prints what it decided as one JSON line.

  python multihost_decisions.py PROCESS_ID PORT CHECKPOINTS METRICS_0 METRICS_1
"""

import json
import os
import sys

os.environ.update(JAX_PLATFORMS="cpu", LINEARSR_COORDINATOR=f"localhost:{sys.argv[2]}",
                  LINEARSR_NUM_PROCESSES="2", LINEARSR_PROCESS_ID=sys.argv[1])

from linearsr_jax.train import distributed  # noqa: E402

distributed.maybe_initialize()

import jax  # noqa: E402

from linearsr_jax import disk_space  # noqa: E402
from linearsr_jax.errors import UserError  # noqa: E402
from linearsr_jax.run import run_dir  # noqa: E402
from linearsr_jax.train import checkpoint  # noqa: E402
from test_damaged_checkpoints import _state  # noqa: E402

me = jax.process_index()
decided = {}
local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=local), _state(0))

# The disk of process 1 alone is full: both stop, at the same check. Process 0 has 3 GiB free,
# more than an int32 holds.
disk_space.free_bytes = lambda directory: 0 if me == 1 else 3 * 2**30
try:
  disk_space.ensure_room_on_every_host(sys.argv[3], 1000, "checkpoint 2")
  decided["disk"] = "room"
except disk_space.DiskFull as e:
  decided["disk"] = str(e)

# Each process reads its own copy of the metrics log: process 0's rows are the ones judged.
decided["rows"] = run_dir.metrics_log(sys.argv[4 + me], resume_step=10, write=False).rows

# Process 1 alone reads checkpoint 2 as damaged (a read error on its host).
ckpts = checkpoint.StageCheckpoints(sys.argv[3], keep_latest=3, best_metric="val/psnr_y",
                                    best_mode="max", async_save=False)
if me == 1:
  real = ckpts._restore_verified

  def damaged(step, abstract_state):
    real(step, abstract_state)  # every process takes part in Orbax's reads
    raise checkpoint.DamagedCheckpoint(step, "a read error on process 1")

  ckpts._restore_verified = damaged
try:
  step, _, _ = ckpts.restore_intact(ckpts.all_steps()[::-1], abstract)
  decided["restored"] = step
except UserError as e:
  decided["restored"] = str(e)
print(json.dumps(decided), flush=True)
