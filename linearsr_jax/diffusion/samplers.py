"""Samplers for the flow x_σ = (1−σ)·x0 + σ·x1 as XLA loops: Euler, Heun, DPM-Solver++ 2M.

All integrate dx/dσ = v(x, σ) from σ = 1 (the source) to σ = 0 (data) on a shifted schedule.
Euler (first order) and DPM-Solver++ 2M (SANA's default; multistep, matches diffusers'
DPMSolverMultistepScheduler) evaluate the network once per step at its starting σ_i. Heun also
evaluates at σ_{i+1} (two network passes per step) and is second order on every step. DPM++ 2M
is second order only in λ-smooth regions: its first two and last steps are first order, and on
this σ-uniform schedule the λ-steps near σ = 0 and σ = 1 do not shrink with the step count, so
against an exact flow its error falls faster than Euler's but not as a clean 1/steps².
With classifier-free guidance the conditional and null passes go through the network together
as one batch of 2B.

Experts: the step from σ_i to σ_{i+1} runs the expert whose interval holds σ_i, its starting
time (Heun's second evaluation included). The switch therefore happens exactly at a boundary
when a step starts on it (an expert owns [b_{e-1}, b_e), so a step starting at σ_i = b_e uses
expert e+1), and a step that straddles a boundary is run entirely by the expert of its start:
the expert that produced the velocity the step extrapolates from is the one trained at that σ.
The guidance scale is a Python float (static), so scale 1 compiles without the null pass.
"""

import jax
import jax.numpy as jnp
import numpy as np

from linearsr_jax.diffusion import experts as experts_lib
from linearsr_jax.diffusion import flow
from linearsr_jax.errors import UserError

SOLVERS = ("euler", "heun", "dpm++2m")


def sigma_schedule(steps, shift):
  """float64 [steps + 1]: σ from 1 to 0, uniform before the flow shift (SANA's schedule)."""
  if steps < 1:
    raise UserError(f"sampler steps must be >= 1, got {steps}")
  return flow.shift_sigma(np.linspace(1.0, 0.0, steps + 1), shift)


def _dpm_coefficients(sigmas):
  """Per-step (ratio, data_coef, mix) of flow DPM-Solver++ 2M (data prediction, λ = log α/σ).

  x_{i+1} = ratio·x_i + data_coef·D̂_i with ratio = σ_{i+1}/σ_i,
  data_coef = α_{i+1}·(1 − e^{−h_i}) = α_{i+1} − ratio·α_i, and
  D̂_i = (1 + mix)·D_i − mix·D_{i−1}, mix = h_i / (2·h_{i−1}) (diffusers'
  DPMSolverMultistepScheduler). The first step, a step after one that started at σ = 1
  (λ = −∞) and a step that ends at σ = 0 (λ = +∞) are first order (mix = 0), as in diffusers.
  Computed in float64 without infinities.
  """
  s, s_next = sigmas[:-1], sigmas[1:]
  ratio = s_next / s
  data_coef = (1 - s_next) - ratio * (1 - s)
  inside = (sigmas > 0) & (sigmas < 1)
  lam = np.log(np.where(inside, (1 - sigmas) / np.where(inside, sigmas, 1.0), 1.0))
  h = lam[1:] - lam[:-1]
  finite_h = inside[1:] & inside[:-1]
  mix = np.zeros_like(ratio)
  second_order = finite_h[1:] & finite_h[:-1]
  mix[1:][second_order] = h[1:][second_order] / (2 * h[:-1][second_order])
  return ratio, data_coef, mix


def guided_velocity(apply_fn, params, x, t, context, null_context, guidance_scale):
  """v_null + g·(v_cond − v_null), both passes in one batch; g = 1 runs the conditional only.

  context = (lr, cond, cond_mask); null_context = (null_cond, null_mask) replaces the last two
  in the null pass (the LR image conditions both).
  """
  if guidance_scale == 1.0:
    return apply_fn(params, x, t, *context)
  if null_context is None:
    raise UserError(f"guidance_scale {guidance_scale} needs the null condition")
  lr, cond, cond_mask = context
  null_cond = jnp.broadcast_to(null_context[0], cond.shape).astype(cond.dtype)
  null_mask = jnp.broadcast_to(null_context[1], cond_mask.shape)
  both = lambda a, b: None if a is None else jnp.concatenate([a, b])
  v = apply_fn(params, both(x, x), both(t, t), both(lr, lr), both(cond, null_cond),
               both(cond_mask, null_mask))
  v_cond, v_null = jnp.split(v, 2)
  return v_null + guidance_scale * (v_cond - v_null)


