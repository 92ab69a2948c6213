"""DC-AE (deep-compression autoencoder) in Flax Linen, layer for layer as diffusers' AutoencoderDC.

NHWC layout, params float32. Sub-module names follow the diffusers state dict so that the
importer maps a Flax path to a torch key by turning `_<digits>` into `.<digits>`
(`down_blocks_2_1/conv1/kernel` <-> `encoder.down_blocks.2.1.conv1.weight`).

Leaf names say how the tensor is laid out: `kernel` is a conv [kh, kw, in, out] or a linear
[in, out]; `depthwise_kernel` is [kh, kw, C]; `grouped_kernel` is a grouped 1×1 conv
[groups, in, out]; norms keep torch's names (`weight`, `bias`, `running_mean`, `running_var`).

Over 350 lines on purpose: the blocks and their assembly follow diffusers' autoencoder_dc.py
one to one, which is what the importer's name mapping and the parity tests rely on; the
torch-layout layers are in autoencoder_layers.py.
"""

import math
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from linearsr_jax.errors import UserError
from linearsr_jax.models.autoencoder_layers import (ACTIVATIONS, Conv, Dtype, DepthwiseConv,
                                                    GroupedPointwise, Linear, RMSNorm, activation,
                                                    norm_layer, pixel_shuffle, pixel_unshuffle)

# The key a params directory (params_io.py) stores a DC-AE under.
PARAMS_KIND = "autoencoder_dc"

# diffusers' AutoencoderDC.__init__ defaults: a saved config.json may omit any of these.
DEFAULTS = {
    "in_channels": 3,
    "latent_channels": 32,
    "attention_head_dim": 32,
    "encoder_block_types": "ResBlock",
    "decoder_block_types": "ResBlock",
    "encoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
    "decoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
    "encoder_layers_per_block": (2, 2, 2, 3, 3, 3),
    "decoder_layers_per_block": (3, 3, 3, 3, 3, 3),
    "encoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
    "decoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
    "upsample_block_type": "pixel_shuffle",
    "downsample_block_type": "pixel_unshuffle",
    "decoder_norm_types": "rms_norm",
    "decoder_act_fns": "silu",
    "encoder_out_shortcut": True,
    "decoder_in_shortcut": True,
    "decoder_conv_act_fn": "relu",
    "scaling_factor": 1.0,
}

BLOCK_TYPES = ("ResBlock", "EfficientViTBlock")
NORM_TYPES = ("rms_norm", "batch_norm")


def _per_block(value, n: int, name: str) -> tuple:
  """diffusers lets a per-block setting be one string for all blocks; expand to n entries."""
  if isinstance(value, str) or value is None:
    return (value,) * n
  value = tuple(value)
  if len(value) != n:
    raise UserError(f"AutoencoderDC config: {name} has {len(value)} entries, expected {n}")
  return value


def autoencoder_config(config: Mapping) -> dict:
  """A complete, validated AutoencoderDC config from a diffusers config.json (or part of one).

  Keys diffusers does not use for the architecture (`_class_name`, ...) are dropped.
  """
  cfg = {k: config.get(k, v) for k, v in DEFAULTS.items()}
  for side in ("encoder", "decoder"):
    n = len(cfg[f"{side}_block_out_channels"])
    cfg[f"{side}_block_out_channels"] = tuple(int(c) for c in cfg[f"{side}_block_out_channels"])
    cfg[f"{side}_layers_per_block"] = tuple(
        int(c) for c in _per_block(cfg[f"{side}_layers_per_block"], n, f"{side}_layers_per_block"))
    cfg[f"{side}_block_types"] = _per_block(cfg[f"{side}_block_types"], n, f"{side}_block_types")
    cfg[f"{side}_qkv_multiscales"] = tuple(
        tuple(int(k)
              for k in scales)
        for scales in _per_block(cfg[f"{side}_qkv_multiscales"], n, f"{side}_qkv_multiscales"))
    for block_type in cfg[f"{side}_block_types"]:
      if block_type not in BLOCK_TYPES:
        raise UserError(f"AutoencoderDC config: unknown block type {block_type!r} ({BLOCK_TYPES})")
  n = len(cfg["decoder_block_out_channels"])
  cfg["decoder_norm_types"] = _per_block(cfg["decoder_norm_types"], n, "decoder_norm_types")
  cfg["decoder_act_fns"] = _per_block(cfg["decoder_act_fns"], n, "decoder_act_fns")
  for norm in cfg["decoder_norm_types"]:
    if norm not in NORM_TYPES:
      raise UserError(f"AutoencoderDC config: unsupported norm {norm!r} ({NORM_TYPES})")
  for act in (*cfg["decoder_act_fns"], cfg["decoder_conv_act_fn"]):
    if act is not None and act.lower() not in ACTIVATIONS:
      raise UserError(f"AutoencoderDC config: unknown activation {act!r} ({sorted(ACTIVATIONS)})")
  if cfg["upsample_block_type"] not in ("pixel_shuffle", "interpolate"):
    raise UserError(f"AutoencoderDC config: unknown upsample_block_type "
                    f"{cfg['upsample_block_type']!r} (pixel_shuffle | interpolate)")
  # diffusers treats anything but "pixel_unshuffle" as a stride-2 conv ("conv", "Conv").
  down = cfg["downsample_block_type"]
  if down != "pixel_unshuffle" and down.lower() != "conv":
    raise UserError(f"AutoencoderDC config: unknown downsample_block_type "
                    f"{cfg['downsample_block_type']!r} (pixel_unshuffle | conv)")
  if len(cfg["encoder_block_out_channels"]) != n:
    raise UserError("AutoencoderDC config: encoder and decoder need the same number of levels")
  cfg["scaling_factor"] = float(cfg["scaling_factor"])
  return cfg


