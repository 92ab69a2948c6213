"""The teacher of a distill stage given by path (`config.distill.teacher`, for a distill stage
that comes first): a step directory of another run, which must hold this config's model.

(A distill stage after another stage needs nothing read: its teacher is that stage's knee, the
params the run hands over from stage to stage.)
"""

import flax.traverse_util
import numpy as np
import optax

from linearsr_jax import sharding, storage
from linearsr_jax.errors import UserError
from linearsr_jax.run import checkpoint_read
from linearsr_jax.train.state import expert_param_shapes, state_shardings


def teacher_from_path(the_run, path):
  """The step's EMA params (stacked experts) on the mesh, placed as a stage of that many experts
  places its params; a step of another model is one line naming the first tensor that differs."""
  step_dir = storage.absolute(path)
  if not (step_dir / "state").is_dir():
    raise UserError(f"config.distill.teacher={str(path)!r} is no checkpoint step directory (a "
                    "run's <stage>/checkpoints/<step> or <stage>/knee_snapshots/<step>)")
  params = checkpoint_read.read_params(step_dir, "ema_params")
  flat = {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}
  wanted = expert_param_shapes(the_run.model)
  for name in sorted(flat.keys() | wanted.keys()):
    have = flat[name].shape[1:] if name in flat else "absent"
    if have != wanted.get(name, "absent"):
      raise UserError(f"config.distill.teacher {step_dir}: tensor {name} has shape {have} there "
                      f"but {wanted.get(name, 'absent')} in this model: a teacher of another model")
  num_experts = next(iter(flat.values())).shape[0]
  placed = state_shardings(the_run.model, optax.identity(), num_experts, the_run.mesh,
                           the_run.rules).params
  return sharding.put_on_mesh(flax.traverse_util.unflatten_dict(flat, sep="/"), placed)
