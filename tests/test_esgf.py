"""ESGF knee detection on synthetic validation curves whose knee is known independently.

The "true knee" of a smooth curve is Kneedle's point on the *noiseless* curve over the same
range of steps: the point farthest above the chord in min-max normalised coordinates. For
y = a(1 - exp(-s/τ)) on [s0, s1] it has a closed form (below), cross-checked against a
dense float64 grid; for piecewise-linear curves it is the corner. The detector only ever
sees noisy samples, and online it decides with the data seen so far, so the knee it reports
is compared with the true knee of the range [first step, firing step].

Tolerance, stated once: |found - true| <= max(2 evaluation intervals, 15% of the run).
"""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from linearsr_jax.errors import UserError
from linearsr_jax.train import esgf

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
    assert abs(decision.knee_step - true_knee) <= tolerance(fired_at), (
        seed, decision.knee_step, true_knee, decision.reason)
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
  psnr = (24.0 + 3.0 * np.minimum(steps, corner) / corner
          + np.where(after, 0.15 * np.sin(steps / 300.0), 0.0)
          + 0.03 * rng.standard_normal(n) * np.where(after, 2.0, 1.0))
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
    psnr = (24.0 + 3.0 * np.minimum(steps, corner) / corner
            - np.maximum(steps - corner, 0) / 1000.0 + 0.1 * rng.standard_normal(n))
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
  base = 24.0 + 3.0 * np.minimum(steps, corner) / corner + 0.002 * np.maximum(
      steps - corner, 0) / INTERVAL
  wiggle = 0.02 * np.random.default_rng(5).standard_normal(n)
  cfg = config(min_delta=0.005, variance=dict(improvement_factor=100.0))
  calm = esgf.detect([(int(s), {"val/psnr_y": v}) for s, v in zip(steps, base + wiggle)], cfg)
  wild = esgf.detect([(int(s), {"val/psnr_y": v}) for s, v in
                      zip(steps, base + wiggle * np.where(after, 4.0, 1.0))], cfg)
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
  waiting = [d.metric("val/psnr_y").reason for d in history
             if d.metric("val/psnr_y").knee_step is not None and not d.fired]
  assert waiting and all("of 12 evaluations after it seen" in r or "still improving" in r
                         for r in waiting)


def two_metric_records(tau_psnr, tau_lpips, n, seed=0, noise=0.01):
  """PSNR rising and LPIPS falling, each a saturating exponential with its own τ."""
  steps = eval_steps(n)
  rng = np.random.default_rng(seed)
  psnr = 24.0 + 3.0 * (1 - np.exp(-steps / tau_psnr)) + 3.0 * noise * rng.standard_normal(n)
  lpips = 0.25 + 0.2 * np.exp(-steps / tau_lpips) + 0.2 * noise * rng.standard_normal(n)
  return steps, [(int(s), {"val/psnr_y": float(p), "val/lpips": float(l)})
                 for s, p, l in zip(steps, psnr, lpips)]


def fire_online(records, cfg):
  detector = esgf.KneeDetector(cfg)
  for step, values in records:
    if detector.update(step, values).fired:
      return detector.decision, step
  return detector.decision, None


def test_lower_is_better_metric_is_the_mirror_image():
  steps, records = two_metric_records(800, 800, 80)
  psnr = esgf.detect(records, config("val/psnr_y:max"))
  lpips = esgf.detect(records, config("val/lpips:min"))
  wrong_way = esgf.detect(records, config("val/lpips:max"))
  assert psnr.fired and lpips.fired, (psnr.reason, lpips.reason)
  for decision in (psnr, lpips):
    assert abs(decision.knee_step - exponential_knee(800, steps[0], steps[-1])) <= tolerance(
        steps[-1])
  # Read as higher-is-better, LPIPS falls throughout: there is no rise to have a knee in.
  assert not wrong_way.fired


def test_combining_psnr_and_lpips():
  """PSNR knees early (τ = 4 evaluations), LPIPS late (τ = 12)."""
  steps, records = two_metric_records(400, 1200, 100)
  both = "val/psnr_y:max,val/lpips:min"
  psnr_alone, psnr_fire = fire_online(records, config("val/psnr_y:max"))
  lpips_alone, lpips_fire = fire_online(records, config("val/lpips:min"))
  assert psnr_fire < lpips_fire
  every, every_fire = fire_online(records, config(both, combine="all"))
  anyone, any_fire = fire_online(records, config(both, combine="any"))
  # "all" waits for the slower metric, "any" fires with the faster one ...
  assert every_fire == lpips_fire and any_fire == psnr_fire
  assert anyone.knee_step == psnr_alone.knee_step
  # ... and the knee step is the earliest of the confirmed knees by default, or the latest.
  per_metric = {m.name: m.knee_step for m in every.metrics}
  assert every.knee_step == min(per_metric.values()) < max(per_metric.values())
  latest, _ = fire_online(records, config(both, knee_step="latest"))
  assert latest.knee_step == max(m.knee_step for m in latest.metrics)
  assert all(m.confirmed for m in every.metrics)
  assert [m.confirmed for m in anyone.metrics] == [True, False]


