"""One-step distillation of a multi-step sampler: the teacher's endpoint, the student's one
forward, and which of the teacher's experts the student starts from.

The student maps the sampler's starting point x1 (the source at σ = 1: noise, or for the
LR-anchored flow the upsampled LR latent plus its source noise) to the teacher's sampled x0 in
one Euler step from σ = 1 to 0, x0 = x1 − v(x1, σ = 1), with no guidance pass: the same
computation as the project's sampler at `STUDENT_SAMPLER`, so validation, `eval` and `upscale`
of a student run exactly what it was trained on (SinSR's regression of the teacher's ODE
endpoint, in latent space).
"""

import jax
import jax.numpy as jnp
import numpy as np

from linearsr_jax.diffusion import experts, samplers

# How a student samples: one network pass, no null-condition pass. (Any shift gives the
# schedule [1, 0]; a 1-step DPM++ 2M is the same step as Euler.)
STUDENT_SAMPLER = {"solver": "euler", "steps": 1, "guidance_scale": 1.0}


def source_expert(experts_cfg, num_experts: int) -> int:
  """The teacher expert whose interval holds σ = 1: the student starts from it, because it is
  the one trained where the student's only forward runs (its prediction there is the teacher's
  own 1-step output, the point the student's training moves away from); the low-noise experts
  never saw inputs like x1."""
  boundaries = experts.boundaries_from_config(experts_cfg, num_experts)
  return int(experts.expert_index(np.float32(1.0), boundaries, xp=np))


def student_start(teacher_params, experts_cfg):
  """The student's params (a stack of one) from the teacher's stack: its σ = 1 expert."""
  e = source_expert(experts_cfg, experts.num_experts_of(teacher_params))
  return jax.tree.map(lambda x: x[e:e + 1], teacher_params)


def one_step(apply_fn, stacked_params, x1, context, timestep_scale: float):
  """The student's output x0 = x1 − v(x1, σ = 1) of its single expert; differentiable (the
  sampler's loops are not, in reverse mode)."""
  params = jax.tree.map(lambda x: x[0], stacked_params)
  t = jnp.full((x1.shape[0],), timestep_scale, jnp.float32)
  return x1.astype(jnp.float32) - apply_fn(params, x1, t, *context).astype(jnp.float32)


def teacher_velocities(sampler_cfg) -> int:
  """Velocity evaluations per sample of the teacher's sampler: one per step (Heun: two), each
  with its null-condition pass under guidance (samplers.guided_velocity)."""
  return sampler_cfg.steps * (2 if sampler_cfg.solver == "heun" else 1)


def teacher_forwards(sampler_cfg) -> int:
  """Network passes per sample of the teacher's sampler: its velocity evaluations, doubled by
  the null-condition pass of guidance."""
  return teacher_velocities(sampler_cfg) * (1 if sampler_cfg.guidance_scale == 1.0 else 2)


def teacher_endpoint(apply_fn, teacher_params, x1, context, cfg, null_context):
  """The teacher's sampled x0 from x1 with the `diffusion.sampler` settings (solver, steps,
  shift, guidance scale), its experts switched as in sampling; no gradient flows back."""
  sampler = cfg.sampler
  boundaries = experts.boundaries_from_config(cfg.experts, experts.num_experts_of(teacher_params))
  x0 = samplers.integrate(apply_fn, teacher_params, x1, context,
                          sigmas=samplers.sigma_schedule(sampler.steps,
                                                         sampler.shift), solver=sampler.solver,
                          boundaries=boundaries, timestep_scale=cfg.timestep_scale,
                          guidance_scale=sampler.guidance_scale, null_context=null_context)
  return jax.lax.stop_gradient(x0)
