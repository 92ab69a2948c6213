"""`linearsr eval`: score SR images against HR references, matched by name.

  linearsr eval --hr_dir HR --sr_dir SR --out DIR             # images made by any method
  linearsr eval --hr_dir HR --lr_dir LR --scale 4 --out DIR   # the bicubic baseline row
  linearsr eval --hr_dir HR --lr_dir LR --checkpoint RUN --out DIR   # a trained model

Writes DIR/per_image.csv, DIR/summary.json and DIR/table.md; a trained model's report holds
the bicubic row beside its own. Exit code 0 when every pair
was scored, 1 when some were not (each is listed with its reason), 2 on bad arguments.
"""

import sys

from linearsr_jax import storage
from linearsr_jax.errors import UserError
from linearsr_jax.evaluate import evaluate, metrics


def add_arguments(parser):
  parser.add_argument("--hr_dir", required=True, type=storage.path, metavar="DIR",
                      help="reference (HR) images")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--sr_dir", type=storage.path, metavar="DIR",
                      help="images to score, made by any method")
  source.add_argument("--lr_dir", type=storage.path, metavar="DIR",
                      help="LR images: scores their bicubic up-sampling (the baseline row)")
  model = parser.add_argument_group("a trained model instead of bicubic (with --lr_dir)")
  model.add_argument("--checkpoint", help="run dir, stage dir or checkpoint step dir")
  model.add_argument("--stage", help="stage of the run (default: the last one)")
  model.add_argument("--step", type=int, help="checkpoint step (default: the stage's knee)")
  model.add_argument("--raw", action="store_true", help="raw params instead of the EMA")
  model.add_argument("--steps", type=int, help="sampler steps (default: the config's)")
  model.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance")
  model.add_argument("--seed", type=int, default=0)
  model.add_argument(
      "--dtype", choices=["float32", "bfloat16"],
      help="compute dtype of the model's matmuls (default: the run's model.dtype); norms "
      "and the attention's normaliser stay float32")
  model.add_argument(
      "--tags", help="comma-separated tags for every image (default: IMAGE.txt "
      "beside each LR image, else none); for a hash-encoder model")
  model.add_argument(
      "--cond_mapping", type=storage.path, metavar="FILE",
      help="an .npz / .safetensors file of [L, C] arrays keyed by LR image (path "
      "relative to --lr_dir, name or stem); default: IMAGE.npy beside each "
      "LR image, else none. For a precomputed-encoder model")
  model.add_argument("--tile", type=int, default=128, help="LR tile size in pixels")
  model.add_argument("--overlap", type=int, default=32, help="LR tile overlap in pixels")
  model.add_argument("--color_fix", choices=["wavelet", "adain", "none"], default="none")
  model.add_argument(
      "--batch", type=int, metavar="N",
      help="tiles per sampler call, split over the local devices (default: one per GPU / "
      "TPU device, 1 on a CPU)")
  model.add_argument(
      "--shard_params", action="store_true",
      help="split the params over all of this host's devices (FSDP), for a model that does "
      "not fit one; default: a copy on each device")
  parser.add_argument("--scale", type=int, default=4, metavar="N",
                      help="up-sampling factor for --lr_dir (default 4)")
  parser.add_argument("--out", required=True, type=storage.path, metavar="DIR",
                      help="report folder: per_image.csv, summary.json, table.md")
  parser.add_argument(
      "--metrics", default=",".join(evaluate.DEFAULT_METRICS), metavar="LIST",
      help=f"comma-separated, from: {', '.join(metrics.METRICS)} "
      "(default: %(default)s)")
  parser.add_argument(
      "--crop_border", type=int, default=0, metavar="N",
      help="pixels removed on each side before PSNR / SSIM (default 0, the "
      "real-world SR convention; BasicSR uses the scale on synthetic sets)")
  parser.add_argument(
      "--extra_scores", type=storage.path, metavar="CSV",
      help="CSV with a 'name' column and precomputed scores (e.g. MUSIQ, "
      "MANIQA, CLIPIQA) to merge into the report")
  parser.add_argument(
      "--label", help="method name in the table (default: the folder name, "
      "or 'bicubic' with --lr_dir)")
  parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")


def _conditions(args, upscaler):
  """LR path -> (cond, cond_mask), as `upscale` finds them: --tags for every image, else each
  LR image's IMAGE.txt sidecar (hash encoder); each image's array from --cond_mapping or its
  IMAGE.npy sidecar (precomputed); else the null condition."""
  from linearsr_jax.data import tag_sources
  from linearsr_jax.inference.upscale import check_condition_flags

  check_condition_flags(upscaler.encoder, args.tags, args.cond_mapping, "--cond_mapping")
  if args.tags is not None:
    return upscaler.conditions(tag_sources.split_tags(args.tags))
  per_image = tag_sources.make_tag_source("sidecar" if args.cond_mapping is None else "mapping",
                                          args.cond_mapping, root=args.lr_dir,
                                          encoder=upscaler.encoder)
  return upscaler.conditions(per_image=per_image)


