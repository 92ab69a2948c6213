"""diffusers `AutoencoderDC` checkpoint -> this project's DC-AE params (models/autoencoder.py).

The Flax param tree is derived from the config; every leaf names its torch tensor (path joined
by '.', `_<digits>` -> `.<digits>`, kernels -> `weight`) and its layout, so the import is one
loop and each missing or mis-shaped tensor is reported by name.
"""

import re

import numpy as np
from flax import traverse_util

from linearsr_jax.interop.safetensors_io import check_consumed, load_checkpoint, take
from linearsr_jax.models import autoencoder

CLASS_NAME = "AutoencoderDC"


def _torch_key(path: tuple[str, ...]) -> str:
  *modules, leaf = path
  name = ".".join(re.sub(r"_(\d+)(?=_|$)", r".\1", m) for m in modules)
  return f"{name}.{'weight' if leaf.endswith('kernel') else leaf}"


def _torch_layout(leaf: str, shape: tuple[int, ...]):
  """(torch shape, torch -> Flax converter) for one Flax leaf of the given shape."""
  if leaf == "kernel" and len(shape) == 4:  # conv [kh, kw, in, out] <- [out, in, kh, kw]
    kh, kw, cin, cout = shape
    return (cout, cin, kh, kw), lambda w: w.transpose(2, 3, 1, 0)
  if leaf == "kernel":  # linear [in, out] <- [out, in]
    return shape[::-1], lambda w: w.T
  if leaf == "depthwise_kernel":  # [k, k, C] <- [C, 1, k, k]
    k, _, c = shape
    return (c, 1, k, k), lambda w: w[:, 0].transpose(1, 2, 0)
  if leaf == "grouped_kernel":  # [G, in, out] <- [G*out, in, 1, 1]
    g, d_in, d_out = shape
    return ((g * d_out, d_in, 1, 1),
            lambda w: w[:, :, 0, 0].reshape(g, d_out, d_in).transpose(0, 2, 1))
  return shape, lambda w: w  # norms: torch names and layout


def import_autoencoder_dc(src, config_path=None) -> tuple[dict, dict]:
  """Reads a diffusers AutoencoderDC (save_pretrained dir or .safetensors + config.json).

  Returns (config, params): the complete architecture config (`autoencoder.autoencoder_config`,
  JSON-serialisable) and the Flax params (float32 NumPy). Raises UserError naming the tensor
  for a missing or mis-shaped tensor, and for tensors this config has no place for.
  """
  raw_config, tensors = load_checkpoint(src, config_path, expected_class=CLASS_NAME)
  config = autoencoder.autoencoder_config(raw_config)
  model = autoencoder.build(config)
  params = {}
  for path, leaf in traverse_util.flatten_dict(autoencoder.param_shapes(model)).items():
    torch_shape, to_flax = _torch_layout(path[-1], leaf.shape)
    params[path] = np.ascontiguousarray(to_flax(take(tensors, _torch_key(path), torch_shape)))
  # BatchNorm's step counter is a buffer in the state dict but plays no part in eval.
  for name in [n for n in tensors if n.endswith(".num_batches_tracked")]:
    del tensors[name]
  check_consumed(tensors, f"{CLASS_NAME} with this config")
  return config, traverse_util.unflatten_dict(params)
