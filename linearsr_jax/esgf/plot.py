"""A PNG of the validation curves with ESGF's knee marked (matplotlib is imported only
here, when a plot is asked for)."""

from typing import Sequence

from linearsr_jax import storage
from linearsr_jax.atomic import atomic_file
from linearsr_jax.esgf.config import parse_metrics
from linearsr_jax.esgf.detector import KneeDecision, still_improving
from linearsr_jax.esgf.knee import MetricKnee
from linearsr_jax.esgf.records import baseline_key, metric_series
from linearsr_jax.esgf.smoothing import smooth
from linearsr_jax.run import kill_points


def plot_curves(records: Sequence, decision: KneeDecision, config, path, title=""):
  """PNG of `curves_figure`, written atomically."""
  fig = curves_figure(records, decision, config, title)
  path = storage.path(path)
  with atomic_file(path) as f:
    fig.savefig(f, format="png", dpi=100)
    kill_points.reached("knee_plot")
  return path


def curves_figure(records: Sequence, decision: KneeDecision, config, title=""):
  """A panel per metric: its raw and smoothed curve, its candidate knee (dashed), the chosen
  knee (solid red, when fired) and the bicubic baseline when logged; and one panel of the
  experts' validation flow losses when they gate ESGF."""
  from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas by default

  panels = list(decision.metrics) or [
      MetricKnee(n, d, 0, False, None, "not logged", 0.0) for n, d in parse_metrics(config.metrics)
  ]
  gates = list(decision.expert_losses)
  fig = Figure(figsize=(7, 2.8 * (len(panels) + bool(gates))))
  axes = fig.subplots(len(panels) + bool(gates), 1, squeeze=False)
  for ax, verdict in zip(axes[:, 0], panels):
    _draw_metric(ax, records, verdict, decision, config)
  if gates:
    _draw_expert_losses(axes[-1, 0], records, gates, decision, config)
  # wrap=True breaks a long title at spaces to the figure's width (centred, it would run off
  # both edges), and tight_layout then makes room for its lines.
  fig.suptitle(
      title or ("knee at step %s" % decision.knee_step if decision.fired else "no knee yet"),
      fontsize=10, wrap=True)
  fig.tight_layout()
  return fig


def _draw_metric(ax, records, verdict, decision, config):
  steps, values = metric_series(records, verdict.name)
  ax.set_title(
      f"{verdict.name} ({'higher' if verdict.direction == 'max' else 'lower'} "
      f"is better)", fontsize=9)
  if len(steps):
    sign = 1.0 if verdict.direction == "max" else -1.0
    ax.plot(steps, values, ".", color="0.6", label="raw")
    ax.plot(steps, sign * smooth(steps, sign * values, config.smoothing), "-", color="tab:blue",
            label=f"smoothed ({config.smoothing.method})")
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


def _draw_expert_losses(ax, records, gates, decision, config):
  ax.set_title("validation flow loss per expert (lower is better; ESGF waits for each)", fontsize=9)
  for verdict in gates:
    steps, values = metric_series(records, verdict.name)
    state = "improving" if still_improving(verdict, config) else "settled"
    line, = ax.plot(steps, values, ".", alpha=0.5)
    ax.plot(steps, -smooth(steps, -values, config.smoothing), "-", color=line.get_color(),
            label=f"{verdict.name.rpartition('_')[2]}: {state}")
  if decision.fired:
    ax.axvline(decision.knee_step, color="tab:red", lw=2, label=f"knee {decision.knee_step}")
  ax.set_xlabel("step")
  ax.legend(fontsize=7, loc="best")
