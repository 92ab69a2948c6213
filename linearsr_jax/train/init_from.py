"""`train.init_from`: the first stage starts from pretrained DiT weights, the way LinearSR is
made from a text-to-image SANA.

The directory is what `linearsr import diffusers` writes. Its DiT weights are taken as they are
(re-laid out when one side scans its blocks and the other does not). When it has no LR
channels, `patch_embed`'s LR input columns start at zero, so the model at step 0 predicts
exactly what the text-to-image model does; the LR stem then starts random (were it zero too,
both it and those columns would get zero gradients forever). The tag encoder always starts
fresh. Anything else that differs (width, depth, patch size, heads) is an error naming the
first mismatched tensor, raised before anything trains.
"""

import numpy as np

from linearsr_jax.errors import UserError
from linearsr_jax import params_io
from linearsr_jax.interop.diffusers_sana import block_params, set_block_params
from linearsr_jax.models.dit import DiTConfig

DIT_KIND = "dit"
# Architecture fields that tensor shapes alone cannot tell apart (e.g. 36×32 vs 18×64 heads).
_SHAPELESS_FIELDS = ("heads", "cross_heads", "cross_head_dim", "qk_norm", "attention")


def _source_config(path, header: dict) -> DiTConfig:
  try:
    return DiTConfig.from_dict(header)
  except (TypeError, ValueError) as e:
    raise UserError(f"{path}: unreadable DiT config in {params_io.HEADER_FILE} ({e})") from None


def _with_lr_columns(kernel, src: DiTConfig, dst: DiTConfig):
  """patch_embed's kernel [p·p·C_in, D] with zero LR input columns appended per patch cell."""
  p = src.patch_size
  cells = kernel.reshape(p * p, src.latent_channels, -1)
  zeros = np.zeros((p * p, dst.lr_channels, cells.shape[-1]), kernel.dtype)
  return np.concatenate([cells, zeros], axis=1).reshape(-1, cells.shape[-1])


def _relaid(src: DiTConfig, dst: DiTConfig, params: dict) -> dict:
  """The imported DiT params in the target's block layout, LR columns added when missing."""
  params = dict(params)
  blocks = block_params(src, params)
  for key in [k for k in params if k == "blocks" or k.startswith("blocks_")]:
    del params[key]
  set_block_params(dst, params, blocks)
  if (src.lr_channels == 0 and dst.lr_channels and src.patch_size == dst.patch_size and
      src.latent_channels == dst.latent_channels):
    params["patch_embed"] = dict(
        params["patch_embed"], kernel=_with_lr_columns(np.asarray(params["patch_embed"]["kernel"]),
                                                       src, dst))
  return params


def pretrained_leaves(path, dit: DiTConfig, expert_shapes: dict) -> dict:
  """{'dit/...': NumPy array} to overlay on a fresh model: every DiT leaf of the params dir.

  `expert_shapes` maps each leaf path of one expert of this model ('dit/patch_embed/kernel',
  ...) to its shape; the LR stem is kept only when the directory has one of this shape.
  """
  header = params_io.read_header(path, DIT_KIND)
  src = _source_config(path, header)
  _, params = params_io.load_params_dir(path, DIT_KIND)
  flat = {f"dit/{k}": v for k, v in params_io.flatten(_relaid(src, dit, params)).items()}
  wanted = {k: v for k, v in expert_shapes.items() if k.startswith("dit/")}
  stem = {k for k in wanted if k.startswith("dit/lr_stem/")}
  if any(flat.get(k, np.empty(0)).shape != wanted[k] for k in stem):
    flat = {k: v for k, v in flat.items() if not k.startswith("dit/lr_stem/")}
    wanted = {k: v for k, v in wanted.items() if k not in stem}
  for name in sorted(flat.keys() | wanted.keys()):
    have = tuple(flat[name].shape) if name in flat else "absent"
    want = wanted.get(name, "absent")
    if have != want:
      raise UserError(f"{path}: tensor {name} has shape {have} there but {want} in this model "
                      "(another width, depth, patch size or latent space?)")
  for field in _SHAPELESS_FIELDS:
    if getattr(src, field) != getattr(dit, field):
      raise UserError(f"{path}: a DiT with {field}={getattr(src, field)!r}, but this config has "
                      f"model.{field}={getattr(dit, field)!r}")
  return flat
