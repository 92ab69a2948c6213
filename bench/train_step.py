"""Train-step cost on this CPU: step time, images/s, achieved FLOP/s against the matmul rate
measured in the same run, and compile time with nn.scan vs unrolled blocks.

  .venv/bin/python bench/train_step.py [--repeats 3] [--sana-depth 2]

Two models: the tiny config as it trains (64 px crops, batch 8), and SANA-600M's width (1152,
36×32 linear heads, 16×72 cross heads, 2304 caption channels) cut to `--sana-depth` blocks, in
float32 without remat, on the pixel-unshuffle ×4 latent (no DC-AE: the autoencoder is not part
of what the step trains) with 128 px crops, i.e. a 32×32 token grid, the token count SANA-600M
sees at 1024 px. The whole jitted train step is measured (encode, flow loss, backward, AdamW,
EMA, the non-finite guard), on one device. FLOPs are XLA's cost analysis of the compiled step.
"""

import argparse
import time

import jax
import ml_collections
import numpy as np

from common import markdown_table, matmul_gflops, xla_flops
from linearsr_jax import optimizer, sharding
from linearsr_jax.configs import sana600m_x4, tiny
from linearsr_jax.models.build import build_model
from linearsr_jax.train.state import create_train_state
from linearsr_jax.train.step import make_train_step


def sana_width_config(depth: int):
  config = tiny.get_config()  # pixel latent ×4, tags, diffusion from the CPU config
  config.model = sana600m_x4.get_config().model
  config.model.update(depth=depth, latent_channels=48, lr_channels=16, lr_stem_convs=0,
                      remat="none", dtype="float32")
  config.data.crop_size = 128
  config.data.batch_size = 2
  return config


def compiled_step(config, scan_layers: bool):
  """(compiled step, state, batch, compile seconds) on a one-device mesh."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.scan_layers = scan_layers
  mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  rules = [tuple(r) for r in config.sharding_rules]
  model, latent_space = build_model(config)
  tx = optimizer.make_optimizer(config.optimizer, 1000)
  step = make_train_step(model, latent_space, tx, config.diffusion, scale=config.data.scale,
                         cond_dropout=config.tags.dropout_prob,
                         ema_decay=config.optimizer.ema_decay)
  state, _ = create_train_state(model, tx, 1, jax.random.PRNGKey(0), mesh, rules)
  rng = np.random.default_rng(0)
  b, crop, s, tokens = (config.data.batch_size, config.data.crop_size, config.data.scale,
                        config.tags.max_tokens)
  batch = {
      "hr": rng.uniform(-1, 1, (b, crop, crop, 3)).astype(np.float32),
      "lr": rng.uniform(-1, 1, (b, crop // s, crop // s, 3)).astype(np.float32),
      "cond": rng.integers(1, config.tags.vocab_size,
                           (b, tokens)).astype(np.int32), "cond_mask": np.ones((b, tokens), bool)
  }
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = jax.jit(step, donate_argnums=0).lower(state, batch).compile()
  return compiled, state, batch, time.perf_counter() - start


def time_steps(compiled, state, batch, repeats: int) -> float:
  """Minimum seconds per step (the least disturbed by other load), after one warm-up step."""
  state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  return min(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--sana-depth", type=int, default=2)
  args = parser.parse_args()

  peak = matmul_gflops()
  models = [("tiny (4×128)", tiny.get_config()),
            (f"SANA-600M width, {args.sana_depth} blocks", sana_width_config(args.sana_depth))]
  rows = []
  for name, config in models:
    params = None
    compile_seconds = {}
    for scan in (False, True):
      compiled, state, batch, seconds = compiled_step(config, scan)
      compile_seconds[scan] = seconds
      if not scan:  # time the unrolled step (what both configs train with on CPU)
        params = sum(x.size for x in jax.tree.leaves(state.params))
        flops = xla_flops(compiled)
        step_seconds = time_steps(compiled, state, batch, args.repeats)
      del compiled, state
    b, crop = config.data.batch_size, config.data.crop_size
    achieved = flops / step_seconds / 1e9
    rows.append([
        name, f"{params / 1e6:.1f}M", f"{b}×{crop}²", f"{step_seconds * 1e3:.0f}",
        f"{b / step_seconds:.2f}", f"{flops / 1e9:.1f}", f"{achieved:.1f}",
        f"{achieved / peak:.0%}", f"{compile_seconds[False]:.1f}", f"{compile_seconds[True]:.1f}"
    ])
  print(f"float32 {2048}² matmul, same run: {peak:.0f} GFLOP/s; "
        f"{jax.device_count()} device(s), {jax.devices()[0].platform}\n")
  print(
      markdown_table([
          "model", "params", "batch", "step ms", "images/s", "GFLOP/step", "GFLOP/s", "of matmul",
          "compile s (unrolled)", "compile s (scan)"
      ], rows))


if __name__ == "__main__":
  main()
