"""Where a train step's bytes go, by kind, for one block and for the rest, from the counting
programs of 1 and 2 unrolled blocks alone (no full-depth compile): minutes where `linearsr
compile` takes half an hour, for trying a change to the model or step on a TPU slice.

  .venv/bin/python bench/step_bytes.py --topology v5e-16 --batch 1568 \
      --config.data.hr_latents=precomputed

The whole depth is extrapolated as `linearsr compile` does (the same FLOPs and bytes, and so the
same roofline); the step's memory is not compiled.
"""

import argparse
import os
import time

# It compiles for the slice named and runs nothing: the host platform is the CPU (where the CUDA
# plugin also describes GPU nodes, jax issue 28376), with none of the warnings of a TPU runtime
# looked for and not found.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from common import markdown_table  # noqa: E402
from linearsr_jax.aot import step_compile  # noqa: E402
from linearsr_jax.commands import cli_compile  # noqa: E402
from linearsr_jax.commands.config_flags import parse_flags  # noqa: E402
from linearsr_jax.train.loop import Run  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/sana600m_x4.py")
  parser.add_argument("--topology", default="v5e-16")
  parser.add_argument("--batch", type=int, required=True, help="global batch")
  parser.add_argument("--stage", default="finetune")
  args, overrides = parser.parse_known_args()
  config, _ = parse_flags([
      "--config", args.config, "--workdir", os.devnull, f"--config.data.batch_size={args.batch}",
      *overrides
  ], command="compile")
  if config.model.depth < 3:
    parser.error("one block and the rest are told apart in a model of 3 blocks or more")
  pod, devices = cli_compile.parse_topology(args.topology)
  run = Run(config, os.devnull, load_weights=False, devices=devices())
  start = time.perf_counter()
  # What `linearsr compile` adds to the step it compiles: the counted work of the whole depth.
  whole = step_compile.with_counted_work(run, args.stage, args.batch, {})
  split = whole["by_kind_per_block"]
  rows = [[
      kind, f"{v['flops'] / 1e12:.4f}", f"{v['bytes'] / 1e9:.3f}",
      f"{v['on_chip_bytes'] / 1e9:.3f}", f"{split['rest'][kind]['bytes'] / 1e9:.3f}"
  ] for kind, v in sorted(split["block"].items(), key=lambda kv: -kv[1]["bytes"])]
  print(
      markdown_table(["kind", "one block TFLOP", "one block GB", "of which on chip", "the rest GB"],
                     rows))
  bound = step_compile.roofline(pod, whole["flops"], whole["bytes_accessed"], args.batch)
  print(f"\n{args.topology}, batch {args.batch}, {config.model.depth} blocks: "
        f"{whole['flops'] / 1e12:.2f} TFLOP, {whole['bytes_accessed'] / 1e9:.1f} GB per chip "
        f"(XLA); roofline {bound.seconds * 1e3:.0f} ms ({bound.bound}), "
        f"{bound.images_per_second_per_chip:.1f} images/s per chip; "
        f"compiled in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  main()
