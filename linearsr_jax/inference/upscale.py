"""Upscaling images of any size with a trained model, tile by tile.

The LR image is cut into overlapping tiles; each tile is super-resolved by the full sampler
(its latent grid is tile × scale / latent factor) and the SR tiles are blended with Gaussian
weights (inference/tiling.py). Every tile has the same shape, so the sampler compiles once, and
device memory is bounded by the tile size, not the image size; host memory holds one
full-resolution float32 image, the tiles' sum, which becomes the result in place. All tiles
share one noise seed (each tile's noise is the one it gets alone: the sampler is vmapped over
the tiles), so the result is deterministic and the same whatever the batch and the devices. A
colour fix against the upsampled LR image is applied last, band by band.

`batch` tiles go through the sampler per call, split over a mesh of gcd(batch, local devices)
of this process's devices along the batch axis, the params replicated on each: a multiple of
the device count keeps every device busy. With `shard_params` the params are instead split
over all the local devices (FSDP, inference/param_placement.py), for a model that does not fit
one. Each process of a multi-host job runs its own images on its own devices (no collectives
between hosts).
"""

import dataclasses
import math
import os
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from linearsr_jax import sharding
from linearsr_jax.data.image_io import image_size
from linearsr_jax.errors import UserError
from linearsr_jax.inference import param_placement, tiling
from linearsr_jax.inference.color_fix import color_fix_in_place
from linearsr_jax.inference.picture_upscale import output_size
from linearsr_jax.inference.super_resolve import make_super_resolve
from linearsr_jax.inference.trained import load_trained
from linearsr_jax.data.conditions import make_condition, null_condition


@dataclasses.dataclass(frozen=True)
class UpscaleOptions:
  tile: int = 128  # LR pixels
  overlap: int = 32  # LR pixels
  steps: int | None = None  # sampler steps (None: the config's)
  guidance_scale: float = 1.0
  seed: int = 0
  color_fix: str = "wavelet"
  batch: int = 1  # tiles per sampler call, split over the local devices
  shard_params: bool = False  # FSDP over every local device instead of replicated


# Host bytes per output pixel while an image is upscaled and saved: its float32 RGB result (12),
# the 8-bit copy that is encoded (3) and the encoded file (up to 3), with room to spare for the
# band-sized temporaries and the LR side.
BYTES_PER_OUTPUT_PIXEL = 32


def default_max_output_pixels() -> int:
  """The output pixels whose buffers fill half of this machine's memory (or of its cgroup's
  limit, in a container): the other half is left to the model, JAX and everything else."""
  memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  try:
    with open("/sys/fs/cgroup/memory.max") as f:
      memory = min(memory, int(f.read()))
  except (OSError, ValueError):  # no cgroup v2 limit ("max", or not Linux)
    pass
  return memory // 2 // BYTES_PER_OUTPUT_PIXEL


def default_batch() -> int:
  """Tiles per call that keep every local device busy: one per device. CPU devices beyond the
  first are XLA's fake host devices (tests, benches), which share the same cores: one there."""
  return 1 if jax.default_backend() == "cpu" else jax.local_device_count()


def check_output_pixels(path, scale: int, limit: int, outscale: float | None = None) -> None:
  """Refuses an image whose output would exceed `limit` pixels, from its header alone: the
  model's output, or the --outscale resize of it where that is larger."""
  height, width = image_size(path)
  pixels = max(height * width * scale * scale, math.prod(output_size(height, width, scale,
                                                                     outscale)))
  if pixels > limit:
    at = f"x{scale}" if outscale is None else f"--outscale {outscale:g}"
    raise UserError(f"{width}x{height} at {at} makes {pixels} output pixels, over "
                    f"--max_output_pixels {limit}")


def check_condition_flags(encoder, tags, arrays, arrays_flag):
  """--tags suits a hash-encoder model, an array flag (--cond, --cond_mapping) a precomputed one."""
  if tags is not None and encoder != "hash":
    raise UserError(f"--tags: this model takes precomputed arrays (tags.encoder={encoder}); give "
                    f"{arrays_flag} or IMAGE.npy sidecars")
  if arrays is not None and encoder == "hash":
    raise UserError(f"{arrays_flag}: this model hashes tags (tags.encoder=hash); give --tags or "
                    "IMAGE.txt sidecars")


def load_upscaler(checkpoint, stage, step, ema: bool, dtype, options: UpscaleOptions):
  """(trained, Upscaler) of a checkpoint (inference/trained.py) computing in `dtype`; with
  options.shard_params the params are restored straight onto the upscaler's mesh, FSDP-sharded,
  and their size per device is logged."""
  mesh = None
  if options.shard_params:
    mesh = param_placement.upscale_mesh(jax.local_devices(), options.batch, True)
  trained = load_trained(checkpoint, stage, step, ema=ema, sharded_on=mesh).computing_in(dtype)
  upscaler = Upscaler(trained, options)
  if options.shard_params:
    total = sum(x.nbytes for x in jax.tree.leaves(trained.params))
    print(
        f"params: {total / 2**20:,.1f} MiB, {upscaler.param_bytes_per_device() / 2**20:,.1f} "
        f"MiB per device (FSDP over {upscaler.mesh.devices.size} devices)", file=sys.stderr)
  return trained, upscaler


