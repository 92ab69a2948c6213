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
  summary = json.loads((demo / "eval" / "ours" / "summary.json").read_text())
  for method in (summary, summary["baseline"]):
    assert method["scored"] == 2 and np.isfinite(method["mean"]["psnr_y"])
  grids = list(demo.glob("grid_*.png"))
  assert len(grids) == 1
  with Image.open(grids[0]) as grid:
    assert grid.size == (4 * 128, 20 + 128 + 128)  # labels, the panels, their zoomed windows
  report = (demo / "report.md").read_text()
  knee = json.loads((demo / "train" / "run.json").read_text())["stages"][0]["knee_step"]
  assert f"| {knee} |" in report and grids[0].name in report


def test_the_grid_zooms_into_the_most_textured_window(tmp_path):
  """A flat photo with one 16 px checkerboard patch: the zoom row shows that patch of each
  panel, enlarged 4× by pixel repetition, and a red box marks it on the full panels."""
  from linearsr_jax.data.image_io import read_image, write_image
  from linearsr_jax.demo import textured_window, write_grid

  hr = np.full((64, 64, 3), 0.5)
  rows, cols = np.indices((16, 16))
  hr[24:40, 40:56] = ((rows + cols) % 2)[..., None]
  assert textured_window(hr, 16) == (24, 40)
  lr = hr[::4, ::4]
  for name, image in (("lr", lr), ("sr", hr), ("hr", hr)):
    write_image(tmp_path / f"{name}.png", image)
  write_grid(tmp_path / "lr.png", tmp_path / "sr.png", tmp_path / "hr.png",
             tmp_path / "grid.png", 4)
  grid = read_image(tmp_path / "grid.png")
  assert grid.shape == (20 + 64 + 64, 4 * 64, 3)
  patch = np.kron(hr[24:40, 40:56], np.ones((4, 4, 1)))
  for panel in (2, 3):  # ours (here the HR image itself) and HR
    np.testing.assert_allclose(grid[84:, 64 * panel:64 * (panel + 1)], patch, atol=1 / 255)
  red = grid[20 + 24, 64 * 3 + 44]  # on the box's top edge in the HR panel
  assert red[0] > 0.9 and red[1] < 0.1 and red[2] < 0.1
