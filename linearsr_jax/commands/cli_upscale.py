"""`linearsr upscale INPUT... --checkpoint RUN --out DIR`: super-resolve files and folders.

Each output keeps its input's kind (data/picture.py): alpha, grey, 16 bits where the format
holds them, ICC profile; EXIF orientation is applied. --outscale F resizes the model's output
to F times the input (inference/picture_upscale.py).
Outputs go to DIR/<relative path>_x<scale or F>.<format>, written atomically; an output that would
replace an input is refused, an existing output is skipped unless --overwrite, and two inputs
that would make the same output (a.png, a.jpg) are refused before any work. Bad files, and
images whose output would exceed --max_output_pixels (read from their header, before decoding),
are reported and the rest processed; the exit code is 1 if anything failed. Tiles go through
the sampler --batch at a time over this host's devices (--shard_params splits the params over
them too); on a multi-host job (every host runs the same command) host i of n takes inputs i,
i + n, i + 2n, ...
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
  parser.add_argument(
      "--tags", help="comma-separated tags for every image (default: sidecar "
      "IMAGE.txt files, else none); for a hash-encoder model")
  parser.add_argument(
      "--cond", metavar="FILE.npy",
      help="an [L, C] condition array for every image (default: sidecar "
      "IMAGE.npy files, else none); for a precomputed-encoder model")
  parser.add_argument("--steps", type=int, help="sampler steps (default: the config's)")
  parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
      "--dtype", choices=["float32", "bfloat16"],
      help="compute dtype of the model's matmuls (default: the run's model.dtype); norms "
      "and the attention's normaliser stay float32")
  parser.add_argument(
      "--outscale", type=float, metavar="F",
      help="output size F times the input's (default: the model's scale): the model's "
      "output resized bicubically")
  parser.add_argument(
      "--format", choices=["png", "jpg", "webp", "tiff", "input"], default="png",
      help="output format; 'input' keeps each input's (default: png). 16 bits stay 16 "
      "in png and tiff; jpg has no alpha (composited on white)")
  parser.add_argument("--quality", type=int, default=95, help="JPEG / WebP quality")
  parser.add_argument(
      "--batch", type=int, metavar="N",
      help="tiles per sampler call, split over this host's devices (default: one per "
      "GPU / TPU device, 1 on a CPU)")
  parser.add_argument(
      "--shard_params", action="store_true",
      help="split the params over all of this host's devices (FSDP), for a model that does "
      "not fit one; default: a copy on each device")
  parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
  parser.add_argument(
      "--max_output_pixels", type=int, metavar="N",
      help="refuse an image whose output would have more pixels (default: what "
      "half of this machine's memory holds)")
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
  _check_distinct_outputs(found)
  return found


def _check_distinct_outputs(jobs):
  """Inputs whose outputs would share a name (a.png and a.jpg: a_x4.png) are refused together,
  before any work: otherwise one would silently be skipped or replace the other."""
  first = {}
  for path, stem in jobs:
    if stem in first:
      raise UserError(f"{first[stem]} and {path} would both be written as {stem}_x<scale>: "
                      "rename one, or upscale them into separate --out folders")
    first[stem] = path


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


def _upscale_one(upscaler, path, condition, target, args):
  """One image, read, upscaled and written; its arrays are gone when this returns, so that the
  next image does not start with this one's in memory."""
  from tqdm import tqdm

  from linearsr_jax.data.picture import read_picture, write_picture
  from linearsr_jax.inference.picture_upscale import upscale_picture

  picture = read_picture(path)
  height, width = picture.colour.shape[:2]
  with tqdm(total=upscaler.tile_count(height, width), desc=path.name, unit="tile", leave=False,
            file=sys.stderr, disable=args.no_progress) as bar:
    picture = upscale_picture(upscaler, picture, condition, args.outscale,
                              on_tile=lambda: bar.update(1))
  write_picture(target, picture, quality=args.quality)


def _target(out_dir, path, stem, scale, args):
  """DIR/<stem>_x<scale or --outscale>.<--format, or the input's suffix>."""
  label = scale if args.outscale is None else f"{args.outscale:g}"
  suffix = path.suffix.lower() if args.format == "input" else f".{args.format}"
  return out_dir / f"{stem}_x{label}{suffix}"


def run(args) -> int:
  import jax
  from tqdm import tqdm

  from linearsr_jax.inference.upscale import (UpscaleOptions, check_output_pixels, default_batch,
                                              default_max_output_pixels, load_upscaler)

  jobs = collect_inputs(args.inputs)
  if not jobs:
    raise UserError("no input images")
  inputs = {p.resolve() for p, _ in jobs}
  jobs = jobs[jax.process_index()::jax.process_count()]  # this host's share
  if args.outscale is not None and not 0 < args.outscale < float("inf"):
    raise UserError(f"--outscale {args.outscale:g} must be a number > 0")
  max_pixels = args.max_output_pixels or default_max_output_pixels()
  out_dir = storage.output_dir(args.out, "--out")
  _, upscaler = load_upscaler(
      args.checkpoint, args.stage, args.step, not args.raw, args.dtype,
      UpscaleOptions(args.tile, args.overlap, args.steps, args.guidance, args.seed, args.color_fix,
                     args.batch or default_batch(), args.shard_params))
  conditions = _conditions(args, upscaler)
  failures, done, skipped = [], 0, 0
  for path, stem in tqdm(jobs, desc="images", unit="img", file=sys.stderr,
                         disable=args.no_progress):
    target = _target(out_dir, path, stem, upscaler.scale, args)
    if target.resolve() in inputs:
      failures.append((path, "output would overwrite an input"))
      continue
    if target.exists() and not args.overwrite:
      skipped += 1
      tqdm.write(f"skip {target} (exists; --overwrite replaces it)", file=sys.stderr)
      continue
    try:
      check_output_pixels(path, upscaler.scale, max_pixels, args.outscale)
      _upscale_one(upscaler, path, conditions(path), target, args)
      done += 1
    except UserError as e:
      failures.append((path, str(e)))
    except OSError as e:  # the output's folder: a file in its way, no permission, disk full
      failures.append((path, f"cannot write {target} ({e.strerror or e})"))
    except MemoryError:
      failures.append((path, "not enough memory (a lower --max_output_pixels refuses it "
                       "up front)"))
  for path, reason in failures:
    print(f"linearsr: failed: {path}: {reason}", file=sys.stderr)
  print(f"upscaled {done}, skipped {skipped} existing, failed {len(failures)} -> {out_dir}")
  return 1 if failures else 0
