"""A run's config.json, the resolved config it was trained with: written by `linearsr train`
(once the config is known to fit the run, train/run_fit.py), read back by the tools to rebuild
the model. What is read is validated as the config files are (config_check.validate), so a
damaged or hand-edited one is one line naming the file, not a traceback in a tool."""

import json

import ml_collections

from linearsr_jax import config_check
from linearsr_jax.errors import UserError
from linearsr_jax.run import run_dir


def resolved(config: ml_collections.ConfigDict) -> dict:
  """The config as config.json holds it (tuples as lists, field references as their values)."""
  return json.loads(config.to_json_best_effort())


def write(run: run_dir.RunDir, config: ml_collections.ConfigDict):
  run_dir.write_json(run.config_json, resolved(config))


def read(run: run_dir.RunDir):
  """The run's config.json as a validated ConfigDict; None when the run has none."""
  path = run.config_json
  value = run_dir.read_json(path)  # undecodable: one line
  if value is None:
    return None
  if not isinstance(value, dict):
    raise UserError(f"{path}: unreadable run config (not a JSON object)")
  _drop_moved_fields(value)
  config = ml_collections.ConfigDict(value)
  try:
    config_check.validate(config)
  except UserError as e:
    raise UserError(f"{path}: {e}") from None
  except (AttributeError, KeyError, TypeError) as e:  # a field missing or of the wrong type
    raise UserError(f"{path}: not a linearsr run config ({type(e).__name__}: {e})") from None
  return config


def _drop_moved_fields(value: dict):
  """A config.json written before a field left the config (config_check.MOVED) still holds it;
  what it said is now the stages' and the params' (diffusion.experts.num_experts, which training
  overwrote with each stage's), so it is dropped rather than refused."""
  for path in config_check.MOVED:
    *parents, name = path.split(".")
    section = value
    for key in parents:
      section = section.get(key) if isinstance(section, dict) else None
    if isinstance(section, dict):
      section.pop(name, None)
