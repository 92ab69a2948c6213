"""Train state: stacked expert params, their EMA, optimizer state, step, RNG, skip counters.

Built without ever materialising anything unsharded: `jax.eval_shape` gives the (logically
boxed) structure, the config's rules give shardings, and a jitted init with `out_shardings`
creates every leaf in place.
"""

from typing import Any

import flax
import flax.linen as nn
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
  params: Any                 # experts stacked on a leading 'expert' axis (E = 1 included)
  ema_params: Any
  opt_state: Any
  rng: jax.Array
  lr_scale: jax.Array         # multiplies every update; the divergence guard lowers it
  skipped: jax.Array          # updates skipped for a non-finite loss or gradient, in total
  consecutive_skips: jax.Array


def _init_state(model: SRModel, tx, num_experts, rng, params=None):
  """A TrainState, boxed when freshly initialised; `params` (stacked experts) when given."""
  model_rng, state_rng = jax.random.split(rng)
  if params is None:
    one = model.init(model_rng, *sr_example_inputs(model.dit, model.tags, 1, (4, 4)))["params"]
    params = experts.init_experts(one, num_experts)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                    opt_state=tx.init(params), rng=state_rng, lr_scale=jnp.ones((), jnp.float32),
                    skipped=jnp.zeros((), jnp.int32), consecutive_skips=jnp.zeros((), jnp.int32))


def state_shardings(model: SRModel, tx, num_experts, mesh, rules):
  """NamedShardings of every TrainState leaf, from logical axis names and the rules."""
  abstract = jax.eval_shape(lambda r: _init_state(model, tx, num_experts, r), jax.random.key(0))
  return sharding.tree_shardings(abstract, mesh, rules)


def create_train_state(model: SRModel, tx: optax.GradientTransformation, num_experts: int,
                       rng, mesh, rules, params=None):
  """(state, shardings). With `params` (stacked experts, e.g. from the previous stage's knee
  checkpoint), training starts from them with a fresh optimizer and EMA = params."""
  shardings = state_shardings(model, tx, num_experts, mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
    if params is None:
      init = jax.jit(lambda r: nn.unbox(_init_state(model, tx, num_experts, r)),
                     out_shardings=shardings)
      return init(rng), shardings
    params = jax.device_put(params, shardings.params)
    init = jax.jit(lambda r, p: _init_state(model, tx, num_experts, r, p),
                   out_shardings=shardings)
    return init(rng, params), shardings


def branch_params(stacked, num_experts: int):
  """The stack a new stage of `num_experts` starts from, given the previous stage's stack:
  itself when the sizes agree, else E copies of its single expert (the knee checkpoint)."""
  have = jax.tree.leaves(stacked)[0].shape[0]
  if have == num_experts:
    return stacked
  if have != 1:
    raise UserError(f"cannot branch {num_experts} experts from a stage with {have}")
  return jax.tree.map(lambda x: np.repeat(np.asarray(x), num_experts, axis=0), stacked)
