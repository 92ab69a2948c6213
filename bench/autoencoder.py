"""Encode / decode time and peak memory vs image size, tiled vs untiled, for the latent spaces.

    .venv/bin/python bench/autoencoder.py [--pixel-sizes 512 1024 2048 4096] [--dcae-sizes 256 512]
        [--dcae-tiled-sizes 512] [--dcae-tile 288 64] [--dcae-ops encode decode]

Every case runs in its own process so its peak RSS (VmHWM) is its own; the table
shows the peak and its growth over the process before the operation (model and input already
built). Times are one call's wall time including XLA compilation (one per tile shape). The DC-AE
is the SANA f32c32 architecture (configs/dcae_f32c32_sana.py, 312M params) with random weights.
A last table compares the two ways to write a depthwise conv on this backend.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_case(case: dict) -> dict:
  """In the child: build the space and input, run one operation, report time and memory."""
  import jax.numpy as jnp
  import numpy as np

  from common import peak_rss_mib
  from linearsr_jax.inference import tiling
  from linearsr_jax.models import latent_space

  jnp.zeros(1).block_until_ready()  # start the runtime before the "before" reading

  config = latent_space.default_config()
  if case["space"] == "dcae":
    from linearsr_jax.configs.dcae_f32c32_sana import get_config
    config.kind, config.dcae, config.dcae_random_init = "dcae", get_config(), True
  space = latent_space.make_latent_space(config)
  size, tile, overlap = case["size"], case["tile"], case["overlap"]
  rng = np.random.default_rng(0)
  if case["op"] == "encode":
    # Drawn in place in float32: a float64 temporary would set the peak before the operation.
    x = rng.random((1, size, size, 3), dtype=np.float32)
    x *= 2
    x -= 1
    run = (lambda: tiling.tiled_encode(space, x, tile, overlap)) if case["tiled"] else (
        lambda: np.asarray(space.encode(x)))
  else:
    n = size // space.factor
    x = rng.standard_normal((1, n, n, space.channels), dtype=np.float32)
    run = (lambda: tiling.tiled_decode(space, x, tile, overlap)) if case["tiled"] else (
        lambda: np.asarray(space.decode(x)))
  before = peak_rss_mib()
  start = time.perf_counter()
  run()
  return {"seconds": time.perf_counter() - start, "before": before, "peak": peak_rss_mib()}


def measure(case: dict, timeout: float) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  try:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(case)], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"> {timeout:.0f} s"}
  if out.returncode != 0:
    return {"error": out.stderr.strip().splitlines()[-1][:60]}
  return json.loads(out.stdout.strip().splitlines()[-1])


def depthwise_table() -> list[str]:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from linearsr_jax.models.autoencoder_layers import depthwise_conv

  def grouped(x, kernel):
    p = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(x, kernel[:, :, None, :], (1, 1), ((p, p), (p, p)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=x.shape[-1])

  rows = [
      "| depthwise conv (SANA DC-AE 512² shapes) | shifted adds ms | feature_group_count ms |",
      "|---|---|---|"
  ]
  for size, channels, k in [(64, 1536, 5), (64, 4096, 3), (32, 3072, 5)]:
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, size, size, channels), np.float32))
    kernel = jnp.asarray(np.random.default_rng(1).standard_normal((k, k, channels), np.float32))
    ms = []
    for fn in (depthwise_conv, grouped):
      fn = jax.jit(fn)
      fn(x, kernel).block_until_ready()
      start = time.perf_counter()
      for _ in range(5):
        fn(x, kernel).block_until_ready()
      ms.append((time.perf_counter() - start) / 5 * 1000)
    rows.append(f"| {size}×{size}×{channels}, {k}×{k} | {ms[0]:.0f} | {ms[1]:.0f} |")
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pixel-sizes", type=int, nargs="*", default=[512, 1024, 2048, 4096])
  parser.add_argument("--dcae-sizes", type=int, nargs="*", default=[256, 512])
  parser.add_argument("--dcae-tiled-sizes", type=int, nargs="*", default=[512])
  parser.add_argument("--dcae-ops", nargs="*", default=["encode", "decode"])
  tile_args = dict(type=int, nargs=2, metavar=("TILE", "OVERLAP"))
  parser.add_argument("--pixel-tile", default=[512, 64], **tile_args)
  parser.add_argument("--dcae-tile", default=[288, 64], **tile_args)
  parser.add_argument("--case-timeout", type=float, default=240)
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(run_case(json.loads(args.child))))
    return

  cases = []
  for size in args.pixel_sizes:
    for tiled in (False, True):
      cases += [
          dict(space="pixel", op=op, size=size, tiled=tiled, tile=args.pixel_tile[0],
               overlap=args.pixel_tile[1]) for op in ("encode", "decode")
      ]
  for size in args.dcae_sizes:
    cases += [
        dict(space="dcae", op=op, size=size, tiled=False, tile=0, overlap=0) for op in args.dcae_ops
    ]
  for size in args.dcae_tiled_sizes:
    cases += [
        dict(space="dcae", op=op, size=size, tiled=True, tile=args.dcae_tile[0],
             overlap=args.dcae_tile[1]) for op in args.dcae_ops
    ]

  print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
  print("| space | op | image | tiles (px) | time s | peak RSS MiB | growth MiB |")
  print("|---|---|---|---|---|---|---|")
  for case in cases:
    result = measure(case, args.case_timeout)
    tiles = f"{case['tile']} / {case['overlap']}" if case["tiled"] else "untiled"
    space = "pixel f4" if case["space"] == "pixel" else "DC-AE f32c32 (SANA)"
    head = f"| {space} | {case['op']} | {case['size']}² | {tiles} |"
    if "error" in result:
      print(f"{head} {result['error']} | | |", flush=True)
    else:
      print(
          f"{head} {result['seconds']:.2f} | {result['peak']:.0f} | "
          f"{result['peak'] - result['before']:.0f} |", flush=True)
  print()
  print("\n".join(depthwise_table()))


if __name__ == "__main__":
  main()
