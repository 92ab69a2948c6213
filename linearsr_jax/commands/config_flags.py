"""The config flags every command that loads a config file shares (train, data encode, compile,
demo): `--config FILE [--config.a.b=v ...] [--workdir DIR]`, parsed by absl with ml_collections'
config_flags (the config file's get_config(), locked, with `--config.*` overrides), as big_vision
and the Flax examples do, and validated (config_check.validate)."""

import os

from linearsr_jax.errors import UserError


def parse_flags(argv, command: str = "train"):
  """(config, workdir) from absl-style flags, the config validated (all but its fit to the
  devices, which JAX may not know yet); any mistake is a UserError naming `command`. --workdir
  is required by `train` alone (None when not given)."""
  from absl import flags

  from linearsr_jax import config_check

  config_file = _check_config_file(argv, command)
  argv = [f"linearsr {command}", *argv]
  values = _flag_values(argv)
  try:
    values(argv)
  except (flags.Error, OSError) as e:
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise UserError(f"{command}: {message}") from None
  except Exception as e:
    # config_flags raises KeyError / AttributeError / ValueError for an override naming no
    # config field; an exception raised in the config file is the file's (one line, the cause
    # chained). Anything else is a bug here and keeps its traceback.
    unknown = (_override_naming_no_field(argv)
               if isinstance(e, (KeyError, AttributeError, ValueError)) and
               _raised_in(e, config_file) is None else None)
    moved = unknown and config_check.moved_field_error(unknown[0].removeprefix("--config."))
    if moved:
      raise UserError(f"{command}: {moved}") from None
    if unknown is not None:
      raise UserError(f"{command}: the config has no key {unknown[1]!r} (in {unknown[0]})") from e
    line = _raised_in(e, config_file)
    if line is None:
      raise
    raise UserError(f"{command}: the config file {config_file} raised {type(e).__name__}: {e} "
                    f"(line {line})") from e
  config, workdir = values.config, values.workdir
  needs_workdir = command == "train"  # the other commands write elsewhere, or nothing
  if config is None or (needs_workdir and not workdir):
    raise UserError(f"{command} needs --config FILE" +
                    (" and --workdir DIR" if needs_workdir else ""))
  config_check.validate(config)
  return config, workdir


def _flag_values(argv):
  """--config (the file's get_config(), locked, with the `--config.*` overrides in argv) and
  --workdir."""
  from absl import flags
  from ml_collections import config_flags

  values = flags.FlagValues()
  # sys_argv: the override flags are found in these args, not in the process's sys.argv.
  config_flags.DEFINE_config_file("config", None, "config file with get_config()",
                                  flag_values=values, lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "run directory (resumed when it holds checkpoints)",
                      flag_values=values)
  return values


def _override_naming_no_field(argv):
  """(override, key) of the first `--config.a.b=v` whose path leaves the config file's own
  config (loaded again without the overrides), or None."""
  import ml_collections

  plain = [a for a in argv if not a.startswith("--config.")]
  values = _flag_values(plain)
  values(plain)
  for override in (a.split("=")[0] for a in argv if a.startswith("--config.")):
    node = values.config
    for key in override.split(".")[1:]:
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        return override, key
      node = node[key]
  return None


def _check_config_file(argv, command: str):
  """The --config file's path, or None; config_flags defers a missing file's error to the
  first use of the config, so it is said here."""
  for i, arg in enumerate(argv):
    path = arg.split("=", 1)[1] if arg.startswith("--config=") else (
        argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None)
    if path is not None:
      path = path.split(":")[0]  # `file.py:arg` passes an argument to get_config
      if not os.path.isfile(path):
        raise UserError(f"{command}: config file {path} not found")
      return path
  return None


def _raised_in(error: BaseException, path):
  """The line of the config file `path` the deepest frame of `error`'s traceback in it ran, or
  None when the error did not pass through that file."""
  import traceback

  if path is None:
    return None
  target = os.path.realpath(path)
  lines = [
      f.lineno
      for f in traceback.extract_tb(error.__traceback__)
      if os.path.realpath(f.filename) == target
  ]
  return lines[-1] if lines else None
