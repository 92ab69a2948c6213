"""Synthetic validation curves for the ESGF tests, with knees known independently.

The "true knee" of a smooth curve is Kneedle's point on the *noiseless* curve over the same
range of steps: the point farthest above the chord in min-max normalised coordinates. For
y = a(1 - exp(-s/τ)) on [s0, s1] it has a closed form (below), cross-checked against a
dense float64 grid; for piecewise-linear curves it is the corner. The detector only ever
sees noisy samples, and online it decides with the data seen so far, so the knee it reports
is compared with the true knee of the range [first step, firing step].

Tolerance, stated once: |found - true| <= max(2 evaluation intervals, 15% of the run).
"""

import math

import numpy as np

from linearsr_jax import esgf

INTERVAL = 100  # training steps between evaluations


def tolerance(run_steps):
  return max(2 * INTERVAL, 0.15 * run_steps)


def exponential_knee(tau, s0, s1):
  """Kneedle on a(1 - exp(-s/τ)) over [s0, s1], solved by hand: the normalised curve's
  slope equals the chord's where a·exp(-s/τ)/τ / (y(s1) - y(s0)) = 1 / (s1 - s0)."""
  return -tau * math.log(tau * (math.exp(-s0 / tau) - math.exp(-s1 / tau)) / (s1 - s0))


def dense_kneedle(f, s0, s1):
  """Kneedle on a fine float64 grid of the noiseless function (independent of esgf)."""
  s = np.linspace(s0, s1, 200001)
  y = f(s)
  xn, yn = (s - s0) / (s1 - s0), (y - y.min()) / (y.max() - y.min())
  return s[np.argmax(yn - (yn[0] + xn * (yn[-1] - yn[0])))]


def config(metrics="val/psnr_y:max", **overrides):
  c = esgf.default_config()
  c.metrics = metrics
  c.update(overrides)
  return c


def run_online(steps, values, cfg, name="val/psnr_y"):
  """Feeds the detector one evaluation at a time, as the training loop does.

  Returns (decision, firing step or None, decisions so far)."""
  detector = esgf.KneeDetector(cfg)
  history = []
  for step, value in zip(steps, values):
    decision = detector.update(int(step), {name: float(value)})
    history.append(decision)
    if decision.fired:
      return decision, int(step), history
  return decision, None, history


def eval_steps(n):
  return INTERVAL * np.arange(1, n + 1)


def two_metric_records(tau_psnr, tau_lpips, n, seed=0, noise=0.01):
  """PSNR rising and LPIPS falling, each a saturating exponential with its own τ."""
  steps = eval_steps(n)
  rng = np.random.default_rng(seed)
  psnr = 24.0 + 3.0 * (1 - np.exp(-steps / tau_psnr)) + 3.0 * noise * rng.standard_normal(n)
  lpips = 0.25 + 0.2 * np.exp(-steps / tau_lpips) + 0.2 * noise * rng.standard_normal(n)
  return steps, [(int(s), {"val/psnr_y": float(p), "val/lpips_alex": float(l)})
                 for s, p, l in zip(steps, psnr, lpips)]


def fire_online(records, cfg):
  detector = esgf.KneeDetector(cfg)
  for step, values in records:
    if detector.update(step, values).fired:
      return detector.decision, step
  return detector.decision, None
