"""This DiT (jit, float32) against diffusers' PyTorch SanaTransformer2DModel, same weights.

SANA-600M width (1152, 36×32 linear heads, 16×72 cross heads), `--depth` blocks, batch 1,
32×32 and 64×64 latents, the same thread count for both, alternating in one run. Prints time,
achieved GFLOP/s (XLA's FLOP count / time, applied to both), the ratio, and the matmul rate of
this machine measured in the same run.

  .venv/bin/python bench/vs_diffusers.py [--depth 4] [--sides 32 64]
"""

import argparse
import os
import sys
import tempfile
import time


def parse():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depth", type=int, default=4)
  parser.add_argument("--sides", type=int, nargs="+", default=[32, 64])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--cond_tokens", type=int, default=64)
  return parser.parse_args()


ARGS = parse()
# XLA:CPU uses every core; give torch the same number of threads.
THREADS = os.cpu_count()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import SanaTransformer2DModel  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import markdown_table, matmul_gflops, xla_flops  # noqa: E402
from linearsr_jax.interop.diffusers_sana import import_transformer  # noqa: E402
from linearsr_jax.models.dit import DiT  # noqa: E402

SANA600M = dict(num_attention_heads=36, attention_head_dim=32, num_cross_attention_heads=16,
                cross_attention_head_dim=72, cross_attention_dim=1152, caption_channels=2304,
                in_channels=32, out_channels=32, patch_size=1)


def main():
  torch.set_num_threads(THREADS)
  torch.manual_seed(0)
  reference = SanaTransformer2DModel(num_layers=ARGS.depth, **SANA600M).eval()
  with tempfile.TemporaryDirectory() as tmp:
    reference.save_pretrained(tmp)
    cfg, params = import_transformer(tmp)
  params = jax.device_put(params)
  rows = []
  for side in ARGS.sides:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, side, side, 32)).astype(np.float32)
    t = np.array([500.0], np.float32)
    cond = rng.standard_normal((1, ARGS.cond_tokens, 2304)).astype(np.float32)
    mask = np.ones((1, ARGS.cond_tokens), bool)
    fwd = jax.jit(lambda p, x, t, c, m: DiT(cfg).apply({"params": p}, x, t, None, c, m))
    compiled = fwd.lower(params, x, t, cond, mask).compile()
    flops = xla_flops(compiled)
    tx = (torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(cond),
          torch.from_numpy(t), torch.from_numpy(mask.astype(np.float32)))

    def run_jax():
      compiled(params, x, t, cond, mask).block_until_ready()

    def run_torch():
      with torch.inference_mode():
        reference(tx[0], tx[1], tx[2], encoder_attention_mask=tx[3], return_dict=False)

    run_jax(), run_torch()  # warm-up
    times = {"jax": [], "torch": []}
    for _ in range(ARGS.rounds):  # alternate so both see the same machine state
      for name, fn in (("jax", run_jax), ("torch", run_torch)):
        start = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - start)
    tj, tt = np.median(times["jax"]), np.median(times["torch"])
    rows.append([f"{side}×{side}", f"{flops / 1e9:.1f}", f"{tj * 1e3:.0f} ms",
                 f"{flops / tj / 1e9:.1f}", f"{tt * 1e3:.0f} ms", f"{flops / tt / 1e9:.1f}",
                 f"{tt / tj:.2f}x"])
  rate = matmul_gflops()
  print(f"depth {ARGS.depth}, width 1152, batch 1, float32, {THREADS} threads, "
        f"{ARGS.cond_tokens} condition tokens")
  print(markdown_table(["latent", "GFLOP (XLA)", "JAX time", "JAX GFLOP/s", "diffusers time",
                        "diffusers GFLOP/s", "diffusers/JAX"], rows))
  print(f"\nmatmul rate measured in this run: {rate:.0f} GFLOP/s (2048² float32)")


if __name__ == "__main__":
  main()
