"""ESGF knee detection on synthetic validation curves whose knee is known independently
(see esgf_helpers: the true knee and the tolerance)."""

import math

import numpy as np
import pytest

from esgf_helpers import (INTERVAL, config, dense_kneedle, eval_steps, exponential_knee, run_online,
                          tolerance, two_metric_records)
from linearsr_jax import esgf


def test_the_reference_knee_formula_matches_a_dense_grid():
  for tau, s0, s1 in [(500, 100, 6000), (2000, 100, 8000), (800, 300, 2400)]:
    found = dense_kneedle(lambda s: 3.0 * (1 - np.exp(-s / tau)), s0, s1)
    assert abs(found - exponential_knee(tau, s0, s1)) < 1.0


@pytest.mark.parametrize("tau_evals", [5, 10, 20])
@pytest.mark.parametrize("noise", [0.005, 0.02, 0.05])  # fraction of the total rise
def test_saturating_exponential_fires_near_the_true_knee(tau_evals, noise):
  tau, n = tau_evals * INTERVAL, 12 * tau_evals
  steps = eval_steps(n)
  cfg = config()
  for seed in range(4):
    rng = np.random.default_rng(seed)
    psnr = 24.0 + 4.0 * (1 - np.exp(-steps / tau)) + 4.0 * noise * rng.standard_normal(n)
    decision, fired_at, history = run_online(steps, psnr, cfg)
    assert fired_at is not None, (seed, decision.reason)
    true_knee = exponential_knee(tau, steps[0], fired_at)
    assert abs(decision.knee_step - true_knee) <= tolerance(fired_at), (seed, decision.knee_step,
                                                                        true_knee, decision.reason)
    # Confirmed, not guessed: at least `patience` evaluations after the knee were seen.
    assert fired_at >= decision.knee_step + cfg.patience * INTERVAL
    assert 0.0 < decision.confidence <= 1.0
    assert not any(d.fired for d in history[:-1])


def test_offline_detection_of_a_whole_exponential_run():
  tau, n = 1000, 100
  steps = eval_steps(n)
  rng = np.random.default_rng(7)
  psnr = 25.0 + 3.0 * (1 - np.exp(-steps / tau)) + 0.05 * rng.standard_normal(n)
  records = [(int(s), {"val/psnr_y": float(v)}) for s, v in zip(steps, psnr)]
  decision = esgf.detect(records, config())
  assert decision.fired, decision.reason
  assert abs(decision.knee_step - exponential_knee(tau, steps[0], steps[-1])) <= tolerance(
      steps[-1])
  assert "plateau" in decision.reason


@pytest.mark.parametrize("seed", range(4))
def test_plateau_followed_by_oscillation(seed):
  """Linear rise to a corner at step 2500, then flat with a slow oscillation and twice the
  noise (the paper's "plateau and oscillation"); the true knee is the corner."""
  corner, n = 2500, 60
  steps = eval_steps(n)
  rng = np.random.default_rng(seed)
  after = steps > corner
  psnr = (24.0 + 3.0 * np.minimum(steps, corner) / corner +
          np.where(after, 0.15 * np.sin(steps / 300.0), 0.0) +
          0.03 * rng.standard_normal(n) * np.where(after, 2.0, 1.0))
  decision, fired_at, _ = run_online(steps, psnr, config())
  assert fired_at is not None, decision.reason
  assert abs(decision.knee_step - corner) <= tolerance(fired_at), decision.reason


def test_curve_that_turns_back():
  """Rises linearly to a peak at step 2500 (the corner: the true knee), then falls."""
  corner, n = 2500, 60
  steps = eval_steps(n)
  reasons = []
  for seed in range(4):
    rng = np.random.default_rng(seed)
    psnr = (24.0 + 3.0 * np.minimum(steps, corner) / corner -
            np.maximum(steps - corner, 0) / 1000.0 + 0.1 * rng.standard_normal(n))
    decision, fired_at, _ = run_online(steps, psnr, config())
    assert fired_at is not None, decision.reason
    assert abs(decision.knee_step - corner) <= tolerance(fired_at), decision.reason
    reasons.append(decision.reason)
  assert any("turned back" in r for r in reasons), reasons


def test_oscillation_confirms_when_the_trend_is_unclear():
  """After a corner at step 2000 the curve creeps up a little (too much for a plateau at
  this min_delta) and its noise grows 4x; the oscillation rule accepts it, the same curve
  with unchanged noise is still improving."""
  corner, n = 2000, 70
  steps = eval_steps(n)
  after = steps > corner
  base = 24.0 + 3.0 * np.minimum(steps, corner) / corner + 0.002 * np.maximum(steps - corner,
                                                                              0) / INTERVAL
  wiggle = 0.02 * np.random.default_rng(5).standard_normal(n)
  cfg = config(min_delta=0.005, variance=dict(improvement_factor=100.0))
  calm = esgf.detect([(int(s), {"val/psnr_y": v}) for s, v in zip(steps, base + wiggle)], cfg)
  wild = esgf.detect([
      (int(s), {"val/psnr_y": v}) for s, v in zip(steps, base + wiggle * np.where(after, 4.0, 1.0))
  ], cfg)
  assert not calm.fired and "still improving" in calm.reason, calm.reason
  assert wild.fired and "oscillation: variance x" in wild.reason, wild.reason
  assert abs(wild.knee_step - corner) <= tolerance(steps[-1])


