"""diffusers `SanaTransformer2DModel` <-> this project's DiT params.

Names map one to one; torch Linear weights [out, in] become kernels [in, out], convs become
NHWC kernels. An SR model exported to diffusers keeps its LR channels in `patch_embed`
(diffusers `in_channels` = latent + LR channels, so diffusers runs it on the concatenated
input); the LR stem has no slot there and goes to `linearsr_extra.safetensors` beside it.
"""

import json
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np

from linearsr_jax.atomic import atomic_dir, check_complete
from linearsr_jax.errors import UserError
from linearsr_jax import params_io
from linearsr_jax.interop.safetensors_io import (check_consumed, load_checkpoint, save_checkpoint,
                                                 take)
from linearsr_jax.models.dit import DiTConfig, LRStem

CLASS_NAME = "SanaTransformer2DModel"
EXTRA_FILE = "linearsr_extra.safetensors"
EXTRA_JSON = "linearsr_extra.json"
SR_KEYS = ("lr_channels", "lr_stem_convs", "lr_stem_width")

# diffusers config values this architecture reproduces; anything else is another model.
_REQUIRED = {
    "norm_eps": 1e-6, "norm_elementwise_affine": False, "interpolation_scale": None,
    "guidance_embeds": False
}


def dit_config_from_diffusers(config: dict, **overrides) -> DiTConfig:
  """The DiTConfig of a diffusers config; `overrides` set SR / numerics fields."""
  for key, want in _REQUIRED.items():
    if config.get(key, want) != want:
      raise UserError(f"unsupported SanaTransformer2DModel config: {key}={config[key]!r} "
                      f"(this port supports {key}={want!r})")
  try:
    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
    hidden = heads * head_dim
    if config.get("cross_attention_dim", hidden) != hidden:
      raise UserError(f"cross_attention_dim {config['cross_attention_dim']} != hidden {hidden}")
    latent = config.get("out_channels") or config["in_channels"]
    fields = dict(depth=config["num_layers"], hidden=hidden, heads=heads,
                  cross_heads=config["num_cross_attention_heads"],
                  cross_head_dim=config["cross_attention_head_dim"],
                  caption_channels=config["caption_channels"], latent_channels=latent,
                  patch_size=config.get("patch_size", 1), mlp_ratio=config.get("mlp_ratio", 2.5),
                  qk_norm=config.get("qk_norm"), attention_bias=config.get("attention_bias", False),
                  lr_channels=config["in_channels"] - latent)
  except KeyError as e:
    raise UserError(f"SanaTransformer2DModel config is missing {e}") from None
  return DiTConfig.from_dict({**fields, **overrides})


def diffusers_config(cfg: DiTConfig) -> dict:
  return {
      "in_channels": cfg.latent_channels + cfg.lr_channels, "out_channels": cfg.latent_channels,
      "num_attention_heads": cfg.heads, "attention_head_dim": cfg.head_dim, "num_layers": cfg.depth,
      "num_cross_attention_heads": cfg.cross_heads, "cross_attention_head_dim": cfg.cross_head_dim,
      "cross_attention_dim": cfg.hidden, "caption_channels": cfg.caption_channels, "mlp_ratio":
          cfg.mlp_ratio, "attention_bias": cfg.attention_bias, "patch_size": cfg.patch_size,
      "qk_norm": cfg.qk_norm, "norm_eps": 1e-6, "norm_elementwise_affine": False,
      "interpolation_scale": None, "guidance_embeds": False, "sample_size": 32, "dropout": 0.0
  }


# (our path, diffusers prefix, has_bias) for every dense layer outside the blocks.
_OUTER_LINEARS = [(("time_linear_1",), "time_embed.emb.timestep_embedder.linear_1", True),
                  (("time_linear_2",), "time_embed.emb.timestep_embedder.linear_2", True),
                  (("time_adaln",), "time_embed.linear", True),
                  (("caption_linear_1",), "caption_projection.linear_1", True),
                  (("caption_linear_2",), "caption_projection.linear_2", True),
                  (("proj_out",), "proj_out", True)]


def _block_linears(cfg: DiTConfig):
  out = []
  for attn, bias in (("attn1", cfg.attention_bias), ("attn2", True)):
    out += [((attn, n), f"{attn}.{n}", bias) for n in ("to_q", "to_k", "to_v")]
    out += [((attn, "to_out"), f"{attn}.to_out.0", True)]
  return out


