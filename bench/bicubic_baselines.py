"""Bicubic x4 baseline rows on the real-world SR test sets (RealSR, DRealSR; 128 -> 512 px).

  .venv/bin/python bench/bicubic_baselines.py --root DIR [--dists]

DIR holds RealSR/ and DRealSR/, each with HR/ and LR/ (the pairs of the same names).

Prints, per set, how many pairs the evaluation and the training's paired source
(`data.source.kind=paired`) each find and the scale the latter infers, then a Markdown table:
PSNR / SSIM on BT.601 Y (no border crop; SSIM on float Y as BasicSR and on 8-bit Y as pyiqa),
LPIPS v0.1 Alex and, with --dists, DISTS. The same numbers come from
`linearsr eval --hr_dir SET/HR --lr_dir SET/LR --scale 4 --out DIR`.
"""

import argparse
import time
from pathlib import Path

from linearsr_jax.data import sources
from linearsr_jax.evaluate import evaluate

SETS = ("RealSR", "DRealSR")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", type=Path, required=True,
                      help=f"a folder holding {' and '.join(SETS)}, each with HR/ and LR/")
  parser.add_argument("--dists", action="store_true", help="add DISTS (slow on CPU)")
  args = parser.parse_args()
  missing = [
      f"{name}/{kind}" for name in SETS for kind in ("HR", "LR")
      if not (args.root / name / kind).is_dir()
  ]
  if missing:
    parser.error(f"--root {args.root}: no {', '.join(missing)} there")
  names = ["psnr_y", "ssim_y", "ssim_y_pyiqa", "lpips_alex"] + (["dists"] if args.dists else [])
  summaries = []
  for name in SETS:
    start = time.perf_counter()
    pairs = evaluate.match_pairs(args.root / name / "HR", args.root / name / "LR")
    results = evaluate.evaluate_pairs(pairs, evaluate.bicubic_upscaler(4), names)
    summaries.append(evaluate.summarize(results, names, f"bicubic x4, {name}", {}))
    seconds = time.perf_counter() - start
    paired = sources.PairedSource(args.root / name / "LR", args.root / name / "HR")
    print(
        f"{name}: {len(results)} pairs in {seconds:.0f} s; the paired "
        f"source finds {len(paired)} at x{paired.scale}", flush=True)
  print()
  print(evaluate.markdown_table(summaries, names), end="")
  for summary in summaries:
    for failure in summary["failures"]:
      print(f"{summary['label']}: {failure['name']}: {failure['error']}")


if __name__ == "__main__":
  main()
