"""One step: the distill stage's student against its teacher, at CPU scale.

Trains configs/demo.py's model, data and photographs with the flow started from noise (the
demo's LR-anchored flow gives a teacher whose N-step output is within 56 dB of its 1-step
output: nothing for a student to learn; bench/results/distill/demo_recipe.md), a teacher
sampler of --teacher_steps steps and classifier-free guidance --guidance, then a distill stage
from the experts' knee, and scores on the held-out photographs (coffee, chelsea, whole, each
with its own tags):

- the teacher at its N steps with guidance, the teacher at 1 step without, the student at 1;
- PSNR-Y / SSIM-Y / LPIPS (Alex) against HR; PSNR (RGB) against the teacher's N-step output
  (same source draw, seed 0); seconds per image (median of 3 after a warm-up) and its ratio to
  the teacher's, in this process. No colour fix, so that the rows compare the models alone.

  .venv/bin/python bench/distill.py [--pretrain 400] [--moe 100] [--distill 300] \\
      [--teacher_steps 4] [--guidance 2.0] [--workdir runs/distill_bench] [--set KEY=VALUE]

`--set diffusion.source=lr --set diffusion.source_prob=0.5 --set diffusion.logit_mean=2`
trains the demo's own flow. A run already in --workdir is resumed (or reused, once finished),
not trained again.
"""

import argparse
import contextlib
import sys
from pathlib import Path

from ablations import heldout_pairs
from linearsr_jax.commands.cli import main as _linearsr
from linearsr_jax.commands.distill_rows import TEACHER_SAMPLER, distill_rows, markdown
from linearsr_jax.data.image_io import read_image
from linearsr_jax.data.sources import DEMO_EVAL_NAMES, DEMO_IMAGES

ROOT = Path(__file__).resolve().parent.parent
# The flow from noise, its σ drawn as SD3 does: a teacher whose steps each add to its output.
NOISE_FLOW = {"diffusion.source": "noise", "diffusion.source_prob": 0, "diffusion.logit_mean": 0}


def train(workdir: Path, args):
  flags = NOISE_FLOW | {
      "stage_order": "pretrain,moe,distill", "stages.pretrain.max_steps": args.pretrain,
      "stages.moe.max_steps": args.moe, "stages.distill.max_steps": args.distill,
      "diffusion.sampler.steps": args.teacher_steps, "diffusion.sampler.guidance_scale":
          args.guidance
  } | dict(kv.split("=", 1) for kv in args.set)
  with contextlib.redirect_stdout(sys.stderr):
    code = _linearsr([
        "train", "--config",
        str(ROOT / "configs" / "demo.py"), "--workdir",
        str(workdir), *(f"--config.{k}={v}" for k, v in flags.items())
    ])
  if code:
    raise SystemExit(f"training {workdir} failed")


def images(pairs: Path) -> dict:
  """{name: (LR, HR, its tags)} of the held-out photographs."""
  return {
      name: (read_image(pairs / "LR" / f"{name}.png"), read_image(pairs / "HR" / f"{name}.png"),
             list(DEMO_IMAGES[name])) for name in DEMO_EVAL_NAMES
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pretrain", type=int, default=400, help="pretrain's step budget")
  parser.add_argument("--moe", type=int, default=100, help="the 4 experts' step budget")
  parser.add_argument("--distill", type=int, default=300, help="the student's step budget")
  parser.add_argument("--teacher_steps", type=int,
                      default=TEACHER_SAMPLER["diffusion.sampler.steps"])
  parser.add_argument("--guidance", type=float,
                      default=TEACHER_SAMPLER["diffusion.sampler.guidance_scale"])
  parser.add_argument("--workdir", default="runs/distill_bench")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="config override, e.g. --set distill.gt_weight=0.5")
  args = parser.parse_args()
  workdir = Path(args.workdir)
  pairs = heldout_pairs(workdir / "heldout")
  train(workdir / "train", args)
  print("\n".join(markdown(distill_rows(workdir / "train", images(pairs)))))


if __name__ == "__main__":
  main()
