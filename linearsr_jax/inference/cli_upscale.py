"""`linearsr upscale INPUT... --checkpoint RUN --out DIR`: super-resolve files and folders.

Outputs go to DIR/<relative path>_x<scale>.<format>, written atomically; an output that would
replace an input is refused, an existing output is skipped unless --overwrite. Bad files are
reported and the rest processed; the exit code is 1 if anything failed.
"""

import sys
from pathlib import PurePosixPath

from linearsr_jax import storage
from linearsr_jax.errors import UserError


def add_arguments(parser):
  parser.add_argument("inputs", nargs="+", help="image files and/or folders (recursive)")
  parser.add_argument("--checkpoint", required=True,
                      help="run dir, stage dir or checkpoint step dir")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--stage", help="stage of the run (default: the last one)")
  parser.add_argument("--step", type=int, help="checkpoint step (default: the stage's knee)")
  parser.add_argument("--raw", action="store_true", help="raw params instead of the EMA")
  parser.add_argument("--tile", type=int, default=128, help="LR tile size in pixels")
  parser.add_argument("--overlap", type=int, default=32, help="LR tile overlap in pixels")
  parser.add_argument("--color_fix", choices=["wavelet", "adain", "none"], default="wavelet")
  parser.add_argument("--tags", help="comma-separated tags for every image (default: sidecar "
                      "IMAGE.txt files, else none); for a hash-encoder model")
  parser.add_argument("--cond", metavar="FILE.npy",
                      help="an [L, C] condition array for every image (default: sidecar "
                           "IMAGE.npy files, else none); for a precomputed-encoder model")
  parser.add_argument("--steps", type=int, help="sampler steps (default: the config's)")
  parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--format", choices=["png", "jpg"], default="png")
  parser.add_argument("--quality", type=int, default=95, help="JPEG quality")
  parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
  parser.add_argument("--no_progress", action="store_true", help="hide the progress bars")


def collect_inputs(inputs) -> list:
  """[(path, relative output stem)] for files and (recursively) folders, in order."""
  from linearsr_jax.data.image_io import list_images
  found = []
  for item in map(storage.path, inputs):
    if item.is_dir():
      found += [(p, PurePosixPath(p.relative_to(item).as_posix()).with_suffix(""))
                for p in list_images(item)]
    elif item.is_file():
      found.append((item, PurePosixPath(item.stem)))
    else:
      raise UserError(f"{item}: no such file or directory")
  return found


def _conditions(args, upscaler):
  """image path -> (cond, cond_mask): --tags / --cond for every image, else the image's sidecar
  (IMAGE.txt, or IMAGE.npy for a precomputed-encoder model), else None (the null condition)."""
  from linearsr_jax.data import tag_sources
  from linearsr_jax.inference.upscale import check_condition_flags

  check_condition_flags(upscaler.encoder, args.tags, args.cond, "--cond")
  given = (tag_sources.split_tags(args.tags) if args.tags is not None else
           tag_sources.ArrayRef(args.cond) if args.cond is not None else None)
  sidecar = tag_sources.make_tag_source("sidecar", encoder=upscaler.encoder)
  return upscaler.conditions(given, sidecar)


def run(args) -> int:
  from tqdm import tqdm

  from linearsr_jax.data.image_io import read_image, write_image
  from linearsr_jax.inference.trained import load_trained
  from linearsr_jax.inference.upscale import UpscaleOptions, Upscaler

  jobs = collect_inputs(args.inputs)
  if not jobs:
    raise UserError("no input images")
  trained = load_trained(args.checkpoint, args.stage, args.step, ema=not args.raw)
  upscaler = Upscaler(trained, UpscaleOptions(args.tile, args.overlap, args.steps, args.guidance,
                                              args.seed, args.color_fix))
  out_dir = storage.path(args.out)
  inputs = {p.resolve() for p, _ in jobs}
  conditions = _conditions(args, upscaler)
  failures, done, skipped = [], 0, 0
  for path, stem in tqdm(jobs, desc="images", unit="img", file=sys.stderr,
                         disable=args.no_progress):
    target = out_dir / f"{stem}_x{upscaler.scale}.{args.format}"
    if target.resolve() in inputs:
      failures.append((path, "output would overwrite an input"))
      continue
    if target.exists() and not args.overwrite:
      skipped += 1
      tqdm.write(f"skip {target} (exists; --overwrite replaces it)", file=sys.stderr)
      continue
    try:
      lr = read_image(path)
      condition = conditions(path)
      with tqdm(total=upscaler.tile_count(*lr.shape[:2]), desc=path.name, unit="tile",
                leave=False, file=sys.stderr, disable=args.no_progress) as bar:
        sr = upscaler(lr, condition, on_tile=lambda: bar.update(1))
      write_image(target, sr, quality=args.quality)
      done += 1
    except UserError as e:
      failures.append((path, str(e)))
  for path, reason in failures:
    print(f"linearsr: failed: {path}: {reason}", file=sys.stderr)
  print(f"upscaled {done}, skipped {skipped} existing, failed {len(failures)} -> {out_dir}")
  return 1 if failures else 0
