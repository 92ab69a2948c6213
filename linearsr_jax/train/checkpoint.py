"""Orbax checkpoints of one training stage: state, the grain iterator, and eval metrics.

Saves are atomic (Orbax writes to a temporary directory and renames) and asynchronous for the
arrays. Retention keeps the union of: the latest N, the best by a chosen metric, and every
step that ESGF may still need (the candidates around the current knee estimate), a set the
caller passes with each save so it can move as the curve grows.

Every checkpoint carries checksums of its state's arrays (state_checksum.py), checked on
restore (one written before they existed is read with a warning, unverified; a step without
them among steps that have them is damage). A checkpoint that cannot be read back intact (a
truncated or missing file, flipped bytes, an empty step directory) is moved to
`damaged_checkpoints/` beside the stage's `checkpoints/` with a warning, and the caller falls
back to another (`restore_intact`). Only such damage sets a step aside (storage_errors.py): a
storage error (GCS answering 503, a dropped connection, expired credentials) is retried, then
is one line, the checkpoints left as they were. The data iterator is restored after the state
is verified, and placed at the same global batch whatever the number of data workers
(data_position.py).
"""

import contextlib
import dataclasses
import json
import logging
import math
from typing import AbstractSet, Sequence

import grain
import jax
from jax.experimental import multihost_utils
from etils import epath
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from linearsr_jax import disk_space, lead_decides, storage, storage_errors
from linearsr_jax.errors import UserError
from linearsr_jax.run import (abandoned_reads, checkpoint_read, fault_points, kill_points,
                              state_checksum)
from linearsr_jax.train import data_position

ITEMS = ("state", "data_iter", "metrics", "checksums")
log = logging.getLogger(__name__)

# Orbax splits a replicated array's write between its replicas, each taking a slice: a program
# compiled per shape and per device. For biases and norm scales (most of a model's shapes, a
# few KiB each) those compiles cost far more than the parallel write saves: the first save of
# a 4-expert stage on 8 CPU devices spent 8 s on them. Slices under 1 MiB are written whole by
# one replica; large replicated arrays are still split.
MIN_REPLICA_SLICE_BYTES = 1 << 20


def _register_array_handler():
  absl_log = logging.getLogger("absl")
  level = absl_log.level
  absl_log.setLevel(logging.ERROR)  # Orbax warns of any override: on every run's stderr
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array,
        ocp.type_handlers.ArrayHandler(
            min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES), override=True)
  finally:
    absl_log.setLevel(level)


_register_array_handler()


