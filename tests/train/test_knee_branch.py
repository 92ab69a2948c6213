"""A stage branches from exactly the knee ESGF names, even when the knee moved back to a step
whose full checkpoint retention had already deleted (train.keep_latest=1): the next stage
starts from that step's EMA params, read from its knee snapshot, and nothing calls it damaged."""

import json

import jax
import numpy as np

from linearsr_jax.configs.base import stage_config
from linearsr_jax.inference.trained import load_trained
from linearsr_jax.train import esgf, loop, run_dir
from train_runs import small_config

BUDGET = 20
STEPS = np.arange(1, BUDGET + 1)


def _scripted_scores():
  """{step: (PSNR, LPIPS)}: a rise with a slow climb and a late step up, so Kneedle's knee sits
  late, then moves back to step 4 once the late rise steepens its chord; step 0 (untrained,
  not judged) far below."""
  rng = np.random.default_rng(70)
  psnr = (27 + 0.46 * (1 - np.exp(-STEPS / 4.28)) + 0.0064 * STEPS
          + 0.23 / (1 + np.exp(-4 * (STEPS - 19.7) / 4.0)) + 0.02 * rng.standard_normal(BUDGET))
  lpips = 0.3 - 0.08 * (1 - np.exp(-STEPS / 3.4)) + 0.002 * rng.standard_normal(BUDGET)
  return {0: (20.0, 0.6), **{int(s): (float(p), float(l)) for s, p, l in zip(STEPS, psnr, lpips)}}


def test_the_next_stage_starts_from_the_knee_whose_checkpoint_was_pruned(tmp_path, monkeypatch):
  config = small_config(**{"stages.pretrain.max_steps": BUDGET, "stages.pretrain.esgf": False,
                           "train.eval_every": 1, "train.log_every": BUDGET,
                           "train.keep_latest": 1, "data.batch_size": 8})
  config.stage_order = "pretrain,finetune"
  config.stages.finetune = stage_config(1, 1, esgf=False)
  scores, seen = _scripted_scores(), []
  real = loop.Validator.__call__

  def scripted(self, params):
    """Scores from the script for the pretrain stage; records the EMA params evaluated."""
    val, sr = real(self, params)
    seen.append(jax.device_get(params))
    if len(seen) <= BUDGET + 1:  # pretrain's evaluations, one per step from 0
      psnr, lpips = scores[len(seen) - 1]
      val = dict(val, **{"val/psnr_y": psnr, "val/lpips_alex": lpips})
    return val, sr

  monkeypatch.setattr(loop.Validator, "__call__", scripted)
  loop.run(config, tmp_path)

  # The branch the budget rule takes on these scores, decided here from the scores alone.
  records = [(s, {"val/psnr_y": p, "val/lpips_alex": l}) for s, (p, l) in scores.items() if s]
  expected, _ = esgf.budget_branch(esgf.detect(records, config.esgf), config.esgf)
  stage = run_dir.RunDir(tmp_path).stage("pretrain")
  result = stage.result()
  assert result["knee_step"] == result["chosen_step"] == expected == 4, result
  assert "damaged" not in result["reason"] and "not kept" not in result["reason"]
  # Its full checkpoint is gone (keep_latest=1, not the best, before ESGF's keep-set), its EMA
  # snapshot alone is left of the snapshots.
  assert expected not in stage.checkpoint_steps()
  assert stage.snapshot_steps() == [expected]
  origin = json.loads((tmp_path / "finetune" / "stage.json").read_text())["init_from"]
  assert origin["knee_step"] == expected
  assert origin["checkpoint"] == str(stage.knee_snapshots / str(expected))
  # The finetune stage's first evaluation sees its starting params (EMA = params at the start):
  # the EMA params pretrain evaluated at step 4, exactly.
  knee_params, start_params = seen[expected], seen[BUDGET + 1]
  jax.tree.map(np.testing.assert_array_equal, start_params, knee_params)
  # The tools find the knee in its snapshot too.
  trained = load_trained(tmp_path, stage="pretrain")
  assert trained.step == expected
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(trained.params), knee_params)