def test_metric_not_logged_does_not_block_the_others():
  _, records = two_metric_records(400, 400, 60)
  psnr_only = [(s, {"val/psnr_y": v["val/psnr_y"]}) for s, v in records]
  decision = esgf.detect(psnr_only, config("val/psnr_y:max,val/lpips:min"))
  assert decision.fired and [m.name for m in decision.metrics] == ["val/psnr_y"]
  nothing = esgf.detect(psnr_only, config("val/ssim_y:max"))
  assert not nothing.fired and "has been logged" in nothing.reason


def test_retention_of_candidate_steps_keeps_the_knee_checkpoint():
  """A checkpoint manager that deletes every checkpoint as soon as ESGF no longer lists it
  (except the newest) still holds the knee checkpoint when ESGF fires, although the knee
  candidate drifts later as the run grows."""
  for seed in range(3):
    steps, records = two_metric_records(600, 900, 100, seed=seed, noise=0.02)
    detector = esgf.KneeDetector(config("val/psnr_y:max,val/lpips:min"))
    kept, released = set(), False
    for step, values in records:
      decision = detector.update(step, values)
      kept = (kept | {step}) & (detector.candidate_steps() | {step})
      released |= not decision.fired and len(kept) < len(detector.records)
      if decision.fired:
        break
    assert decision.fired and decision.knee_step in kept
    # Only around the knee, and the newest checkpoint (the manager always holds it).
    assert len(kept) <= 2 * detector.config.candidate_radius + 2
    assert released  # while undecided, steps long before every candidate were let go


def test_candidate_steps_before_any_candidate_keep_everything():
  steps, records = two_metric_records(600, 600, 5)
  decision = esgf.detect(records, config())
  assert not decision.fired
  assert esgf.candidate_steps(decision) == frozenset(int(s) for s in steps)


def test_resumed_detector_matches_the_uninterrupted_one():
  _, records = two_metric_records(500, 700, 80, seed=4, noise=0.02)
  cfg = config("val/psnr_y:max,val/lpips:min")
  straight, fired = fire_online(records, cfg)
  cut = [r for r in records if r[0] < fired - 1500]
  # The killed run had logged 5 evaluations past its last checkpoint, with other values.
  stale = [(s, {k: v + 0.5 for k, v in m.items()}) for s, m in records
           if fired - 1500 <= s < fired - 1000]
  resumed = esgf.KneeDetector(cfg, cut + stale)
  for step, values in records:
    if step >= fired - 1500:
      decision = resumed.update(step, values)
      if decision.fired:
        break
  assert (step, decision) == (fired, straight)


def test_update_takes_the_loop_metrics_dict_as_it_comes():
  """NumPy / 0-d array scalars count; text, flags and image arrays are ignored."""
  detector = esgf.KneeDetector(config())
  detector.update(100, {"val/psnr_y": np.float32(25.5), "val/lpips": np.array(0.3),
                        "note": "ok", "flag": True, "val/images": np.zeros((2, 4, 4, 3))})
  assert detector.records == [(100, {"val/psnr_y": 25.5, "val/lpips": pytest.approx(0.3)})]


def test_fired_decision_is_latched():
  _, records = two_metric_records(400, 400, 60)
  detector = esgf.KneeDetector(config())
  first = next(d for d in (detector.update(s, v) for s, v in records) if d.fired)
  assert detector.update(10_000, {"val/psnr_y": 40.0, "val/lpips": 0.01}) is first


