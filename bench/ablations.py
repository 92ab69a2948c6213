"""The paper's ablations at CPU scale: what the experts, the tags and the knee buy.

Every row trains configs/tiny.py from scratch on the demo photographs, pretrain -> second stage,
and is scored on the demo's two held-out photographs (each with its own tags, as a user would
pass them) and on a fixed subset of RealSR's test pairs (--realsr_dir; 256 px HR centre crops,
the null condition: they have no tags). Mean ± std over the seeds.

- experts: the second stage has 1 expert, 4 SNR experts or 4 uniform-split experts; both
  stages run their whole budget (ESGF off), so every row has the same steps × batch;
- tags: the 4-SNR row trained with the null condition only (tags.dropout_prob = 1);
- timestep density: the 4-SNR row trained with the sampler's flow shift (3) instead of the
  tiny config's 1;
- knee: a first stage twice as long with ESGF on (the second stage starts from its knee)
  against the same stage with ESGF off and the detector given nothing to judge, so the second
  stage starts from its last checkpoint.

  .venv/bin/python bench/ablations.py --realsr_dir DIR [--steps 200] [--seeds 0 1 2] \\
      [--realsr 10] [--workdir runs/ablations]

DIR is RealSR's test set, a folder holding HR/ and LR/ (the pairs of the same names).

Runs are kept in --workdir: a row whose evaluation is there is not trained again.
"""

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np

from common import markdown_table
from linearsr_jax.commands.cli import main as _linearsr
from linearsr_jax.data.image_io import read_image, write_image
from linearsr_jax.data.sources import DEMO_EVAL_NAMES, DEMO_IMAGES

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("psnr_y", "ssim_y", "lpips_alex")
SCALE = 4


def linearsr(args) -> int:
  """One CLI command in this process, its report on stderr (stdout is the table)."""
  with contextlib.redirect_stdout(sys.stderr):
    return _linearsr(args)


def rows(steps: int) -> dict:
  """Row name -> config overrides; `steps` is one stage's budget."""
  half = {
      "stages.pretrain.max_steps": steps, "stages.moe.max_steps": steps,
      "stages.pretrain.esgf": False, "stages.moe.esgf": False
  }
  return {
      "1 expert": dict(half, **{"stages.moe.num_experts": 1}),
      "4 SNR experts": half,
      "4 uniform-split experts": dict(half, **{"diffusion.experts.split": "uniform"}),
      "4 SNR experts, no tags": dict(half, **{"tags.dropout_prob": 1.0}),
      "4 SNR experts, train shift 3": dict(half, **{"diffusion.train_shift": 3.0}),
      "branch from the ESGF knee": {
          "stages.pretrain.max_steps": 2 * steps, "stages.moe.max_steps": steps,
          "stages.moe.esgf": False
      },
      "branch from the last checkpoint": {
          "stages.pretrain.max_steps": 2 * steps, "stages.moe.max_steps": steps,
          "stages.pretrain.esgf": False, "stages.moe.esgf": False, "esgf.min_points": 10**6
      },
  }


def realsr_crops(realsr: Path, out: Path, count: int, hr_size: int = 256) -> Path:
  """The first `count` pairs of `realsr` (HR/, LR/), centre-cropped to hr_size (LR to
  hr_size / 4)."""
  lr_size = hr_size // SCALE
  for name in sorted(p.name for p in (realsr / "LR").iterdir())[:count]:
    lr = read_image(realsr / "LR" / name)
    top, left = (lr.shape[0] - lr_size) // 2, (lr.shape[1] - lr_size) // 2
    write_image(out / "LR" / name, lr[top:top + lr_size, left:left + lr_size])
    hr = read_image(realsr / "HR" / name)
    write_image(out / "HR" / name, hr[SCALE * top:SCALE * (top + lr_size),
                                      SCALE * left:SCALE * (left + lr_size)])
  return out


def heldout_pairs(out: Path) -> Path:
  """The embedded eval photographs (coffee, chelsea) as whole-photo HR / LR pairs, degraded once
  (seeded) as configs/tiny.py's validation degrades them."""
  from linearsr_jax.configs import tiny
  from linearsr_jax.data import eval_set, pipeline
  if not (out / "HR").is_dir():
    config = tiny.get_config()
    config.data.eval.crop_size = 0
    eval_set.write_eval_pairs(pipeline.make_source(config.data, "eval"), config.data, out)
  return out


