"""The EMA params of the evaluations ESGF may still branch from, beside a stage's checkpoints.

The next stage starts from the knee's EMA params alone (`branch_params`), and ESGF may still
move its knee to any step it has judged (esgf.detector `_branch_steps`), earlier ones included.
Keeping the full checkpoint of each of those steps would keep every training state of a long
run; a snapshot holds only the EMA params (a quarter of a state with Adam: params, EMA, two
moments), each judged evaluation's while the stage runs, the knee's alone once it has ended
(the loop, after result.json). At most one EMA copy per evaluation of a stage is on storage at
once: for sana_x4's pretrain (600M params, float32, one evaluation per 2000 steps) 2.4 GB per
snapshot, 60 GB by step 50k.

A snapshot is an Orbax step directory like a checkpoint's, `<step>/state` holding
{"ema_params": …} and `<step>/checksums` of its arrays, so the tools read it as they read a
checkpoint's EMA params (run_dir.StageDir.ema_params_dir). Orbax writes it atomically: a
temporary directory renamed into place, or on object storage COMMIT_SUCCESS written last.
"""

from typing import AbstractSet

import orbax.checkpoint as ocp

from linearsr_jax import disk_space, storage_errors
from linearsr_jax.errors import UserError
from linearsr_jax.run import state_checksum
from linearsr_jax.train.checkpoint import KeepSteps, bytes_written_here, write_errors_as_one_line

ITEMS = ("state", "checksums")


class UnreadableSnapshot(Exception):
  """A snapshot whose EMA params do not read back as they were saved."""


class KneeSnapshots:
  """The knee snapshots of one stage, in `directory`."""

  def __init__(self, directory, async_save: bool = True):
    self._keep = KeepSteps()
    options = ocp.CheckpointManagerOptions(preservation_policy=self._keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(directory, item_names=ITEMS, options=options)

  def save(self, step: int, ema_params, keep: AbstractSet[int]):
    """Saves `step`'s EMA params, then deletes the snapshots of steps not in `keep`."""
    self._keep.steps = frozenset(keep)
    self.wait()
    tree = {"ema_params": ema_params}
    needed = bytes_written_here(tree)
    disk_space.ensure_room_on_every_host(self.manager.directory, needed, f"knee snapshot {step}")
    with write_errors_as_one_line(self.manager.directory, needed, f"knee snapshot {step}"):
      self.manager.save(
          step, force=True,
          args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                  checksums=ocp.args.JsonSave(state_checksum.checksums(tree))))

  def steps(self) -> list:
    return sorted(self.manager.all_steps())

  def keep_only(self, keep: AbstractSet[int]):
    """Deletes every snapshot whose step is not in `keep` (from the steps after a resumed
    checkpoint, which will be evaluated again, to all but the knee when a stage ends)."""
    self.wait()
    for step in self.steps():
      if step not in keep:
        self.manager.delete(step)

  def restore(self, step: int, abstract_ema):
    """`step`'s EMA params, placed as `abstract_ema`'s shardings say. UnreadableSnapshot
    names why when they cannot be read back as saved."""
    self.wait()

    def read():
      return self.manager.restore(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardRestore({"ema_params": abstract_ema}),
                                  checksums=ocp.args.JsonRestore()))

    try:  # a storage error is retried, then one line: it says nothing of the snapshot
      restored = storage_errors.retried(read, f"knee snapshot {self.manager.directory}/{step}")
    except UserError:
      raise
    except Exception as e:  # the caller falls back to the step's full checkpoint
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
      raise UnreadableSnapshot(f"its EMA snapshot cannot be read ({first})") from e
    bad = state_checksum.mismatches(restored["state"], restored["checksums"] or {})
    if bad or not restored["checksums"]:
      raise UnreadableSnapshot(f"its EMA snapshot reads back different from what was saved "
                               f"({bad[0] if bad else 'no checksums'})")
    return restored["state"]["ema_params"]

  def wait(self):
    with write_errors_as_one_line(self.manager.directory, 0, "the knee snapshot being written"):
      self.manager.wait_until_finished()

  def close(self):
    self.manager.close()
