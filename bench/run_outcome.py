"""What a finished training run decided and ended with, read from its run directory, so that
two runs (one killed and resumed, one not) can be compared bit for bit: the oracle of
bench/chaos.py and of the kill, fault and full-disk tests (which import it as bench.run_outcome)."""

import hashlib

import jax
import numpy as np

from linearsr_jax.run import run_dir
# Every leaf of a saved state as host arrays, on this process's first device.
from linearsr_jax.run.checkpoint_read import restore_state_on_one_device as saved_state


def outcome(workdir) -> dict:
  """run.json; per stage, result.json, its last evaluation, the steps of its knee snapshots
  and the SHA-256 of its last checkpoint's state, leaf by leaf."""
  run = run_dir.RunDir(workdir)
  stages = {}
  for stage in run.stages():
    evaluations = [
        r for r in run_dir.read_jsonl(stage.metrics_jsonl)[0] if any(
            k.startswith("val/") for k in r)
    ]
    last = stage.checkpoint_steps()[-1]
    state = saved_state(stage.checkpoint(last) / "state")
    stages[stage.name] = {
        "result": stage.result(), "last_evaluation": evaluations[-1] if evaluations else None,
        "last_checkpoint": last, "knee_snapshots": stage.snapshot_steps(), "state_sha256": {
            jax.tree_util.keystr(p): _sha256(x)
            for p, x in jax.tree_util.tree_leaves_with_path(state)
        }
    }
  return {"run": run_dir.read_json(run.run_json), "stages": stages}


def differences(a: dict, b: dict, prefix="") -> list:
  """The paths at which two outcomes differ ([] when they are equal)."""
  if isinstance(a, dict) and isinstance(b, dict):
    return [
        d for k in sorted(a.keys() | b.keys(), key=str)
        for d in differences(a.get(k), b.get(k), f"{prefix}/{k}")
    ]
  return [] if a == b else [prefix or "/"]


def _sha256(array) -> str:
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
