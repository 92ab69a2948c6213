"""One metric's knee: where its curve stops improving, and whether that is confirmed.

The curve is first oriented so that higher is better (LPIPS is negated), then:
  1. smooth the raw values (LOWESS with local quadratics by default, a causal EMA, or none);
  2. estimate the noise σ from second differences of the raw values (they cancel a local
     linear trend; the estimate errs high, never low, so noise cannot make it fire);
  3. require a real rise: best smoothed value - mean of the first 3 raw values
     >= `min_rise_sigma` σ;
  4. the knee candidate is the point farthest above the chord from the first to the last
     point in min-max normalised coordinates (Kneedle), or of maximum curvature; a nearly
     straight curve (score < `knee.min_score`) has no knee. Kneedle's point depends on the
     range: on a(1 - exp(-s/τ)) over [0, L] it is at τ·ln(L/τ), so it drifts later as the
     run grows, which is why the detector re-decides after every evaluation;
  5. once `patience` evaluations follow the candidate, confirm it by one of:
       turned back - the mean of the last `turn_back.patience` raw values is below the
                     smoothed best (itself that many evaluations old) by more than
                     `turn_back.delta` and `turn_back.sigmas` standard errors;
       plateau     - the least-squares trend of the later two thirds of the points after
                     the knee, projected over `patience` evaluations (a fall counts as 0),
                     plus `noise_sigmas` standard errors, is <= min_delta (a fraction of
                     the gain so far, or absolute): the plateau must be shown, a trend
                     merely lost in noise does not count;
       oscillation - the noise variance after the knee is >= `variance.ratio` x the one
                     before it while that projected improvement stays within
                     `variance.improvement_factor` x min_delta.
"""

import dataclasses
import math
from typing import Mapping, Optional

import numpy as np

from linearsr_jax.esgf.smoothing import averaged_points, noise_sigma, smooth


def knee_index(steps, smoothed, method="kneedle") -> tuple:
  """(index, score) of the knee of a rising curve in min-max normalised coordinates.

  kneedle: the point farthest above the chord from the first to the last point (score =
  that vertical distance, 0 for a straight line, up to 1 for an L shape).
  curvature: the point of maximum concave curvature y''/(1+y'²)^1.5 (score = the Kneedle
  distance at that point, so both are judged on the same scale).
  """
  x = np.asarray(steps, dtype=np.float64)
  y = np.asarray(smoothed, dtype=np.float64)
  span_x, span_y = x[-1] - x[0], y.max() - y.min()
  if len(y) < 3 or span_x <= 0 or span_y <= 0:
    return 0, 0.0
  xn, yn = (x - x[0]) / span_x, (y - y.min()) / span_y
  above_chord = yn - (yn[0] + xn * (yn[-1] - yn[0]))
  if method == "curvature":
    dy = np.gradient(yn, xn)
    bend = -np.gradient(dy, xn) / (1.0 + dy * dy)**1.5
    index = 1 + int(np.argmax(bend[1:-1]))
  else:
    index = int(np.argmax(above_chord))
  return index, float(above_chord[index])


def projected_trend(steps, values, tail, horizon, sigma) -> tuple:
  """(gain, standard error): the least-squares slope of the last `tail` points, times
  `horizon` evaluation intervals, the error for white noise of std `sigma`."""
  x = np.asarray(steps[-tail:], dtype=np.float64)
  y = np.asarray(values[-tail:], dtype=np.float64)
  centred = x - x.mean()
  spread = float((centred**2).sum())
  span = horizon * float(np.median(np.diff(steps)))
  return (float((centred * (y - y.mean())).sum() / spread) * span, sigma / math.sqrt(spread) * span)


@dataclasses.dataclass(frozen=True)
class MetricKnee:
  """One metric's verdict. Values are in the metric's own units and orientation.

  `confidence` is the geometric mean of three scores in [0, 1]: shape (Kneedle score / 0.5),
  significance (rise in σ / (2 x min_rise_sigma)) and flatness (1 - improvement /
  min_delta; 1 for a turn back, >= 0.5 for oscillation), each capped at 1. An unconfirmed
  candidate reports how far it got (0 before there is one).
  """
  name: str
  direction: str
  points: int
  confirmed: bool
  knee_step: Optional[int]  # the candidate, confirmed or not; None before there is one
  reason: str
  confidence: float
  knee_value: Optional[float] = None  # smoothed value at the knee
  best_step: Optional[int] = None  # step of the best smoothed value
  evidence: Mapping = dataclasses.field(default_factory=dict)  # the numbers behind `reason`


@dataclasses.dataclass(frozen=True)
class _Curve:
  """A curve oriented so that higher is better, and the points the verdict turns on."""
  steps: np.ndarray
  raw: np.ndarray
  smoothed: np.ndarray
  sigma: float  # noise of the raw values
  best: int  # index of the best smoothed value
  knee: int  # index of the knee candidate
  knee_score: float

  @classmethod
  def of(cls, steps, oriented, config):
    smoothed = smooth(steps, oriented, config.smoothing)
    knee, score = knee_index(steps, smoothed, config.knee.method)
    return cls(steps, oriented, smoothed, noise_sigma(oriented), int(np.argmax(smoothed)), knee,
               score)


def _fmt(x):
  return f"{x:.4g}"


def _trend_text(config):
  return (f"the trend after the knee over {config.patience} evaluations "
          f"(+{config.noise_sigmas:g} s.e.)")