class ResBlock(nn.Module):
  """conv3×3 → act → conv3×3 (no bias) → norm, plus the input."""
  norm_type: str
  act_fn: str | None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    y = Conv(c, dtype=self.dtype, name="conv1")(x)
    y = activation(self.act_fn)(y)
    y = Conv(c, use_bias=False, dtype=self.dtype, name="conv2")(y)
    return norm_layer(self.norm_type, "norm")(y) + x


class MultiscaleProjection(nn.Module):
  """diffusers SanaMultiscaleAttentionProjection: depthwise k×k then grouped 1×1, no biases."""
  kernel_size: int
  groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = DepthwiseConv(self.kernel_size, use_bias=False, dtype=self.dtype, name="proj_in")(x)
    return GroupedPointwise(self.groups, dtype=self.dtype, name="proj_out")(x)


class MultiscaleLinearAttention(nn.Module):
  """diffusers SanaMultiscaleLinearAttention (mult 1, residual), ReLU kernels, NHWC.

  q, k, v projections are concatenated, each extra scale adds a depthwise k×k + grouped 1×1
  aggregation of that concatenation, and the result is cut into groups of 3·head_dim channels
  (q | k | v of one head). Above head_dim positions attention is linear (numerator and
  denominator from one matmul with v padded by ones, in float32); at or below it diffusers
  switches to the quadratic form, reproduced here so small grids match too.
  """
  head_dim: int
  kernel_sizes: tuple[int, ...]
  norm_type: str
  eps: float = 1e-15
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    d = self.head_dim
    heads = c // d
    if heads == 0:
      raise UserError(f"EfficientViTBlock with {c} channels < attention_head_dim {d}")
    inner = heads * d
    qkv = jnp.concatenate([Linear(inner, self.dtype, name=f"to_{n}")(x) for n in "qkv"], -1)
    scales = [qkv]
    for i, k in enumerate(self.kernel_sizes):
      proj = MultiscaleProjection(k, 3 * heads, self.dtype, name=f"to_qkv_multiscale_{i}")
      scales.append(proj(qkv))
    n = h * w
    groups = heads * (1 + len(self.kernel_sizes))
    qkv = jnp.concatenate(scales, -1).astype(jnp.float32).reshape(b, n, groups, 3, d)
    q, k, v = nn.relu(qkv[..., 0, :]), nn.relu(qkv[..., 1, :]), qkv[..., 2, :]
    if n > d:
      v1 = jnp.concatenate([v, jnp.ones_like(v[..., :1])], -1)
      kv = jnp.einsum("bngi,bngj->bgij", k, v1)  # [b, g, d, d+1]
      out = jnp.einsum("bngi,bgij->bngj", q, kv)
      out = out[..., :d] / (out[..., d:] + self.eps)
    else:
      scores = jnp.einsum("bmgi,bngi->bgmn", k, q)  # keys m, queries n
      scores = scores / (scores.sum(2, keepdims=True) + self.eps)
      out = jnp.einsum("bmgi,bgmn->bngi", v, scores)
    out = out.reshape(b, h, w, groups * d).astype(self.dtype)
    out = Linear(c, self.dtype, name="to_out")(out)
    return norm_layer(self.norm_type, "norm_out")(out) + x


