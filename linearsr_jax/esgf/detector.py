"""The ESGF decision over all configured metrics, and the checkpoints it may still need.

Each metric is judged by `knee.analyze_metric`. `combine` = "all" (default) fires when every
metric present in the history is confirmed, "any" when one is. The knee step is then the
`knee_step` ("earliest" by default: a later, "converged" checkpoint is the one that
collapsed in the paper; "median" = the lower median; "latest") of the confirmed metrics'
knees.

With `expert_losses` in a stage of several experts, each expert's validation flow loss is
judged the same way and gates the firing: ESGF waits while one of them is still improving (a
curve that has not risen significantly after `min_points` evaluations has nothing to wait
for). The knee itself stays the metrics': the branch is one checkpoint for all experts.
"""

import dataclasses
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from linearsr_jax.esgf.config import default_config, parse_metrics, validate_config
from linearsr_jax.esgf.knee import MetricKnee, analyze_metric
from linearsr_jax.esgf.records import metric_series, numeric_values
from linearsr_jax.run.metric_keys import flow_loss_key


@dataclasses.dataclass(frozen=True)
class KneeDecision:
  """The detector's answer after an evaluation; `fired` means: stop and branch from
  `knee_step`."""
  fired: bool
  knee_step: Optional[int]
  reason: str
  confidence: float
  metrics: tuple = ()  # MetricKnee per configured metric present in the history
  keep_steps: frozenset = frozenset()  # evaluated steps whose full checkpoints ESGF keeps
  # Judged steps whose EMA params ESGF may still branch from (see `_branch_steps`).
  branch_steps: frozenset = frozenset()
  expert_losses: tuple = ()  # MetricKnee per expert's validation flow loss (the gate)

  def metric(self, name) -> MetricKnee:
    """The verdict on one metric; KeyError when it was not logged."""
    found = {m.name: m for m in self.metrics}
    return found[name]


