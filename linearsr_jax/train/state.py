"""Train state: stacked expert params, their EMA, optimizer state, step, RNG, skip counters.

Built without ever materialising anything unsharded: `jax.eval_shape` gives the (logically
boxed) structure, the config's rules give shardings, and a jitted init with `out_shardings`
creates every leaf in place.
"""

from typing import Any

import flax
import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from linearsr_jax import sharding
from linearsr_jax.diffusion import experts
from linearsr_jax.errors import UserError
from linearsr_jax.models.sr_model import SRModel, sr_example_inputs


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # experts stacked on a leading 'expert' axis (E = 1 included)
  ema_params: Any
  opt_state: Any
  rng: jax.Array
  lr_scale: jax.Array  # multiplies every update; the divergence guard lowers it
  skipped: jax.Array  # updates skipped for a non-finite loss or gradient, in total
  consecutive_skips: jax.Array


def split_rng(rng) -> tuple:
  """(key of a fresh model's params, rng of the TrainState) made from `rng`: train step i's key is
  the state's rng folded with i (step.guarded_update)."""
  model_rng, state_rng = jax.random.split(rng)
  return model_rng, state_rng


def _init_state(model: SRModel, tx, num_experts, rng, params=None):
  """A TrainState, boxed when freshly initialised; `params` (stacked experts) when given."""
  model_rng, state_rng = split_rng(rng)
  if params is None:
    one = model.init(model_rng, *sr_example_inputs(model.dit, model.tags, 1, (4, 4)))["params"]
    params = experts.init_experts(one, num_experts)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                    opt_state=tx.init(params), rng=state_rng, lr_scale=jnp.ones((), jnp.float32),
                    skipped=jnp.zeros((), jnp.int32), consecutive_skips=jnp.zeros((), jnp.int32))


def _boxed_shapes(model: SRModel, tx, num_experts):
  return jax.eval_shape(lambda r: _init_state(model, tx, num_experts, r), jax.random.key(0))


def state_shardings(model: SRModel, tx, num_experts, mesh, rules):
  """NamedShardings of every TrainState leaf, from logical axis names and the rules."""
  return sharding.tree_shardings(_boxed_shapes(model, tx, num_experts), mesh, rules)


def abstract_train_state(model: SRModel, tx, num_experts, mesh, rules):
  """(TrainState of ShapeDtypeStructs carrying shardings, shardings): nothing is allocated."""
  boxed = _boxed_shapes(model, tx, num_experts)
  shardings = sharding.tree_shardings(boxed, mesh, rules)
  return sharding.abstract_on_mesh(nn.unbox(boxed), shardings), shardings


def expert_param_shapes(model: SRModel) -> dict:
  """{'dit/patch_embed/kernel': shape, ...} of one expert's params."""
  boxed = _boxed_shapes(model, optax.identity(), 1).params
  return {
      k: tuple(v.shape[1:])
      for k, v in flax.traverse_util.flatten_dict(nn.unbox(boxed), sep="/").items()
  }


def create_train_state(model: SRModel, tx: optax.GradientTransformation, num_experts: int, rng,
                       mesh, rules, params=None):
  """(state, shardings). With `params` (stacked experts already on the mesh, e.g. from
  `branch_params`), training starts from them with a fresh optimizer and EMA = params; the
  state's arrays are new buffers, so `params` stays valid after the step donates the state."""
  shardings = state_shardings(model, tx, num_experts, mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
    if params is None:
      init = jax.jit(lambda r: nn.unbox(_init_state(model, tx, num_experts, r)),
                     out_shardings=shardings)
      return init(rng), shardings
    init = jax.jit(lambda r, p: _init_state(model, tx, num_experts, r, p), out_shardings=shardings)
    return init(rng, params), shardings


def branch_params(stacked, num_experts: int, shardings):
  """The stack a new stage of `num_experts` starts from, given the previous stage's stack (on
  the mesh): a copy of it when the sizes agree, else E copies of its single expert (the knee
  checkpoint). Re-sharded by a jitted copy, so no global array ever goes through a host."""
  have = jax.tree.leaves(stacked)[0].shape[0]
  if have not in (1, num_experts):
    raise UserError(f"cannot branch {num_experts} experts from a stage with {have}")
  copy = lambda x: jnp.repeat(x, num_experts // have, axis=0)
  return jax.jit(lambda t: jax.tree.map(copy, t), out_shardings=shardings)(stacked)


def overlay_params(stacked, host_leaves: dict, shardings):
  """`stacked` (on the mesh) with the leaves named in `host_leaves` ({'a/b/kernel': one
  expert's NumPy array}) replaced, broadcast to every expert and placed by `shardings`; each
  process uploads only its own shards."""
  flat = flax.traverse_util.flatten_dict(stacked, sep="/")
  flat_shardings = flax.traverse_util.flatten_dict(shardings, sep="/")
  for name, value in host_leaves.items():
    value = np.broadcast_to(value, flat[name].shape)
    flat[name] = sharding.put_on_mesh(value, flat_shardings[name])
  return flax.traverse_util.unflatten_dict(flat, sep="/")