def _block_torch_to_flax(t: dict, prefix: str, cfg: DiTConfig) -> dict:
  """Pops one transformer block's tensors into a params dict."""
  d, two_h = cfg.hidden, 2 * cfg.ffn_hidden
  p = {"scale_shift_table": take(t, f"{prefix}.scale_shift_table", (6, d))}
  for path, name, bias in _block_linears(cfg):
    _put(p, path, _linear_from_torch(t, f"{prefix}.{name}", bias))
  for attn in ("attn1", "attn2"):
    if cfg.qk_norm:
      for n in ("norm_q", "norm_k"):
        _put(p, (attn, n), {"weight": take(t, f"{prefix}.{attn}.{n}.weight")})
  ff = {
      "conv_inverted": {
          "kernel": take(t, f"{prefix}.ff.conv_inverted.weight", (two_h, d, 1, 1))[:, :, 0, 0].T,
          "bias": take(t, f"{prefix}.ff.conv_inverted.bias", (two_h,))
      }, "conv_depth_kernel": take(t, f"{prefix}.ff.conv_depth.weight", (two_h, 1, 3, 3))
                              [:, 0].transpose(1, 2, 0),
      "conv_depth_bias": take(t, f"{prefix}.ff.conv_depth.bias", (two_h,)), "conv_point": {
          "kernel": take(t, f"{prefix}.ff.conv_point.weight", (d, cfg.ffn_hidden, 1, 1))[:, :, 0,
                                                                                         0].T
      }
  }
  p["ff"] = ff
  return p


def _block_flax_to_torch(p: dict, prefix: str, cfg: DiTConfig, out: dict):
  out[f"{prefix}.scale_shift_table"] = p["scale_shift_table"]
  for path, name, _ in _block_linears(cfg):
    _linear_to_torch(_get(p, path), f"{prefix}.{name}", out)
  for attn in ("attn1", "attn2"):
    if cfg.qk_norm:
      for n in ("norm_q", "norm_k"):
        out[f"{prefix}.{attn}.{n}.weight"] = p[attn][n]["weight"]
  ff = p["ff"]
  out[f"{prefix}.ff.conv_inverted.weight"] = ff["conv_inverted"]["kernel"].T[:, :, None, None]
  out[f"{prefix}.ff.conv_inverted.bias"] = ff["conv_inverted"]["bias"]
  out[f"{prefix}.ff.conv_depth.weight"] = ff["conv_depth_kernel"].transpose(2, 0, 1)[:, None]
  out[f"{prefix}.ff.conv_depth.bias"] = ff["conv_depth_bias"]
  out[f"{prefix}.ff.conv_point.weight"] = ff["conv_point"]["kernel"].T[:, :, None, None]


def _linear_from_torch(t, name, bias):
  p = {"kernel": take(t, f"{name}.weight").T}
  if bias:
    p["bias"] = take(t, f"{name}.bias", p["kernel"].shape[1:])
  return p


def _linear_to_torch(p, name, out):
  out[f"{name}.weight"] = np.asarray(p["kernel"]).T
  if "bias" in p:
    out[f"{name}.bias"] = p["bias"]


def _put(tree, path, value):
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def block_params(cfg: DiTConfig, params) -> list:
  """Per-block param dicts, whether the blocks are scanned (stacked) or unrolled."""
  if cfg.scan_layers:
    stacked = params["blocks"]["block"]
    return [
        jax.tree_util.tree_map(lambda a, i=i: np.asarray(a[i]), stacked) for i in range(cfg.depth)
    ]
  return [params[f"blocks_{i}"] for i in range(cfg.depth)]


def set_block_params(cfg: DiTConfig, params: dict, blocks: list):
  if cfg.scan_layers:
    params["blocks"] = {"block": jax.tree_util.tree_map(lambda *a: np.stack(a), *blocks)}
  else:
    params.update({f"blocks_{i}": b for i, b in enumerate(blocks)})


def torch_to_flax(cfg: DiTConfig, tensors: dict, lr_stem=None) -> dict:
  """All transformer tensors -> params. Extra LR channels absent from the checkpoint start at
  zero, so a text-to-image checkpoint behaves exactly as before whatever the LR input."""
  t = dict(tensors)
  p, d = cfg.patch_size, cfg.hidden
  params = {path[0]: _linear_from_torch(t, name, bias) for path, name, bias in _OUTER_LINEARS}
  if params["proj_out"]["kernel"].shape != (d, p * p * cfg.latent_channels):
    raise UserError(f"tensor 'proj_out.weight' has shape {params['proj_out']['kernel'].T.shape}, "
                    f"expected {(p * p * cfg.latent_channels, d)}")
  weight = take(t, "patch_embed.proj.weight")
  if weight.shape[0] != d or weight.shape[2:] != (p, p):
    raise UserError(f"tensor 'patch_embed.proj.weight' has shape {weight.shape}, expected "
                    f"({d}, C, {p}, {p})")
  c_in = cfg.latent_channels + cfg.lr_channels
  if weight.shape[1] == cfg.latent_channels and cfg.lr_channels:
    weight = np.concatenate([weight, np.zeros((d, cfg.lr_channels, p, p), np.float32)], axis=1)
  if weight.shape[1] != c_in:
    raise UserError(f"tensor 'patch_embed.proj.weight' has {weight.shape[1]} input channels, "
                    f"expected {cfg.latent_channels} or {c_in}")
  params["patch_embed"] = {
      "kernel": weight.transpose(2, 3, 1, 0).reshape(p * p * c_in, d),
      "bias": take(t, "patch_embed.proj.bias", (d,))
  }
  params["caption_norm"] = {"weight": take(t, "caption_norm.weight", (d,))}
  params["scale_shift_table"] = take(t, "scale_shift_table", (2, d))
  set_block_params(
      cfg, params,
      [_block_torch_to_flax(t, f"transformer_blocks.{i}", cfg) for i in range(cfg.depth)])
  check_consumed(t, f"{cfg.depth}-block SanaTransformer2DModel")
  if cfg.lr_channels:
    params["lr_stem"] = lr_stem
  return params


