"""ESGF knee detection: when do the validation curves stop improving?

LinearSR's early-stopping guided fine-tuning branches the next stage from the *knee* of the
validation curve (PSNR / LPIPS stop improving and enter a plateau-and-oscillation phase),
not from the latest checkpoint. The paper picks it by eye; this module picks it from a list
of evaluations, with no model or JAX involved, so the training loop, `linearsr knee` and the
tests all call the same functions.

Per metric (curves are first oriented so that higher is better, i.e. LPIPS is negated):
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
Several metrics are combined by `combine`: "all" (default) fires when every metric present
in the history is confirmed, "any" when one is. The knee step is then the `knee_step`
("earliest" by default: a later, "converged" checkpoint is the one that collapsed in the
paper; "median" = the lower median; "latest") of the confirmed metrics' knees.
"""

import dataclasses
import json
import math
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import ml_collections
import numpy as np

from linearsr_jax.atomic import atomic_file
from linearsr_jax.errors import UserError

DIRECTIONS = ("max", "min")
SMOOTHING_METHODS = ("lowess", "ema", "none")
KNEE_METHODS = ("kneedle", "curvature")
COMBINE_RULES = ("all", "any")
KNEE_STEP_RULES = ("earliest", "median", "latest")
DELTA_MODES = ("relative", "absolute")
# LOWESS rows fitted at once: bounds its memory to this many x len(curve) floats per array.
_LOWESS_ROWS = 512
# A second difference of white noise has variance 6σ².
_SECOND_DIFF_SCALE = math.sqrt(6.0)


def default_config() -> ml_collections.ConfigDict:
  """ESGF knobs; patience / windows count evaluations, not training steps."""
  c = ml_collections.ConfigDict()
  # "name:direction" pairs; max = higher is better (PSNR), min = lower is better (LPIPS).
  c.metrics = "val/psnr_y:max,val/lpips:min"
  c.combine = "all"
  c.knee_step = "earliest"
  c.min_points = 10  # evaluations of a metric before it may be judged at all
  c.smoothing = ml_collections.ConfigDict()
  c.smoothing.method = "lowess"
  c.smoothing.frac = 0.2  # LOWESS neighbourhood as a fraction of the points...
  c.smoothing.window = 7  # ...but never fewer than this many; also the EMA span
  c.smoothing.degree = 2  # LOWESS local polynomial: 2 follows the bend, 1 cuts it
  c.smoothing.robust_iters = 0  # bisquare re-weightings against outlier evaluations;
  # they need real noise (on a clean bend they take the curvature for outliers) and are
  # steadiest with degree 1
  c.knee = ml_collections.ConfigDict()
  c.knee.method = "kneedle"
  c.knee.min_score = 0.1  # normalised distance above the chord; a straight line has ~0
  c.min_rise_sigma = 4.0  # the gain so far must exceed this many noise sigmas
  c.patience = 6  # evaluations after the knee that must show no significant improvement
  c.min_delta = 0.02  # significant improvement: fraction of the gain so far ...
  c.min_delta_mode = "relative"  # ... or "absolute" (metric units)
  c.noise_sigmas = 1.5  # standard errors added to the measured trend before comparing
  c.turn_back = ml_collections.ConfigDict()
  c.turn_back.delta = 0.05  # fall below the best (same mode as min_delta)
  c.turn_back.patience = 4  # evaluations since the best, averaged for the fall
  c.turn_back.sigmas = 4.0  # and more than this many standard errors of the fall
  c.variance = ml_collections.ConfigDict()
  c.variance.ratio = 4.0  # noise variance after the knee / before it
  c.variance.min_points = 12  # evaluations on each side before the ratio is trusted
  c.variance.improvement_factor = 1.5
  c.candidate_radius = 2  # evaluations kept before the earliest candidate / around the knee
  c.baseline_prefix = "bicubic_"  # "val/psnr_y" -> baseline "val/bicubic_psnr_y" in plots
  return c


def parse_metrics(spec: str) -> tuple:
  """'val/psnr_y:max,val/lpips:min' -> (('val/psnr_y', 'max'), ('val/lpips', 'min'))."""
  pairs = []
  for item in (p.strip() for p in spec.split(",")):
    name, _, direction = item.rpartition(":")
    if not name or direction not in DIRECTIONS:
      raise UserError(f"ESGF metric {item!r} must look like NAME:max or NAME:min")
    pairs.append((name, direction))
  if not pairs or len({n for n, _ in pairs}) != len(pairs):
    raise UserError(f"ESGF metrics {spec!r}: give each metric once")
  return tuple(pairs)


