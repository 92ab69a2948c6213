"""The `esgf` config section: its defaults and the checks on it."""

import ml_collections

from linearsr_jax.errors import UserError

DIRECTIONS = ("max", "min")
SMOOTHING_METHODS = ("lowess", "ema", "none")
KNEE_METHODS = ("kneedle", "curvature")
COMBINE_RULES = ("all", "any")
KNEE_STEP_RULES = ("earliest", "median", "latest")
DELTA_MODES = ("relative", "absolute")


def default_config() -> ml_collections.ConfigDict:
  """ESGF knobs; patience / windows count evaluations, not training steps."""
  c = ml_collections.ConfigDict()
  # "name:direction" pairs; max = higher is better (PSNR), min = lower is better (LPIPS).
  c.metrics = "val/psnr_y:max,val/lpips_alex:min"
  c.combine = "all"
  # In a stage with several experts, also wait while any expert's validation flow loss
  # (val/flow_loss_expert<e>, one curve per expert) is still improving: the sampler's few
  # validation steps may never run some experts, so PSNR / LPIPS alone are blind to them.
  c.expert_losses = True
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
  """'val/psnr_y:max,val/lpips_alex:min' -> (('val/psnr_y', 'max'), ('val/lpips_alex', 'min'))."""
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
  choices = {
      "combine": (config.combine, COMBINE_RULES), "knee_step": (config.knee_step, KNEE_STEP_RULES),
      "smoothing.method": (config.smoothing.method, SMOOTHING_METHODS), "knee.method":
          (config.knee.method, KNEE_METHODS), "min_delta_mode": (config.min_delta_mode, DELTA_MODES)
  }
  for key, (value, allowed) in choices.items():
    if value not in allowed:
      raise UserError(f"esgf.{key} = {value!r}; choose from {', '.join(allowed)}")
  if config.smoothing.degree not in (1, 2):
    raise UserError(f"esgf.smoothing.degree = {config.smoothing.degree!r}; choose 1 or 2")
  minimum = {
      "min_points": (config.min_points, 5), "patience": (config.patience, 2), "turn_back.patience":
          (config.turn_back.patience, 1), "smoothing.window": (config.smoothing.window, 3),
      "min_delta": (config.min_delta, 0), "turn_back.delta": (config.turn_back.delta, 0),
      "noise_sigmas": (config.noise_sigmas, 0), "variance.min_points":
          (config.variance.min_points, 3)
  }
  for key, (value, least) in minimum.items():
    if value < least:
      raise UserError(f"esgf.{key} = {value} must be >= {least}")
  parse_metrics(config.metrics)
