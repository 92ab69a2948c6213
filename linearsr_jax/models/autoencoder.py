"""DC-AE (deep-compression autoencoder) in Flax Linen, layer for layer as diffusers' AutoencoderDC.

NHWC layout, params float32. Sub-module names follow the diffusers state dict so that the
importer maps a Flax path to a torch key by turning `_<digits>` into `.<digits>`
(`down_blocks_2_1/conv1/kernel` <-> `encoder.down_blocks.2.1.conv1.weight`).

Leaf names say how the tensor is laid out: `kernel` is a conv [kh, kw, in, out] or a linear
[in, out]; `depthwise_kernel` is [kh, kw, C]; `grouped_kernel` is a grouped 1×1 conv
[groups, in, out]; norms keep torch's names (`weight`, `bias`, `running_mean`, `running_var`).
"""

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from linearsr_jax.errors import UserError
from linearsr_jax.models.layers import torch_linear_init

Dtype = Any

# The key a params directory (interop/params_io.py) stores a DC-AE under.
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
# torch.nn defaults: GELU is the exact erf form.
ACTIVATIONS = {
    "silu": nn.silu, "swish": nn.silu, "relu": nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
}


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
        tuple(int(k) for k in scales)
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


def activation(name: str | None):
  return (lambda x: x) if name is None else ACTIVATIONS[name.lower()]


def pixel_unshuffle(x, r: int):
  """torch.nn.functional.pixel_unshuffle in NHWC: channel c*r*r + i*r + j <- pixel (i, j)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // r, r, w // r, r, c)
  return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // r, w // r, c * r * r)


def pixel_shuffle(x, r: int):
  """torch.nn.functional.pixel_shuffle in NHWC, the exact inverse of pixel_unshuffle."""
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, c // (r * r), r, r)
  return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c // (r * r))


def depthwise_conv(x, kernel, bias=None):
  """k×k depthwise conv, 'same' zero padding, NHWC; kernel [k, k, C].

  k² shifted multiply-adds: XLA:CPU runs feature_group_count=C convolutions an order of
  magnitude slower (measured in bench/autoencoder.py), and this fuses as well elsewhere.
  """
  k = kernel.shape[0]
  h, w = x.shape[1], x.shape[2]
  p = k // 2
  padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  out = jnp.zeros_like(x) if bias is None else bias
  for dy in range(k):
    for dx in range(k):
      out = out + padded[:, dy:dy + h, dx:dx + w, :] * kernel[dy, dx]
  return out


class Conv(nn.Module):
  """torch.nn.Conv2d(k, stride, padding=k//2) in NHWC; kernel [k, k, in, out]."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, cin = self.kernel_size, x.shape[-1]
    fan_in = cin * k * k
    kernel = self.param("kernel", torch_linear_init(fan_in), (k, k, cin, self.features),
                        jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if k == 1 and self.stride == 1:
      y = jnp.einsum("bhwi,io->bhwo", x, kernel[0, 0])
    else:
      p = k // 2
      y = jax.lax.conv_general_dilated(x, kernel, (self.stride,) * 2, ((p, p), (p, p)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      bias = self.param("bias", torch_linear_init(fan_in), (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class Linear(nn.Module):
  """torch.nn.Linear without bias over the channel axis; kernel [in, out]."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    kernel = self.param("kernel", torch_linear_init(cin), (cin, self.features), jnp.float32)
    return jnp.einsum("...i,io->...o", x.astype(self.dtype), kernel.astype(self.dtype))


class DepthwiseConv(nn.Module):
  """torch.nn.Conv2d(C, C, k, padding=k//2, groups=C)."""
  kernel_size: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, c = self.kernel_size, x.shape[-1]
    kernel = self.param("depthwise_kernel", torch_linear_init(k * k), (k, k, c), jnp.float32)
    bias = (self.param("bias", torch_linear_init(k * k), (c,), jnp.float32)
            if self.use_bias else None)
    return depthwise_conv(x.astype(self.dtype), kernel.astype(self.dtype),
                          None if bias is None else bias.astype(self.dtype))


class GroupedPointwise(nn.Module):
  """torch.nn.Conv2d(C, C, 1, groups=G, bias=False): a block-diagonal matmul; kernel [G, d, d]."""
  groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    d = c // self.groups
    kernel = self.param("grouped_kernel", torch_linear_init(d), (self.groups, d, d), jnp.float32)
    xg = x.reshape(*x.shape[:-1], self.groups, d).astype(self.dtype)
    return jnp.einsum("...gi,gio->...go", xg, kernel.astype(self.dtype)).reshape(x.shape)


class RMSNorm(nn.Module):
  """diffusers RMSNorm(eps, elementwise_affine=True, bias=True) over channels, float32 math."""
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    weight = self.param("weight", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
    return (y * weight + bias).astype(x.dtype)


class BatchNorm(nn.Module):
  """torch BatchNorm2d in eval mode (running statistics); the autoencoder is never trained here."""
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    weight = self.param("weight", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    mean = self.param("running_mean", nn.initializers.zeros, (c,), jnp.float32)
    var = self.param("running_var", nn.initializers.ones, (c,), jnp.float32)
    y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.eps) * weight + bias
    return y.astype(x.dtype)


def norm_layer(norm_type: str, name: str):
  return RMSNorm(name=name) if norm_type == "rms_norm" else BatchNorm(name=name)


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
      kv = jnp.einsum("bngi,bngj->bgij", k, v1)              # [b, g, d, d+1]
      out = jnp.einsum("bngi,bgij->bngj", q, kv)
      out = out[..., :d] / (out[..., d:] + self.eps)
    else:
      scores = jnp.einsum("bmgi,bngi->bgmn", k, q)           # keys m, queries n
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
    for i, (width, depth) in enumerate(zip(widths, depths)):
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
    return 2 ** (len(self.cfg["encoder_block_out_channels"]) - 1)

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
        return {k: (np.ones if k in ("weight", "running_var") else np.zeros)(v.shape, np.float32)
                for k, v in tree.items()}
      bound = 1.0 / math.sqrt(_fan_in(tree))
      return {k: rng.uniform(-bound, bound, v.shape).astype(np.float32) for k, v in tree.items()}
    return {k: fill(v) for k, v in sorted(tree.items())}

  return fill(shapes)