def validate_config(config) -> None:
  """Raises UserError on a knob outside its range, naming it."""
  choices = {"combine": (config.combine, COMBINE_RULES),
             "knee_step": (config.knee_step, KNEE_STEP_RULES),
             "smoothing.method": (config.smoothing.method, SMOOTHING_METHODS),
             "knee.method": (config.knee.method, KNEE_METHODS),
             "min_delta_mode": (config.min_delta_mode, DELTA_MODES)}
  for key, (value, allowed) in choices.items():
    if value not in allowed:
      raise UserError(f"esgf.{key} = {value!r}; choose from {', '.join(allowed)}")
  if config.smoothing.degree not in (1, 2):
    raise UserError(f"esgf.smoothing.degree = {config.smoothing.degree!r}; choose 1 or 2")
  minimum = {"min_points": (config.min_points, 5), "patience": (config.patience, 2),
             "turn_back.patience": (config.turn_back.patience, 1),
             "smoothing.window": (config.smoothing.window, 3),
             "min_delta": (config.min_delta, 0), "turn_back.delta": (config.turn_back.delta, 0),
             "noise_sigmas": (config.noise_sigmas, 0),
             "variance.min_points": (config.variance.min_points, 3)}
  for key, (value, least) in minimum.items():
    if value < least:
      raise UserError(f"esgf.{key} = {value} must be >= {least}")
  parse_metrics(config.metrics)


# ---------------------------------------------------------------------------------------
# Reading curves.


def read_metrics_jsonl(path) -> tuple:
  """(records, ignored): records are (step, {key: float}) in file order.

  Lines that are not JSON objects with an integer "step" (a partial last line after a kill,
  a blank line) are counted in `ignored`, not fatal; non-numeric values are dropped.
  """
  path = Path(path)
  if not path.is_file():
    raise UserError(f"metrics file {path} does not exist")
  records, ignored = [], 0
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        row = json.loads(line)
        step = row["step"]
      except (json.JSONDecodeError, KeyError, TypeError):
        ignored += 1
        continue
      if isinstance(step, bool) or not isinstance(step, (int, float)) or step != int(step):
        ignored += 1
        continue
      records.append((int(step), numeric_values(row)))
  return records, ignored


def numeric_values(metrics: Mapping) -> dict:
  """The scalar numbers of a metrics dict as floats (Python, NumPy or JAX scalars); the
  step, text, flags and arrays are left out."""
  values = {}
  for key, value in metrics.items():
    if key == "step" or isinstance(value, (bool, str)):
      continue
    try:
      values[key] = float(value)
    except (TypeError, ValueError):
      continue
  return values


def metric_series(records: Iterable, name: str) -> tuple:
  """(steps, values) of one metric: finite values, sorted by step, the last record of a
  repeated step wins (a resumed run logs the steps after its checkpoint again)."""
  latest = {}
  for step, values in records:
    value = values.get(name)
    if value is not None and math.isfinite(value):
      latest[int(step)] = float(value)
  steps = np.array(sorted(latest), dtype=np.int64)
  return steps, np.array([latest[s] for s in steps], dtype=np.float64)


# ---------------------------------------------------------------------------------------
# The pieces: smoothing, noise, knee location.


def smooth(steps, values, smoothing) -> np.ndarray:
  """Smoothed copy of `values` by `smoothing.method` (see default_config)."""
  values = np.asarray(values, dtype=np.float64)
  if smoothing.method == "none" or len(values) < 3:
    return values.copy()
  if smoothing.method == "ema":
    return ema(values, 2.0 / (smoothing.window + 1.0))
  return lowess(np.asarray(steps, dtype=np.float64), values,
                _lowess_neighbours(len(values), smoothing), smoothing.robust_iters,
                smoothing.degree)


def _lowess_neighbours(n, smoothing):
  return max(smoothing.window, math.ceil(smoothing.frac * n))


def _neighbours(n, config):
  """About how many raw points each smoothed value averages (its noise is sigma/sqrt)."""
  method = config.smoothing.method
  return {"none": 1, "ema": config.smoothing.window,
          "lowess": _lowess_neighbours(n, config.smoothing)}[method]