class DamagedCheckpoint(Exception):
  """A checkpoint that cannot be read back as it was saved."""

  def __init__(self, step: int, problem: str):
    super().__init__(f"checkpoint {step} is damaged: {problem}")
    self.step, self.problem = step, problem


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
        # BestN keeps the tail of an ascending sort; reverse for lower-is-better metrics. A
        # step saved without an evaluation (a rollback's) ranks last: read back, its metrics
        # are {}, not the None that BestN leaves out.
        policies.BestN(get_metric_fn=lambda m: m.get(best_metric, _worst(best_mode)), n=1,
                       reverse=best_mode == "min", keep_checkpoints_without_metrics=False),
        self._keep,
    ])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(directory, item_names=ITEMS, options=options)

  def save(self, step: int, state, data_iter, metrics: dict, keep: AbstractSet[int] = frozenset()):
    """Saves `step`, then prunes: kept are the latest N, the best, and the steps in `keep`."""
    metrics = {k: float(v) for k, v in metrics.items()}
    self._keep.steps = frozenset(keep)
    self.wait()  # the previous save's bytes are on disk before the room for this one is judged
    needed = bytes_written_here(state)
    disk_space.ensure_room_on_every_host(self.manager.directory, needed, f"checkpoint {step}")
    with write_errors_as_one_line(self.manager.directory, needed, f"checkpoint {step}"):
      fault_points.reached("checkpoint_save")
      self.manager.save(
          step, force=True, metrics=metrics or None,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data_iter=grain.checkpoint.CheckpointSave(data_iter),
                                  metrics=ocp.args.JsonSave(metrics),
                                  checksums=ocp.args.JsonSave(state_checksum.checksums(state))))
    kill_points.reached("checkpoint_write")

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self) -> list:
    return sorted(self.manager.all_steps())

  def restore(self, step: int, abstract_state, data_iter=None):
    """(state, metrics) at `step`, the state placed as `abstract_state`'s shardings say; the
    data iterator (when given) is then placed at the step's batch. Raises DamagedCheckpoint
    when the step cannot be read back intact, UserError when it holds another model or when
    storage keeps failing (storage_errors.retried)."""
    # latest_step() already names a checkpoint whose asynchronous save may still be running.
    self.wait()
    where = f"checkpoint {self.manager.directory}/{step}"
    state, metrics = storage_errors.retried(lambda: self._restore_verified(step, abstract_state),
                                            where, on_give_up=self.close)
    if data_iter is not None:  # only now: an iterator that does not fit is not the state's damage
      saved = storage_errors.retried(lambda: self._saved_data_position(step), where,
                                     on_give_up=self.close)
      data_position.place(data_iter, saved, f"checkpoint {step}")
    return state, metrics

  def _restore_verified(self, step: int, abstract_state):
    self._check_structure(step, abstract_state)
    args = {"state": ocp.args.StandardRestore(abstract_state), "metrics": ocp.args.JsonRestore()}
    # A finished save holds every item (Orbax renames its directory into place at the end), so
    # a step without checksums was written before checkpoints had them: read, not verified;
    # unless its siblings have them, then it lost them.
    verified = checkpoint_read.has_checksums(self._step_dir(step))
    if verified:
      args["checksums"] = ocp.args.JsonRestore()
    elif any(
        checkpoint_read.has_checksums(self._step_dir(s)) for s in self.all_steps() if s != step):
      raise DamagedCheckpoint(step, "its checksums are missing (other checkpoints have them)")
    else:
      log.warning(
          "checkpoint %s has no checksums (written by a version before they existed): "
          "restored without verifying its arrays", step)
    with self._damage_named(step, ""):
      fault_points.reached("checkpoint_read")
      restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    if not verified:
      return restored["state"], dict(restored["metrics"] or {})
    if restored["checksums"] is None:
      raise DamagedCheckpoint(step, "its checksums are missing")
    bad = checkpoint_read.damaged_arrays(restored["state"], restored["checksums"])
    if bad:
      more = f" and {len(bad) - 1} more arrays" if bad[1:] else ""
      raise DamagedCheckpoint(
          step, f"{bad[0]}{more} read back different from what was saved "
          "(checksum)")
    return restored["state"], dict(restored["metrics"] or {})

  def _step_dir(self, step: int):
    return epath.Path(self.manager.directory) / str(step)

  def _saved_data_position(self, step: int):
    """This process's saved grain iterator state (the JSON grain's CheckpointHandler wrote)."""
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    with self._damage_named(step, "its data iterator state: "):
      return json.loads(
          (epath.Path(self.manager.directory) / str(step) / "data_iter" / name).read_text())

  @contextlib.contextmanager
  def _damage_named(self, step: int, what: str):
    """Damage behind an error in the block (storage_errors.damage) as DamagedCheckpoint; a
    storage error (retried by the caller) and anything else propagate."""
    try:
      yield
    except Exception as e:  # Orbax wraps TensorStore's errors in a bare Exception
      problem = storage_errors.damage(e)
      if problem is None:
        raise
      raise DamagedCheckpoint(step, f"{what}{problem}") from e

  def restore_intact(self, steps: Sequence[int], abstract_state, data_iter=None):
    """(step, state, metrics) of the first of `steps` that reads back intact. Each damaged one
    is set aside with a warning naming it and its damage; none intact is a UserError. Process 0
    decides what is damaged and the others follow (a read error on one host alone sets nothing
    aside)."""
    problems = []
    for step in steps:
      found, problem, error = None, None, None
      try:
        found = (step, *self.restore(step, abstract_state, data_iter))
      except DamagedCheckpoint as e:
        problem = e.problem
      except UserError as e:  # another model, storage that keeps failing: said by each host
        error = e
      here, problem = problem, lead_decides.broadcast(problem)
      # A host that failed where the lead read the step intact, or that cannot read on, stops
      # every host (rather than leave them waiting for it in the next collective).
      failed = lead_decides.processes_where(error is not None or
                                            (problem is None and found is None))
      if failed:
        if here and problem is None:
          log.warning(
              "checkpoint %d: %s on process %d alone (process 0 read it intact); "
              "not set aside", step, here, jax.process_index())
        self.close()
        raise error or UserError(f"checkpoint {self.manager.directory}/{step} cannot be read on "
                                 f"process {failed[0]} (see its log)")
      if problem is None:
        return found
      where = self._set_aside(step)
      log.warning("checkpoint %d is damaged: %s; moved to %s", step, problem, where)
      problems.append(f"{step}: {problem}")
    self.close()
    raise UserError(f"no intact checkpoint in {self.manager.directory} (tried "
                    f"{'; '.join(problems) or 'none: it is empty'})")

  def _set_aside(self, step: int):
    """Moves a damaged step out of Orbax's directory (so that a resumed run can save that step
    again), to damaged_checkpoints/<step>[.n]; returns where it went."""
    directory = epath.Path(self.manager.directory)
    aside = directory.parent / "damaged_checkpoints"  # run_dir.StageDir.damaged_checkpoints
    target = aside / str(step)
    if jax.process_index() == 0:
      aside.mkdir(parents=True, exist_ok=True)
      n = 1
      while target.exists():
        target, n = aside / f"{step}.{n}", n + 1
      storage.move(directory / str(step), target)
    multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
    self.manager.reload()
    return target

  def _mismatch(self, step: int, detail: str) -> UserError:
    """The error of a checkpoint of another model or config. The run stops there: close first,
    or Orbax's background threads print tracebacks at exit."""
    self.close()
    return not_this_model(epath.Path(self.manager.directory) / str(step), detail)

  def _check_structure(self, step: int, abstract_state):
    """Names the first array whose saved shape differs from this model's and optimizer's, from
    the checkpoint's metadata; unreadable metadata is damage."""
    with self._damage_named(step, "its metadata cannot be read: "):
      detail = structure_mismatch(epath.Path(self.manager.directory) / str(step), abstract_state)
    if detail is not None:
      raise self._mismatch(step, detail)

  def wait(self):
    with write_errors_as_one_line(self.manager.directory, 0, "the checkpoint being written"):
      self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def structure_mismatch(step_dir, abstract_state):
  """The first array whose shape in the checkpoint `step_dir` (from its metadata alone) differs
  from `abstract_state`'s, in words; None when every array matches. Unreadable metadata raises
  the storage's error."""
  abandoned_reads.silence()
  saved = ocp.StandardCheckpointHandler().metadata(epath.Path(step_dir) / "state").tree
  saved, wanted = ({
      state_checksum.path_name(p): _stored_shape(x)
      for p, x in jax.tree_util.tree_leaves_with_path(tree)
  }
                   for tree in (saved, abstract_state))
  for path in sorted(saved.keys() | wanted.keys()):
    if saved.get(path) != wanted.get(path):
      return (f"{path} has shape {saved.get(path, 'absent')} in the checkpoint but "
              f"{wanted.get(path, 'absent')} in this model (another model, optimizer, or number "
              "of experts?)")
  return None


