"""The ESGF decision over several metrics, the steps it keeps, and the online detector."""

import numpy as np
import pytest

from esgf_helpers import config, fire_online, two_metric_records
from linearsr_jax.train import esgf


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
  detector.update(100, {"val/psnr_y": np.float32(25.5), "val/lpips_alex": np.array(0.3),
                        "note": "ok", "flag": True, "val/images": np.zeros((2, 4, 4, 3))})
  assert detector.records == [(100, {"val/psnr_y": 25.5, "val/lpips_alex": pytest.approx(0.3)})]


def test_fired_decision_is_latched():
  _, records = two_metric_records(400, 400, 60)
  detector = esgf.KneeDetector(config())
  first = next(d for d in (detector.update(s, v) for s, v in records) if d.fired)
  assert detector.update(10_000, {"val/psnr_y": 40.0, "val/lpips_alex": 0.01}) is first
