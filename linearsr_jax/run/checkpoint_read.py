"""Reading a saved checkpoint step back: the one module that restores a step's state from Orbax
and checks it against the checksums saved beside it (state_checksum.py).

- `has_checksums` / `damaged_arrays`: whether a step was saved with checksums (one written
  before checkpoints had them has none) and which arrays read back different. Training
  (train/checkpoint.py) restores a step onto its mesh, with its data iterator, through its
  Orbax manager, and checks it with these two.
- `restore_subtree`: the `ema_params` or `params` alone (Orbax's partial restore), for the
  tools, on one device or sharded; `read_params` adds the checksum check and one-line errors.
- `restore_state_on_one_device`: every leaf of the state as host arrays, for the test and bench
  oracle that compares two runs (bench/run_outcome.py).
"""

import logging

import jax
import orbax.checkpoint as ocp
from etils import epath

from linearsr_jax.errors import UserError
from linearsr_jax.run import abandoned_reads, state_checksum

log = logging.getLogger(__name__)

CHECKSUMS = "checksums"  # the item beside "state" in a step directory


def has_checksums(step_dir) -> bool:
  return (epath.Path(step_dir) / CHECKSUMS).exists()


def damaged_arrays(tree, saved: dict, prefix: str = "") -> list:
  """The paths of `tree`'s arrays whose checksum differs from `saved`'s (those `saved` has)."""
  return state_checksum.mismatches(tree, saved, prefix)


def restore_subtree(state_dir, name: str, shardings_of=None):
  """The saved state's `name` subtree alone (`ema_params` or `params`), every array on the first
  local device, or where `shardings_of(shapes)` (the subtree's ShapeDtypeStructs -> their
  shardings) puts it, for a model that does not fit one device: the tools run on whatever
  machine they are given, not on the training mesh the checkpoint was written from. Orbax's
  partial restore reads only that subtree's arrays from disk, not the other params copy, the
  optimizer moments or the counters (several times the params' size for a big model with
  Adam)."""
  handler = ocp.PyTreeCheckpointHandler()
  # The manager writes _CHECKPOINT_METADATA beside the items, not in them; reading one item
  # directly makes Orbax warn that it is missing, on every tool run. The handler's metadata()
  # reads the item's own files only (the Checkpointer's would also look for that file, and
  # swallow a corrupt item's error); absl is kept quiet here all the same.
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    metadata = handler.metadata(state_dir)
  finally:
    absl_logger.setLevel(level)
  tree = getattr(metadata, "tree", metadata)
  if not isinstance(tree, dict) or not isinstance(tree.get(name), dict):
    raise KeyError(f"no {name} in the saved state")
  shapes = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree[name])
  if shardings_of is None:
    shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.local_devices()[0]),
                             shapes)
  else:
    shardings = shardings_of(shapes)
  target = {
      name: jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s), shapes,
                         shardings)
  }
  restored = ocp.Checkpointer(handler).restore(
      state_dir,
      args=ocp.args.PyTreeRestore(item=target,
                                  restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=True))
  return restored[name]


def read_params(step_dir, name: str, shardings_of=None):
  """A step's `ema_params` or `params` on one device (or placed by `shardings_of`, see
  `restore_subtree`), checked against its checksums; a step written before checkpoints had
  checksums is read with a warning. Damage is one UserError line naming the step directory."""
  abandoned_reads.silence()
  verified = has_checksums(step_dir)
  try:
    params = restore_subtree(step_dir / "state", name, shardings_of)
    saved = ocp.JsonCheckpointHandler().restore(step_dir / CHECKSUMS) if verified else None
  except (ValueError, FileNotFoundError, KeyError) as e:
    raise UserError(f"{step_dir}: unreadable checkpoint ({str(e).splitlines()[0]})") from None
  if saved is None:
    log.warning(
        "%s has no checksums (written by a version before they existed): its params "
        "are used unverified", step_dir)
  elif bad := damaged_arrays(params, saved, prefix=f"{name}/"):
    raise UserError(f"{step_dir}: damaged checkpoint: {bad[0]} reads back different from what "
                    f"was saved (checksum; {len(bad)} arrays differ)")
  return params


def restore_state_on_one_device(state_dir):
  """Every leaf of a saved TrainState as host arrays, restored by Orbax's StandardCheckpointer
  onto this process's first device from the checkpoint's own metadata (so also a checkpoint
  written by several processes, or by another mesh)."""
  path = epath.Path(state_dir)
  meta = ocp.StandardCheckpointHandler().metadata(path)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        meta.tree)
  with ocp.StandardCheckpointer() as checkpointer:
    return jax.device_get(checkpointer.restore(path, target))