def analyze_metric(steps, values, name, direction, config) -> MetricKnee:
  """Judge one curve (steps ascending, finite values); see the module docstring."""
  steps = np.asarray(steps, dtype=np.int64)
  n = len(steps)
  sign = 1.0 if direction == "max" else -1.0
  verdict = dict(name=name, direction=direction, points=n)
  if n < config.min_points:
    return MetricKnee(confirmed=False, knee_step=None, confidence=0.0,
                      reason=f"{n} of {config.min_points} evaluations needed", **verdict)

  curve = _Curve.of(steps, sign * np.asarray(values, dtype=np.float64), config)
  # The start level is the mean of the first 3 raw values: a smoothed curve is least
  # certain at its ends, and a low start would fake a rise.
  gain = float(curve.smoothed[curve.best] - curve.raw[:3].mean())
  rise_sigmas = gain / curve.sigma if curve.sigma > 0 else (math.inf if gain > 0 else 0.0)
  verdict.update(knee_value=float(sign * curve.smoothed[curve.knee]),
                 best_step=int(steps[curve.best]))
  evidence = {
      "gain": gain, "noise_sigma": curve.sigma, "rise_sigmas": rise_sigmas,
      "knee_score": curve.knee_score
  }
  if rise_sigmas < config.min_rise_sigma:
    return MetricKnee(
        confirmed=False, knee_step=None, confidence=0.0, evidence=evidence,
        reason=f"no significant rise yet (gain {_fmt(gain)} = "
        f"{rise_sigmas:.1f} noise sigmas < {config.min_rise_sigma})", **verdict)
  knee_step = int(steps[curve.knee])
  verdict.update(knee_step=knee_step)
  if curve.knee_score < config.knee.min_score:
    return MetricKnee(
        confirmed=False, confidence=0.0, evidence=evidence,
        reason=f"no bend: the curve is nearly straight (knee score "
        f"{curve.knee_score:.3f} < {config.knee.min_score})", **verdict)

  after = n - 1 - curve.knee
  shape = min(1.0, curve.knee_score / 0.5)
  significance = min(1.0, rise_sigmas / (2.0 * config.min_rise_sigma))
  if after < config.patience:
    confidence = (shape * significance)**0.5 * after / config.patience
    return MetricKnee(
        confirmed=False, confidence=confidence, evidence=evidence,
        reason=f"candidate at step {knee_step}: {after} of {config.patience} "
        f"evaluations after it seen", **verdict)

  evidence.update(_flatness_evidence(curve, gain, config))
  reason, flatness = _confirmation(curve, evidence, config)
  if reason is None:
    return MetricKnee(
        confirmed=False, evidence=evidence, confidence=(shape * significance)**0.5 * flatness,
        reason=f"still improving: {_trend_text(config)} is "
        f"{_fmt(evidence['improvement'])} > "
        f"{_fmt(evidence['threshold'])}", **verdict)
  return MetricKnee(confirmed=True, evidence=evidence,
                    confidence=(shape * significance * flatness)**(1.0 / 3.0),
                    reason=f"knee at step {knee_step}, {reason}", **verdict)


def _flatness_evidence(curve, gain, config) -> dict:
  """The numbers the three confirmation rules compare, for a candidate followed by at least
  `patience` evaluations."""
  n, patience = len(curve.steps), config.patience
  after = n - 1 - curve.knee
  scale = gain if config.min_delta_mode == "relative" else 1.0
  # The trend of the later two thirds of the points after the knee (at least `patience`):
  # a fall counts as 0, and `noise_sigmas` standard errors are added, so a plateau must be
  # shown, not merely hidden by the noise.
  trend, trend_error = projected_trend(curve.steps, curve.raw, max(patience, (2 * after + 2) // 3),
                                       patience, curve.sigma)
  # Turned back: the mean of the latest raw values against the smoothed best; both are
  # noisy (the best of a smoothed curve is biased up), hence the noise term.
  recent = config.turn_back.patience
  fall_error = math.sqrt(1.0 / averaged_points(n, config.smoothing) + 1.0 / recent)
  # Oscillation: noise after the knee against noise before it, each from enough points.
  pre_noise = noise_sigma(curve.raw[:curve.knee + 1])
  post_noise = noise_sigma(curve.raw[curve.knee:])
  enough = min(curve.knee + 1, after + 1) >= config.variance.min_points
  return dict(
      trend=trend, trend_error=trend_error,
      improvement=max(trend, 0.0) + config.noise_sigmas * trend_error,
      threshold=config.min_delta * scale,
      drop=float(curve.smoothed[curve.best] - curve.raw[n - recent:].mean()),
      drop_threshold=max(config.turn_back.delta * scale,
                         config.turn_back.sigmas * curve.sigma * fall_error),
      variance_ratio=((post_noise / pre_noise)**2 if enough and pre_noise > 0 else 0.0))


def _confirmation(curve, evidence, config) -> tuple:
  """(reason, flatness) by the first rule that confirms the knee; reason is None while the
  curve is still improving."""
  improvement, threshold = evidence["improvement"], evidence["threshold"]
  flatness = min(1.0, max(0.0, 1.0 - improvement / threshold)) if threshold > 0 else 0.0
  recent = config.turn_back.patience
  if (len(curve.steps) - 1 - curve.best >= recent and
      evidence["drop"] > evidence["drop_threshold"]):
    return (f"turned back: the last {recent} evaluations average {_fmt(evidence['drop'])} "
            f"below the smoothed best at step {int(curve.steps[curve.best])}", 1.0)
  if improvement <= threshold:
    return (f"plateau: {_trend_text(config)} is {_fmt(improvement)} <= {_fmt(threshold)}", flatness)
  variance = config.variance
  if (evidence["variance_ratio"] >= variance.ratio and
      improvement <= variance.improvement_factor * threshold):
    return (f"oscillation: variance x{evidence['variance_ratio']:.1f} after the knee, "
            f"improvement {_fmt(improvement)} within {variance.improvement_factor:g} x "
            f"{_fmt(threshold)}", max(flatness, 0.5))
  return None, flatness
