"""The teacher of a distill stage read from storage: for a distill stage that comes first, the
step directory of another run given by path (`config.distill.teacher`), which must hold this
config's model; for one after another stage, that stage's knee in the run's own directory.

(Training a distill stage after another stage reads nothing here: its teacher is that stage's
knee, the params the run hands over from stage to stage. The tool that samples the teacher's
targets before the stage runs, train/distill_targets.py, reads the same knee here.)
"""

import flax.traverse_util
import numpy as np
import optax

from linearsr_jax import sharding, storage
from linearsr_jax.errors import UserError
from linearsr_jax.run import checkpoint_read
from linearsr_jax.train.state import expert_param_shapes, state_shardings


def stage_teacher(the_run, name: str):
  """The teacher of the run's distill stage `name`, on the mesh: config.distill.teacher's for
  the first stage, else the knee of the stage before it, which must have ended."""
  names = the_run.stage_names()
  if names.index(name) == 0:
    return teacher_from_path(the_run, the_run.config.distill.teacher)
  before = the_run.run_dir.stage(names[names.index(name) - 1])
  done = before.result()
  if done is None:
    raise UserError(f"stage {before.name!r} of the run in {the_run.workdir} has not ended, so the "
                    f"teacher of distill stage {name!r} (its knee) is not known yet: train the "
                    "run up to it first")
  step_dir = before.ema_params_dir(done["knee_step"])
  if step_dir is None:
    raise UserError(f"{before.path}: the knee, step {done['knee_step']}, has neither a knee "
                    "snapshot nor a checkpoint")
  return _on_mesh(the_run, step_dir, f"the knee of stage {before.name!r}, {step_dir}")


def teacher_from_path(the_run, path):
  """The step's EMA params (stacked experts) on the mesh, placed as a stage of that many experts
  places its params; a step of another model is one line naming the first tensor that differs."""
  step_dir = storage.absolute(path)
  if not (step_dir / "state").is_dir():
    raise UserError(f"config.distill.teacher={str(path)!r} is no checkpoint step directory (a "
                    "run's <stage>/checkpoints/<step> or <stage>/knee_snapshots/<step>)")
  return _on_mesh(the_run, step_dir, f"config.distill.teacher {step_dir}")


def _on_mesh(the_run, step_dir, what: str):
  params = checkpoint_read.read_params(step_dir, "ema_params")
  flat = {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}
  wanted = expert_param_shapes(the_run.model)
  for name in sorted(flat.keys() | wanted.keys()):
    have = flat[name].shape[1:] if name in flat else "absent"
    if have != wanted.get(name, "absent"):
      raise UserError(f"{what}: tensor {name} has shape {have} there "
                      f"but {wanted.get(name, 'absent')} in this model: a teacher of another model")
  num_experts = next(iter(flat.values())).shape[0]
  placed = state_shardings(the_run.model, optax.identity(), num_experts, the_run.mesh,
                           the_run.rules).params
  return sharding.put_on_mesh(flax.traverse_util.unflatten_dict(flat, sep="/"), placed)
