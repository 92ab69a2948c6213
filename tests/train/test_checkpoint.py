"""Retention of a stage's checkpoints: the latest N, the best, and the steps ESGF keeps."""

import grain
import jax.numpy as jnp

from esgf_helpers import config, two_metric_records
from linearsr_jax import esgf
from linearsr_jax.train.checkpoint import StageCheckpoints

KEEP_LATEST = 2


def steps_on_disk(directory):
  return {int(p.name) for p in directory.iterdir() if p.name.isdigit()}


def test_retention_follows_the_keep_set_of_each_save(tmp_path):
  """As the loop does it: evaluate, update the detector, save with its keep-set. After each
  save the disk holds exactly the latest N, the best, and the current keep-set (of the
  checkpoints not pruned before); the knee's checkpoint is there when ESGF fires."""
  _, records = two_metric_records(200, 300, 40, seed=1, noise=0.02)
  detector = esgf.KneeDetector(config("val/psnr_y:max,val/lpips_alex:min", min_points=6,
                                      patience=4))
  ckpts = StageCheckpoints(tmp_path / "checkpoints", keep_latest=KEEP_LATEST,
                           best_metric="val/psnr_y", best_mode="max")
  data_iter = iter(grain.MapDataset.range(8).to_iter_dataset())
  state = {"w": jnp.arange(4.0)}
  saved, kept, earliest_kept, released = {}, set(), set(), False
  for step, val in records:
    decision = detector.update(step, val)
    ckpts.save(step, state, data_iter, val, keep=decision.keep_steps)
    ckpts.wait()
    saved[step] = val["val/psnr_y"]
    best = max(saved, key=saved.get)
    kept = (kept | {step}) & (set(sorted(saved)[-KEEP_LATEST:]) | {best} | decision.keep_steps)
    assert steps_on_disk(tmp_path / "checkpoints") == kept, step
    earliest_kept.add(min(decision.keep_steps))
    released |= not decision.fired and len(kept) < len(saved)
    if decision.fired:
      break
  ckpts.close()
  assert decision.fired and decision.knee_step in kept
  assert len(earliest_kept) > 2  # the keep-set moved as the curve grew ...
  assert released  # ... and what it let go was deleted while undecided
  radius = detector.config.candidate_radius
  assert len(kept) <= 2 * radius + 1 + KEEP_LATEST + 1  # the knee's, the latest, the best
