"""Latent spaces behind one interface: `encode_fn(params, images) -> latents` and
`decode_fn(params, latents) -> images` (pure, for the jitted steps, which take the params as an
argument), plus `encode(images)` / `decode(latents)` on one device for tools and tests.

Images are NHWC in [-1, 1]; latents are NHWC with `channels` channels on a grid `factor` times
smaller. The rest of the code never knows which space it is in:

- `PixelSpace`: parameter-free and exact, pixel-unshuffle by `factor` with a fixed affine
  scaling, for CPU runs and tests;
- `DCAESpace`: the DC-AE (models/autoencoder.py) with imported or random params, latents
  multiplied by its scaling factor as SANA does.
"""

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from linearsr_jax.errors import UserError
from linearsr_jax.models import autoencoder
from linearsr_jax.models.autoencoder_layers import pixel_shuffle, pixel_unshuffle

# Pooled statistics of skimage's astronaut, coffee, chelsea and rocket in [-1, 1]: mean -0.25,
# std 0.52. (x - shift) * scale puts pixel-space latents of photographs near N(0, 1).
PIXEL_SHIFT = -0.25
PIXEL_SCALE = 2.0


def default_config() -> ml_collections.ConfigDict:
  """The `latent` config section."""
  config = ml_collections.ConfigDict()
  config.kind = "pixel"  # "pixel" | "dcae"
  # Pixel space only (a DC-AE's factor and scaling come from its architecture).
  config.factor = 4
  config.shift = PIXEL_SHIFT
  config.scaling = PIXEL_SCALE
  # DC-AE: a params directory from `linearsr import diffusers-vae` (it carries the architecture),
  # or the architecture below (diffusers AutoencoderDC field names, e.g.
  # configs/dcae_f32c32_sana.py) with random weights when `dcae_random_init` (benchmarks only).
  config.dcae_params = ""
  config.dcae_random_init = False
  config.dcae = ml_collections.ConfigDict(autoencoder.DEFAULTS)
  config.seed = 0
  return config


def _check_divisible(x, factor: int, what: str):
  h, w = x.shape[1], x.shape[2]
  if h % factor or w % factor:
    raise UserError(f"{what} of {h}×{w} is not a multiple of the latent factor {factor} "
                    "(use inference.tiling, which pads)")


@dataclasses.dataclass(frozen=True)
class PixelSpace:
  """latents = (pixel_unshuffle(images, f) - shift) * scale; decode is its exact inverse."""
  factor: int = 4
  shift: float = PIXEL_SHIFT
  scale: float = PIXEL_SCALE
  image_channels: int = 3
  params = {}  # parameter-free: the empty tree passes through the steps like a DC-AE's

  @property
  def channels(self) -> int:
    return self.image_channels * self.factor**2

  def abstract_params(self):
    return {}

  def encode_fn(self, params, images):
    del params
    _check_divisible(images, self.factor, "an image")
    return (pixel_unshuffle(jnp.asarray(images), self.factor) - self.shift) * self.scale

  def decode_fn(self, params, latents):
    del params
    return pixel_shuffle(jnp.asarray(latents) / self.scale + self.shift, self.factor)

  def encode(self, images):
    return self.encode_fn({}, images)

  def decode(self, latents):
    return self.decode_fn({}, latents)


@dataclasses.dataclass(frozen=True, eq=False)
class DCAESpace:
  """A DC-AE; latents are scaled by the model's scaling factor.

  `encode_fn(params, x)` / `decode_fn(params, z)` are pure: the train and sampler steps take the
  DC-AE params as an argument, placed on the mesh like any other input. `params` holds the
  host copy (None when the space was built for shapes only); `encode` / `decode` are the
  single-device conveniences the tools and tests use.
  """
  model: autoencoder.AutoencoderDC
  params: Any = None

  @property
  def factor(self) -> int:
    return self.model.factor

  @property
  def channels(self) -> int:
    return self.model.cfg["latent_channels"]

  def abstract_params(self):
    return autoencoder.param_shapes(self.model)

  def encode_fn(self, params, images):
    _check_divisible(images, self.factor, "an image")
    latents = self.model.apply({"params": params}, jnp.asarray(images, jnp.float32),
                               method="encode")
    return latents * self.model.cfg["scaling_factor"]

  def decode_fn(self, params, latents):
    latents = jnp.asarray(latents, jnp.float32) / self.model.cfg["scaling_factor"]
    return self.model.apply({"params": params}, latents, method="decode")

  @functools.cached_property
  def _on_device(self):
    """(params on the default device, jitted encode, jitted decode), made on first use: a
    training run never needs this single-device copy."""
    if self.params is None:
      raise ValueError("this DCAESpace was built without params (shapes only)")
    return jax.device_put(self.params), jax.jit(self.encode_fn), jax.jit(self.decode_fn)

  def encode(self, images):
    params, encode, _ = self._on_device
    _check_divisible(images, self.factor, "an image")
    return encode(params, images)

  def decode(self, latents):
    params, _, decode = self._on_device
    return decode(params, latents)


def make_latent_space(config: ml_collections.ConfigDict, params=None, load_params: bool = True):
  """The latent space a `latent` config section describes; `params` overrides a DC-AE's.

  load_params=False builds the architecture only (its params are then None), which is all that
  shapes, shardings and compilation need: a params directory's header is read, not its weights.
  """
  if config.kind == "pixel":
    if config.factor < 1:
      raise UserError(f"latent.factor must be a positive integer, got {config.factor}")
    return PixelSpace(int(config.factor), float(config.shift), float(config.scaling))
  if config.kind != "dcae":
    raise UserError(f"latent.kind must be 'pixel' or 'dcae', got {config.kind!r}")
  from linearsr_jax import params_io

  arch = config.dcae.to_dict()
  if config.dcae_params:
    arch = params_io.read_header(config.dcae_params, autoencoder.PARAMS_KIND)
  model = autoencoder.build(arch)
  if params is None and load_params:
    if config.dcae_params:
      _, params = params_io.load_params_dir(config.dcae_params, autoencoder.PARAMS_KIND)
    elif config.dcae_random_init:
      params = autoencoder.init_params(model, config.seed)
    else:
      raise UserError("latent.kind='dcae' needs weights: set latent.dcae_params to a directory "
                      "from `linearsr import diffusers-vae` (or dcae_random_init for benchmarks)")
  return DCAESpace(model, params)


def lr_stem_depth(latent_factor: int, sr_scale: int) -> int:
  """Stride-2 convs that take the LR image to the latent grid: log2(latent factor / SR scale).

  E.g. DC-AE f32 at ×4: 3; pixel space f4 at ×4: 0.
  """
  ratio = latent_factor / sr_scale
  depth = round(math.log2(ratio)) if ratio >= 1 else -1
  if depth < 0 or 2**depth != ratio:
    raise UserError(f"latent factor {latent_factor} / SR scale {sr_scale} = {ratio:g} is not a "
                    "power of two >= 1: stride-2 convs cannot take the LR image to the latent grid")
  return depth
