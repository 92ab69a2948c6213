"""Tiled against untiled upscaling: how far tiling moves the image, for a few tiles and overlaps.

  PYTHONPATH=. .venv/bin/python bench/upscale_seams.py --checkpoint RUN --lr_dir LR \
      [--downscale 2] [--tiles 128:32,128:16,128:64,96:32,64:16,64:32]

Each LR image (reduced first by --downscale with MATLAB's bicubic, to keep the untiled run
affordable on a CPU) is upscaled once in a single tile (the reference: no seams) and once per
TILE:OVERLAP (LR pixels) with the same seed, without colour fix. Columns: PSNR-RGB of the tiled
image against the untiled one over the whole image, and over the 8 output pixels either side
of each tile edge (where a seam would be), the tile count and the time per image. Tiled and
untiled runs draw their noise for different shapes, so even a seamless tiling is not
bit-identical; compare the two PSNRs: a seam shows as a lower PSNR at the edges.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

EDGE = 8  # output pixels either side of a tile edge


def psnr(a, b) -> float:
  mse = float(np.mean(np.square(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
  return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def edge_mask(shape, upscaler, tile: int, overlap: int) -> np.ndarray:
  """True within EDGE output pixels of an LR tile's start or end inside the image."""
  from linearsr_jax.inference import tiling

  mask = np.zeros(shape[:2], bool)
  for axis, size in enumerate(shape[:2]):
    lr_size = size // upscaler.scale
    t = min(tile, lr_size)
    starts = tiling.tile_starts(lr_size, t, overlap if t < lr_size else 0, upscaler.align)
    for edge in {s for s in starts if s > 0} | {s + t for s in starts if s + t < lr_size}:
      band = slice(max(0, edge * upscaler.scale - EDGE), edge * upscaler.scale + EDGE)
      if axis == 0:
        mask[band] = True
      else:
        mask[:, band] = True
  return mask


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True, help="run, stage or step directory")
  parser.add_argument("--lr_dir", required=True, type=Path)
  parser.add_argument("--downscale", type=int, default=1)
  parser.add_argument("--tiles", default="128:32,128:16,128:64,96:32,64:16,64:32")
  args = parser.parse_args(argv)

  from common import markdown_table
  from linearsr_jax.data.image_io import list_images, read_image
  from linearsr_jax.inference.trained import load_trained
  from linearsr_jax.inference.upscale import UpscaleOptions, Upscaler
  from linearsr_jax.resize import imresize_bicubic

  trained = load_trained(args.checkpoint)
  layouts = [tuple(int(v) for v in item.split(":")) for item in args.tiles.split(",")]
  rows = []
  for path in list_images(args.lr_dir):
    lr = read_image(path)
    if args.downscale > 1:
      size = lr.shape[0] // args.downscale, lr.shape[1] // args.downscale
      lr = np.clip(imresize_bicubic(lr, *size), 0, 1)
    whole = Upscaler(trained, UpscaleOptions(tile=max(lr.shape[:2]), overlap=0, color_fix="none"))
    reference = whole(lr)
    for tile, overlap in layouts:
      upscaler = Upscaler(trained, UpscaleOptions(tile=tile, overlap=overlap, color_fix="none"))
      upscaler(lr)  # compiles
      start = time.perf_counter()
      tiled = upscaler(lr)
      seconds = time.perf_counter() - start
      edges = edge_mask(tiled.shape, upscaler, tile, overlap)
      rows.append([
          path.stem, f"{lr.shape[1]}×{lr.shape[0]}", f"{tile} / {overlap}",
          upscaler.tile_count(*lr.shape[:2]), f"{psnr(tiled, reference):.2f}",
          f"{psnr(tiled[edges], reference[edges]):.2f}", f"{seconds:.1f}"
      ])
  print(f"{trained.stage} step {trained.step}, {trained.num_experts} expert(s), "
        f"{trained.diffusion.sampler.steps} steps, gaussian window, no colour fix")
  print(
      markdown_table([
          "image", "LR", "tile / overlap", "tiles", "PSNR vs untiled", "PSNR at tile edges",
          "s / image"
      ], rows))


if __name__ == "__main__":
  main()
