"""LinearSR's mixture of experts along the noise trajectory: boundaries, stacked params, routing.

Expert e owns the flow times t ∈ [b_{e-1}, b_e) (b_{-1} = 0; the last expert also owns t = 1),
with noise at t = 1. E experts are one parameter tree whose leaves carry a leading axis of size
E, logically named 'expert' so a mesh can shard it. E = 1 is the plain model on the same path.

- Training: the batch is split evenly over the experts, each sample's t is drawn inside its
  expert's interval, and `jax.vmap` over the expert axis trains all experts in one step; each
  expert only ever sees its own share, so its gradient comes only from that share.
- Sampling: all samples share t, so each step runs one expert, picked by a hard switch
  (`select_expert`, a dynamic index into the stacked tree): no router, no extra FLOPs.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from linearsr_jax import sharding
from linearsr_jax.diffusion import flow
from linearsr_jax.errors import UserError

EXPERT_AXIS = "expert"
SPLITS = ("snr", "uniform")


def log_snr(t):
  """λ(t) = log(α²/σ²) = 2·log((1−t)/t) for the path x_t = (1−t)·x0 + t·ε."""
  return 2 * np.log((1 - t) / t)


def t_of_log_snr(lam):
  """Inverse of `log_snr`: t = 1 / (1 + exp(λ/2))."""
  return 1 / (1 + np.exp(lam / 2))


def check_num_experts(num_experts, field="the number of experts"):
  """`field` names where the number comes from in the error (a stage's, in config_check)."""
  if num_experts < 1 or num_experts & (num_experts - 1):
    raise UserError(f"{field} must be a power of two, got {num_experts}")


def snr_boundaries(num_experts, lambda_min, lambda_max, anchor_t):
  """Boundaries in t (ascending) by hierarchical log-SNR bisection.

  The anchor splits high noise (structure) from low noise (refinement); every level after
  that bisects each interval at its midpoint in λ. With λ ∈ [−7.04, 8.89] and anchor 0.875,
  4 experts get the paper's [0.223, 0.875, 0.939].
  """
  check_num_experts(num_experts)
  if num_experts == 1:
    return ()
  anchor = log_snr(anchor_t)
  if not lambda_min < anchor < lambda_max:
    raise UserError(f"experts: need lambda_min < λ(anchor_t) < lambda_max, got "
                    f"{lambda_min} < {anchor:.4g} < {lambda_max}")
  # Knots in λ, descending (so t ascends); each level inserts the midpoint of every interval.
  knots = [lambda_max, anchor, lambda_min]
  for _ in range(int(math.log2(num_experts)) - 1):
    mids = [(a + b) / 2 for a, b in zip(knots[:-1], knots[1:])]
    knots = [v for pair in zip(knots[:-1], mids) for v in pair] + [knots[-1]]
  # The anchor stays exact in t; the others come from λ.
  return tuple(anchor_t if lam == anchor else float(t_of_log_snr(lam)) for lam in knots[1:-1])


def uniform_boundaries(num_experts):
  """Equal intervals in t, e.g. [0.25, 0.5, 0.75] for 4 experts (the paper's ablation)."""
  check_num_experts(num_experts)
  return tuple(e / num_experts for e in range(1, num_experts))


def boundaries_from_config(experts_cfg, num_experts):
  """Boundaries of `num_experts` experts split as the `diffusion.experts` config section says.
  The number is a stage's (config.stages.<stage>.num_experts) or its params' (num_experts_of),
  not the section's: one model's config serves stages of different numbers."""
  if experts_cfg.split == "snr":
    return snr_boundaries(num_experts, experts_cfg.lambda_min, experts_cfg.lambda_max,
                          experts_cfg.anchor_t)
  if experts_cfg.split == "uniform":
    return uniform_boundaries(num_experts)
  raise UserError(f"experts.split must be one of {SPLITS}, got '{experts_cfg.split}'")


def expert_index(t, boundaries, xp=jnp):
  """The expert whose interval [b_{e-1}, b_e) holds t (t = 1 goes to the last). int32.

  xp = np computes it on the host (a static schedule), in the same float32 as under jit.
  """
  b = xp.asarray(boundaries, xp.float32).reshape(-1)
  return xp.sum(xp.asarray(t, xp.float32)[..., None] >= b, axis=-1).astype(xp.int32)


def expert_intervals(boundaries):
  """(lo, hi), each float32 [E]: expert e's interval of t."""
  edges = np.concatenate([[0.0], np.asarray(boundaries, np.float64), [1.0]])
  return edges[:-1].astype(np.float32), edges[1:].astype(np.float32)


def _is_box(x):
  return isinstance(x, nn.meta.AxisMetadata)


def stack_experts(trees):
  """One tree with a leading expert axis from E same-shaped param trees.

  Partitioned / LogicallyPartitioned boxes get 'expert' prepended to their axis names.
  """

  def stack(*leaves):
    if _is_box(leaves[0]):
      return leaves[0].replace(value=jnp.stack([x.value for x in leaves]),
                               names=(EXPERT_AXIS,) + tuple(leaves[0].names))
    return jnp.stack(leaves)

  return jax.tree.map(stack, *trees, is_leaf=_is_box)


def init_experts(params, num_experts):
  """All E experts start as copies of one params tree (e.g. the previous stage's knee)."""
  check_num_experts(num_experts)
  return stack_experts([params] * num_experts)


def num_experts_of(stacked_params):
  """E: the leading-axis size shared by all leaves of a stacked tree."""
  sizes = {jnp.shape(x)[0] for x in jax.tree.leaves(nn.unbox(stacked_params))}
  if len(sizes) != 1:
    raise UserError(f"stacked expert params disagree on the expert axis size: {sorted(sizes)}")
  return sizes.pop()


def select_expert(stacked_params, index):
  """Expert `index`'s params (index may be traced): the hard switch used when sampling."""
  return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, index, 0, keepdims=False),
                      stacked_params)


