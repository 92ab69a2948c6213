"""`linearsr data tfds|degrade|encode|teacher_targets`: turn an image folder into a TFDS
dataset, into LR/HR pairs, or into HR crops stored with their DC-AE latents; sample a distill
stage's teacher once.

  linearsr data tfds PHOTOS --out DATA_DIR [--name NAME] [--min-size 256]
  linearsr data degrade PHOTOS --out PAIRS [--scale 4] [--mode realesrgan] [--crop 512] [--seed 0]
  linearsr data encode --config C --out LATENTS [--crops_per_image 8] [--config.K=V ...]
  linearsr data teacher_targets --workdir RUN --out TARGETS [--steps N] [--config C --config.K=V]

`degrade` writes PAIRS/HR and PAIRS/LR in the layout of the standard test sets, so
`--config.data.eval_source.kind=paired` (or `linearsr eval`) can read them back. PHOTOS may be
`demo` for the scikit-image photographs. `encode` reads the config's training images (every
host its share; run it on all hosts of a pod) and writes what `--config.data.hr_latents=
precomputed --config.data.latents_path=LATENTS` trains from (latent_crops.py).
`teacher_targets` samples the teacher of the run's distill stage (the knee of the stage before
it, which must have ended) over the stage's first N batches (default: its max_steps) and
writes what `--config.distill.targets=TARGETS` trains from (train/distill_targets.py); the
config is the run's config.json, or --config with its overrides (the one `train` will take).
Run it on all hosts of a pod.
"""

from linearsr_jax.atomic import atomic_dir
from linearsr_jax.data import degradations, eval_set, pipeline, sources, tag_sources
from linearsr_jax.errors import UserError

# cli.main hands unknown arguments through: `encode` and `teacher_targets` parse --config and
# its overrides themselves.
PASSES_FLAGS_THROUGH = True


def add_arguments(parser):
  sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
  tfds = sub.add_parser("tfds", help="store an image folder as an array_record TFDS dataset")
  tfds.add_argument("src", help="folder of images (searched recursively)")
  tfds.add_argument("--out", required=True, help="TFDS data_dir to create")
  tfds.add_argument("--name", default="image_folder", help="dataset name (default %(default)s)")
  tfds.add_argument("--split", default="train")
  tfds.add_argument("--min-size", type=int, default=0, help="skip images with a smaller side")
  tfds.add_argument("--tags", default=None, help="JSON / CSV tag mapping (default: sidecars)")
  tfds.add_argument("--overwrite", action="store_true", help="replace an existing --out")

  degrade = sub.add_parser("degrade", help="write seeded LR/HR pairs from HR images")
  degrade.add_argument("src", help="folder of HR images, or 'demo'")
  degrade.add_argument("--out", required=True, help="directory to create, with HR/ and LR/")
  degrade.add_argument("--scale", type=int, default=4)
  degrade.add_argument("--mode", choices=degradations.DEGRADATION_MODES, default="realesrgan")
  degrade.add_argument("--crop", type=int, default=0,
                       help="center crop of the HR image in px (default 0: the full image)")
  degrade.add_argument("--seed", type=int, default=0)
  degrade.add_argument("--overwrite", action="store_true", help="replace an existing --out")

  encode = sub.add_parser(
      "encode", help="store fixed HR crops of the config's training images with their latents",
      usage="linearsr data encode --config FILE --out DIR [--crops_per_image K] [--batch N] "
      "[--overwrite] [--config.KEY=VALUE ...]")
  encode.add_argument("--out", required=True, help="directory to write (array_record shards)")
  encode.add_argument(
      "--crops_per_image", type=int, default=8,
      help="fixed random crops per image, flips / rotations included (default "
      "%(default)s)")
  encode.add_argument("--batch", type=int, default=8, help="crops per encoder call")
  encode.add_argument("--overwrite", action="store_true", help="replace an existing --out")

  targets = sub.add_parser(
      "teacher_targets", help="sample the teacher of a run's distill stage once, for "
      "--config.distill.targets", usage="linearsr data teacher_targets --workdir RUN --out DIR "
      "[--steps N] [--overwrite] [--config FILE --config.KEY=VALUE ...]")
  targets.add_argument("--workdir", required=True,
                       help="the run, whose stage before the distill stage gives the teacher")
  targets.add_argument("--out", required=True, help="directory to write (array_record shards)")
  targets.add_argument("--steps", type=int, default=None,
                       help="batches to sample (default: the distill stage's max_steps)")
  targets.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def _degrade(args) -> int:
  config = pipeline.default_config()
  config.scale, config.degradation.mode = args.scale, args.mode
  config.eval.crop_size, config.eval.seed = args.crop, args.seed
  if args.src == "demo":
    source = sources.DemoSource("all", min_size=max(args.crop, args.scale))
  else:
    source = sources.FolderSource(args.src, min_size=max(args.crop, args.scale))
  with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
    eval_set.write_eval_pairs(source, config, tmp)
  print(f"wrote {len(source)} LR/HR pairs (x{args.scale}, {args.mode}, seed {args.seed}) "
        f"to {args.out}")
  return 0


