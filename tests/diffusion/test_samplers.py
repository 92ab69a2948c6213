"""Samplers: convergence on a flow with a known solution, DPM-Solver++ parity with diffusers,
classifier-free guidance, the expert switch, determinism, sharding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linearsr_jax import sharding
from linearsr_jax.diffusion import experts, flow, samplers
from linearsr_jax.models.dit import DiT
from test_experts import SMALL_DIT, distinct_dit_experts

# Data x0 ~ N(MU, S²) per dimension, source ε ~ N(0, 1). The optimal velocity E[ε − x0 | x_σ] is
# linear in x_σ, and its ODE maps x1 to MU + S·x1 (quantile to quantile).
MU = np.array([0.5, -1.0, 2.0, 0.0])
S = np.array([0.5, 1.0, 2.0, 0.7])
NO_CONTEXT = (None, None, None)
ONE_EXPERT = experts.init_experts({"unused": jnp.zeros(())}, 1)


def gaussian_velocity(params, x, t, lr, cond, cond_mask):
  sigma = (t / 1000.0)[:, None]
  var = (1 - sigma)**2 * S**2 + sigma**2
  return (-MU + (sigma - (1 - sigma) * S**2) / var * (x - (1 - sigma) * MU)).astype(jnp.float32)


def _source():
  return jax.random.normal(jax.random.PRNGKey(0), (512, 4))


def _error(solver, steps, shift=3.0):
  x1 = _source()
  out = samplers.integrate(gaussian_velocity, ONE_EXPERT, x1, NO_CONTEXT, solver=solver,
                           sigmas=samplers.sigma_schedule(steps, shift), boundaries=(),
                           timestep_scale=1000.0)
  exact = MU + S * np.asarray(x1, np.float64)
  return np.abs(np.asarray(out, np.float64) - exact).max()


def test_schedule_applies_the_shift():
  np.testing.assert_allclose(samplers.sigma_schedule(4, 3.0), [1, 0.9, 0.75, 0.5, 0], atol=1e-12)
  np.testing.assert_allclose(samplers.sigma_schedule(4, 1.0), [1, 0.75, 0.5, 0.25, 0])


def test_euler_is_first_order_and_heun_second_order_on_exact_flow():
  euler = [_error("euler", n) for n in (16, 32, 64)]
  heun = [_error("heun", n) for n in (16, 32, 64)]
  # Error ratios when the step count doubles: 2 for first order, 4 for second order.
  for coarse, fine in zip(euler[:-1], euler[1:]):
    assert 1.8 < coarse / fine < 2.2, euler
  for coarse, fine in zip(heun[:-1], heun[1:]):
    assert 3.3 < coarse / fine < 4.7, heun
  # Stated tolerances at 32 steps (shift 3), max over 512 samples: Euler 0.4, Heun 0.015.
  assert euler[1] < 0.4 and heun[1] < 0.015, (euler, heun)


def test_dpm_solver_matches_diffusers_and_beats_euler():
  import torch
  from diffusers import DPMSolverMultistepScheduler

  scheduler = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                          flow_shift=3.0, final_sigmas_type="zero")
  scheduler.set_timesteps(20)
  sigmas = scheduler.sigmas.double().numpy()
  x1 = np.asarray(_source()[:16], np.float64)
  x = torch.tensor(x1)
  for i, t in enumerate(scheduler.timesteps):
    v = gaussian_velocity(None, x.numpy(), np.full(16, sigmas[i] * 1000), *NO_CONTEXT)
    x = scheduler.step(torch.tensor(np.asarray(v, np.float64)), t, x).prev_sample
  ours = samplers.integrate(gaussian_velocity, ONE_EXPERT, jnp.asarray(x1, jnp.float32), NO_CONTEXT,
                            sigmas=sigmas, solver="dpm++2m", boundaries=(), timestep_scale=1000.0)
  np.testing.assert_allclose(ours, x.numpy(), atol=2e-5)
  assert _error("dpm++2m", 20) < 0.5 * _error("euler", 20)


def _cond_velocity(params, x, t, lr, cond, cond_mask):
  """Velocity set by the condition: mean of the valid tokens, per sample."""
  valid = cond_mask[..., None]
  mean = (cond * valid).sum((1, 2)) / jnp.maximum(valid.sum((1, 2)), 1) / cond.shape[-1]
  return x * 0.1 + mean[:, None]


def test_classifier_free_guidance():
  x1 = jax.random.normal(jax.random.PRNGKey(1), (2, 3))
  cond = jnp.stack([jnp.ones((4, 2)), 2 * jnp.ones((4, 2))])
  mask = jnp.array([[True, True, False, False]] * 2)
  null = (jnp.full((1, 4, 2), -1.0), jnp.ones((1, 4), bool))
  seen_batches = []

  def recording(*args):
    seen_batches.append(args[1].shape[0])
    return _cond_velocity(*args)

  run = lambda apply_fn, g, null_context: samplers.integrate(apply_fn, ONE_EXPERT, x1, (
      None, cond, mask), sigmas=samplers.sigma_schedule(5, 1.0), solver="euler", boundaries=(
      ), timestep_scale=1000.0, guidance_scale=g, null_context=null_context)
  conditional = run(_cond_velocity, 1.0, None)
  np.testing.assert_array_equal(run(recording, 1.0, null), conditional)
  assert seen_batches == [2]  # scale 1: the null pass is skipped
  # Scale g: the sampler must integrate v_null + g·(v_cond − v_null), built here by hand.
  null_tokens = jnp.broadcast_to(null[0], cond.shape)
  null_mask = jnp.broadcast_to(null[1], mask.shape)

  def hand_guided(params, x, t, lr, cond, cond_mask):
    v_null = _cond_velocity(params, x, t, lr, null_tokens, null_mask)
    return v_null + 4.5 * (_cond_velocity(params, x, t, lr, cond, cond_mask) - v_null)

  np.testing.assert_allclose(run(recording, 4.5, null), run(hand_guided, 1.0, None), rtol=1e-6)
  assert seen_batches[-1] == 4  # conditional and null passes batched together


@pytest.mark.parametrize("solver", ["euler", "heun", "dpm++2m"])
def test_each_step_runs_the_expert_whose_interval_holds_its_start(solver):
  boundaries = experts.snr_boundaries(4, -7.04, 8.89, 0.875)
  sigmas = samplers.sigma_schedule(8, 1.0)  # 1, 0.875 (a boundary exactly), 0.75, ..., 0
  calls = []

  def identified(params, x, t, lr, cond, cond_mask):
    jax.debug.callback(lambda t, e: calls.append((float(t[0]) / 1000, int(e))), t, params["id"],
                       ordered=True)
    return jnp.zeros_like(x) + params["id"].astype(x.dtype)

  stacked = {"id": jnp.arange(4)}
  jax.jit(lambda x1: samplers.integrate(identified, stacked, x1, NO_CONTEXT, sigmas=sigmas, solver=
                                        solver, boundaries=boundaries, timestep_scale=1000.0))(
                                            jnp.zeros((1, 2))).block_until_ready()
  # Expected by hand: expert e owns [b_{e-1}, b_e); both Heun evaluations use the step's start.
  owner = lambda sigma: sum(sigma >= b for b in (0.22277892, 0.875, 0.9389435))
  starts = [s for s in sigmas[:-1] for _ in range(2 if solver == "heun" else 1)]
  assert [e for _, e in calls] == [owner(s) for s in starts]
  assert [e for _, e in calls
         ][:3 if solver != "heun" else 4] == ([3, 2, 1] if solver != "heun" else [3, 3, 2, 2])


def test_sample_is_deterministic_per_seed_and_lr_source_starts_at_lr():
  cfg = flow.default_config()
  cfg.sampler.steps = 4
  zero = lambda params, x, *args: jnp.zeros_like(x)
  run = jax.jit(lambda key: samplers.sample(gaussian_velocity, ONE_EXPERT, key,
                                            (8, 4), NO_CONTEXT, cfg))
  a, b, c = run(jax.random.PRNGKey(5)), run(jax.random.PRNGKey(5)), run(jax.random.PRNGKey(6))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  # LR-anchored source: an untrained (zero-velocity) model returns the upsampled-LR latent.
  cfg.update(source="lr", lr_source_noise=0.0)
  lr_latent = jnp.linspace(-1, 1, 32).reshape(8, 4)
  out = samplers.sample(zero, ONE_EXPERT, jax.random.PRNGKey(5), (8, 4), NO_CONTEXT, cfg,
                        lr_latent=lr_latent)
  np.testing.assert_allclose(out, lr_latent, atol=1e-7)


@pytest.mark.slow
def test_sharded_dit_sampling_with_experts_and_guidance_matches_unsharded():
  cfg = flow.default_config()
  cfg.sampler.update(steps=4, solver="euler", guidance_scale=3.0)
  boxed, params = distinct_dit_experts(4)
  apply_fn = experts.model_apply(DiT(SMALL_DIT))
  k = jax.random.split(jax.random.PRNGKey(7), 2)
  context = (jax.random.uniform(k[0], (2, 4, 4, 3), minval=-1, maxval=1),
             jax.random.normal(k[1], (2, 3, 8)), jnp.array([[True, True, False]] * 2))
  null = (jnp.zeros((1, 3, 8)), jnp.ones((1, 3), bool))
  run = lambda p, context: samplers.sample(apply_fn, p, jax.random.PRNGKey(8),
                                           (2, 4, 4, 4), context, cfg, null_context=null)
  expected = jax.jit(run)(params, context)
  mesh = sharding.make_mesh({"expert": 4, "data": 2})
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(sharding.DEFAULT_RULES)):
    sharded = jax.device_put(params, sharding.tree_shardings(boxed, mesh))
    context_s = jax.device_put(context,
                               jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    out = jax.jit(run)(sharded, context_s)
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