def _pick_step(knees, rule):
  ordered = sorted(knees)
  return {
      "earliest": ordered[0], "latest": ordered[-1], "median": ordered[(len(ordered) - 1) // 2]
  }[rule]


def _branch_steps(all_steps, knee_step=None) -> frozenset:
  """Judged steps whose EMA params ESGF may still branch from: every one while undecided, the
  knee once fired. Each metric's knee is Kneedle's point of a curve smoothed afresh at every
  evaluation (LOWESS over a neighbourhood that grows with the run), taken against the chord to
  the newest point, and a stage that ends on its budget may branch from the best smoothed
  value: a later evaluation can move either to any step judged so far, earlier ones included (a
  late rise steepens the chord and pulls Kneedle's point back; two metrics swap which is
  earliest). No step can be ruled out before the decision is made."""
  return frozenset({knee_step} if knee_step is not None else all_steps)


def _steps_to_keep(verdicts, all_steps, radius, knee_step=None) -> frozenset:
  """Full checkpoints kept around ESGF's candidates (the branch itself is made from the EMA
  params of `_branch_steps`, which may lie outside this set).

  Undecided: every step from the earliest candidate (less `radius` evaluations) to the
  newest, because Kneedle's knee mostly drifts later as the run grows (for an exponential by about
  τ·ln 2 per doubling of the run), onto steps after today's candidate; every step while a
  metric has no candidate yet; and each metric's best step, which a stage that ends on its
  budget may branch from (`budget_branch`). Fired: the knee +- `radius` evaluations.
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
  best = {v.best_step for v in verdicts if knee_step is None and v.best_step is not None}
  return frozenset(int(s) for s in all_steps[first:last + 1]) | best


def budget_branch(decision: KneeDecision, config) -> tuple:
  """(step, why) for a stage whose step budget ran out before ESGF fired: not the latest
  checkpoint, which is the one that collapsed in the paper, but the knee of a metric that
  confirmed one (rule 'all' waited for the others), else ESGF's knee candidate where a metric's
  curve has bent, else the step of the best smoothed value (the `knee_step` rule picks among
  metrics). A confirmed knee outranks another metric's unconfirmed candidate: that metric kept
  improving past it, so its candidate is a bend that did not last. (None, why) while no metric
  has enough evaluations to judge."""
  confirmed = [m.knee_step for m in decision.metrics if m.confirmed]
  if confirmed:
    return _pick_step(confirmed, config.knee_step), "the knee a metric confirmed"
  bent = [
      m.knee_step
      for m in decision.metrics
      if m.knee_step is not None and m.evidence.get("knee_score", 0.0) >= config.knee.min_score
  ]
  if bent:
    return _pick_step(bent, config.knee_step), "ESGF's unconfirmed knee candidate"
  best = [m.best_step for m in decision.metrics if m.best_step is not None]
  if best:
    return _pick_step(best, config.knee_step), "the best smoothed ESGF metrics"
  return None, f"too few evaluations to judge ({config.min_points} needed)"


def _verdicts(records, named_directions, config) -> tuple:
  """MetricKnee of each (name, direction) present in the records."""
  verdicts = []
  for name, direction in named_directions:
    steps, values = metric_series(records, name)
    if len(steps):
      verdicts.append(analyze_metric(steps, values, name, direction, config))
  return tuple(verdicts)


def still_improving(verdict: MetricKnee, config) -> bool:
  """Whether a gating curve holds ESGF back: not confirmed, and not flat after min_points."""
  return not verdict.confirmed and not (verdict.points >= config.min_points and
                                        verdict.knee_step is None)


def detect(records: Sequence, config, num_experts: int = 1) -> KneeDecision:
  """The decision for a whole history of (step, {metric: value}) records of a stage with
  `num_experts` experts."""
  validate_config(config)
  verdicts = list(_verdicts(records, parse_metrics(config.metrics), config))
  gates = _verdicts(records, [(flow_loss_key(e), "min") for e in range(num_experts)],
                    config) if config.expert_losses and num_experts > 1 else ()
  all_steps = {int(s) for v in verdicts for s in metric_series(records, v.name)[0]}
  if not verdicts:
    return KneeDecision(False, None, "no knee yet: none of the metrics "
                        f"{config.metrics} has been logged", 0.0, (), frozenset(all_steps),
                        _branch_steps(all_steps))
  confirmed = [v for v in verdicts if v.confirmed]
  needed = len(verdicts) if config.combine == "all" else 1
  waiting = [g for g in gates if still_improving(g, config)]
  fired = len(confirmed) >= needed and not waiting
  summary = "; ".join(f"{v.name}: {v.reason}" for v in verdicts)
  if not fired:
    candidates = [v.knee_step for v in verdicts if v.knee_step is not None]
    confidence = min(v.confidence for v in verdicts)
    why = (f"{config.combine} of {len(verdicts)} metrics must confirm"
           if len(confirmed) < needed else "an expert's validation loss still improves: " +
           "; ".join(f"{g.name}: {g.reason}" for g in waiting))
    return KneeDecision(False,
                        _pick_step(candidates, config.knee_step) if candidates else None,
                        f"no knee yet ({why}) - {summary}", confidence, tuple(verdicts),
                        _steps_to_keep(verdicts, all_steps, config.candidate_radius),
                        _branch_steps(all_steps), gates)
  knee_step = _pick_step([v.knee_step for v in confirmed], config.knee_step)
  confidence = (min if config.combine == "all" else max)(v.confidence for v in confirmed)
  return KneeDecision(
      True, knee_step, f"knee at step {knee_step} ({config.knee_step} of "
      f"{len(confirmed)} confirmed, rule '{config.combine}') - {summary}", confidence,
      tuple(verdicts), _steps_to_keep(verdicts, all_steps, config.candidate_radius, knee_step),
      _branch_steps(all_steps, knee_step), gates)


class KneeDetector:
  """Online use: the training loop calls `update` after every evaluation, then saves that
  evaluation's EMA params for `decision.branch_steps` and its checkpoint with
  `decision.keep_steps` for retention to protect.

  Each update re-runs `detect` on the whole history, so a detector rebuilt from
  metrics.jsonl on resume (`KneeDetector(config, records)`) decides exactly as the one that
  never stopped. A step at or before the last one replaces the history from there on (a
  resumed run re-evaluates the steps after its checkpoint). Once fired, the decision is
  latched: the next stage has branched from that knee, later points do not move it.
  """

  def __init__(self, config=None, records: Iterable = (), num_experts: int = 1):
    self.config = config if config is not None else default_config()
    self.num_experts = num_experts
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
    self.decision = detect(self.records, self.config, self.num_experts)
    return self.decision