def _tfds(args) -> int:
  tags = tag_sources.make_tag_source(mapping_path=args.tags, root=args.src)
  version_dir = sources.build_tfds_folder(args.src, args.out, name=args.name, split=args.split,
                                          min_size=args.min_size, tags=tags,
                                          overwrite=args.overwrite)
  print(f"wrote {version_dir} (read it with data.source.kind=tfds_folder, "
        f"data.source.path={version_dir})")
  return 0


def _encode(args) -> int:
  from linearsr_jax.commands.config_flags import parse_flags
  from linearsr_jax.commands.encode import encode_crops
  from linearsr_jax.train import distributed

  config, _ = parse_flags(args.flags, command="data encode")
  distributed.maybe_initialize()
  index = encode_crops(config, args.out, args.crops_per_image, args.batch, overwrite=args.overwrite)
  print(f"wrote {index['images']} images × {index['crops_per_image']} crops of "
        f"{index['crop_size']} px with {index['latent_shape']} latents to {args.out} (train on "
        f"them with --config.data.hr_latents=precomputed --config.data.latents_path={args.out})")
  return 0


def _teacher_targets(args) -> int:
  from linearsr_jax import run_config, storage
  from linearsr_jax.run import run_dir
  from linearsr_jax.train import distributed
  from linearsr_jax.train.distill_targets import write_stage_targets

  workdir = storage.absolute(args.workdir)
  if args.flags:
    from linearsr_jax.commands.config_flags import parse_flags
    config, _ = parse_flags(args.flags, command="data teacher_targets")
  else:
    config = run_config.read(run_dir.RunDir(workdir))
    if config is None:
      raise UserError(f"--workdir {args.workdir}: no run there (no config.json; or pass the "
                      "config `train` takes, --config FILE ...)")
  config.distill.targets = ""  # what this writes: the run it is for reads it, not this
  distributed.maybe_initialize()
  index = write_stage_targets(config, workdir, args.out, args.steps, overwrite=args.overwrite)
  print(f"wrote {index['batches']} batches × {index['batch_size']} teacher targets to {args.out} "
        f"(train the distill stage from them with --config.distill.targets={args.out})")
  return 0


def run(args) -> int:
  # Called without cli.main (tests, scripts), args has no pass-through flags.
  args.flags = getattr(args, "flags", [])
  if args.data_command not in ("encode", "teacher_targets") and args.flags:
    raise UserError(f"data {args.data_command}: unrecognized arguments: {' '.join(args.flags)}")
  return {
      "tfds": _tfds, "degrade": _degrade, "encode": _encode, "teacher_targets": _teacher_targets
  }[args.data_command](args)
