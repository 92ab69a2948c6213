"""Flow matching: interpolation, target, shift, timestep densities, sources, loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from linearsr_jax.diffusion import flow
from linearsr_jax.errors import UserError


def _cfg(**overrides):
  cfg = flow.default_config()
  cfg.update(overrides)
  return cfg


def test_interpolation_endpoints_and_midpoint():
  x0 = jnp.arange(12.0).reshape(2, 3, 2)
  x1 = -jnp.ones((2, 3, 2))
  np.testing.assert_array_equal(flow.interpolate(x0, x1, jnp.zeros(2)), x0)
  np.testing.assert_array_equal(flow.interpolate(x0, x1, jnp.ones(2)), x1)
  mixed = flow.interpolate(x0, x1, jnp.array([0.25, 0.5]))
  np.testing.assert_allclose(mixed[0], 0.75 * np.asarray(x0[0]) - 0.25)
  np.testing.assert_allclose(mixed[1], 0.5 * np.asarray(x0[1]) - 0.5)


def test_velocity_target_is_derivative_of_path():
  x0, x1 = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 4, 2))
  sigma = jnp.array([0.1, 0.5, 0.9])
  h = 1e-2
  finite_diff = (flow.interpolate(x0, x1, sigma + h) - flow.interpolate(x0, x1, sigma - h)) / (2 *
                                                                                               h)
  np.testing.assert_allclose(flow.velocity_target(x0, x1), finite_diff, atol=1e-4)
  np.testing.assert_allclose(flow.velocity_target(x0, x1), np.asarray(x1) - np.asarray(x0))


def test_shift_matches_hand_values():
  sigma = jnp.array([0.0, 0.25, 0.5, 0.75, 1.0])
  # s=3: 3σ/(1+2σ): 0, 0.75/1.5, 1.5/2, 2.25/2.5, 1
  np.testing.assert_allclose(flow.shift_sigma(sigma, 3.0), [0, 0.5, 0.75, 0.9, 1], atol=1e-7)
  np.testing.assert_allclose(flow.shift_sigma(sigma, 1.0), sigma)
  np.testing.assert_allclose(flow.unshift_sigma(flow.shift_sigma(sigma, 3.0), 3.0), sigma,
                             atol=1e-7)


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (-0.5, 0.6)])
def test_logit_normal_moments_match_config(mean, std):
  cfg = _cfg(logit_mean=mean, logit_std=std, train_shift=1.0)
  n = 200_000
  sigma = np.asarray(flow.sample_sigma(jax.random.PRNGKey(1), (n,), cfg), np.float64)
  assert sigma.min() > 0 and sigma.max() < 1
  z = np.log(sigma) - np.log1p(-sigma)
  # Standard errors: std/sqrt(n) for the mean, std/sqrt(2n) for the std; allow 5 of them.
  assert abs(z.mean() - mean) < 5 * std / np.sqrt(n)
  assert abs(z.std() - std) < 5 * std / np.sqrt(2 * n)
  assert stats.kstest(z, "norm", args=(mean, std)).pvalue > 1e-3


def test_restricted_draws_follow_truncated_density():
  cfg = _cfg(train_shift=3.0)
  lo, hi = 0.875, 0.939
  sigma = np.asarray(flow.sample_sigma(jax.random.PRNGKey(2), (50_000,), cfg, lo, hi), np.float64)
  assert sigma.min() >= lo and sigma.max() <= hi
  # Under the shift, logit(unshift(σ)) is N(0, 1) truncated to the unshifted interval.
  u = sigma / (3 - 2 * sigma)
  a, b = [np.log(v / (3 - 2 * v)) - np.log1p(-v / (3 - 2 * v)) for v in (lo, hi)]
  z = np.log(u) - np.log1p(-u)
  assert stats.kstest(z, stats.truncnorm(a, b).cdf).pvalue > 1e-3


def test_uniform_sampling_is_uniform_before_shift():
  cfg = _cfg(timestep_sampling="uniform", train_shift=2.0)
  sigma = np.asarray(flow.sample_sigma(jax.random.PRNGKey(3), (50_000,), cfg), np.float64)
  u = sigma / (2 - sigma)
  assert stats.kstest(u, "uniform").pvalue > 1e-3


def test_source_prob_puts_that_share_at_sigma_one_for_the_expert_holding_it():
  cfg = _cfg(logit_mean=2.0, source_prob=0.3)
  n = 40_000
  lo, hi = np.array([[0.0], [0.5]]), np.array([[0.5], [1.0]])
  sigma = np.asarray(flow.sample_sigma(jax.random.PRNGKey(5), (2, n), cfg, lo, hi), np.float64)
  at_one = sigma[1] == 1.0
  # Binomial(n, 0.3): 5 standard errors.
  assert abs(at_one.mean() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / n)
  assert not (sigma[0] == 1.0).any() and sigma[0].max() <= 0.5
  # The rest keep the configured density: logit-normal(2, 1) truncated to [0.5, 1).
  z = np.log(sigma[1][~at_one]) - np.log1p(-sigma[1][~at_one])
  assert stats.kstest(z, stats.truncnorm(-2.0, np.inf, loc=2.0).cdf).pvalue > 1e-3


def test_sources():
  key = jax.random.PRNGKey(4)
  shape = (2, 4, 4, 3)
  eps = jax.random.normal(key, shape)
  np.testing.assert_array_equal(flow.draw_source(key, shape, _cfg()), eps)
  lr_latent = jnp.full(shape, 2.0)
  x1 = flow.draw_source(key, shape, _cfg(source="lr", lr_source_noise=0.2), lr_latent)
  np.testing.assert_allclose(x1, 2.0 + 0.2 * np.asarray(eps), rtol=1e-6)
  with pytest.raises(UserError, match="upsampled LR"):
    flow.draw_source(key, shape, _cfg(source="lr"))
  with pytest.raises(UserError, match="source"):
    flow.check_config(_cfg(source="pixels"))


def test_loss_weights_and_target():
  x0 = jnp.zeros((2, 2, 2, 1))
  x1 = jnp.ones((2, 2, 2, 1))
  sigma = jnp.array([0.3, 0.7])
  perfect = lambda x_t, s: jnp.ones_like(x_t)  # the exact velocity x1 − x0
  assert float(flow.flow_loss(perfect, x0, x1, sigma)) == 0.0
  # Predicting the current point x_σ = σ instead: per-sample error (σ − 1)² = 0.49, 0.09.
  predict_state = lambda x_t, s: x_t
  np.testing.assert_allclose(flow.flow_loss(predict_state, x0, x1, sigma), (0.49 + 0.09) / 2,
                             rtol=1e-6)
  np.testing.assert_allclose(
      flow.flow_loss(predict_state, x0, x1, sigma, weights=jnp.array([2.0, 0.0])), 0.49, rtol=1e-6)