class GLUMBConv(nn.Module):
  """SANA's Mix-FFN, expand 4: 1×1, SiLU, depthwise 3×3, value·SiLU(gate), 1×1, RMSNorm."""
  expand: float = 4.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    hidden = int(self.expand * c)
    y = nn.silu(Conv(2 * hidden, 1, dtype=self.dtype, name="conv_inverted")(x))
    y = DepthwiseConv(3, dtype=self.dtype, name="conv_depth")(y)
    value, gate = jnp.split(y, 2, axis=-1)
    y = Conv(c, 1, use_bias=False, dtype=self.dtype, name="conv_point")(value * nn.silu(gate))
    return RMSNorm(name="norm")(y) + x


class EfficientViTBlock(nn.Module):
  head_dim: int
  kernel_sizes: tuple[int, ...]
  norm_type: str
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = MultiscaleLinearAttention(self.head_dim, self.kernel_sizes, self.norm_type,
                                  dtype=self.dtype, name="attn")(x)
    return GLUMBConv(dtype=self.dtype, name="conv_out")(x)


def make_block(block_type, head_dim, norm_type, act_fn, kernel_sizes, dtype, name):
  if block_type == "ResBlock":
    return ResBlock(norm_type, act_fn, dtype=dtype, name=name)
  return EfficientViTBlock(head_dim, kernel_sizes, norm_type, dtype=dtype, name=name)


