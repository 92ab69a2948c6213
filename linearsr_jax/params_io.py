"""Params on disk in this project's own layout: a flat safetensors file plus a JSON header.

A directory holds `params.safetensors` (leaf paths joined by '/') and `model.json`
({"kind": ..., "config": {...}}). `linearsr import` writes it; training's `init_from` and the
tools read it.
"""

import json

import numpy as np
from flax import traverse_util

from linearsr_jax import storage
from linearsr_jax.atomic import atomic_dir, check_complete
from linearsr_jax.errors import UserError

PARAMS_FILE = "params.safetensors"
HEADER_FILE = "model.json"


def flatten(params) -> dict:
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def unflatten(flat: dict) -> dict:
  return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def save_params_dir(out_dir, kind: str, config: dict, params, overwrite=False, extra_files=None):
  """Writes the directory atomically: complete or absent, never partial."""
  from safetensors.numpy import save_file

  with atomic_dir(out_dir, overwrite=overwrite) as tmp:
    save_file({k: np.ascontiguousarray(v) for k, v in flatten(params).items()},
              str(tmp / PARAMS_FILE))
    (tmp / HEADER_FILE).write_text(json.dumps({"kind": kind, "config": config}, indent=2) + "\n")
    for name, text in (extra_files or {}).items():
      (tmp / name).write_text(text)


def read_header(path, kind: str) -> dict:
  """The config dict of a params directory, checking its kind; the weights are not read."""
  path = storage.path(path)
  if not path.is_dir():
    raise UserError(f"{path}: no such params directory")
  check_complete(path)
  if not (path / HEADER_FILE).exists() or not (path / PARAMS_FILE).exists():
    raise UserError(f"{path}: not a linearsr params directory (needs {HEADER_FILE} and "
                    f"{PARAMS_FILE})")
  try:
    header = json.loads((path / HEADER_FILE).read_text())
  except ValueError as e:
    raise UserError(f"{path / HEADER_FILE}: not valid JSON ({e})") from None
  if not isinstance(header, dict) or header.get("kind") != kind:
    found = header.get("kind") if isinstance(header, dict) else None
    raise UserError(f"{path}: holds a {found!r} model, expected {kind!r}")
  return header["config"]


def load_params_dir(path, kind: str):
  """Returns (config dict, params) from a params directory, checking its kind."""
  from safetensors import SafetensorError
  from safetensors.numpy import load, load_file

  config = read_header(path, kind)
  file = storage.path(path) / PARAMS_FILE
  try:
    # Locally memory-mapped; an object is downloaded whole.
    return config, unflatten(
        load(file.read_bytes()) if storage.is_url(file) else load_file(str(file)))
  except SafetensorError as e:  # a truncated or overwritten file
    raise UserError(f"{file}: unreadable ({e})") from e
