"""Reading a saved TrainState back whole, independently of the code under test."""

import jax
import orbax.checkpoint as ocp
from etils import epath


def full_state(state_dir):
  """Every leaf of a saved TrainState as host arrays, restored by Orbax's StandardCheckpointer
  onto this process's first device from the checkpoint's own metadata (so also a checkpoint
  written by several processes)."""
  path = epath.Path(state_dir)
  meta = ocp.StandardCheckpointHandler().metadata(path)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        meta.tree)
  with ocp.StandardCheckpointer() as checkpointer:
    return jax.device_get(checkpointer.restore(path, target))