def evaluate(train_dir, pairs: Path, out: Path, tags: str = "") -> dict:
  """Mean scores of the run's final stage on the pairs (one `linearsr eval`); of bicubic
  when `train_dir` is None."""
  if not (out / "summary.json").is_file():
    args = [
        "eval", "--hr_dir",
        str(pairs / "HR"), "--lr_dir",
        str(pairs / "LR"), "--metrics", ",".join(METRICS), "--out",
        str(out), "--no_progress"
    ]
    args += ["--checkpoint", str(train_dir)] if train_dir else []
    if linearsr(args + (["--tags", tags] if tags else [])):
      raise SystemExit(f"evaluating {train_dir} on {pairs} failed")
  return json.loads((out / "summary.json").read_text())["mean"]


def one_photo_pairs(pairs: Path, name: str) -> Path:
  """A folder holding only `name`'s pair, so that it is scored with its own tags."""
  single = pairs.parent / f"{pairs.name}_{name}"
  for kind in ("HR", "LR"):
    target = single / kind / f"{name}.png"
    if not target.exists():
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes((pairs / kind / f"{name}.png").read_bytes())
  return single


def run_row(workdir: Path, name: str, overrides: dict, seed: int, heldout: Path,
            realsr: Path) -> dict:
  """{'photos': means, 'realsr': means} of one row and seed; trains it unless done."""
  run = workdir / name.replace(" ", "_").replace(",", "") / f"seed{seed}"
  train_dir = run / "train"
  if not (train_dir / "run.json").is_file() or len(
      json.loads((train_dir / "run.json").read_text())["stages"]) < 2:
    flags = [f"--config.{k}={v}" for k, v in dict(overrides, seed=seed).items()]
    if linearsr([
        "train", "--config",
        str(ROOT / "configs" / "tiny.py"), "--workdir",
        str(train_dir), *flags
    ]):
      raise SystemExit(f"training {name} (seed {seed}) failed")
  # A model trained on the null condition alone is scored with it.
  with_tags = overrides.get("tags.dropout_prob", 0.0) < 1.0
  photos = [
      evaluate(train_dir, one_photo_pairs(heldout, photo), run / "eval" / photo,
               ", ".join(DEMO_IMAGES[photo]) if with_tags else "") for photo in DEMO_EVAL_NAMES
  ]
  return {
      "photos": {m: float(np.mean([p[m] for p in photos])) for m in METRICS},
      "realsr": evaluate(train_dir, realsr, run / "eval" / "realsr")
  }


def cell(values) -> str:
  return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--steps", type=int, default=200,
      help="one stage's step budget (200: the 21 runs take under 2 hours on 2 "
      "cores)")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--realsr_dir", type=Path, required=True,
                      help="RealSR's test set: a folder holding HR/ and LR/")
  parser.add_argument("--realsr", type=int, default=10, help="RealSR pairs scored")
  parser.add_argument("--rows", nargs="+", help="a subset of the rows, by name")
  parser.add_argument("--workdir", default="runs/ablations")
  args = parser.parse_args()
  if not all((args.realsr_dir / kind).is_dir() for kind in ("HR", "LR")):
    parser.error(f"--realsr_dir {args.realsr_dir}: no HR/ and LR/ folders there")
  workdir = Path(args.workdir)
  heldout = heldout_pairs(workdir / "heldout")
  realsr = realsr_crops(args.realsr_dir, workdir / f"realsr_{args.realsr}", args.realsr)
  bicubic = [
      evaluate(None, one_photo_pairs(heldout, photo), workdir / "bicubic" / photo)
      for photo in DEMO_EVAL_NAMES
  ]
  bicubic_realsr = evaluate(None, realsr, workdir / "bicubic" / realsr.name)
  table = [["bicubic"] + [f"{np.mean([b[m] for b in bicubic]):.3f}" for m in METRICS] +
           [f"{bicubic_realsr[m]:.3f}" for m in METRICS]]
  for name, overrides in rows(args.steps).items():
    if args.rows and name not in args.rows:
      continue
    results = [run_row(workdir, name, overrides, seed, heldout, realsr) for seed in args.seeds]
    table.append(
        [name] +
        [cell([r[where][m] for r in results]) for where in ("photos", "realsr") for m in METRICS])
    print(" | ".join(table[-1]), file=sys.stderr, flush=True)
  header = ["row"] + [
      f"{where} {m}" for where in ("photos", "RealSR") for m in ("PSNR-Y", "SSIM-Y", "LPIPS")
  ]
  print(markdown_table(header, table))


if __name__ == "__main__":
  main()
