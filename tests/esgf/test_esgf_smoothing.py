"""LOWESS and EMA smoothing of validation curves."""

import numpy as np

from linearsr_jax import esgf


def test_lowess_follows_a_line_and_ignores_an_outlier():
  x = np.arange(30.0)
  y = 2.0 * x + 1.0
  for degree in (1, 2):
    np.testing.assert_allclose(esgf.lowess(x, y, 7, 2, degree), y, atol=1e-9)
  parabola = 0.1 * (x - 10.0)**2
  np.testing.assert_allclose(esgf.lowess(x, parabola, 7, 0, 2), parabola, atol=1e-9)
  noisy = y + 0.1 * np.random.default_rng(0).standard_normal(30)
  spiked = noisy.copy()
  spiked[15] += 50.0
  # Cleveland's classic setting: local lines, two robustness iterations.
  plain, robust = esgf.lowess(x, spiked, 7, 0, 1), esgf.lowess(x, spiked, 7, 2, 1)
  assert np.abs(plain[10:21] - y[10:21]).max() > 5.0  # the spike drags a plain local fit
  np.testing.assert_allclose(robust[10:21], y[10:21], atol=0.6)
  # The causal EMA of a constant is the constant, and it lags a step by (1-α)/α on average.
  np.testing.assert_allclose(esgf.ema(np.full(10, 3.0), 0.3), 3.0)
