"""`linearsr train --config configs/X.py --workdir DIR [--config.a.b=v ...]` (the flags:
config_flags.py)."""

import logging
import sys

from linearsr_jax.commands.config_flags import parse_flags

# cli.main hands every argument after `train` to absl untouched.
PASSES_FLAGS_THROUGH = True


def add_arguments(parser):
  parser.usage = "linearsr train --config FILE --workdir DIR [--config.KEY=VALUE ...]"


class _CurrentStderr(logging.StreamHandler):
  """Writes to sys.stderr as it is when a record comes, not as it was when `train` started: run
  in-process (tests, notebooks), that stream may be closed by the time a library logs."""

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, _):
    pass


def run(args) -> int:
  from absl import flags as absl_flags

  from linearsr_jax.train import distributed, loop

  config, workdir = parse_flags(args.flags)
  # grain's worker processes read absl flags; ours live in their own FlagValues.
  absl_flags.FLAGS.mark_as_parsed()
  # force: importing the config (TensorFlow via the data pipeline) already put a handler on the
  # root logger, which left our INFO lines ("resumed from checkpoint" ...) unprinted. Libraries
  # (Orbax, grain) stay at WARNING.
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                      handlers=[_CurrentStderr()], force=True)
  logging.getLogger("linearsr_jax").setLevel(logging.INFO)
  distributed.maybe_initialize()
  results = loop.run(config, workdir)
  for r in results:
    print(f"stage {r.name}: knee at step {r.knee_step} ({r.reason})")
  return 0
