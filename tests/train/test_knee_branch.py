"""A stage branches from exactly the knee ESGF names, even when the knee moved back to a step
whose full checkpoint retention had already deleted (train.keep_latest=1): the stage hands the
next one that step's EMA params, read from its knee snapshot, and nothing calls it damaged."""

import chex
import jax
import numpy as np
import pytest

from linearsr_jax import esgf
from linearsr_jax.inference.trained import load_trained
from linearsr_jax.run import run_dir
from linearsr_jax.train import loop
from train_runs import small_config

BUDGET = 10
STEPS = np.arange(1, BUDGET + 1)


def _scripted_scores():
  """{step: (PSNR, LPIPS)}: a rise with a slow climb and a late step up, so Kneedle's knee sits
  late, then moves back to step 2 once the late rise steepens its chord; step 0 (untrained,
  not judged) far below."""
  rng = np.random.default_rng(138)
  psnr = (27 + 0.49 * (1 - np.exp(-STEPS / 2.72)) + 0.0112 * STEPS + 0.3 /
          (1 + np.exp(-4 * (STEPS - 9.7) / 2.7)) + 0.02 * rng.standard_normal(BUDGET))
  lpips = 0.3 - 0.08 * (1 - np.exp(-STEPS / 2.18)) + 0.002 * rng.standard_normal(BUDGET)
  return {0: (20.0, 0.6), **{int(s): (float(p), float(l)) for s, p, l in zip(STEPS, psnr, lpips)}}


@pytest.mark.slow
def test_a_stage_hands_over_its_knee_after_its_checkpoint_was_pruned(tmp_path, monkeypatch):
  config = small_config(
      **{
          "stages.pretrain.max_steps": BUDGET,
          "stages.pretrain.esgf": False,
          "train.eval_every": 1,
          "train.log_every": BUDGET,
          "train.keep_latest": 1,
          "data.batch_size": 8,
          # ESGF's judgement scaled down to a 10-evaluation stage
          "esgf.min_points": 5,
          "esgf.patience": 2,
          "esgf.candidate_radius": 1,
          "esgf.smoothing.window": 3
      })
  scores, seen = _scripted_scores(), []
  real = loop.Validator.__call__

  def scripted(self, params):
    """Scores from the script, one evaluation per step from 0; records the EMA params."""
    val, sr = real(self, params)
    seen.append(jax.device_get(params))
    psnr, lpips = scores[len(seen) - 1]
    return dict(val, **{"val/psnr_y": psnr, "val/lpips_alex": lpips}), sr

  monkeypatch.setattr(loop.Validator, "__call__", scripted)
  [handed_over] = loop.run(config, tmp_path)

  # The branch the budget rule takes on these scores, decided here from the scores alone.
  records = [(s, {"val/psnr_y": p, "val/lpips_alex": l}) for s, (p, l) in scores.items() if s]
  expected, _ = esgf.budget_branch(esgf.detect(records, config.esgf), config.esgf)
  stage = run_dir.RunDir(tmp_path).stage("pretrain")
  result = stage.result()
  assert result["knee_step"] == result["chosen_step"] == expected == 2, result
  assert "damaged" not in result["reason"] and "not kept" not in result["reason"]
  # Its full checkpoint is gone (keep_latest=1, not the best, before ESGF's keep-set), its EMA
  # snapshot alone is left of the snapshots.
  assert expected not in stage.checkpoint_steps()
  assert stage.snapshot_steps() == [expected]
  # What the next stage starts from (`_start` branches from it): the EMA params evaluated at
  # the knee, exactly.
  knee_params = seen[expected]
  assert handed_over.knee_step == expected
  chex.assert_trees_all_equal(handed_over.params, knee_params)
  # The tools find the knee in its snapshot too.
  trained = load_trained(tmp_path, stage="pretrain")
  assert trained.step == expected
  chex.assert_trees_all_equal(trained.params, knee_params)
  # Run again, the stage has ended: it hands over the same knee, from the same snapshot.
  [again] = loop.run(config, tmp_path)
  assert again.knee_step == expected and stage.result() == result
  chex.assert_trees_all_equal(again.params, knee_params)
