"""Orbax checkpoints of one training stage: state, the grain iterator, and eval metrics.

Saves are atomic (Orbax writes to a temporary directory and renames) and asynchronous for the
arrays. Retention keeps the union of: the latest N, the best by a chosen metric, and every
step that ESGF may still need (the candidates around the current knee estimate), a set the
caller passes with each save so it can move as the curve grows.
"""

import dataclasses
from typing import AbstractSet

import grain
import jax
from etils import epath
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from linearsr_jax.errors import UserError
from linearsr_jax.train import kill_points

ITEMS = ("state", "data_iter", "metrics")


@dataclasses.dataclass
class KeepSteps(policies.PreservationPolicy):
  """Preserves the steps named by the latest save (ESGF's candidates then).

  CheckpointManager.save asks the policy which checkpoints to delete synchronously, in the
  caller's thread, right after it adds the new one; so setting `steps` just before the save
  is what that save's pruning sees.
  """
  steps: AbstractSet[int] = frozenset()

  def should_preserve(self, checkpoints, *, context):
    return [ckpt.step in self.steps for ckpt in checkpoints]


class StageCheckpoints:
  """The checkpoints of one stage, in `directory`."""

  def __init__(self, directory, *, keep_latest: int, best_metric: str, best_mode: str,
               async_save: bool = True):
    """`best_mode`: 'max' or 'min' (config_check validates train.best_mode)."""
    self._keep = KeepSteps()
    policy = policies.AnyPreservationPolicy([
        policies.LatestN(n=keep_latest),
        # BestN keeps the tail of an ascending sort; reverse for lower-is-better metrics.
        policies.BestN(get_metric_fn=lambda m: m[best_metric], n=1, reverse=best_mode == "min",
                       keep_checkpoints_without_metrics=False),
        self._keep,
    ])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(directory, item_names=ITEMS, options=options)

  def save(self, step: int, state, data_iter, metrics: dict,
           keep: AbstractSet[int] = frozenset()):
    """Saves `step`, then prunes: kept are the latest N, the best, and the steps in `keep`."""
    metrics = {k: float(v) for k, v in metrics.items()}
    self._keep.steps = frozenset(keep)
    self.manager.save(step, force=True, metrics=metrics or None, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_iter=grain.checkpoint.CheckpointSave(data_iter),
        metrics=ocp.args.JsonSave(metrics)))
    kill_points.reached("checkpoint_write")

  def latest_step(self):
    return self.manager.latest_step()

  def restore(self, step: int, abstract_state, data_iter=None):
    """(state, metrics) at `step`, the state placed as `abstract_state`'s shardings say; the
    data iterator (when given) is restored in place."""
    args = {"state": ocp.args.StandardRestore(abstract_state), "metrics": ocp.args.JsonRestore()}
    if data_iter is not None:
      args["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    # latest_step() already names a checkpoint whose asynchronous save may still be running.
    self.wait()
    self._check_params(step, abstract_state.params)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    except ValueError as e:  # Orbax: the saved tree has another structure (another optimizer...)
      raise self._mismatch(step, str(e).splitlines()[0][:300]) from e
    return restored["state"], dict(restored["metrics"] or {})

  def _mismatch(self, step: int, detail: str) -> UserError:
    """The error of a checkpoint of another model or config. The run stops there: close first,
    or Orbax's background threads print tracebacks at exit."""
    self.close()
    return UserError(f"checkpoint {self.manager.directory}/{step} does not match this model and "
                     f"config: {detail}")

  def _check_params(self, step: int, abstract_params):
    """Names the first param whose saved shape differs from this model's (Orbax's own error
    gives the shapes but not the param)."""
    saved = ocp.StandardCheckpointHandler().metadata(
        epath.Path(self.manager.directory) / str(step) / "state")["params"]
    saved = {jax.tree_util.keystr(p): tuple(m.shape)
             for p, m in jax.tree_util.tree_leaves_with_path(saved)}
    wanted = {jax.tree_util.keystr(p): tuple(a.shape)
              for p, a in jax.tree_util.tree_leaves_with_path(abstract_params)}
    for path in sorted(saved.keys() | wanted.keys()):
      if saved.get(path) != wanted.get(path):
        raise self._mismatch(step, f"params{path} has shape {saved.get(path, 'absent')} in the "
                             f"checkpoint but {wanted.get(path, 'absent')} in this model (another "
                             "model, or another number of experts?)")

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()