def _model_upscaler(args):
  """((lr, lr path) -> sr function, description) of a trained checkpoint."""
  from linearsr_jax.inference.upscale import UpscaleOptions, default_batch, load_upscaler

  trained, upscaler = load_upscaler(
      args.checkpoint, args.stage, args.step, not args.raw, args.dtype,
      UpscaleOptions(args.tile, args.overlap, args.steps, args.guidance, args.seed, args.color_fix,
                     args.batch or default_batch(), args.shard_params))
  if upscaler.scale != args.scale:
    raise UserError(f"the checkpoint upscales x{upscaler.scale}, but --scale is {args.scale}")
  conditions = _conditions(args, upscaler)
  described = (f"{trained.stage} step {trained.step} ({'raw' if args.raw else 'EMA'}, "
               f"{trained.num_experts} expert(s)), steps "
               f"{args.steps or trained.diffusion.sampler.steps}, guidance {args.guidance}, "
               f"seed {args.seed}, color fix {args.color_fix}, {trained.model.dit.dtype}")
  return (lambda lr, lr_path: upscaler(lr, conditions(lr_path))), described


def _metric_names(text):
  names = [n.strip() for n in text.split(",") if n.strip()]
  unknown = [n for n in names if n not in metrics.METRICS]
  if not names or unknown:
    raise UserError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; "
                    f"choose from {', '.join(metrics.METRICS)}")
  return names


def _bicubic(scale: int) -> str:
  return f"bicubic x{scale} (MATLAB imresize), rounded to 8 bits"


def _settings(args, source_dir, upsampler, names) -> dict:
  return {
      "hr_dir": str(args.hr_dir),
      "sr_dir" if args.lr_dir is None else "lr_dir": str(source_dir),
      "upsampler": upsampler,
      "crop_border": args.crop_border,
      "metrics": {n: metrics.METRICS[n].convention for n in names},
  }


def run(args) -> int:
  names = _metric_names(args.metrics)
  if args.scale < 1:
    raise UserError("--scale must be a positive integer")
  if args.crop_border < 0:
    raise UserError("--crop_border must be >= 0")
  if args.out.exists() and not args.out.is_dir():
    raise UserError(f"--out {args.out} is a file, not a folder")
  if args.checkpoint is not None:
    if args.lr_dir is None:
      raise UserError("--checkpoint needs --lr_dir (the model super-resolves the LR images)")
    super_resolve, upsampler = _model_upscaler(args)
    source_dir, label = args.lr_dir, args.label or "linearsr"
  elif args.lr_dir is not None:
    source_dir, super_resolve = args.lr_dir, evaluate.bicubic_upscaler(args.scale)
    upsampler = _bicubic(args.scale)
    label = args.label or "bicubic"
  else:
    source_dir, super_resolve, upsampler = args.sr_dir, None, None
    label = args.label or args.sr_dir.resolve().name
  extra = evaluate.read_extra_scores(args.extra_scores) if args.extra_scores else {}
  storage.output_dir(args.out, "--out")  # one line now, not a traceback after the scoring

  pairs = evaluate.match_pairs(args.hr_dir, source_dir)
  baseline = None
  if args.checkpoint is not None:  # the bicubic row beside the model's: does the model help?
    settings = _settings(args, source_dir, _bicubic(args.scale), names)
    scored = evaluate.evaluate_pairs(pairs, evaluate.bicubic_upscaler(args.scale), names,
                                     args.crop_border, not args.no_progress, desc="bicubic")
    baseline = scored, evaluate.summarize(scored, names, "bicubic", settings)
  results = evaluate.evaluate_pairs(pairs, super_resolve, names, args.crop_border,
                                    progress=not args.no_progress, desc=label)
  columns = names + evaluate.merge_extra_scores(results, extra)
  unmatched = sorted(extra.keys() - {r.name for r in results})
  if unmatched:
    print(
        f"linearsr eval: {len(unmatched)} precomputed score rows match no image "
        f"(first: {unmatched[0]})", file=sys.stderr)
  settings = dict(_settings(args, source_dir, upsampler, names),
                  extra_scores=str(args.extra_scores) if args.extra_scores else None)
  summary = evaluate.summarize(results, columns, label, settings)
  evaluate.write_report(args.out, results, summary, columns, baseline)

  for failure in summary["failures"]:
    print(f"linearsr eval: {failure['name']}: {failure['error']}", file=sys.stderr)
  print(evaluate.markdown_table([baseline[1], summary] if baseline else [summary], columns), end="")
  print(f"{summary['scored']} of {summary['images']} images scored; report in {args.out}")
  return 1 if summary["failed"] else 0
