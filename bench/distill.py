"""One step: the distill stage's student against its teacher, at CPU scale.

Trains configs/demo.py (the demo's recipe: pretrain -> 4 experts) with a teacher sampler of
--teacher_steps steps and classifier-free guidance --guidance (so that the teacher's N-step
output differs clearly from its 1-step output), then a distill stage from the experts' knee,
and scores on the held-out photographs (coffee, chelsea, whole, each with its own tags):

- the teacher at its N steps with guidance, the teacher at 1 step without, the student at 1;
- PSNR-Y / SSIM-Y / LPIPS (Alex) against HR; PSNR (RGB) against the teacher's N-step output
  (same source draw, seed 0); seconds per image (median of 3 after a warm-up) and its ratio to
  the teacher's, in this process. No colour fix, so that the rows compare the models alone.

  .venv/bin/python bench/distill.py [--pretrain 2000] [--moe 400] [--distill 400] \\
      [--teacher_steps 8] [--guidance 2.0] [--workdir runs/distill_bench]

A run already in --workdir is resumed (or reused, once finished), not trained again.
"""

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np

from ablations import heldout_pairs
from common import markdown_table, median_seconds
from linearsr_jax.commands.cli import main as _linearsr
from linearsr_jax.data.image_io import read_image
from linearsr_jax.data.sources import DEMO_EVAL_NAMES, DEMO_IMAGES

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("psnr_y", "ssim_y", "lpips_alex")


def train(workdir: Path, args):
  flags = {
      "stage_order": "pretrain,moe,distill", "stages.pretrain.max_steps": args.pretrain,
      "stages.moe.max_steps": args.moe, "stages.distill.max_steps": args.distill,
      "diffusion.sampler.steps": args.teacher_steps,
      "diffusion.sampler.guidance_scale": args.guidance
  }
  with contextlib.redirect_stdout(sys.stderr):
    code = _linearsr([
        "train", "--config",
        str(ROOT / "configs" / "demo.py"), "--workdir",
        str(workdir), *(f"--config.{k}={v}" for k, v in flags.items())
    ])
  if code:
    raise SystemExit(f"training {workdir} failed")


def rows(workdir: Path, pairs: Path) -> list:
  """[name, PSNR-Y, SSIM-Y, LPIPS, PSNR vs teacher, s / image, time ratio] per row."""
  from linearsr_jax.evaluate.metrics import psnr, score_image
  from linearsr_jax.inference.trained import load_trained
  from linearsr_jax.inference.upscale import UpscaleOptions, Upscaler

  teacher, student = load_trained(workdir, stage="moe"), load_trained(workdir, stage="distill")
  settings = {
      f"teacher, {teacher.diffusion.sampler.steps} steps, guidance "
      f"{teacher.diffusion.sampler.guidance_scale:g}":
          (teacher,
           UpscaleOptions(tile=512, steps=None, color_fix="none",
                          guidance_scale=teacher.diffusion.sampler.guidance_scale)),
      "teacher, 1 step": (teacher, UpscaleOptions(tile=512, steps=1, color_fix="none")),
      "student, 1 step": (student, UpscaleOptions(tile=512, color_fix="none")),
  }
  photos = {name: read_image(pairs / "LR" / f"{name}.png") for name in DEMO_EVAL_NAMES}
  hr = {name: read_image(pairs / "HR" / f"{name}.png") for name in DEMO_EVAL_NAMES}
  table, reference, teacher_seconds = [], None, None
  for label, (trained, options) in settings.items():
    upscaler = Upscaler(trained, options)
    conditions = {name: upscaler.condition(list(DEMO_IMAGES[name])) for name in photos}
    sr = {name: upscaler(lr, conditions[name]) for name, lr in photos.items()}  # and compiles
    seconds = np.mean([
        median_seconds(lambda n=name: upscaler(photos[n], conditions[n]), repeats=3, warmup=0)
        for name in photos
    ])
    reference = reference or sr
    teacher_seconds = teacher_seconds or seconds
    scores = [score_image(sr[name], hr[name], METRICS) for name in photos]
    to_teacher = [float(psnr(sr[n][None], reference[n][None], space="rgb")[0]) for n in photos]
    table.append([label] + [f"{np.mean([s[m] for s in scores]):.3f}" for m in METRICS] + [
        "—" if sr is reference else f"{np.mean(to_teacher):.2f}", f"{seconds:.3f}",
        f"{seconds / teacher_seconds:.3f}"
    ])
    print(" | ".join(table[-1]), file=sys.stderr, flush=True)
  return table


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pretrain", type=int, default=2000, help="pretrain's step budget")
  parser.add_argument("--moe", type=int, default=400, help="the 4 experts' step budget")
  parser.add_argument("--distill", type=int, default=400, help="the student's step budget")
  parser.add_argument("--teacher_steps", type=int, default=8)
  parser.add_argument("--guidance", type=float, default=2.0)
  parser.add_argument("--workdir", default="runs/distill_bench")
  args = parser.parse_args()
  workdir = Path(args.workdir)
  pairs = heldout_pairs(workdir / "heldout")
  train(workdir / "train", args)
  header = ["row", "PSNR-Y", "SSIM-Y", "LPIPS", "PSNR vs teacher", "s / image", "time / teacher's"]
  print(markdown_table(header, rows(workdir / "train", pairs)))


if __name__ == "__main__":
  main()