def integrate(apply_fn, stacked_params, x1, context, *, sigmas, solver, boundaries, timestep_scale,
              guidance_scale=1.0, null_context=None):
  """Integrates x1 at σ = sigmas[0] down the schedule `sigmas` (NumPy, decreasing, usually
  `sigma_schedule`); returns the state at sigmas[-1] (float32, shape of x1).

  apply_fn(params, x_t, t_model, lr, cond, cond_mask) -> velocity (see experts.model_apply);
  stacked_params has a leading expert axis of size len(boundaries) + 1.
  """
  if solver not in SOLVERS:
    raise UserError(f"sampler solver must be one of {SOLVERS}, got '{solver}'")
  num_experts = experts_lib.num_experts_of(stacked_params)
  if num_experts != len(boundaries) + 1:
    raise UserError(f"{num_experts} stacked experts but {len(boundaries)} expert boundaries")
  sigmas = np.asarray(sigmas, np.float64)
  if sigmas.ndim != 1 or len(sigmas) < 2 or np.any(np.diff(sigmas) >= 0):
    raise UserError(f"sampler sigmas must be a decreasing 1-D schedule, got {sigmas}")
  ratio, data_coef, mix = _dpm_coefficients(sigmas)
  per_step = dict(sigma=jnp.asarray(sigmas[:-1],
                                    jnp.float32), sigma_next=jnp.asarray(sigmas[1:], jnp.float32),
                  dsigma=jnp.asarray(np.diff(sigmas),
                                     jnp.float32), ratio=jnp.asarray(ratio, jnp.float32),
                  data_coef=jnp.asarray(data_coef, jnp.float32), mix=jnp.asarray(mix, jnp.float32))
  batch = x1.shape[0]
  segments = _expert_segments(sigmas[:-1], boundaries)

  def step(i, carry, params):
    x, prev_data = carry
    s = jax.tree.map(lambda a: a[i], per_step)
    velocity = lambda x, sigma: guided_velocity(
        apply_fn, params, x, jnp.full((batch,), sigma * timestep_scale, jnp.float32), context,
        null_context, guidance_scale).astype(jnp.float32)
    v = velocity(x, s["sigma"])
    if solver == "euler":
      return x + s["dsigma"] * v, prev_data
    if solver == "heun":
      v_end = velocity(x + s["dsigma"] * v, s["sigma_next"])
      return x + s["dsigma"] * (v + v_end) / 2, prev_data
    data = x - s["sigma"] * v  # x0 prediction
    mixed = (1 + s["mix"]) * data - s["mix"] * prev_data
    return s["ratio"] * x + s["data_coef"] * mixed, data

  def run_segment(k, carry):
    # The expert's params are sliced once per segment and are loop-invariant in its steps, so
    # XLA hoists their per-use preparation out of the loop, as with a single expert; slicing
    # them per step made 4 experts sample 1.6× slower than 1 on CPU.
    expert, start, stop = (a[k] for a in segments)
    params = experts_lib.select_expert(stacked_params, expert)
    return jax.lax.fori_loop(start, stop, lambda i, c: step(i, c, params), carry)

  x1 = x1.astype(jnp.float32)
  x0, _ = jax.lax.fori_loop(0, len(segments[0]), run_segment, (x1, jnp.zeros_like(x1)))
  return x0


def _expert_segments(step_sigmas, boundaries):
  """(expert, start, stop) int32 arrays: the runs of consecutive steps one expert takes, in
  step order. Each step's expert is that of its starting σ (see the module docstring)."""
  experts = experts_lib.expert_index(step_sigmas, boundaries, xp=np)
  starts = np.flatnonzero(np.diff(experts, prepend=-1))
  stops = np.append(starts[1:], len(experts))
  return tuple(jnp.asarray(a, jnp.int32) for a in (experts[starts], starts, stops))


def sample(apply_fn, stacked_params, key, shape, context, cfg, *, null_context=None, lr_latent=None,
           **overrides):
  """Draws the source from `key` (deterministic per seed) and integrates it to data.

  cfg is the `diffusion` config section; `overrides` (steps, shift, solver, guidance_scale)
  replace cfg.sampler values. lr_latent (upsampled-LR latent) is needed for source 'lr'.
  """
  unknown = set(overrides) - set(cfg.sampler)
  if unknown:
    raise UserError(f"unknown sampler option(s): {sorted(unknown)}")
  options = {**cfg.sampler.to_dict(), **overrides}
  x1 = flow.draw_source(key, shape, cfg, lr_latent)
  return integrate(
      apply_fn, stacked_params, x1, context, sigmas=sigma_schedule(options["steps"],
                                                                   options["shift"]),
      solver=options["solver"], guidance_scale=options["guidance_scale"],
      boundaries=experts_lib.boundaries_from_config(cfg.experts,
                                                    experts_lib.num_experts_of(stacked_params)),
      timestep_scale=cfg.timestep_scale, null_context=null_context)
