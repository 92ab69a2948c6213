"""`linearsr eval`: score SR images against HR references, matched by name.

  linearsr eval --hr_dir HR --sr_dir SR --out DIR             # images made by any method
  linearsr eval --hr_dir HR --lr_dir LR --scale 4 --out DIR   # the bicubic baseline row

Writes DIR/per_image.csv, DIR/summary.json and DIR/table.md. Exit code 0 when every pair
was scored, 1 when some were not (each is listed with its reason), 2 on bad arguments.
"""

import sys
from pathlib import Path

from linearsr_jax.errors import UserError
from linearsr_jax.evaluate import evaluate, metrics

def add_arguments(parser):
  parser.add_argument("--hr_dir", required=True, type=Path, metavar="DIR",
                      help="reference (HR) images")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--sr_dir", type=Path, metavar="DIR",
                      help="images to score, made by any method")
  source.add_argument("--lr_dir", type=Path, metavar="DIR",
                      help="LR images: scores their bicubic up-sampling (the baseline row)")
  # Not yet: `--checkpoint DIR` (with sampler options) to super-resolve --lr_dir with a model
  # instead of bicubic; run() would pass the model's lr -> sr function to evaluate_pairs in
  # place of bicubic_upscaler.
  parser.add_argument("--scale", type=int, default=4, metavar="N",
                      help="up-sampling factor for --lr_dir (default 4)")
  parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                      help="report folder: per_image.csv, summary.json, table.md")
  parser.add_argument("--metrics", default=",".join(evaluate.DEFAULT_METRICS), metavar="LIST",
                      help=f"comma-separated, from: {', '.join(metrics.METRICS)} "
                           "(default: %(default)s)")
  parser.add_argument("--crop_border", type=int, default=0, metavar="N",
                      help="pixels removed on each side before PSNR / SSIM (default 0, the "
                           "real-world SR convention; BasicSR uses the scale on synthetic sets)")
  parser.add_argument("--extra_scores", type=Path, metavar="CSV",
                      help="CSV with a 'name' column and precomputed scores (e.g. MUSIQ, "
                           "MANIQA, CLIPIQA) to merge into the report")
  parser.add_argument("--label", help="method name in the table (default: the folder name, "
                                      "or 'bicubic' with --lr_dir)")
  parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")


def _metric_names(text):
  names = [n.strip() for n in text.split(",") if n.strip()]
  unknown = [n for n in names if n not in metrics.METRICS]
  if not names or unknown:
    raise UserError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; "
                    f"choose from {', '.join(metrics.METRICS)}")
  return names


def run(args) -> int:
  names = _metric_names(args.metrics)
  if args.scale < 1:
    raise UserError("--scale must be a positive integer")
  if args.crop_border < 0:
    raise UserError("--crop_border must be >= 0")
  if args.out.exists() and not args.out.is_dir():
    raise UserError(f"--out {args.out} is a file, not a folder")
  if args.lr_dir is not None:
    source_dir, super_resolve = args.lr_dir, evaluate.bicubic_upscaler(args.scale)
    label = args.label or "bicubic"
  else:
    source_dir, super_resolve = args.sr_dir, None
    label = args.label or args.sr_dir.resolve().name
  extra = evaluate.read_extra_scores(args.extra_scores) if args.extra_scores else {}

  pairs = evaluate.match_pairs(args.hr_dir, source_dir)
  results = evaluate.evaluate_pairs(pairs, super_resolve, names, args.crop_border,
                                    progress=not args.no_progress)
  columns = names + evaluate.merge_extra_scores(results, extra)
  unmatched = sorted(extra.keys() - {r.name for r in results})
  if unmatched:
    print(f"linearsr eval: {len(unmatched)} precomputed score rows match no image "
          f"(first: {unmatched[0]})", file=sys.stderr)
  settings = {
      "hr_dir": str(args.hr_dir),
      "sr_dir" if args.lr_dir is None else "lr_dir": str(source_dir),
      "upsampler": None if args.lr_dir is None else
                   f"bicubic x{args.scale} (MATLAB imresize), rounded to 8 bits",
      "crop_border": args.crop_border,
      "metrics": {n: metrics.METRICS[n].convention for n in names},
      "extra_scores": str(args.extra_scores) if args.extra_scores else None,
  }
  summary = evaluate.summarize(results, columns, label, settings)
  evaluate.write_report(args.out, results, summary, columns)

  for failure in summary["failures"]:
    print(f"linearsr eval: {failure['name']}: {failure['error']}", file=sys.stderr)
  print(evaluate.markdown_table([summary], columns), end="")
  print(f"{summary['scored']} of {summary['images']} images scored; report in {args.out}")
  return 1 if summary["failed"] else 0