def ema(values, alpha) -> np.ndarray:
  """Causal exponential moving average started at the first value (TensorBoard-style)."""
  out = np.empty(len(values))
  acc = values[0]
  for i, v in enumerate(values):
    acc = alpha * v + (1.0 - alpha) * acc
    out[i] = acc
  return out


def lowess(x, y, neighbours, robust_iters, degree=2) -> np.ndarray:
  """Cleveland's LOWESS: local polynomial fits (`degree` 1 or 2) over the `neighbours`
  nearest x with tricube weights, then bisquare re-weighting of residuals beyond 6 x median
  |residual| `robust_iters` times (numpy; O(n²) time, memory bounded by row blocks).
  Degree 2 follows the bend of a saturating curve, where a local line cuts the corner and
  moves the knee."""
  x = np.asarray(x, dtype=np.float64)
  y = np.asarray(y, dtype=np.float64)
  k = min(max(neighbours, degree + 2), len(y))
  robust = np.ones(len(y))
  for _ in range(robust_iters + 1):
    fit = np.concatenate([_local_fits(x, y, rows, robust, k, degree)
                          for rows in np.array_split(np.arange(len(y)),
                                                     max(1, len(y) // _LOWESS_ROWS))])
    residual = y - fit
    scale = 6.0 * float(np.median(np.abs(residual)))
    # As in R's lowess: residuals of ~0 (a noiseless curve) leave nothing to re-weight; a
    # median of ~0 would call every point of a clean bend an outlier.
    if scale <= 1e-7 * float(np.mean(np.abs(y))):
      break
    robust = np.clip(1.0 - (residual / scale) ** 2, 0.0, None) ** 2
  return fit


def _local_fits(x, y, rows, robust, k, degree):
  """LOWESS values at x[rows]: weighted polynomial fits in u = (x_j - x_i) / radius_i,
  whose constant term is the fit at x_i; the normal equations need only the weighted
  moments sum_j w_ij u_ij^p."""
  dist = np.abs(x[None, :] - x[rows, None])
  radius = np.sort(dist, axis=1)[:, k - 1] * 1.0001 + 1e-12
  local = np.clip(1.0 - (dist / radius[:, None]) ** 3, 0.0, None) ** 3
  w = local * robust[None, :]
  alone = (w > 0).sum(1) <= degree  # too few neighbours left: keep the plain local fit
  w[alone] = local[alone]
  u = (x[None, :] - x[rows, None]) / radius[:, None]
  moments, weighted = [], w
  for _ in range(2 * degree + 1):
    moments.append(weighted.sum(1))
    weighted = weighted * u
  gram = np.stack(moments, axis=-1)[:, np.add.outer(np.arange(degree + 1),
                                                     np.arange(degree + 1))]
  gram += 1e-12 * np.eye(degree + 1)  # a window of repeated x must not be singular
  rhs = np.stack([(w * u ** a) @ y for a in range(degree + 1)], axis=-1)
  return np.linalg.solve(gram, rhs[..., None])[:, 0, 0]


def noise_sigma(values) -> float:
  """Noise std from second differences (white noise: variance 6σ²).

  Second differences cancel a locally linear trend; what curvature is left, and outliers
  (the root mean square, not a robust median), only raise the estimate. So does the factor
  1 + 1/sqrt(m) for m differences: a few points often under-estimate the noise, and an
  under-estimate is what would make the detector fire on noise.
  """
  if len(values) < 3:
    return 0.0
  d2 = np.diff(np.asarray(values, dtype=np.float64), 2)
  return float(np.sqrt(np.mean(d2 ** 2)) / _SECOND_DIFF_SCALE * (1 + 1 / math.sqrt(len(d2))))


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
    bend = -np.gradient(dy, xn) / (1.0 + dy * dy) ** 1.5
    index = 1 + int(np.argmax(bend[1:-1]))
  else:
    index = int(np.argmax(above_chord))
  return index, float(above_chord[index])


# ---------------------------------------------------------------------------------------
# Decisions.


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
class KneeDecision:
  """The detector's answer after an evaluation; `fired` means: stop and branch from
  `knee_step`."""
  fired: bool
  knee_step: Optional[int]
  reason: str
  confidence: float
  metrics: tuple = ()  # MetricKnee per configured metric present in the history
  keep_steps: frozenset = frozenset()  # evaluated steps whose checkpoints ESGF may need

  def metric(self, name) -> MetricKnee:
    """The verdict on one metric; KeyError when it was not logged."""
    found = {m.name: m for m in self.metrics}
    return found[name]


def _fmt(x):
  return f"{x:.4g}"


def projected_trend(steps, values, tail, horizon, sigma) -> tuple:
  """(gain, standard error): the least-squares slope of the last `tail` points, times
  `horizon` evaluation intervals, the error for white noise of std `sigma`."""
  x = np.asarray(steps[-tail:], dtype=np.float64)
  y = np.asarray(values[-tail:], dtype=np.float64)
  centred = x - x.mean()
  spread = float((centred ** 2).sum())
  span = horizon * float(np.median(np.diff(steps)))
  return (float((centred * (y - y.mean())).sum() / spread) * span,
          sigma / math.sqrt(spread) * span)


def analyze_metric(steps, values, name, direction, config) -> MetricKnee:
  """Judge one curve (steps ascending, finite values); see the module docstring."""
  steps = np.asarray(steps, dtype=np.int64)
  n = len(steps)
  sign = 1.0 if direction == "max" else -1.0
  verdict = dict(name=name, direction=direction, points=n)
  if n < config.min_points:
    return MetricKnee(confirmed=False, knee_step=None, confidence=0.0,
                      reason=f"{n} of {config.min_points} evaluations needed", **verdict)

  oriented = sign * np.asarray(values, dtype=np.float64)
  smoothed = smooth(steps, oriented, config.smoothing)
  sigma = noise_sigma(oriented)
  best = int(np.argmax(smoothed))
  # The start level is the mean of the first 3 raw values: a smoothed curve is least
  # certain at its ends, and a low start would fake a rise.
  gain = float(smoothed[best] - oriented[:3].mean())
  rise_sigmas = gain / sigma if sigma > 0 else (math.inf if gain > 0 else 0.0)
  index, score = knee_index(steps, smoothed, config.knee.method)
  verdict.update(knee_value=float(sign * smoothed[index]), best_step=int(steps[best]))
  evidence = {"gain": gain, "noise_sigma": sigma, "rise_sigmas": rise_sigmas,
              "knee_score": score}
  if rise_sigmas < config.min_rise_sigma:
    return MetricKnee(confirmed=False, knee_step=None, confidence=0.0, evidence=evidence,
                      reason=f"no significant rise yet (gain {_fmt(gain)} = "
                             f"{rise_sigmas:.1f} noise sigmas < {config.min_rise_sigma})",
                      **verdict)
  knee_step = int(steps[index])
  verdict.update(knee_step=knee_step)
  if score < config.knee.min_score:
    return MetricKnee(confirmed=False, confidence=0.0, evidence=evidence,
                      reason=f"no bend: the curve is nearly straight (knee score "
                             f"{score:.3f} < {config.knee.min_score})", **verdict)

  patience = config.patience
  after = n - 1 - index
  shape = min(1.0, score / 0.5)
  significance = min(1.0, rise_sigmas / (2.0 * config.min_rise_sigma))
  if after < patience:
    confidence = (shape * significance) ** 0.5 * after / patience
    return MetricKnee(confirmed=False, confidence=confidence, evidence=evidence,
                      reason=f"candidate at step {knee_step}: {after} of {patience} "
                             f"evaluations after it seen", **verdict)

  scale = gain if config.min_delta_mode == "relative" else 1.0
  threshold = config.min_delta * scale
  # The trend of the later two thirds of the points after the knee (at least `patience`):
  # a fall counts as 0, and `noise_sigmas` standard errors are added, so a plateau must be
  # shown, not merely hidden by the noise.
  trend, trend_error = projected_trend(steps, oriented, max(patience, (2 * after + 2) // 3),
                                       patience, sigma)
  improvement = max(trend, 0.0) + config.noise_sigmas * trend_error
  # Turned back: the mean of the latest raw values against the smoothed best; both are
  # noisy (the best of a smoothed curve is biased up), hence the noise term.
  recent = config.turn_back.patience
  drop = float(smoothed[best] - oriented[n - recent:].mean())
  drop_threshold = max(config.turn_back.delta * scale, config.turn_back.sigmas * sigma *
                       math.sqrt(1.0 / _neighbours(n, config) + 1.0 / recent))
  # Oscillation: noise after the knee against noise before it, each from enough points.
  pre_noise, post_noise = noise_sigma(oriented[:index + 1]), noise_sigma(oriented[index:])
  enough = min(index + 1, after + 1) >= config.variance.min_points
  variance_ratio = (post_noise / pre_noise) ** 2 if enough and pre_noise > 0 else 0.0
  evidence.update(trend=trend, trend_error=trend_error, improvement=improvement,
                  threshold=threshold, drop=drop, drop_threshold=drop_threshold,
                  variance_ratio=variance_ratio)
  flatness = min(1.0, max(0.0, 1.0 - improvement / threshold)) if threshold > 0 else 0.0

  trend_text = (f"the trend after the knee over {patience} evaluations "
                f"(+{config.noise_sigmas:g} s.e.)")
  if n - 1 - best >= config.turn_back.patience and drop > drop_threshold:
    reason = (f"turned back: the last {recent} evaluations average {_fmt(drop)} below the "
              f"smoothed best at step {int(steps[best])}")
    flatness = 1.0
  elif improvement <= threshold:
    reason = f"plateau: {trend_text} is {_fmt(improvement)} <= {_fmt(threshold)}"
  elif (variance_ratio >= config.variance.ratio and
        improvement <= config.variance.improvement_factor * threshold):
    reason = (f"oscillation: variance x{variance_ratio:.1f} after the knee, improvement "
              f"{_fmt(improvement)} within {config.variance.improvement_factor:g} x "
              f"{_fmt(threshold)}")
    flatness = max(flatness, 0.5)
  else:
    return MetricKnee(confirmed=False, evidence=evidence,
                      confidence=(shape * significance) ** 0.5 * flatness,
                      reason=f"still improving: {trend_text} is {_fmt(improvement)} > "
                             f"{_fmt(threshold)}", **verdict)
  return MetricKnee(confirmed=True, evidence=evidence,
                    confidence=(shape * significance * flatness) ** (1.0 / 3.0),
                    reason=f"knee at step {knee_step}, {reason}", **verdict)


def _pick_step(knees, rule):
  ordered = sorted(knees)
  return {"earliest": ordered[0], "latest": ordered[-1],
          "median": ordered[(len(ordered) - 1) // 2]}[rule]


def _keep_steps(verdicts, all_steps, radius, knee_step=None) -> frozenset:
  """Checkpoints ESGF may still branch from.

  Undecided: every step from the earliest candidate (less `radius` evaluations) to the
  newest, because Kneedle's knee drifts later as the run grows (for an exponential by about
  τ·ln 2 per doubling of the run), onto steps after today's candidate; every step while a
  metric has no candidate yet. Fired: the knee +- `radius` evaluations.
  """
  all_steps = np.asarray(sorted(all_steps), dtype=np.int64)
  if knee_step is not None:
    lo, hi = knee_step, knee_step
  else:
    centres = [v.knee_step for v in verdicts]
    if not centres or any(c is None for c in centres):
      return frozenset(int(s) for s in all_steps)
    lo, hi = min(centres), int(all_steps[-1])
  first = max(0, int(np.searchsorted(all_steps, lo)) - radius)
  last = int(np.searchsorted(all_steps, hi)) + radius
  return frozenset(int(s) for s in all_steps[first:last + 1])


def detect(records: Sequence, config) -> KneeDecision:
  """The decision for a whole history of (step, {metric: value}) records."""
  validate_config(config)
  verdicts = []
  for name, direction in parse_metrics(config.metrics):
    steps, values = metric_series(records, name)
    if len(steps):
      verdicts.append(analyze_metric(steps, values, name, direction, config))
  all_steps = {int(s) for v in verdicts for s in metric_series(records, v.name)[0]}
  if not verdicts:
    return KneeDecision(False, None, "no knee yet: none of the metrics "
                        f"{config.metrics} has been logged", 0.0, (), frozenset(all_steps))
  confirmed = [v for v in verdicts if v.confirmed]
  needed = len(verdicts) if config.combine == "all" else 1
  fired = len(confirmed) >= needed
  summary = "; ".join(f"{v.name}: {v.reason}" for v in verdicts)
  if not fired:
    candidates = [v.knee_step for v in verdicts if v.knee_step is not None]
    confidence = min(v.confidence for v in verdicts)
    return KneeDecision(False, _pick_step(candidates, config.knee_step) if candidates
                        else None, f"no knee yet ({config.combine} of {len(verdicts)} "
                        f"metrics must confirm) - {summary}", confidence, tuple(verdicts),
                        _keep_steps(verdicts, all_steps, config.candidate_radius))
  knee_step = _pick_step([v.knee_step for v in confirmed], config.knee_step)
  confidence = (min if config.combine == "all" else max)(v.confidence for v in confirmed)
  return KneeDecision(True, knee_step, f"knee at step {knee_step} ({config.knee_step} of "
                      f"{len(confirmed)} confirmed, rule '{config.combine}') - {summary}",
                      confidence, tuple(verdicts),
                      _keep_steps(verdicts, all_steps, config.candidate_radius, knee_step))


def candidate_steps(decision: KneeDecision) -> frozenset:
  """Steps whose checkpoints retention must keep for ESGF (around the knee candidates)."""
  return decision.keep_steps


class KneeDetector:
  """Online use: the training loop calls `update` after every evaluation.

  Each update re-runs `detect` on the whole history, so a detector rebuilt from
  metrics.jsonl on resume (`KneeDetector(config, records)`) decides exactly as the one that
  never stopped. A step at or before the last one replaces the history from there on (a
  resumed run re-evaluates the steps after its checkpoint). Once fired, the decision is
  latched: the next stage has branched from that knee, later points do not move it.
  """

  def __init__(self, config=None, records: Iterable = ()):
    self.config = config if config is not None else default_config()
    validate_config(self.config)
    self.records = []
    self.decision = KneeDecision(False, None, "no knee yet: no evaluations", 0.0)
    for step, values in records:
      self.update(step, values)

  def update(self, step: int, metrics: Mapping) -> KneeDecision:
    if self.decision.fired:
      return self.decision
    step = int(step)
    self.records = [r for r in self.records if r[0] < step]
    self.records.append((step, numeric_values(metrics)))
    self.decision = detect(self.records, self.config)
    return self.decision

  def candidate_steps(self) -> frozenset:
    return candidate_steps(self.decision)


# ---------------------------------------------------------------------------------------
# Plot.


def baseline_key(name, prefix) -> str:
  """'val/psnr_y' -> 'val/bicubic_psnr_y': where the loop logs the bicubic baseline."""
  head, sep, tail = name.rpartition("/")
  return f"{head}{sep}{prefix}{tail}"


def plot_curves(records: Sequence, decision: KneeDecision, config, path, title="") -> Path:
  """PNG of each metric's raw and smoothed curve, its candidate knee (dashed), the chosen
  knee (solid red, when fired) and the bicubic baseline when logged. Written atomically."""
  from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas by default

  panels = list(decision.metrics) or [
      MetricKnee(n, d, 0, False, None, "not logged", 0.0)
      for n, d in parse_metrics(config.metrics)]
  fig = Figure(figsize=(7, 2.8 * len(panels)))
  axes = fig.subplots(len(panels), 1, squeeze=False)
  for ax, verdict in zip(axes[:, 0], panels):
    steps, values = metric_series(records, verdict.name)
    ax.set_title(f"{verdict.name} ({'higher' if verdict.direction == 'max' else 'lower'} "
                 f"is better)", fontsize=9)
    if len(steps):
      sign = 1.0 if verdict.direction == "max" else -1.0
      ax.plot(steps, values, ".", color="0.6", label="raw")
      ax.plot(steps, sign * smooth(steps, sign * values, config.smoothing), "-",
              color="tab:blue", label=f"smoothed ({config.smoothing.method})")
    _, base = metric_series(records, baseline_key(verdict.name, config.baseline_prefix))
    if len(base):
      ax.axhline(base[-1], color="tab:green", ls=":", label=f"bicubic {base[-1]:.4g}")
    if verdict.knee_step is not None:
      ax.axvline(verdict.knee_step, color="tab:orange", ls="--",
                 label=f"candidate {verdict.knee_step}")
    if decision.fired:
      ax.axvline(decision.knee_step, color="tab:red", lw=2, label=f"knee {decision.knee_step}")
    ax.set_xlabel("step")
    ax.legend(fontsize=7, loc="best")
  fig.suptitle(title or ("knee at step %s" % decision.knee_step if decision.fired
                         else "no knee yet"), fontsize=10)
  fig.tight_layout()
  path = Path(path)
  with atomic_file(path) as f:
    fig.savefig(f, format="png", dpi=100)
  return path
