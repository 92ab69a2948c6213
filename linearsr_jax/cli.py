"""The `linearsr` command: one sub-command per module, each with `add_arguments` and `run`.

Sub-command modules are imported lazily so `linearsr --help` stays fast and a command's heavy
dependencies load only when it runs.
"""

import argparse
import importlib
import sys

from linearsr_jax.errors import UserError

# name -> (module, one-line help). A module defines add_arguments(parser) and run(args) -> int.
COMMANDS = {
    "import": ("linearsr_jax.interop.cli_import", "import weights from the PyTorch ecosystem"),
    "export": ("linearsr_jax.interop.cli_export", "export params for conversion"),
    "eval": ("linearsr_jax.evaluate.cli_eval", "score SR images against HR references"),
    "data": ("linearsr_jax.data.cli_data", "image folder -> TFDS dataset, or seeded LR/HR pairs"),
    "knee": ("linearsr_jax.train.cli_knee", "find the ESGF knee in a run's validation curves"),
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="linearsr", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for name, (module_name, help_text) in COMMANDS.items():
    cmd = sub.add_parser(name, help=help_text, description=help_text)
    cmd.set_defaults(_module=module_name)
    importlib.import_module(module_name).add_arguments(cmd)
  return parser


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return int(importlib.import_module(args._module).run(args) or 0)
  except UserError as e:
    print(f"linearsr: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("linearsr: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
