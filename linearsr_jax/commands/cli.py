"""The `linearsr` command: one sub-command per module, each with `add_arguments` and `run`.

Only the module of the command being run is imported, so `linearsr --help` is instant and a
command's heavy dependencies (or a broken module) never touch the others.
"""

import argparse
import importlib
import os
import sys

from linearsr_jax.errors import UserError

# name -> (module of this package, one-line help). A module defines add_arguments(parser) and
# run(args) -> int.
COMMANDS = {
    "demo": ("demo", "train, find the knee, branch to experts, evaluate, upscale"),
    "train": ("cli_train", "train all stages of a config, ESGF included"),
    "import": ("cli_import", "import weights from the PyTorch ecosystem"),
    "export": ("cli_export", "export params for conversion"),
    "upscale": ("cli_upscale", "super-resolve images of any size"),
    "eval": ("cli_eval", "score SR images against HR references"),
    "data": ("cli_data", "image folder -> TFDS dataset, or seeded LR/HR pairs"),
    "knee": ("cli_knee", "find the ESGF knee in a run's validation curves"),
    "compile": ("cli_compile", "compile for a TPU slice or GPU nodes: fit, FLOPs"),
}


def build_parser(command=None) -> argparse.ArgumentParser:
  """The parser; only `command`'s own arguments are loaded (all commands are listed)."""
  parser = argparse.ArgumentParser(
      prog="linearsr", description="LinearSR in JAX: train, evaluate, upscale, import, export.")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for name, (module_name, help_text) in COMMANDS.items():
    module_name = f"{__package__}.{module_name}"
    cmd = sub.add_parser(name, help=help_text, description=help_text)
    cmd.set_defaults(_module=module_name)
    if name == command:
      importlib.import_module(module_name).add_arguments(cmd)
  return parser


def _skip_absent_tpu_runtime():
  """libtpu is installed (for `linearsr compile`), so JAX would also try to start a TPU runtime
  where there is no TPU, which fails with a screen of warnings. With no accelerator at all,
  go straight to the CPU; JAX_PLATFORMS, when set, still decides."""
  if os.environ.get("JAX_PLATFORMS"):
    return
  import jax

  from linearsr_jax import jax_private

  if not jax_private.accelerator_attached():
    jax.config.update("jax_platforms", "cpu")


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv and not argv[0].startswith("-"):
    _skip_absent_tpu_runtime()
  parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
  args, extra = parser.parse_known_args(argv)
  module = importlib.import_module(args._module)
  # A command that parses its own flags (train: absl + config_flags) gets them untouched.
  if getattr(module, "PASSES_FLAGS_THROUGH", False):
    args.flags = extra
  elif extra:
    parser.error(f"unrecognized arguments: {' '.join(extra)}")
  try:
    return int(module.run(args) or 0)
  except UserError as e:
    print(f"linearsr: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("linearsr: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
