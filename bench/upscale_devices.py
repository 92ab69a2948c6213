"""Upscaling throughput: tiles per second against --batch, the number of local devices and
the params' placement (replicated, or FSDP-sharded: --shard_params).

  PYTHONPATH=. .venv/bin/python bench/upscale_devices.py [--devices 1,2,8] [--batches 1,2,4,8]
      [--tile 64] [--size 512] [--params replicated,fsdp]

Each device count runs in its own process (on a CPU machine the devices are XLA's fake host
devices, --xla_force_host_platform_device_count, which share the machine's cores: the table
then shows what batching and sharding cost, not a speed-up; on a GPU node or a TPU VM the
process sees the real ones and --devices is ignored). The model is the tiny config with random
weights (bench/upscale.py), 4 experts, the config's sampler steps; the image is the astronaut
photograph at --size LR pixels in --tile tiles with a quarter-tile overlap; each batch size is
compiled on the image once, then timed on it once. A batch below the device count uses
gcd(batch, devices) of them for the tiles (inference/upscale.py); FSDP params are split over
all of them, and only on more than one device. Beside the speed: the params' bytes each device
holds, and XLA's temporary bytes per device for one sampler call (were the sharded params
gathered whole rather than layer by layer, they would grow by an expert's params).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(batches, placements, tile: int, size: int) -> list:
  import jax
  import numpy as np
  import skimage

  from upscale import tiny_trained
  from linearsr_jax.inference.upscale import UpscaleOptions, Upscaler

  trained, _ = tiny_trained()
  lr = skimage.transform.resize(skimage.data.astronaut(), (size, size),
                                anti_aliasing=True).astype(np.float32)
  rows = []
  for params in placements:
    if params == "fsdp" and jax.local_device_count() == 1:
      continue
    for batch in batches:
      upscaler = Upscaler(
          trained,
          UpscaleOptions(tile=tile, overlap=tile // 4, batch=batch, shard_params=params == "fsdp"))
      upscaler(lr)  # compile
      start = time.perf_counter()
      upscaler(lr)
      seconds = time.perf_counter() - start
      tiles = upscaler.tile_count(size, size)
      rows.append(
          dict(devices=jax.local_device_count(), used=upscaler.mesh.devices.size, batch=batch,
               params=params, param_mb=upscaler.param_bytes_per_device() / 2**20,
               temp_mb=upscaler.sampler_memory(tile).temp_size_in_bytes / 2**20, tiles=tiles,
               seconds=seconds, tiles_per_s=tiles / seconds, kind=jax.devices()[0].device_kind))
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", default="1,8", help="fake CPU device counts (CPU only)")
  parser.add_argument("--batches", default="1,2,4,8")
  parser.add_argument("--tile", type=int, default=64)
  parser.add_argument("--size", type=int, default=256, help="LR image side")
  parser.add_argument("--params", default="replicated,fsdp", help="params placements")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  batches = [int(b) for b in args.batches.split(",")]
  placements = args.params.split(",")
  if set(placements) - {"replicated", "fsdp"}:
    sys.exit(f"--params {args.params}: choose from replicated, fsdp")
  if args.child:
    print(json.dumps(measure(batches, placements, args.tile, args.size)))
    return

  from common import markdown_table

  rows = []
  for devices in [int(d) for d in args.devices.split(",")]:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run([
        sys.executable, __file__, "--child", "--batches", args.batches, "--params", args.params,
        "--tile",
        str(args.tile), "--size",
        str(args.size)
    ], env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
      sys.exit(proc.stderr[-3000:])
    rows += json.loads(proc.stdout.strip().splitlines()[-1])
  print(f"tiny config, random weights, 4 experts; {args.size}² LR photo in {args.tile}² tiles "
        f"({rows[0]['tiles']} tiles); {rows[0]['kind']}")
  print(
      markdown_table([
          "devices", "used", "batch", "params", "param MiB / device", "temp MiB / device",
          "s / image", "tiles / s"
      ], [[
          r["devices"], r["used"], r["batch"], r["params"], f"{r['param_mb']:.1f}",
          f"{r['temp_mb']:.1f}", f"{r['seconds']:.2f}", f"{r['tiles_per_s']:.2f}"
      ] for r in rows]))


if __name__ == "__main__":
  main()
