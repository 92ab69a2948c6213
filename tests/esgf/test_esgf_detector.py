"""The ESGF decision over several metrics, the steps it keeps, and the online detector."""

import numpy as np
import pytest

from esgf_helpers import (INTERVAL, config, eval_steps, fire_online, run_online, two_metric_records)
from linearsr_jax import esgf


def test_combining_psnr_and_lpips():
  """PSNR knees early (τ = 4 evaluations), LPIPS late (τ = 12)."""
  steps, records = two_metric_records(400, 1200, 100)
  both = "val/psnr_y:max,val/lpips_alex:min"
  psnr_alone, psnr_fire = fire_online(records, config("val/psnr_y:max"))
  lpips_alone, lpips_fire = fire_online(records, config("val/lpips_alex:min"))
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
  decision = esgf.detect(psnr_only, config("val/psnr_y:max,val/lpips_alex:min"))
  assert decision.fired and [m.name for m in decision.metrics] == ["val/psnr_y"]
  nothing = esgf.detect(psnr_only, config("val/ssim_y:max"))
  assert not nothing.fired and "has been logged" in nothing.reason


def test_retention_of_candidate_steps_keeps_the_knee_checkpoint():
  """A checkpoint manager that deletes every checkpoint as soon as ESGF no longer lists it
  (except the newest) still holds the knee checkpoint when ESGF fires, although the knee
  candidate drifts later as the run grows."""
  for seed in range(3):
    steps, records = two_metric_records(600, 900, 100, seed=seed, noise=0.02)
    detector = esgf.KneeDetector(config("val/psnr_y:max,val/lpips_alex:min"))
    kept, released = set(), False
    for step, values in records:
      decision = detector.update(step, values)
      kept = (kept | {step}) & (decision.keep_steps | {step})
      released |= not decision.fired and len(kept) < len(detector.records)
      if decision.fired:
        break
    assert decision.fired and decision.knee_step in kept
    # Only around the knee, and the newest checkpoint (the manager always holds it).
    assert len(kept) <= 2 * detector.config.candidate_radius + 2
    assert released  # while undecided, steps long before every candidate were let go


def test_keep_steps_before_any_candidate_are_every_step():
  steps, records = two_metric_records(600, 600, 5)
  decision = esgf.detect(records, config())
  assert not decision.fired
  assert decision.keep_steps == frozenset(int(s) for s in steps)


