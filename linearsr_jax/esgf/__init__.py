"""ESGF knee detection: when do the validation curves stop improving?

LinearSR's early-stopping guided fine-tuning branches the next stage from the *knee* of the
validation curve (PSNR / LPIPS stop improving and enter a plateau-and-oscillation phase),
not from the latest checkpoint. The paper picks it by eye; this package picks it from a list
of evaluations, with no model or JAX involved, so the training loop, `linearsr knee` and the
tests all call the same functions.

  config     the `esgf` config section: defaults and checks
  records    the (step, {metric: value}) history: metrics.jsonl, one metric's curve
  smoothing  LOWESS / EMA smoothing and the noise estimate
  knee       one metric's knee and whether it is confirmed (the method, step by step)
  detector   the decision over all metrics, the steps to keep, the online detector
  plot       the curves with the knee marked
"""

# What the loop, `linearsr knee`, the configs and the tests use.
from linearsr_jax.esgf.config import (COMBINE_RULES, DIRECTIONS, default_config, parse_metrics,
                                      validate_config)
from linearsr_jax.esgf.detector import (KneeDecision, KneeDetector, budget_branch, detect,
                                        still_improving)
from linearsr_jax.esgf.knee import MetricKnee
from linearsr_jax.esgf.plot import plot_curves
from linearsr_jax.esgf.records import judged, metric_series, read_metrics_jsonl
from linearsr_jax.esgf.smoothing import ema, lowess

__all__ = [
    "COMBINE_RULES", "DIRECTIONS", "KneeDecision", "KneeDetector", "MetricKnee", "budget_branch",
    "default_config", "detect", "ema", "judged", "lowess", "metric_series", "parse_metrics",
    "plot_curves", "read_metrics_jsonl", "still_improving", "validate_config"
]