def flax_to_torch(cfg: DiTConfig, params) -> tuple[dict, dict]:
  """params -> (diffusers tensors, extra tensors that diffusers has no slot for)."""
  params = jax.tree_util.tree_map(np.asarray, params)
  p, d, c_in = cfg.patch_size, cfg.hidden, cfg.latent_channels + cfg.lr_channels
  out = {}
  for path, name, _ in _OUTER_LINEARS:
    _linear_to_torch(params[path[0]], name, out)
  out["patch_embed.proj.weight"] = (params["patch_embed"]["kernel"].reshape(p, p, c_in,
                                                                            d).transpose(
                                                                                3, 2, 0, 1))
  out["patch_embed.proj.bias"] = params["patch_embed"]["bias"]
  out["caption_norm.weight"] = params["caption_norm"]["weight"]
  out["scale_shift_table"] = params["scale_shift_table"]
  for i, block in enumerate(block_params(cfg, params)):
    _block_flax_to_torch(block, f"transformer_blocks.{i}", cfg, out)
  extra = params_io.flatten({"lr_stem": params["lr_stem"]}) if cfg.lr_channels else {}
  return out, extra


def init_lr_stem(cfg: DiTConfig, seed: int = 0):
  stem = LRStem(cfg.lr_stem_convs, cfg.lr_stem_width, cfg.lr_channels)
  size = 4 * 2**cfg.lr_stem_convs
  boxed = stem.init(jax.random.PRNGKey(seed), np.zeros((1, size, size, 3), np.float32))
  return jax.tree_util.tree_map(np.asarray, nn.unbox(boxed["params"]))


def _load_lr_stem(path: Path, cfg: DiTConfig, seed: int):
  """The exported LR stem when present (shapes checked), else a fresh one."""
  fresh = init_lr_stem(cfg, seed)
  if not path.exists():
    return fresh
  from safetensors.numpy import load_file
  stored = params_io.flatten(params_io.unflatten(load_file(str(path))).get("lr_stem", {}))
  for name, value in params_io.flatten(fresh).items():
    if name not in stored or stored[name].shape != value.shape:
      raise UserError(f"{path}: LR stem tensor 'lr_stem/{name}' missing or of the wrong shape")
  return params_io.unflatten(stored)


def import_transformer(src, config_path=None, seed: int = 0, **overrides):
  """A diffusers checkpoint -> (DiTConfig, params).

  `overrides` (lr_channels, lr_stem_convs, lr_stem_width, scan_layers, dtype, ...) turn a
  text-to-image SANA into the SR model; a checkpoint exported by this project brings its own.
  """
  folder = Path(src) if Path(src).is_dir() else Path(src).parent
  check_complete(folder)
  config, tensors = load_checkpoint(src, config_path, expected_class=CLASS_NAME)
  stem_json = folder / EXTRA_JSON
  stem_fields = json.loads(stem_json.read_text()) if stem_json.exists() else {}
  cfg = dit_config_from_diffusers(config, **{**stem_fields, **overrides})
  lr_stem = _load_lr_stem(folder / EXTRA_FILE, cfg, seed) if cfg.lr_channels else None
  return cfg, torch_to_flax(cfg, tensors, lr_stem)


def export_transformer(cfg: DiTConfig, params, out_dir, overwrite=False, extra_params=None,
                       extra_files=None):
  """Writes a diffusers save_pretrained directory (+ the LR stem file), atomically.

  `extra_params` ({name: subtree}, e.g. the tag encoder) join the LR stem in EXTRA_FILE under
  their names; `extra_files` ({file name: text}) are written beside.
  """
  from safetensors.numpy import save_file
  tensors, extra = flax_to_torch(cfg, params)
  extra.update(params_io.flatten(extra_params or {}))
  with atomic_dir(out_dir, overwrite=overwrite) as tmp:
    save_checkpoint(tmp, diffusers_config(cfg), tensors, CLASS_NAME)
    for name, text in (extra_files or {}).items():
      (tmp / name).write_text(text)
    if extra:
      save_file({k: np.ascontiguousarray(v) for k, v in extra.items()}, str(tmp / EXTRA_FILE))
      (tmp /
       EXTRA_JSON).write_text(json.dumps({k: getattr(cfg, k) for k in SR_KEYS}, indent=2) + "\n")