def test_read_metrics_jsonl(tmp_path):
  path = tmp_path / "metrics.jsonl"
  lines = [{"step": 100, "val/psnr_y": 25.0, "train/loss": 0.3},
           {"step": 150, "train/loss": 0.2},  # training line: no validation metric
           {"val/psnr_y": 99.0},  # no step
           {"step": 200, "val/psnr_y": float("nan")},  # dropped: not finite
           {"step": 200, "val/psnr_y": 25.5, "note": "text"},
           {"step": 100, "val/psnr_y": 24.0}]  # a resumed run's re-evaluation wins
  path.write_text("\n".join(json.dumps(line) for line in lines) + '\n{"step": 300, "val/ps')
  records, ignored = esgf.read_metrics_jsonl(path)
  assert ignored == 2  # the line without a step and the partial last line
  steps, values = esgf.metric_series(records, "val/psnr_y")
  assert steps.tolist() == [100, 200] and values.tolist() == [24.0, 25.5]
  with pytest.raises(UserError, match="does not exist"):
    esgf.read_metrics_jsonl(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("key, value", [("combine", "most"), ("smoothing.method", "spline"),
                                        ("min_points", 2), ("metrics", "val/psnr_y:up"),
                                        ("metrics", "a:max,a:min"), ("patience", 1)])
def test_bad_knobs_are_user_errors(key, value):
  cfg = config()
  section, _, name = key.rpartition(".")
  (cfg[section] if section else cfg)[name] = value
  with pytest.raises(UserError):
    esgf.KneeDetector(cfg)


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


def test_lowess_follows_a_line_and_ignores_an_outlier():
  x = np.arange(30.0)
  y = 2.0 * x + 1.0
  for degree in (1, 2):
    np.testing.assert_allclose(esgf.lowess(x, y, 7, 2, degree), y, atol=1e-9)
  parabola = 0.1 * (x - 10.0) ** 2
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


def red_pixels(png):
  from matplotlib.image import imread
  img = imread(png)[..., :3]
  return int(((img[..., 0] > 0.8) & (img[..., 1] < 0.3) & (img[..., 2] < 0.3)).sum())


def green_pixels(png):
  from matplotlib.image import imread
  img = imread(png)[..., :3]
  return int(((img[..., 1] > 0.45) & (img[..., 0] < 0.3) & (img[..., 2] < 0.3)).sum())


def test_plot_marks_the_knee_and_the_baseline(tmp_path):
  _, records = two_metric_records(400, 400, 60)
  cfg = config("val/psnr_y:max,val/lpips:min")
  fired = esgf.detect(records, cfg)
  early = esgf.detect(records[:12], cfg)
  assert fired.fired and not early.fired
  with_base = records + [(0, {"val/bicubic_psnr_y": 24.5, "val/bicubic_lpips": 0.4})]
  esgf.plot_curves(with_base, fired, cfg, tmp_path / "fired.png")
  esgf.plot_curves(records[:12], early, cfg, tmp_path / "early.png")
  assert red_pixels(tmp_path / "fired.png") > 200 and red_pixels(tmp_path / "early.png") == 0
  assert green_pixels(tmp_path / "fired.png") > 200 and green_pixels(tmp_path / "early.png") == 0


def run_cli(*args):
  proc = subprocess.run([sys.executable, "-m", "linearsr_jax.cli", "knee", *map(str, args)],
                        capture_output=True, text=True, timeout=120)
  return proc.returncode, proc.stdout, proc.stderr


def write_jsonl(path, records):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps({"step": s, **v}) + "\n" for s, v in records))


def test_cli_prints_the_decision(tmp_path):
  steps, records = two_metric_records(500, 500, 80)
  write_jsonl(tmp_path / "run" / "pretrain" / "metrics.jsonl", records)
  write_jsonl(tmp_path / "flat" / "metrics.jsonl", records[:15])
  expected = esgf.detect(records, esgf.default_config())
  code, out, err = run_cli("--workdir", tmp_path / "run", "--stage", "pretrain",
                           "--plot", tmp_path / "knee.png")
  assert code == 0, err
  assert f"knee: step {expected.knee_step}" in out
  assert abs(expected.knee_step - exponential_knee(500, steps[0], steps[-1])) <= tolerance(
      steps[-1])
  assert "val/psnr_y (max, 80 points): confirmed" in out and "plateau" in out
  assert (tmp_path / "knee.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  code, out, err = run_cli("--metrics_file", tmp_path / "flat" / "metrics.jsonl")
  assert code == 0 and "no knee yet" in out and "still improving" in out, out + err


def test_cli_errors_are_one_line(tmp_path):
  write_jsonl(tmp_path / "pretrain" / "metrics.jsonl", [(100, {"val/psnr_y": 25.0})])
  for args, message in [
      (["--workdir", tmp_path / "nowhere"], f"workdir {tmp_path}/nowhere does not exist"),
      (["--metrics_file", tmp_path / "x.jsonl"],
       f"metrics file {tmp_path}/x.jsonl does not exist")]:
    code, out, err = run_cli(*args)
    assert (code, out) == (2, "") and err == f"linearsr: error: {message}\n"


@pytest.mark.parametrize("args, message", [
    (["--workdir", "{tmp}"], "no metrics.jsonl in {tmp}; stages with metrics: pretrain "
                             "(pass --stage)"),
    (["--workdir", "{tmp}", "--stage", "moe"], "no metrics.jsonl in {tmp}/moe; stages with "
                                               "metrics: pretrain (pass --stage)"),
    (["--workdir", "{tmp}", "--stage", "pretrain", "--metrics", "psnr"],
     "ESGF metric 'psnr' must look like NAME:max or NAME:min"),
    (["--workdir", "{tmp}", "--stage", "pretrain", "--patience", "0"],
     "esgf.patience = 0 must be >= 2")])
def test_cli_bad_arguments(tmp_path, capsys, args, message):
  from linearsr_jax.cli import main
  write_jsonl(tmp_path / "pretrain" / "metrics.jsonl", [(100, {"val/psnr_y": 25.0})])
  assert main(["knee", *[a.format(tmp=tmp_path) for a in args]]) == 2
  captured = capsys.readouterr()
  assert captured.out == ""
  assert captured.err == f"linearsr: error: {message.format(tmp=tmp_path)}\n"
