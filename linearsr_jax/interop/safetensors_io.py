"""Reading and writing diffusers-style checkpoints: a config.json plus safetensors weights.

Shared by the transformer and autoencoder importers. Everything here is NumPy: no torch needed.
"""

import json
from pathlib import Path

import numpy as np

from linearsr_jax.errors import UserError

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"


def _read_safetensors(path: Path) -> dict:
  from safetensors import SafetensorError
  from safetensors.numpy import load_file

  try:
    return load_file(str(path))
  except (SafetensorError, OSError, ValueError) as e:
    raise UserError(f"{path}: not a readable safetensors file ({e})") from None


def _read_json(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: not a readable JSON file ({e})") from None


def load_checkpoint(src, config_path=None, expected_class=None):
  """Loads (config, {name: array}) from a save_pretrained dir or a .safetensors file.

  A lone .safetensors file takes its config from `config_path`, else from a config.json
  beside it. `expected_class` checks the config's `_class_name` when the config names one.
  """
  src = Path(src)
  if not src.exists():
    raise UserError(f"{src}: no such file or directory")
  if src.is_dir():
    config_file = Path(config_path) if config_path else src / "config.json"
    if (src / WEIGHTS_NAME).exists():
      tensors = _read_safetensors(src / WEIGHTS_NAME)
    elif (src / INDEX_NAME).exists():
      shards = sorted(set(_read_json(src / INDEX_NAME).get("weight_map", {}).values()))
      if not shards:
        raise UserError(f"{src / INDEX_NAME}: empty weight_map")
      tensors = {}
      for shard in shards:
        tensors.update(_read_safetensors(src / shard))
    else:
      raise UserError(f"{src}: no {WEIGHTS_NAME} (is this a diffusers save_pretrained directory?)")
  else:
    if src.suffix != ".safetensors":
      raise UserError(f"{src}: expected a directory or a .safetensors file")
    config_file = Path(config_path) if config_path else src.with_name("config.json")
    tensors = _read_safetensors(src)
  if not config_file.exists():
    raise UserError(f"{config_file}: missing model config (pass --config_json)")
  config = _read_json(config_file)
  found = config.get("_class_name")
  if expected_class and found and found != expected_class:
    raise UserError(f"{config_file}: checkpoint is a {found}, expected a {expected_class}")
  return config, tensors


def save_checkpoint(out_dir: Path, config: dict, tensors: dict, class_name: str):
  """Writes config.json + diffusion_pytorch_model.safetensors into an existing dir."""
  from safetensors.numpy import save_file

  out_dir = Path(out_dir)
  config = {"_class_name": class_name, **config}
  (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(out_dir / WEIGHTS_NAME))


def take(tensors: dict, name: str, shape=None) -> np.ndarray:
  """Pops one tensor by name, checking its shape; names the tensor in any error."""
  if name not in tensors:
    raise UserError(f"checkpoint is missing tensor '{name}'")
  value = np.asarray(tensors.pop(name), dtype=np.float32)
  if shape is not None and tuple(value.shape) != tuple(shape):
    raise UserError(f"tensor '{name}' has shape {tuple(value.shape)}, expected {tuple(shape)}")
  return value


def check_consumed(tensors: dict, what: str):
  """After an import has taken every tensor it knows, any left over means another model."""
  if tensors:
    names = sorted(tensors)
    shown = ", ".join(f"'{n}'" for n in names[:3]) + (" ..." if len(names) > 3 else "")
    raise UserError(f"checkpoint has {len(names)} tensor(s) a {what} does not have: {shown}")
