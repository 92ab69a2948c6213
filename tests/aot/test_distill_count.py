"""`linearsr compile --stage distill`: the step's FLOPs count the teacher's sampling in full.

XLA counts the body of a loop once, and the teacher samples inside the distill step in a loop
over its steps: counted as compiled, 4 guided steps would be one. Checked on the 8 CPU devices
(the counting is the same for any platform) against the model's own count, 2·N·tokens per
forward of the teacher, with the targets computed in the step and precomputed."""

import os

import jax
import pytest

from compile_helpers import NARROW
from linearsr_jax.aot import step_compile
from linearsr_jax.configs.sana600m_x4 import get_config
from linearsr_jax.train.loop import Run

BATCH = 16


def distill_run(**extra):
  config = get_config()
  config.update_from_flattened_dict(
      dict(
          NARROW, **{
              "stage_order": "pretrain,moe,distill", "diffusion.sampler.steps": 4,
              "diffusion.sampler.guidance_scale": 2.0
          }, **extra))
  return Run(config, os.devnull, load_weights=False, devices=jax.devices())


@pytest.mark.slow
def test_the_teachers_sampling_is_counted_once_per_step_and_pass(tmp_path):
  sampled, given = distill_run(), distill_run(**{"distill.targets": str(tmp_path)})
  counts, models = {}, {}
  for name, run in (("sampled", sampled), ("given", given)):
    counts[name] = step_compile.counted_stats(run, "distill", BATCH, depth=1)["flops"]
    models[name] = step_compile.model_flops(run, "distill", BATCH, 0.0)
  assert models["given"]["teacher_flops"] == 0.0
  # 4 steps × 2 passes (guidance) of 2·N·tokens: 16 forwards' worth beside the student's 6.
  teacher = models["sampled"]["teacher_flops"]
  assert teacher == pytest.approx(8 / 3 * models["given"]["dit_flops"])
  assert 0.9 < (counts["sampled"] - counts["given"]) / teacher < 1.3, (counts, teacher)
  # From given targets the step is a train step's work: the student's forward and backward.
  pretrain = step_compile.counted_stats(given, "pretrain", BATCH, depth=1)["flops"]
  assert 0.9 < counts["given"] / pretrain < 1.1, (counts, pretrain)