class DownBlock(nn.Module):
  """diffusers DCDownBlock2d: ×2 down by pixel-unshuffle after a conv, or by a stride-2 conv;
  the shortcut averages groups of space-to-channel input channels."""
  features: int
  pixel_unshuffle: bool
  shortcut: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.pixel_unshuffle:
      y = pixel_unshuffle(Conv(self.features // 4, dtype=self.dtype, name="conv")(x), 2)
    else:
      y = Conv(self.features, stride=2, dtype=self.dtype, name="conv")(x)
    if not self.shortcut:
      return y
    s = pixel_unshuffle(x, 2)
    s = s.reshape(*s.shape[:-1], self.features, s.shape[-1] // self.features).mean(-1)
    return y + s


class UpBlock(nn.Module):
  """diffusers DCUpBlock2d: ×2 up by nearest interpolation then conv, or conv then pixel-shuffle;
  the shortcut repeats channels and pixel-shuffles them."""
  features: int
  interpolate: bool
  shortcut: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.interpolate:
      up = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
      y = Conv(self.features, dtype=self.dtype, name="conv")(up)
    else:
      y = pixel_shuffle(Conv(self.features * 4, dtype=self.dtype, name="conv")(x), 2)
    if not self.shortcut:
      return y
    return y + pixel_shuffle(jnp.repeat(x, self.features * 4 // x.shape[-1], axis=-1), 2)


class Encoder(nn.Module):
  cfg: Mapping
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    widths, depths = cfg["encoder_block_out_channels"], cfg["encoder_layers_per_block"]
    unshuffle = cfg["downsample_block_type"] == "pixel_unshuffle"
    if depths[0] > 0:
      x = Conv(widths[0], dtype=self.dtype, name="conv_in")(x)
    else:
      x = DownBlock(widths[1], unshuffle, shortcut=False, dtype=self.dtype, name="conv_in")(x)
    for i, (_, depth) in enumerate(zip(widths, depths)):
      for j in range(depth):
        x = make_block(cfg["encoder_block_types"][i], cfg["attention_head_dim"], "rms_norm", "silu",
                       cfg["encoder_qkv_multiscales"][i], self.dtype, f"down_blocks_{i}_{j}")(x)
      if i < len(widths) - 1 and depth > 0:
        x = DownBlock(widths[i + 1], unshuffle, shortcut=True, dtype=self.dtype,
                      name=f"down_blocks_{i}_{depth}")(x)
    y = Conv(cfg["latent_channels"], dtype=self.dtype, name="conv_out")(x)
    if cfg["encoder_out_shortcut"]:
      c = cfg["latent_channels"]
      y = y + x.reshape(*x.shape[:-1], c, x.shape[-1] // c).mean(-1)
    return y


class Decoder(nn.Module):
  cfg: Mapping
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z):
    cfg = self.cfg
    widths, depths = cfg["decoder_block_out_channels"], cfg["decoder_layers_per_block"]
    interpolate = cfg["upsample_block_type"] == "interpolate"
    x = Conv(widths[-1], dtype=self.dtype, name="conv_in")(z)
    if cfg["decoder_in_shortcut"]:
      x = x + jnp.repeat(z, widths[-1] // z.shape[-1], axis=-1)
    for i in reversed(range(len(widths))):
      first = 0
      if i < len(widths) - 1 and depths[i] > 0:
        x = UpBlock(widths[i], interpolate, shortcut=True, dtype=self.dtype,
                    name=f"up_blocks_{i}_0")(x)
        first = 1
      for j in range(depths[i]):
        x = make_block(cfg["decoder_block_types"][i], cfg["attention_head_dim"],
                       cfg["decoder_norm_types"][i], cfg["decoder_act_fns"][i],
                       cfg["decoder_qkv_multiscales"][i], self.dtype,
                       f"up_blocks_{i}_{first + j}")(x)
    x = RMSNorm(name="norm_out")(x)
    x = activation(cfg["decoder_conv_act_fn"])(x)
    if depths[0] > 0:
      return Conv(cfg["in_channels"], dtype=self.dtype, name="conv_out")(x)
    return UpBlock(cfg["in_channels"], interpolate, shortcut=False, dtype=self.dtype,
                   name="conv_out")(x)


class AutoencoderDC(nn.Module):
  """The DC-AE. `cfg` is `autoencoder_config(...)`; images NHWC, latents unscaled (as diffusers:
  the scaling factor is applied by the latent space)."""
  cfg: Mapping
  dtype: Dtype = jnp.float32

  def setup(self):
    self.encoder = Encoder(self.cfg, self.dtype)
    self.decoder = Decoder(self.cfg, self.dtype)

  @property
  def factor(self) -> int:
    return 2**(len(self.cfg["encoder_block_out_channels"]) - 1)

  def encode(self, images):
    return self.encoder(images)

  def decode(self, latents):
    return self.decoder(latents)

  def __call__(self, images):
    return self.decode(self.encode(images))


def build(config: Mapping, dtype: Dtype = jnp.float32) -> AutoencoderDC:
  """The module of a (possibly partial) diffusers-style config."""
  # Frozen: a module's configuration must not change under it.
  cfg = autoencoder_config(config)
  return AutoencoderDC(nn.FrozenDict(cfg), dtype=dtype)


def param_shapes(model: AutoencoderDC):
  """The param tree as ShapeDtypeStructs (tracing only)."""
  images = jax.ShapeDtypeStruct((1, model.factor, model.factor, model.cfg["in_channels"]),
                                jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), images)["params"]


def _fan_in(module_params: Mapping) -> int:
  """torch's fan-in of a layer's weight, from the kernel leaf of a (Flax) module."""
  for leaf, value in module_params.items():
    shape = value.shape
    if leaf == "kernel":
      return math.prod(shape[:-1])
    if leaf == "depthwise_kernel":
      return shape[0] * shape[1]
    if leaf == "grouped_kernel":
      return shape[1]
  raise ValueError(f"no kernel among {sorted(module_params)}")


def init_params(model: AutoencoderDC, seed: int = 0):
  """Random params distributed like torch's defaults (uniform ±1/sqrt(fan_in); norms at identity).

  Drawn with NumPy from the traced shapes: a jitted `model.init` spends ~30 s compiling hundreds
  of threefry draws on CPU, and this is only used for tests and benchmarks.
  """
  shapes = param_shapes(model)
  rng = np.random.default_rng(seed)

  def fill(tree):
    if all(not isinstance(v, Mapping) for v in tree.values()):
      if "running_mean" in tree or ("weight" in tree and "kernel" not in tree):
        return {
            k: (np.ones if k in ("weight", "running_var") else np.zeros)(v.shape, np.float32)
            for k, v in tree.items()
        }
      bound = 1.0 / math.sqrt(_fan_in(tree))
      return {k: rng.uniform(-bound, bound, v.shape).astype(np.float32) for k, v in tree.items()}
    return {k: fill(v) for k, v in sorted(tree.items())}

  return fill(shapes)
