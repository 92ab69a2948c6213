"""`linearsr train --config configs/X.py --workdir DIR [--config.a.b=v ...]`.

Flags are parsed by absl with ml_collections' config_flags (the config file's get_config(),
locked, with `--config.*` overrides), as big_vision and the Flax examples do.
"""

import logging

from linearsr_jax.errors import UserError


# cli.main hands every argument after `train` to absl untouched.
PASSES_FLAGS_THROUGH = True


def add_arguments(parser):
  parser.usage = "linearsr train --config FILE --workdir DIR [--config.KEY=VALUE ...]"


def parse_flags(argv):
  """(config, workdir) from absl-style flags; any mistake is a UserError."""
  from absl import flags
  from ml_collections import config_flags

  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config file with get_config()",
                                  flag_values=values, lock_config=True)
  flags.DEFINE_string("workdir", None, "run directory (resumed when it holds checkpoints)",
                      flag_values=values)
  try:
    values(["linearsr train", *argv])
    config, workdir = values.config, values.workdir
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError, OSError) as e:
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise UserError(f"train: {message}") from None
  if config is None or not workdir:
    raise UserError("train needs --config FILE and --workdir DIR")
  return config, workdir


def run(args) -> int:
  from absl import flags as absl_flags

  from linearsr_jax.train import distributed, loop

  config, workdir = parse_flags(args.flags)
  # grain's worker processes read absl flags; ours live in their own FlagValues.
  absl_flags.FLAGS.mark_as_parsed()
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  distributed.maybe_initialize()
  results = loop.run(config, workdir)
  for r in results:
    print(f"stage {r.name}: knee at step {r.knee_step} ({r.reason})")
  return 0
