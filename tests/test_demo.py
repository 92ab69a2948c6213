"""The whole system end to end on CPU: `linearsr demo` at a reduced size.

One real run on the embedded photographs checks what issues 6 and 8 promise: stage 1 trains
until ESGF fires on a real validation curve (PSNR rises from its first value, the bicubic
baseline logged beside it), stage 2 starts from the knee checkpoint with 4 identical experts
that then diverge, and the demo's eval, upscale grid and report come out.
"""

import json

import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from linearsr_jax.cli import main

# Small enough for the test budget, large enough for a real knee: the tiny model at crop 32,
# evaluated every 10 steps, with a noisier LR-anchored source, whose validation PSNR peaks
# and turns back early; ESGF (combine=any) fires on that.
OVERRIDES = ["diffusion.lr_source_noise=0.1", "model.depth=2", "data.crop_size=32", "data.eval.crop_size=64", "train.eval_every=10",
             "stages.pretrain.max_steps=400", "stages.moe.max_steps=20", "esgf.patience=3"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("demo")
  argv = ["demo", "--workdir", str(workdir), "--heldout_crop", "128"]
  for item in OVERRIDES:
    argv += ["--set", item]
  assert main(argv) == 0
  return workdir


def rows(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def restore_params(step_dir):
  return ocp.StandardCheckpointer().restore(step_dir / "state")


def test_stage_one_ends_at_a_real_esgf_knee(demo):
  run = json.loads((demo / "train" / "run.json").read_text())["stages"]
  pretrain = run[0]
  assert pretrain["name"] == "pretrain" and pretrain["fired"], pretrain
  evals = [r for r in rows(demo / "train" / "pretrain" / "metrics.jsonl") if "val/psnr_y" in r]
  psnr = [r["val/psnr_y"] for r in evals]
  assert max(psnr) > psnr[0] + 0.01  # the curve it acted on really rose
  assert all("val/bicubic_psnr_y" in r for r in evals)
  assert evals[-1]["step"] < 400  # stopped early, by ESGF, not by the budget
  assert pretrain["knee_step"] in [r["step"] for r in evals]
  assert (demo / "train" / "pretrain" / "knee.png").exists()


def test_stage_two_starts_from_the_knee_with_identical_experts_that_diverge(demo):
  train = demo / "train"
  knee = json.loads((train / "run.json").read_text())["stages"][0]["knee_step"]
  origin = json.loads((train / "moe" / "stage.json").read_text())["init_from"]
  assert origin["stage"] == "pretrain" and origin["knee_step"] == knee
  assert origin["experts_initialised_identically"]
  knee_params = restore_params(train / "pretrain" / "checkpoints" / str(knee))["ema_params"]
  start = restore_params(train / "moe" / "checkpoints" / "0")["params"]
  end = restore_params(train / "moe" / "checkpoints" / "20")["params"]
  start_kernel = np.asarray(start["dit"]["proj_out"]["kernel"])
  np.testing.assert_array_equal(start_kernel[0], np.asarray(knee_params["dit"]["proj_out"]
                                                             ["kernel"])[0])
  for e in range(1, 4):
    np.testing.assert_array_equal(start_kernel[e], start_kernel[0])
  end_kernel = np.asarray(end["dit"]["proj_out"]["kernel"])
  assert all(np.abs(end_kernel[e] - end_kernel[0]).max() > 0 for e in range(1, 4))


def test_demo_outputs(demo):
  for method in ("ours", "bicubic"):
    summary = json.loads((demo / "eval" / method / "summary.json").read_text())
    assert summary["scored"] == 2 and np.isfinite(summary["mean"]["psnr_y"])
  grids = list(demo.glob("grid_*.png"))
  assert len(grids) == 1
  with Image.open(grids[0]) as grid:
    assert grid.size == (4 * 128, 128 + 20)
  report = (demo / "report.md").read_text()
  knee = json.loads((demo / "train" / "run.json").read_text())["stages"][0]["knee_step"]
  assert f"| {knee} |" in report and grids[0].name in report
