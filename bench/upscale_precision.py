"""bfloat16 against float32 upscaling: how far apart the images are, and the speed.

  PYTHONPATH=. .venv/bin/python bench/upscale_precision.py --checkpoint RUN --lr_dir LR \
      --hr_dir HR [--tile 128 --overlap 32 --repeats 3]

For each LR image (paired with HR by name, as `linearsr eval` pairs them) the trained model
upscales it twice with the same seed, computing in float32 and in bfloat16 (`--dtype`; params,
norms and the linear attention's normaliser stay float32), without colour fix. Columns: PSNR-RGB
(peak 1, float images) between the two outputs and of each against HR; the best of --repeats
timed runs of each after one compiling run, and their ratio. The demo's held-out photographs
and its trained run are what the README's table used:

  linearsr demo --workdir runs/demo   # trains, and writes runs/demo/test/bicubic/{LR,HR}
  ... --checkpoint runs/demo/train --lr_dir runs/demo/test/bicubic/LR \
      --hr_dir runs/demo/test/bicubic/HR
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def psnr(a, b) -> float:
  mse = float(np.mean(np.square(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
  return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def best_seconds(fn, repeats: int):
  fn()  # compiles for this image's tile shape
  times, result = [], None
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - start)
  return min(times), result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True, help="run, stage or step directory")
  parser.add_argument("--lr_dir", required=True, type=Path)
  parser.add_argument("--hr_dir", required=True, type=Path)
  parser.add_argument("--tile", type=int, default=128)
  parser.add_argument("--overlap", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)

  import jax

  from common import markdown_table
  from linearsr_jax.data.image_io import read_image
  from linearsr_jax.evaluate.evaluate import match_pairs
  from linearsr_jax.inference.trained import load_trained
  from linearsr_jax.inference.upscale import UpscaleOptions, Upscaler

  trained = load_trained(args.checkpoint)
  options = UpscaleOptions(tile=args.tile, overlap=args.overlap, color_fix="none")
  upscalers = {
      dtype: Upscaler(trained.computing_in(dtype), options) for dtype in ("float32", "bfloat16")
  }
  rows = []
  for pair in match_pairs(args.hr_dir, args.lr_dir):
    lr, hr = read_image(pair.source), read_image(pair.reference)
    (f32_s,
     f32), (bf16_s,
            bf16) = (best_seconds(lambda u=u: u(lr), args.repeats) for u in upscalers.values())
    rows.append([
        pair.name, f"{lr.shape[1]}×{lr.shape[0]}", f"{psnr(bf16, f32):.2f}", f"{psnr(f32, hr):.2f}",
        f"{psnr(bf16, hr):.2f}", f"{f32_s:.2f}", f"{bf16_s:.2f}", f"{f32_s / bf16_s:.2f}"
    ])
  print(f"{trained.stage} step {trained.step}, {trained.num_experts} expert(s), "
        f"{trained.diffusion.sampler.steps} steps, tile {args.tile} / overlap {args.overlap}, "
        f"{jax.devices()[0].device_kind} × {jax.device_count()}")
  print(
      markdown_table([
          "image", "LR", "PSNR bf16 vs f32", "PSNR f32 vs HR", "PSNR bf16 vs HR", "f32 s", "bf16 s",
          "f32 / bf16 time"
      ], rows))


if __name__ == "__main__":
  main()
