"""Upscaling cost: wall time and peak memory for 512² … 4096² outputs, each size in its own process.

  .venv/bin/python bench/upscale.py [--sizes 512,1024,2048,4096] [--sana_sizes 512,1024]

Rows:
- tiny config (random weights, 4 experts, the config's sampler steps), the whole `Upscaler`
  (tiled SR in --tile LR-pixel tiles, colour fix): one model forward (1 NFE) on one tile, the
  NFEs of the whole image (that times the tile count), total wall time after one compile run
  on a tile, peak RSS of the process.
- sana600m (random weights, float32): one DiT forward at each size's latent grid (output / 32),
  with its LR stem. Sizes not in --sana_sizes are not run: their time is estimated as
  2·params·tokens FLOPs at this machine's measured matmul rate.
The paper's 1024² figures (H-series GPU) stand beside them. Times are single runs on a shared
CPU; peak RSS is the child process's VmHWM.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAPER = ("LinearSR paper (H-series GPU)", "1024²", "—", "—", "0.036", "0.036 × 20", "0.830", "—")


def _timed(fn):
  import jax
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def tiny_trained():
  """(the tiny config's model with random weights and 4 experts as `Trained`, one expert's
  params)."""
  import jax
  import flax.linen as nn

  from linearsr_jax.configs import tiny
  from linearsr_jax.diffusion import experts
  from linearsr_jax.inference.trained import Trained
  from linearsr_jax.models.build import build_model
  from linearsr_jax.models.sr_model import sr_example_inputs

  config = tiny.get_config()
  model, latent_space = build_model(config)
  one = nn.unbox(
      model.init(jax.random.PRNGKey(0), *sr_example_inputs(model.dit, model.tags, 1,
                                                           (4, 4)))["params"])
  return Trained(config, "bench", 0, model, experts.init_experts(one, 4), latent_space,
                 config.diffusion), one


def tiny_row(size: int, tile: int) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import skimage

  from common import peak_rss_mib
  from linearsr_jax.inference.upscale import UpscaleOptions, Upscaler
  from linearsr_jax.models.sr_model import sr_example_inputs

  trained, one = tiny_trained()
  config, model, diffusion = trained.config, trained.model, trained.diffusion
  upscaler = Upscaler(trained, UpscaleOptions(tile=tile, overlap=tile // 4))
  lr_size = size // upscaler.scale
  lr = skimage.transform.resize(skimage.data.astronaut(), (lr_size, lr_size),
                                anti_aliasing=True).astype(np.float32)
  t = min(tile, lr_size)
  upscaler(lr[:t, :t])  # compile the sampler for the tile shape
  total = _timed(lambda: upscaler(lr))

  grid = t * upscaler.scale // trained.latent_space.factor
  inputs = sr_example_inputs(model.dit, model.tags, 1, (grid, grid))
  inputs = (inputs[0], jnp.full((1,), 0.5), jnp.zeros((1, t, t, 3)), *inputs[3:])
  forward = jax.jit(lambda p, *a: model.apply({"params": p}, *a))
  jax.block_until_ready(forward(one, *inputs))
  nfe = min(_timed(lambda: forward(one, *inputs)) for _ in range(3))
  tiles = upscaler.tile_count(lr_size, lr_size)
  return dict(
      model=f"tiny ({config.model.depth}×{config.model.hidden}, 4 experts, "
      f"{diffusion.sampler.steps} steps)", size=size, tile=f"{t}² LR", tiles=tiles, nfe=nfe,
      nfe_image=nfe * tiles, total=total, peak=peak_rss_mib())


def sana_row(size: int, run: bool) -> dict:
  import jax
  import jax.numpy as jnp
  import flax.linen as nn

  from common import matmul_gflops, peak_rss_mib
  from linearsr_jax.configs import sana600m_x4
  from linearsr_jax.models.dit import DiT, DiTConfig, example_inputs

  config = sana600m_x4.get_config()
  cfg = DiTConfig.from_dict(config.model.to_dict())
  # the LR stem's stride-2 convs take the LR image to the latent grid
  grid = size // config.data.scale // 2**cfg.lr_stem_convs
  x_t, t, _, cond, mask = example_inputs(cfg, 1, (grid, grid), cond_len=16)
  lr = jnp.zeros((1, size // config.data.scale, size // config.data.scale, 3))
  model = DiT(cfg)
  init = jax.jit(lambda key: nn.unbox(model.init(key, x_t, t, lr, cond, mask)["params"]))
  forward = jax.jit(lambda p, *a: model.apply({"params": p}, *a))
  if not run:
    # 2·params·tokens: the dense layers, which dominate (XLA's cost analysis counts a scanned
    # block stack once, so it cannot be used here).
    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
    flops = 2 * sum(x.size for x in jax.tree.leaves(abstract)) * grid * grid
    rate = matmul_gflops()
    return dict(model="sana600m DiT forward (estimated)", size=size, tile=f"{grid}² latent",
                tiles=1, nfe=flops / rate / 1e9, nfe_image=None, total=None, peak=None,
                note=f"{flops / 1e12:.2f} TFLOP at {rate:.0f} GFLOP/s")
  params = init(jax.random.PRNGKey(0))
  jax.block_until_ready(forward(params, x_t, t, lr, cond, mask))
  nfe = _timed(lambda: forward(params, x_t, t, lr, cond, mask))
  return dict(model="sana600m DiT forward", size=size, tile=f"{grid}² latent", tiles=1, nfe=nfe,
              nfe_image=None, total=None, peak=peak_rss_mib())


def _child(kind, size, extra) -> dict:
  cmd = [sys.executable, str(Path(__file__)), "--child", kind, str(size), str(extra)]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"})
  if proc.returncode:
    last = (proc.stderr.strip().splitlines() or ["?"])[-1]
    row = dict(model=kind, size=size, error=last[:120])
  else:
    row = json.loads(proc.stdout.strip().splitlines()[-1])
  print(json.dumps(row), file=sys.stderr, flush=True)  # progress: each row as it is measured
  return row


def _fmt(value, digits=3):
  return "—" if value is None else f"{value:.{digits}f}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="512,1024,2048,4096", help="output sizes, tiny rows")
  parser.add_argument("--sana_sizes", default="512,1024",
                      help="output sizes where sana600m really runs (others: FLOP estimate)")
  parser.add_argument("--tile", type=int, default=128, help="LR tile of the tiny upscaler")
  parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    kind, size, extra = args.child
    row = (tiny_row(int(size), int(extra)) if kind == "tiny" else sana_row(
        int(size), extra == "run"))
    print(json.dumps(row))
    return

  sizes = [int(s) for s in args.sizes.split(",")]
  sana_run = {int(s) for s in args.sana_sizes.split(",") if s}
  rows = [_child("tiny", s, args.tile) for s in sizes]
  rows += [_child("sana", s, "run" if s in sana_run else "estimate") for s in sizes]
  from common import markdown_table
  header = [
      "model", "output", "tile", "tiles", "1 NFE per tile (s)", "NFEs, whole image (s)",
      "total (s)", "peak RSS (MiB)"
  ]
  table = []
  for r in rows:
    if "error" in r:
      table.append((r["model"], f"{r['size']}²", "failed: " + r["error"], "", "", "", "", ""))
      continue
    nfe = _fmt(r["nfe"]) + (f" ({r['note']})" if r.get("note") else "")
    table.append((r["model"], f"{r['size']}²", r["tile"], r["tiles"], nfe, _fmt(r["nfe_image"]),
                  _fmt(r["total"], 2), _fmt(r["peak"], 0)))
  table.append(PAPER)
  print(markdown_table(header, table))


if __name__ == "__main__":
  main()
