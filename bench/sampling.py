"""Sampling cost on the tiny config: one step with 4 experts vs 1 (the hard switch should cost
nothing), and the whole 20-step sampler wall time per solver, with and without guidance.

  .venv/bin/python bench/sampling.py [--batch 1] [--size 128] [--repeats 5]

Prints a markdown table. Times are the minimum of `repeats` runs after one compile run (the
minimum is the least disturbed by other processes on a shared machine); the rows are timed
interleaved so all see the same load.
"""

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from linearsr_jax.configs import tiny
from linearsr_jax.diffusion import experts, flow, samplers
from linearsr_jax.models.dit import DiT, DiTConfig, init_params


def _min_seconds(fns, repeats):
  """Minimum wall time of each zero-argument function, run interleaved."""
  for fn in fns:
    jax.block_until_ready(fn())  # compile
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, fn_times in zip(fns, times):
      start = time.perf_counter()
      jax.block_until_ready(fn())
      fn_times.append(time.perf_counter() - start)
  return [min(t) for t in times]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--size", type=int, default=128, help="HR size in pixels")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  model_cfg = DiTConfig.from_dict(tiny.get_config().model)
  grid = args.size // 4  # tiny: pixel-unshuffle ×4 latent, LR already on the latent grid
  apply_fn = experts.model_apply(DiT(model_cfg))
  base = nn.unbox(init_params(model_cfg, jax.random.PRNGKey(0), latent_hw=(grid, grid)))
  cond_len = 16
  key = jax.random.split(jax.random.PRNGKey(1), 3)
  context = (jax.random.uniform(key[0], (args.batch, grid, grid, 3), minval=-1, maxval=1),
             jax.random.normal(key[1], (args.batch, cond_len, model_cfg.caption_channels)),
             jnp.ones((args.batch, cond_len), bool))
  null = (jnp.zeros((1, cond_len, model_cfg.caption_channels)), jnp.ones((1, cond_len), bool))
  shape = (args.batch, grid, grid, model_cfg.latent_channels)

  def sampler(num_experts, solver, guidance, steps):
    cfg = flow.default_config()
    cfg.sampler.update(steps=steps, solver=solver, guidance_scale=guidance)
    params = experts.init_experts(base, num_experts)
    run = jax.jit(
        lambda p, k: samplers.sample(apply_fn, p, k, shape, context, cfg, null_context=null))
    return lambda: run(params, key[2])

  print(f"tiny DiT ({model_cfg.depth} blocks, width {model_cfg.hidden}), batch {args.batch}, "
        f"{args.size}² output ({grid}² latent), {jax.devices()[0].platform}, "
        f"min of {args.repeats}\n")
  print("| what | experts | solver | CFG | steps | NFE | wall time (s) | per step (ms) |")
  print("|---|---|---|---|---|---|---|---|")
  rows = [("one step", e, "euler", 1.0, 1) for e in (1, 4)]
  rows += [("sampler", 1, "dpm++2m", 1.0, 20)]
  rows += [("sampler", 4, s, g, 20)
           for s, g in (("dpm++2m", 1.0), ("dpm++2m", 4.5), ("euler", 1.0), ("heun", 1.0))]
  seconds = _min_seconds([sampler(*row[1:]) for row in rows], args.repeats)
  for (what, num_experts, solver, guidance, steps), s in zip(rows, seconds):
    nfe = steps * (2 if solver == "heun" else 1)
    print(f"| {what} | {num_experts} | {solver} | {guidance:g} | {steps} | {nfe} | "
          f"{s:.4f} | {1000 * s / steps:.2f} |")


if __name__ == "__main__":
  main()