def model_apply(model):
  """apply_fn(params, x_t, t, lr, cond, cond_mask) -> velocity for a Flax DiT-like module."""
  return lambda params, *args: model.apply({"params": params}, *args)


def _split_over_experts(x, num_experts, sharded: bool):
  """[B, ...] -> [E, B/E, ...]; sample b belongs to expert b // (B/E). `sharded`: whether the
  expert dim goes on the expert mesh axis (else the batch dim takes that axis too)."""
  if x is None:
    return None
  x = x.reshape((num_experts, x.shape[0] // num_experts) + x.shape[1:])
  names = (EXPERT_AXIS if sharded else None, "activation_batch") + (None,) * (x.ndim - 2)
  return nn.with_logical_constraint(x, names)


def _expert_layout(num_experts):
  """(vmap's spmd_axis_name, the rules to apply the experts under).

  The mesh axes of the logical 'expert' axis shard the stack when they divide it; the vmap
  then names them, so the model's own activation sharding constraints keep the expert axis
  sharded instead of replicating it, and activation_batch drops them (each expert's share is
  split over the remaining batch axes). When they do not divide it (a 1-expert stage on a mesh
  with an expert axis), activation_batch keeps them: they shard the batch instead.
  """
  rules = list(nn.get_logical_axis_rules())
  axis = nn.logical_to_mesh_axes((EXPERT_AXIS,), rules)[0] if rules else None
  mesh = jax.sharding.get_abstract_mesh()
  expert_axes = sharding.mesh_axes_of(axis)
  if axis is None or mesh.empty or num_experts % math.prod(mesh.shape[a] for a in expert_axes):
    return None, rules
  batch = nn.logical_to_mesh_axes(("activation_batch",), rules)[0]
  inner = tuple(a for a in sharding.mesh_axes_of(batch) if a not in expert_axes)
  return axis, [("activation_batch", inner or None), *rules]


def mixture_loss(apply_fn, stacked_params, x0, context, key, cfg, lr_latent=None, weights=None):
  """Flow-matching loss of all experts in one call; E = 1 is the plain model.

  apply_fn(params, x_t, t_model, *context) -> velocity (see `model_apply`); context is
  (lr, cond, cond_mask) with a leading batch axis (any entry may be None). cfg is the
  `diffusion` config section, as config_check.validate passed it. The batch is split evenly:
  sample b trains expert b // (B/E), at a σ drawn inside that expert's interval. Returns
  (mean loss, per-expert losses [E]).
  """
  num_experts = num_experts_of(stacked_params)
  boundaries = boundaries_from_config(cfg.experts, num_experts)
  batch = x0.shape[0]
  if batch % num_experts:
    raise UserError(f"batch size {batch} is not divisible by the {num_experts} experts")
  lo, hi = expert_intervals(boundaries)
  key_sigma, key_source = jax.random.split(key)
  sigma = flow.sample_sigma(key_sigma, (num_experts, batch // num_experts), cfg, lo[:, None],
                            hi[:, None])
  x1 = flow.draw_source(key_source, x0.shape, cfg, lr_latent)

  def expert_loss(params, x0, x1, sigma, context, weights):
    predict = lambda x_t, s: apply_fn(params, x_t, s * cfg.timestep_scale, *context)
    return flow.flow_loss(predict, x0, x1, sigma, weights)

  axis, rules = _expert_layout(num_experts)
  split = lambda x: _split_over_experts(x, num_experts, axis is not None)
  with nn.logical_axis_rules(rules):
    losses = jax.vmap(expert_loss, spmd_axis_name=axis)(stacked_params, split(x0), split(x1), sigma,
                                                        tuple(split(c) for c in context),
                                                        split(weights))
  return losses.mean(), losses
