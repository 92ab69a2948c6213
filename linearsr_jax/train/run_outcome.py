"""What a finished training run decided and ended with, read from its run directory, so that
two runs (one killed and resumed, one not) can be compared bit for bit."""

import hashlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from linearsr_jax.train import run_dir


def saved_state(state_dir):
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


def outcome(workdir) -> dict:
  """run.json; per stage, result.json, its last evaluation, the steps of its knee snapshots
  and the SHA-256 of its last checkpoint's state, leaf by leaf."""
  run = run_dir.RunDir(workdir)
  stages = {}
  for stage in run.stages():
    evaluations = [r for r in run_dir.read_jsonl(stage.metrics_jsonl)[0]
                   if any(k.startswith("val/") for k in r)]
    last = stage.checkpoint_steps()[-1]
    state = saved_state(stage.checkpoint(last) / "state")
    stages[stage.name] = {
        "result": stage.result(), "last_evaluation": evaluations[-1] if evaluations else None,
        "last_checkpoint": last, "knee_snapshots": stage.snapshot_steps(),
        "state_sha256": {jax.tree_util.keystr(p): _sha256(x)
                         for p, x in jax.tree_util.tree_leaves_with_path(state)}}
  return {"run": run_dir.read_json(run.run_json), "stages": stages}


def differences(a: dict, b: dict, prefix="") -> list:
  """The paths at which two outcomes differ ([] when they are equal)."""
  if isinstance(a, dict) and isinstance(b, dict):
    return [d for k in sorted(a.keys() | b.keys(), key=str)
            for d in differences(a.get(k), b.get(k), f"{prefix}/{k}")]
  return [] if a == b else [prefix or "/"]


def _sha256(array) -> str:
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
