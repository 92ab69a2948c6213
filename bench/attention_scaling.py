"""Paper Figure 1: one SANA-600M-width block, ReLU linear vs softmax self-attention.

Forward time and XLA-counted FLOPs at 16² … 128² tokens, batch 1, float32. Prints a markdown
table and writes docs/attention_scaling.png (the README's figure). Softmax cases whose
attention matrices alone would not fit in memory are reported as such instead of run.

  .venv/bin/python bench/attention_scaling.py [--sides 16 32 64 128] [--out PNG]
"""

import argparse
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import psutil

from common import markdown_table, median_seconds, xla_flops
from linearsr_jax.configs import sana600m_x4
from linearsr_jax.models.dit import Block, DiTConfig

COND_TOKENS = 64


def block_forward(cfg, side):
  block = Block(cfg, (side, side))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((1, side * side, cfg.hidden)), jnp.float32)
  t6 = jnp.asarray(rng.standard_normal((1, 6 * cfg.hidden)) * 0.1, jnp.float32)
  cond = jnp.asarray(rng.standard_normal((1, COND_TOKENS, cfg.hidden)), jnp.float32)
  mask = jnp.ones((1, COND_TOKENS), bool)
  params = nn.unbox(block.init(jax.random.PRNGKey(0), x, t6, cond, mask))
  fwd = jax.jit(lambda p, *a: block.apply(p, *a))
  compiled = fwd.lower(params, x, t6, cond, mask).compile()
  seconds = median_seconds(lambda: compiled(params, x, t6, cond, mask).block_until_ready(), 3)
  return seconds, xla_flops(compiled)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sides", type=int, nargs="+", default=[16, 32, 64, 128])
  parser.add_argument("--out", default="docs/attention_scaling.png")
  args = parser.parse_args()
  base = DiTConfig.from_dict(sana600m_x4.get_config().model.to_dict())
  base = dataclasses.replace(base, dtype="float32", remat="none")
  available = psutil.virtual_memory().available
  results = {}
  rows = []
  for side in args.sides:
    n = side * side
    row = [f"{side}²", n]
    for kind in ("linear", "softmax"):
      # The softmax logits and weights, [heads, N, N] float32 each, must fit with room to spare.
      need = 2 * base.heads * n * n * 4
      if kind == "softmax" and need > 0.6 * available:
        row += [f"out of memory (needs {need / 2**30:.0f} GiB)", "-"]
        continue
      seconds, flops = block_forward(dataclasses.replace(base, attention=kind), side)
      results.setdefault(kind, []).append((n, seconds, flops))
      row += [f"{seconds * 1e3:.1f} ms", f"{flops / 1e9:.1f}"]
    rows.append(row)
  print(
      markdown_table(
          ["tokens", "N", "linear time", "linear GFLOP", "softmax time", "softmax GFLOP"], rows))
  lin = results["linear"]
  growth = [b[1] / a[1] for a, b in zip(lin, lin[1:])]
  print(f"\nlinear time growth per 4x tokens: {', '.join(f'{g:.2f}x' for g in growth)}")
  if len(results.get("softmax", [])) > 1:
    sm = results["softmax"]
    print("\nsoftmax time growth per 4x tokens: " +
          ", ".join(f"{b[1] / a[1]:.2f}x" for a, b in zip(sm, sm[1:])))
  plot(results, args.out)
  print(f"\nplot: {args.out}")


def plot(results, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for kind, points in results.items():
    n, seconds, flops = map(np.array, zip(*points))
    axes[0].loglog(n, seconds * 1e3, "o-", label=f"{kind} attention")
    axes[1].loglog(n, flops / 1e9, "o-", label=f"{kind} attention")
  for ax, label in zip(axes, ["forward time (ms)", "XLA-counted GFLOP"]):
    ax.set_xlabel("tokens N")
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
  fig.suptitle("One SANA-600M-width block (1152 wide, 36 heads), batch 1, float32, CPU")
  fig.tight_layout()
  fig.savefig(path, dpi=100)


if __name__ == "__main__":
  main()
