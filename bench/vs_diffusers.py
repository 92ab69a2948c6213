"""This DiT (jit, float32) against diffusers' PyTorch SanaTransformer2DModel, same weights.

SANA-600M width (1152, 36×32 linear heads, 16×72 cross heads), `--depth` blocks, batch 1,
32×32 and 64×64 latents, the same thread count for both, alternating in one run. Prints time,
achieved GFLOP/s (XLA's FLOP count / time, applied to both), the ratio, and the matmul rate of
this machine measured in the same run. The blocks are unrolled: XLA's cost analysis counts the
body of a scan (a while loop) once, whatever its trip count.

Then where the time goes: each part of one block timed alone, in both frameworks, beside the
time its dense layers alone take (the same matmuls with nothing around them).

  .venv/bin/python bench/vs_diffusers.py [--depth 4] [--sides 32 64]
"""

import argparse
import os
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
import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import SanaTransformer2DModel  # noqa: E402

from common import markdown_table, matmul_gflops, median_seconds, xla_flops  # noqa: E402
from linearsr_jax.interop.diffusers_sana import import_transformer  # noqa: E402
from linearsr_jax.models.attention import Attention  # noqa: E402
from linearsr_jax.models.dit import Block, DiT  # noqa: E402
from linearsr_jax.models.layers import MixFFN  # noqa: E402

SANA600M = dict(num_attention_heads=36, attention_head_dim=32, num_cross_attention_heads=16,
                cross_attention_head_dim=72, cross_attention_dim=1152, caption_channels=2304,
                in_channels=32, out_channels=32, patch_size=1)


def main():
  torch.set_num_threads(THREADS)
  torch.manual_seed(0)
  reference = SanaTransformer2DModel(num_layers=ARGS.depth, **SANA600M).eval()
  with tempfile.TemporaryDirectory() as tmp:
    reference.save_pretrained(tmp)
    cfg, params = import_transformer(tmp, scan_layers=False)
  params = jax.device_put(params)
  rows, breakdown = [], []
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
    rows.append([
        f"{side}×{side}", f"{flops / 1e9:.1f}", f"{tj * 1e3:.0f} ms", f"{flops / tj / 1e9:.1f}",
        f"{tt * 1e3:.0f} ms", f"{flops / tt / 1e9:.1f}", f"{tt / tj:.2f}x"
    ])
    breakdown += block_parts(cfg, params["blocks_0"], reference.transformer_blocks[0], side)
  rate = matmul_gflops()
  print(f"depth {ARGS.depth}, width 1152, batch 1, float32, {THREADS} threads, "
        f"{ARGS.cond_tokens} condition tokens\n")
  print(
      markdown_table([
          "latent", "GFLOP (XLA)", "JAX time", "JAX GFLOP/s", "diffusers time", "diffusers GFLOP/s",
          "diffusers/JAX"
      ], rows))
  print(f"\nmatmul rate measured in this run: {rate:.0f} GFLOP/s (2048² float32)")
  print("\nOne block, part by part (JAX GFLOP/s as a share of that matmul rate):\n")
  print(
      markdown_table([
          "latent", "part", "GFLOP", "JAX", "JAX GFLOP/s", "of matmul", "its dense layers alone",
          "diffusers"
      ], [row[:5] + [f"{float(row[4]) / rate:.0%}"] + row[5:] for row in breakdown]))


def block_parts(cfg, block_params, torch_block, side):
  """Rows [latent, part, GFLOP, JAX ms, JAX GFLOP/s, dense-only ms, diffusers ms] for one block."""
  n, d = side * side, cfg.hidden
  rng = np.random.default_rng(1)
  h = rng.standard_normal((1, n, d)).astype(np.float32)
  ctx = rng.standard_normal((1, ARGS.cond_tokens, d)).astype(np.float32)
  t6 = (rng.standard_normal((1, 6 * d)) * 0.1).astype(np.float32)
  mask = np.ones((1, ARGS.cond_tokens), bool)
  th, tctx, tt6 = (torch.from_numpy(a) for a in (h, ctx, t6))
  th_nchw = th.reshape(1, side, side, d).permute(0, 3, 1, 2).contiguous()
  parts = {  # name -> (JAX fn of its params, its params, torch fn, tokens each dense kernel sees)
      "self-attention (linear)": (
          lambda p: Attention(cfg.heads, cfg.head_dim, "linear", cfg.attention_bias,
                              cfg.qk_norm).apply({"params": p}, h),
          block_params["attn1"], lambda: torch_block.attn1(th), {}),
      "cross-attention": (
          lambda p: Attention(cfg.cross_heads, cfg.cross_head_dim, "softmax", True,
                              cfg.qk_norm).apply({"params": p}, h, ctx, mask),
          block_params["attn2"], lambda: torch_block.attn2(th, encoder_hidden_states=tctx),
          {"to_k": ARGS.cond_tokens, "to_v": ARGS.cond_tokens}),
      "Mix-FFN": (
          lambda p: MixFFN(cfg.ffn_hidden).apply({"params": p}, h, (side, side)),
          block_params["ff"], lambda: torch_block.ff(th_nchw), {}),
      "whole block": (
          lambda p: Block(cfg, (side, side)).apply({"params": p}, h, t6, ctx, mask),
          block_params, lambda: torch_block(th, encoder_hidden_states=tctx, timestep=tt6,
                                            height=side, width=side),
          {"attn2/to_k": ARGS.cond_tokens, "attn2/to_v": ARGS.cond_tokens}),
  }
  rows = []
  for name, (fn, p, torch_fn, key_tokens) in parts.items():
    compiled = jax.jit(fn).lower(p).compile()
    seconds = median_seconds(lambda: jax.block_until_ready(compiled(p)), ARGS.rounds)
    dense = dense_only_seconds(p, n, key_tokens)
    with torch.inference_mode():
      torch_seconds = median_seconds(torch_fn, ARGS.rounds)
    flops = xla_flops(compiled)
    rows.append([
        f"{side}×{side}", name, f"{flops / 1e9:.2f}", f"{seconds * 1e3:.1f} ms",
        f"{flops / seconds / 1e9:.1f}", f"{dense * 1e3:.1f} ms", f"{torch_seconds * 1e3:.1f} ms"
    ])
  return rows


def dense_only_seconds(params, tokens, key_tokens):
  """Time of the Dense kernels in `params` as bare matmuls, [tokens, in] @ [in, out] each.

  `key_tokens` maps a layer's path (e.g. "attn2/to_k") to its row count when that is not
  `tokens` (the keys and values of cross-attention see the condition tokens).
  """
  kernels = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    names = [str(getattr(k, "key", k)) for k in path]
    if names[-1] == "kernel":
      kernels["/".join(names[:-1])] = leaf
  rng = np.random.default_rng(2)
  inputs = {
      name: rng.standard_normal((key_tokens.get(name, tokens), w.shape[0])).astype(np.float32)
      for name, w in kernels.items()
  }
  matmuls = jax.jit(lambda xs, ws: [xs[k] @ ws[k] for k in ws])
  return median_seconds(lambda: jax.block_until_ready(matmuls(inputs, kernels)), ARGS.rounds)


if __name__ == "__main__":
  main()
