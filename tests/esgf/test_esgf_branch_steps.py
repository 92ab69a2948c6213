"""ESGF's choices are on storage when it makes them: whatever step the detector would branch
from after any evaluation (the knee it fired at, or what a stage ending on its budget there
would take) is a step whose full checkpoint or EMA snapshot retention still holds, on curves
whose knee moves back to a step whose checkpoint was long pruned."""

import numpy as np
import pytest

from esgf_helpers import config
from linearsr_jax import esgf

PSNR, LPIPS = "val/psnr_y", "val/lpips_alex"
DEMO_STEPS = np.arange(50, 2001, 50)  # configs/demo.py: eval_every 50, pretrain budget 2000


def _rise(steps, tau, size, slope=0.0, late_at=None, late_width=100.0, late_size=0.0):
  """A saturating rise, a slow linear climb, and a late step up (a logistic) at `late_at`."""
  late = 0.0 if late_at is None else late_size / (1 + np.exp(-4 * (steps - late_at) / late_width))
  return size * (1 - np.exp(-steps / tau)) + slope * steps + late


def _records(steps, psnr, lpips=None, noise=0.0, seed=0):
  rng = np.random.default_rng(seed)
  psnr = 27.0 + psnr + noise * rng.standard_normal(len(steps))
  rows = [{PSNR: float(p)} for p in psnr]
  if lpips is not None:
    for row, value in zip(rows, 0.3 + lpips + noise / 10 * rng.standard_normal(len(steps))):
      row[LPIPS] = float(value)
  return [(int(s), row) for s, row in zip(steps, rows)]


CURVES = {
    # A rise, a slow climb, then a second rise at step 1200: the knee sat late while the run
    # climbed, and moves back to the first bend once the late rise steepens Kneedle's chord.
    "knee moves back": _records(DEMO_STEPS, _rise(DEMO_STEPS, 300, 0.22, 2.2e-4, 1200, 144, 0.48),
                                noise=0.038, seed=0),
    # A plateau from step ~500, then a late bump up at step 1700.
    "plateau, late bump": _records(DEMO_STEPS, _rise(DEMO_STEPS, 160, 0.5, 0.0, 1700, 92, 0.36),
                                   noise=0.015, seed=5),
    # PSNR keeps climbing and jumps late; LPIPS settles early: the earliest knee swaps metric.
    "two metrics disagree": _records(DEMO_STEPS,
                                     _rise(DEMO_STEPS, 270, 0.12, 4.8e-4, 1770, 175, 0.09),
                                     -0.08 * _rise(DEMO_STEPS, 250, 1.0), noise=0.035, seed=2),
    # Like the demo's pretrain (README's runs): PSNR bumps at step 300 and keeps rising, LPIPS
    # levels off from about step 750.
    "the demo's own": _records(
        DEMO_STEPS,
        0.3 * _rise(DEMO_STEPS, 150, 1.0, 5e-4) + 0.15 * np.exp(-((DEMO_STEPS - 300) / 120)**2),
        -0.08 * _rise(DEMO_STEPS, 250, 1.0), noise=0.02, seed=0),
}


def _choices(decision, cfg) -> set:
  """Every step the detector could branch from if the stage ended now: the knee it fired at;
  else the budget rule's step and, as the next evaluation may confirm either, each metric's
  candidate and best step."""
  if decision.fired:
    return {decision.knee_step}
  steps = {esgf.budget_branch(decision, cfg)[0]}
  steps |= {m.knee_step for m in decision.metrics} | {m.best_step for m in decision.metrics}
  return steps - {None}


def _follow(records, cfg, keep_latest=1):
  """Runs the detector as the loop does and retention as StageCheckpoints (the latest
  `keep_latest`, the best PSNR, ESGF's keep-set) and KneeSnapshots (ESGF's branch steps)
  apply it. Returns (decision, steps whose choice was outside the full checkpoints, how many
  snapshots were held at most)."""
  detector = esgf.KneeDetector(cfg)
  checkpoints, snapshots, psnr = set(), set(), {}
  outside_checkpoints, most_snapshots = [], 0
  for step, values in records:
    decision = detector.update(step, values)
    psnr[step] = values[PSNR]
    best = max(psnr, key=psnr.get)
    latest = set(sorted(psnr)[-keep_latest:])
    checkpoints = (checkpoints | {step}) & (latest | {best} | decision.keep_steps)
    # The loop snapshots a judged step while undecided; when ESGF fires, the stage ends and
    # keeps the knee's alone.
    snapshots = (snapshots | {step}) & decision.branch_steps
    most_snapshots = max(most_snapshots, len(snapshots))
    choices = _choices(decision, cfg)
    assert choices <= checkpoints | snapshots, (step, choices - checkpoints - snapshots)
    if not choices <= checkpoints:
      outside_checkpoints.append(step)
    if decision.fired:
      assert snapshots == {decision.knee_step}
      break
  return decision, outside_checkpoints, most_snapshots


@pytest.mark.parametrize("name", sorted(CURVES))
def test_every_choice_of_the_detector_is_still_on_storage(name):
  cfg = config(f"{PSNR}:max,{LPIPS}:min")
  decision, outside_checkpoints, most = _follow(CURVES[name], cfg)
  # Snapshots grow by one per evaluation while undecided, and fall to one at the knee.
  assert most <= len(CURVES[name])
  if name != "the demo's own":
    # The knee moved back to a step whose full checkpoint retention had already pruned:
    # without the snapshots the stage could not have branched from it.
    assert outside_checkpoints, name