def test_smooth_rise_then_fall_finds_the_dense_reference_knee():
  """y = 3(1 - exp(-s/τ)) - s/4000: peaks, then declines (overfitting)."""
  tau, n = 800, 60
  steps = eval_steps(n)
  curve = lambda s: 3.0 * (1 - np.exp(-s / tau)) - s / 4000.0
  psnr = 24.0 + curve(steps) + 0.02 * np.random.default_rng(3).standard_normal(n)
  decision, fired_at, _ = run_online(steps, psnr, config())
  assert fired_at is not None, decision.reason
  true_knee = dense_kneedle(curve, steps[0], fired_at)
  assert abs(decision.knee_step - true_knee) <= tolerance(fired_at), decision.reason


NO_KNEE = {
    # Still improving at the end: each window of `patience` evaluations gains well above
    # min_delta (2% of the gain so far).
    "linear": lambda s: 3.0 * s / s[-1],
    "log": lambda s: 3.0 * np.log1p(s / 2000.0) / np.log1p(s[-1] / 2000.0),
    "sqrt": lambda s: 3.0 * np.sqrt(s / s[-1]),
    "flat noise": lambda s: 0.0 * s,
}


@pytest.mark.parametrize("shape", sorted(NO_KNEE))
def test_never_fires_without_a_knee(shape):
  n = 80
  steps = eval_steps(n)
  for seed in range(6):
    for noise in (0.005, 0.02, 0.1):  # fraction of a 3 dB rise
      rng = np.random.default_rng(seed)
      psnr = 24.0 + NO_KNEE[shape](steps) + 3.0 * noise * rng.standard_normal(n)
      decision, fired_at, _ = run_online(steps, psnr, config())
      assert fired_at is None, (seed, noise, decision.reason)
      assert decision.reason.startswith("no knee yet")


def test_waits_for_min_points_and_for_confirmation():
  """A curve whose knee is obvious early (τ = 3 evaluations): the detector may neither judge
  before min_points nor fire before `patience` evaluations after the knee."""
  steps = eval_steps(60)
  rng = np.random.default_rng(0)
  psnr = 24.0 + 3.0 * (1 - np.exp(-steps / 300.0)) + 0.01 * rng.standard_normal(60)
  _, fired_at, history = run_online(steps, psnr, config(min_points=10))
  for decision in history[:9]:
    assert not decision.fired and "of 10 evaluations needed" in decision.reason
  assert fired_at is not None and fired_at > 1000
  late, late_fire, history = run_online(steps, psnr, config(min_points=40))
  assert late_fire == steps[39]  # the first moment it may decide, having seen a plateau
  assert all("of 40 evaluations needed" in d.reason for d in history[:39])
  patient, patient_fire, history = run_online(steps, psnr, config(patience=12))
  assert patient_fire >= patient.knee_step + 12 * INTERVAL
  waiting = [
      d.metric("val/psnr_y").reason
      for d in history
      if d.metric("val/psnr_y").knee_step is not None and not d.fired
  ]
  assert waiting and all(
      "of 12 evaluations after it seen" in r or "still improving" in r for r in waiting)


def test_lower_is_better_metric_is_the_mirror_image():
  steps, records = two_metric_records(800, 800, 80)
  psnr = esgf.detect(records, config("val/psnr_y:max"))
  lpips = esgf.detect(records, config("val/lpips_alex:min"))
  wrong_way = esgf.detect(records, config("val/lpips_alex:max"))
  assert psnr.fired and lpips.fired, (psnr.reason, lpips.reason)
  for decision in (psnr, lpips):
    assert abs(decision.knee_step - exponential_knee(800, steps[0], steps[-1])) <= tolerance(
        steps[-1])
  # Read as higher-is-better, LPIPS falls throughout: there is no rise to have a knee in.
  assert not wrong_way.fired


@pytest.mark.parametrize("method", ["ema", "none"])
def test_other_smoothers(method):
  tau, n = 600, 80
  steps, records = two_metric_records(tau, tau, n, noise=0.005)
  decision = esgf.detect(records, config(smoothing=dict(method=method)))
  assert decision.fired, decision.reason
  assert abs(decision.knee_step - exponential_knee(tau, steps[0], steps[-1])) <= tolerance(
      steps[-1])


def test_maximum_curvature_knee_on_a_clean_curve():
  """Maximum curvature (normalised slope 1/sqrt 2) sits τ·ln(sqrt 2) after Kneedle's
  point (normalised slope ~1) on an exponential; second derivatives need clean data."""
  tau, n = 600, 80
  steps, records = two_metric_records(tau, tau, n, noise=0.0)
  decision = esgf.detect(records, config(knee=dict(method="curvature")))
  assert decision.fired, decision.reason
  expected = exponential_knee(tau, steps[0], steps[-1]) + tau * math.log(math.sqrt(2))
  assert abs(decision.knee_step - expected) <= 2 * INTERVAL