def not_this_model(step_dir, detail: str) -> UserError:
  return UserError(f"checkpoint {step_dir} does not match this model and config: {detail}")


def _worst(mode: str) -> float:
  return -math.inf if mode == "max" else math.inf


@contextlib.contextmanager
def write_errors_as_one_line(directory, needed: int, what: str):
  """A save that still ran out of space (another writer took it meanwhile) is DiskFull; one the
  storage refused (a 503, a dropped connection) is a UserError: the run stops, and started again
  resumes from its last whole checkpoint. The error of an asynchronous save surfaces at the next
  save or wait."""
  try:
    yield
  except Exception as e:
    if disk_space.is_full_disk(e):
      raise disk_space.full(directory, needed, what) from None
    cause = storage_errors.storage_error(e)
    if cause is not None:
      raise UserError(f"cannot write {what} in {directory}: storage error ({cause}); the run "
                      "stopped: start it again when the storage answers, it resumes from its "
                      "last checkpoint") from e
    raise


def bytes_written_here(state) -> int:
  """Bytes of the arrays this process writes (one replica of each shard it holds): an upper
  bound of its checkpoint files, which Orbax may compress."""
  return sum(shard.data.nbytes for x in jax.tree.leaves(state) if isinstance(x, jax.Array)
             for shard in x.addressable_shards if shard.replica_id == 0)


def _stored_shape(x) -> tuple:
  """The shape Orbax stores: a typed PRNG key's is its key data's."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return tuple(jax.eval_shape(jax.random.key_data, x).shape)
  return tuple(x.shape)