class Upscaler:
  """upscaler(lr [h, w, 3] in [0, 1], condition) -> SR [h·s, w·s, 3] in [0, 1]."""

  def __init__(self, trained, options: UpscaleOptions):
    self.trained, self.options = trained, options
    self.scale = int(trained.config.data.scale)
    # LR tiles must map to whole latent cells: a multiple of (latent factor / scale).
    self.align = max(1, trained.latent_space.factor // self.scale)
    for name, value in (("tile", options.tile), ("overlap", options.overlap)):
      if value % self.align:
        raise UserError(f"--{name} {value} must be a multiple of {self.align} LR pixels "
                        f"(latent factor {trained.latent_space.factor} / scale {self.scale})")
    if not 0 <= options.overlap < options.tile:
      raise UserError(f"--overlap {options.overlap} must be smaller than --tile {options.tile}")
    if options.batch < 1:
      raise UserError(f"--batch {options.batch} must be at least 1")
    overrides = {"guidance_scale": options.guidance_scale}
    if options.steps:
      overrides["steps"] = options.steps
    sr = make_super_resolve(trained.model, trained.latent_space, trained.diffusion,
                            scale=self.scale, **overrides)

    def sr_tiles(params, latent_params, tiles, cond, mask, key):
      return jax.vmap(lambda t: sr(params, latent_params, t[None], cond, mask, key)[0])(tiles)

    self.mesh = param_placement.upscale_mesh(jax.local_devices(), options.batch,
                                             options.shard_params)
    tiles = NamedSharding(self.mesh, PartitionSpec("data"))
    every = sharding.replicated(self.mesh)
    if options.shard_params:
      self.param_shardings = param_placement.fsdp_shardings(trained.model, trained.num_experts,
                                                            self.mesh)
    else:
      self.param_shardings = jax.tree.map(lambda _: every, trained.params)
    self._sr = jax.jit(sr_tiles,
                       in_shardings=(self.param_shardings, every, tiles, every, every, every),
                       out_shardings=tiles)
    # Params the loader already placed this way (load_trained's mesh) stay where they are.
    self.params = jax.device_put(trained.params, self.param_shardings)
    self.latent_params, self.key = jax.device_put(
        (trained.latent_space.params, jax.random.PRNGKey(options.seed)), every)
    tags, features = trained.config.tags, trained.config.model.caption_channels
    self.encoder = tags.encoder
    # condition source (tag list, ArrayRef or None) -> (cond, cond_mask), as the model takes it
    self.condition = make_condition(tags, features)
    self.null = null_condition(tags.encoder, tags.max_tokens, features)

  def param_bytes_per_device(self) -> int:
    return param_placement.bytes_per_device(self.params, self.param_shardings)

  def sampler_memory(self, tile: int):
    """XLA's memory analysis (per device) of one sampler call on `batch` tile² LR tiles."""
    cond, mask = (np.asarray(a)[None] for a in self.null)
    tiles = jax.ShapeDtypeStruct((self.options.batch, tile, tile, 3), np.float32)
    return self._sr.lower(self.params, self.latent_params, tiles, cond, mask,
                          self.key).compile().memory_analysis()

  def _tile(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(tile, overlap) for an (aligned) image: --tile shrunk to the image along each axis; an
    axis that one tile covers needs no overlap."""
    tile = min(self.options.tile, height), min(self.options.tile, width)
    overlap = tuple(
        0 if t == size else self.options.overlap for t, size in zip(tile, (height, width)))
    return tile, overlap

  def tile_count(self, height: int, width: int) -> int:
    padded = [-(-v // self.align) * self.align for v in (height, width)]
    tile, overlap = self._tile(*padded)
    return math.prod(
        len(tiling.tile_starts(size, t, o, self.align))
        for size, t, o in zip(padded, tile, overlap))

  def conditions(self, given=None, per_image=None):
    """image path -> (cond, cond_mask): the condition source `given` for every image (loaded
    now, so a bad one stops the command), else `per_image(path)`'s, else None (null)."""
    if given is not None:
      fixed = self.condition(given)
      return lambda path: fixed
    if per_image is None:
      return lambda path: None
    return lambda path: self.condition(per_image(path))

  def __call__(self, lr, condition=None, on_tile=lambda: None):
    """`condition`: this image's (cond, cond_mask) arrays; None: the null condition."""
    h, w = lr.shape[:2]
    cond, mask = (np.asarray(a)[None] for a in (self.null if condition is None else condition))
    x = tiling.pad_to_multiple(np.asarray(lr, np.float32)[None] * 2 - 1, self.align)
    tile, overlap = self._tile(*x.shape[1:3])

    def sr_tiles(lr_tiles):
      return np.asarray(self._sr(self.params, self.latent_params, lr_tiles, cond, mask, self.key))

    def done(tiles):
      for _ in range(tiles):
        on_tile()

    # The blended tiles are the one full-resolution array: everything after is done in it.
    sr = tiling.tiled_map(sr_tiles, x, tile, overlap, self.scale, align=self.align,
                          batch=self.options.batch, done=done)[0]
    sr = sr[:h * self.scale, :w * self.scale]
    sr += 1
    sr /= 2
    np.clip(sr, 0.0, 1.0, out=sr)
    return color_fix_in_place(sr, lr, self.options.color_fix)
