"""Compile-time figures of the SANA configs on Cloud TPU slices: `linearsr compile` per row,
each in its own process, gathered into one table. These are XLA's numbers for a compiled
program (memory, FLOPs, collectives) and a roofline bound, not measured pod times.

  .venv/bin/python bench/pod_compile.py --configs sana600m_x4 --topologies v5e-16 v5e-64
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import markdown_table  # noqa: E402

GIB = 1024 ** 3


def compile_row(config: str, topology: str, overrides, workdir: Path) -> dict:
  out = workdir / f"{config}_{topology}.json"
  command = [str(ROOT / ".venv/bin/linearsr"), "compile", "--config", f"configs/{config}.py",
             "--topology", topology, "--out", str(out), *overrides]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  if not out.exists():
    errors = [l for l in result.stderr.splitlines() if l.startswith("linearsr")]
    return {"config": config, "topology": topology, "error": (errors or ["failed"])[-1]}
  return dict(json.loads(out.read_text()), config=config, command=" ".join(
      ["linearsr compile --config", f"configs/{config}.py", "--topology", topology,
       *overrides]))


def cells(r: dict) -> list:
  if "error" in r:
    return [r["config"], r["topology"], r["error"]] + [""] * 8
  if "train_step" not in r:
    return [r["config"], r["topology"], str(r["global_batch"]),
            f"needs {r['required_bytes'] / GIB:.1f} of {r['hbm_bytes'] / GIB:.0f}"] + [""] * 7
  t, m, roof = r["train_step"], r["model"], r["roofline"]
  return [r["config"], r["topology"], str(r["global_batch"]),
          f"{t['memory']['total'] / GIB:.2f} of {r['hbm_bytes'] / GIB:.0f}",
          f"{t['flops'] / 1e12:.3f}", f"{m['total_flops'] / 1e12:.3f}",
          f"{m['encoder_flops'] / max(m['total_flops'], 1):.0%}",
          f"{r['compiled_over_model_flops']:.2f}",
          f"{t['collectives']['all-gather'] / GIB:.2f} / {t['collectives']['all-reduce'] / GIB:.2f}",
          f"{roof['seconds'] * 1e3:.0f} ({roof['bound']})",
          f"{roof['images_per_second_per_chip']:.1f}"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", nargs="+", default=["sana600m_x4", "sana1600m_x4"])
  parser.add_argument("--topologies", nargs="+",
                      default=["v5e-16", "v5e-64", "v5p-128", "v6e-64"])
  parser.add_argument("overrides", nargs="*", help="--config.K=V passed to every row")
  args, unknown = parser.parse_known_args()
  overrides = args.overrides + unknown
  header = ["config", "slice", "batch", "GiB per chip", "compiled TFLOP/chip",
            "model TFLOP/chip", "encoder share", "compiled / model",
            "all-gather / all-reduce GiB", "roofline ms", "images/s/chip"]
  rows, commands = [], []
  with tempfile.TemporaryDirectory() as tmp:
    for config in args.configs:
      for topology in args.topologies:
        r = compile_row(config, topology, overrides, Path(tmp))
        rows.append(cells(r))
        commands.append(r.get("command", ""))
        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
  print(markdown_table(header, rows))
  print()
  print("Each row: `" + "`, `".join(sorted({c.split(" --topology")[0] for c in commands if c}))
        + "` with `--topology SLICE`" + (f" and {' '.join(overrides)}" if overrides else "") + ".")


if __name__ == "__main__":
  main()