def test_resumed_detector_matches_the_uninterrupted_one():
  _, records = two_metric_records(500, 700, 80, seed=4, noise=0.02)
  cfg = config("val/psnr_y:max,val/lpips_alex:min")
  straight, fired = fire_online(records, cfg)
  cut = [r for r in records if r[0] < fired - 1500]
  # The killed run had logged 5 evaluations past its last checkpoint, with other values.
  stale = [(s, {k: v + 0.5
                for k, v in m.items()})
           for s, m in records
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
  detector.update(
      100, {
          "val/psnr_y": np.float32(25.5), "val/lpips_alex": np.array(0.3), "note": "ok",
          "flag": True, "val/images": np.zeros((2, 4, 4, 3))
      })
  assert detector.records == [(100, {"val/psnr_y": 25.5, "val/lpips_alex": pytest.approx(0.3)})]


def test_fired_decision_is_latched():
  _, records = two_metric_records(400, 400, 60)
  detector = esgf.KneeDetector(config())
  first = next(d for d in (detector.update(s, v) for s, v in records) if d.fired)
  assert detector.update(10_000, {"val/psnr_y": 40.0, "val/lpips_alex": 0.01}) is first


def _peak_then_fall(steps):
  """Rises like 1 - exp(-s/300) and falls linearly from step 900: the late checkpoint is
  the one that collapsed."""
  return 22 + 2 * (1 - np.exp(-steps / 300)) - np.maximum(0, steps - 900) / 1000 * 1.2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_budget_ending_branches_near_the_peak_not_from_the_last_evaluation(seed):
  steps = np.arange(0, 2100, INTERVAL)
  values = _peak_then_fall(steps) + np.random.default_rng(seed).normal(0, 0.02, len(steps))
  cfg = config(patience=40)  # ESGF cannot confirm before the budget ends
  decision, fired_at, _ = run_online(steps, values, cfg)
  assert fired_at is None
  step, why = esgf.budget_branch(decision, cfg)
  assert 500 <= step <= 1000, (step, why)  # the curve's best region, far from 2000
  assert step in decision.keep_steps
  # Round-off elsewhere (another CPU, thread count) does not move the branch.
  for sign in (1, -1):
    jitter = 1 + sign * 1e-9 * np.random.default_rng(seed + 10).standard_normal(len(values))
    again, _, _ = run_online(steps, values * jitter, cfg)
    assert esgf.budget_branch(again, cfg) == (step, why)


def test_budget_ending_without_a_bend_uses_the_best_and_too_few_points_give_none():
  steps = np.arange(0, 2100, INTERVAL)
  falling = 24 - steps / 1000  # best at the start; a straight line has no knee
  cfg = config()
  decision, _, _ = run_online(steps, falling, cfg)
  step, why = esgf.budget_branch(decision, cfg)
  assert step == 0 and "best" in why and step in decision.keep_steps
  few, _, _ = run_online(steps[:3], falling[:3], cfg)
  assert esgf.budget_branch(few, cfg)[0] is None


def test_a_budget_ending_branches_from_a_confirmed_knee_not_a_stale_candidate():
  """Rule 'all': LPIPS levels off, turns back and confirms its knee; PSNR bends early (a bump)
  but keeps rising to the end, so the stage runs out of budget. Its early candidate is a bend
  that did not last; the branch is LPIPS's confirmed knee (the demo's first two runs,
  2026-11-30)."""
  steps = eval_steps(20)
  rng = np.random.default_rng(0)
  lpips = (0.35 + 0.1 * np.exp(-steps / 300) + 0.01 * np.maximum(0, steps - 800) / 1200 +
           0.001 * rng.standard_normal(20))
  psnr = (27.4 + 0.15 * np.exp(-((steps - 300) / 150)**2) + 0.0002 * steps +
          0.005 * rng.standard_normal(20))
  records = [(int(s), {"val/psnr_y": float(p), "val/lpips_alex": float(l)})
             for s, p, l in zip(steps, psnr, lpips)]
  cfg = config("val/psnr_y:max,val/lpips_alex:min", combine="all")
  decision = esgf.detect(records, cfg)
  verdicts = {m.name: m for m in decision.metrics}
  assert not decision.fired and verdicts["val/lpips_alex"].confirmed
  assert not verdicts["val/psnr_y"].confirmed
  step, why = esgf.budget_branch(decision, cfg)
  assert step == verdicts["val/lpips_alex"].knee_step and "confirmed" in why, (step, why)
  assert step in decision.keep_steps
  for sign in (1, -1):
    jitter = 1 + sign * 1e-9 * rng.standard_normal(20)
    again = esgf.detect(
        [(s, {k: v * j for k, v in r.items()}) for (s, r), j in zip(records, jitter)], cfg)
    assert esgf.budget_branch(again, cfg) == (step, why)


def _with_expert_losses(records, taus, seed=0):
  """Adds each expert's validation flow loss: a decay with its own τ (None: flat, noise only)."""
  rng = np.random.default_rng(seed)
  out = []
  for step, values in records:
    losses = {
        f"val/flow_loss_expert{e}": 0.1 + (0.0 if tau is None else 0.05 * np.exp(-step / tau)) +
                                    1e-4 * rng.standard_normal() for e, tau in enumerate(taus)
    }
    out.append((step, dict(values, **losses)))
  return out


def _fire(records, cfg, num_experts):
  detector = esgf.KneeDetector(cfg, num_experts=num_experts)
  for step, values in records:
    if detector.update(step, values).fired:
      return detector.decision, step
  return detector.decision, None


def test_esgf_waits_while_an_experts_validation_loss_still_improves():
  _, records = two_metric_records(tau_psnr=300, tau_lpips=300, n=60)
  cfg = config("val/psnr_y:max,val/lpips_alex:min")
  image_only, fired_at = fire_online(records, cfg)
  assert fired_at is not None
  # Expert 2 keeps improving ten times longer: ESGF waits for it, and the knee stays the
  # image metrics' (one checkpoint for all experts).
  slow = _with_expert_losses(records, [300, 300, 3000, None])
  waited, waited_at = _fire(slow, cfg, num_experts=4)
  assert waited_at is None or waited_at > fired_at + 10 * INTERVAL
  assert not waited.fired or waited.knee_step == image_only.knee_step
  assert any(g.name == "val/flow_loss_expert2" and esgf.still_improving(g, cfg)
             for g in _fire(slow[:fired_at // INTERVAL], cfg, 4)[0].expert_losses)
  # Experts that settle as fast (or never move: expert 3) do not hold it back; nor does the
  # gate apply with it switched off or to a single model.
  settled = _with_expert_losses(records, [300, 300, 300, None])
  assert _fire(settled, cfg, num_experts=4)[1] == fired_at
  cfg_off = config("val/psnr_y:max,val/lpips_alex:min", expert_losses=False)
  assert _fire(slow, cfg_off, num_experts=4)[1] == fired_at
  assert _fire(slow, cfg, num_experts=1)[1] == fired_at


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_first_stages_untrained_evaluation_is_not_judged(seed):
  """An untrained model's step-0 score far below the curve inflates the gain that a relative
  min_delta scales with: a slow but real rise (0.01 dB per evaluation, 0.06 dB per patience)
  then passes for a plateau. The loop leaves that evaluation out in a run's first stage."""
  steps = np.arange(0, 10100, INTERVAL)
  rng = np.random.default_rng(seed)
  values = (22 + 2 * (1 - np.exp(-steps / 300)) + 0.01 * steps / INTERVAL +
            rng.normal(0, 0.01, len(steps)))
  values[0] = 8.0
  cfg = config()
  assert run_online(steps, values, cfg)[1] is not None  # judged, it fools the plateau rule
  judged = np.array([esgf.judged(s, first_stage=True) for s in steps])
  assert not judged[0] and judged[1:].all()
  assert run_online(steps[judged], values[judged], cfg)[1] is None  # still improving
  assert all(esgf.judged(s, first_stage=False) for s in steps)  # a branch's step 0 is its knee
