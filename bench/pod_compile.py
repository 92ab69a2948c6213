"""Compile-time figures of the SANA configs on Cloud TPU slices: `linearsr compile --find_batch`
per row (config × slice × HR latents encoded in the step or precomputed), each in its own
process, gathered into one table. These are XLA's numbers for a compiled program (memory,
FLOPs, collectives) and a roofline bound, not measured pod times.

  .venv/bin/python bench/pod_compile.py --configs sana600m_x4 --topologies v5e-16 v5e-64 \
      --results bench/results/pod_compile

Each row's report is kept in --results, so an interrupted table resumes where it stopped
(full-depth compiles take minutes each on a 2-core machine). --recount compiles the kept rows
again at their largest batch, without the search: for a change in how FLOPs are counted.
--kept prints the table of the rows finished so far (while others still compile).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import markdown_table

ROOT = Path(__file__).resolve().parent.parent

GIB = 1024**3
MODES = {"encode": [], "precomputed": ["--config.data.hr_latents=precomputed"]}


def command(config: str, topology: str, mode: str, overrides) -> list:
  return [
      "linearsr", "compile", "--config", f"configs/{config}.py", "--topology", topology,
      "--find_batch", *MODES[mode], *overrides
  ]


def compile_row(config: str, topology: str, mode: str, overrides, results: Path,
                recount: bool = False, kept_only: bool = False) -> dict:
  """The row's kept report, compiled first when it is missing (or with --recount); None
  when it is missing and `kept_only`."""
  out = results / f"{config}_{topology}_{mode}.json"
  args = command(config, topology, mode, overrides)
  row = {"config": config, "topology": topology, "mode": mode, "command": " ".join(args)}
  kept = json.loads(out.read_text()) if out.exists() else None
  if kept is None and kept_only:
    return None
  if kept is None or (recount and kept.get("largest_batch")):
    run = args if kept is None else [a for a in args if a != "--find_batch"
                                    ] + [f"--config.data.batch_size={kept['largest_batch']}"]
    fresh = out if kept is None else out.with_suffix(".recount")
    error = _linearsr(run, fresh, f"{config} {topology} {mode}")
    if not fresh.exists():
      return dict(row, error=error)
    if kept is not None:  # the search's answer stays: memory is counted as before
      out.write_text(
          json.dumps(dict(json.loads(fresh.read_text()), largest_batch=kept["largest_batch"]),
                     indent=2, sort_keys=True))
      fresh.unlink()
  return dict(json.loads(out.read_text()), **row)


def _linearsr(args, out: Path, label: str) -> str:
  """Runs `linearsr ARGS --out OUT`, its progress (one line per compile) passing through;
  returns its last error line."""
  errors = []
  with subprocess.Popen([str(ROOT / ".venv/bin" / args[0]), *args[1:], "--out",
                         str(out)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                        text=True) as process:
    for line in process.stderr:
      print(f"  {label}: {line.rstrip()}", file=sys.stderr, flush=True)
      errors += [line.strip()] if line.startswith("linearsr") else []
  return (errors or ["failed"])[-1]


def cells(r: dict) -> list:
  """One README row: the figures per chip, then the command that made them."""
  head, command = [r["config"], r["topology"], r["mode"]], f"`{r['command']}`"
  if "error" in r:
    return head + [r["error"]] + [""] * 7 + [command]
  if "train_step" not in r:
    return head + ["0", f"needs {r['required_bytes'] / GIB:.1f} of "
                   f"{r['hbm_bytes'] / GIB:.0f}"] + [""] * 6 + [command]
  t, m, roof = r["train_step"], r["model"], r["roofline"]
  c = t["collectives"]
  encoder = m["encoder_flops"] / max(m["total_flops"], 1)
  return head + [
      str(r.get("largest_batch", r["global_batch"])),
      f"{t['memory']['total'] / GIB:.2f} of {r['hbm_bytes'] / GIB:.0f}", f"{t['flops'] / 1e12:.2f}",
      f"{m['total_flops'] / 1e12:.2f}" +
      (f" (encoder {encoder:.0%})" if encoder else ""), f"{r['compiled_over_model_flops']:.2f}",
      f"{c['all-gather'] / GIB:.2f} / {(c['all-reduce'] + c['reduce-scatter']) / GIB:.2f}",
      f"{roof['seconds'] * 1e3:.0f} ({roof['bound']})", f"{roof['images_per_second_per_chip']:.1f}",
      command
  ]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", nargs="+", default=["sana600m_x4", "sana1600m_x4"])
  parser.add_argument("--topologies", nargs="+", default=["v5e-16", "v5e-64", "v5p-128", "v6e-64"])
  parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
  parser.add_argument("--results", default="bench/results/pod_compile",
                      help="directory keeping each row's report (rows found there are reused)")
  parser.add_argument("--recount", action="store_true",
                      help="compile the kept rows again at their largest batch (no search)")
  parser.add_argument("--kept", action="store_true",
                      help="print the table of the rows kept so far, compiling nothing")
  args, overrides = parser.parse_known_args()
  results = Path(args.results)
  results.mkdir(parents=True, exist_ok=True)
  header = [
      "config", "slice", "HR latents", "largest batch", "GiB per chip", "compiled TFLOP/chip",
      "model TFLOP/chip", "compiled / model", "all-gather / reduction GiB", "roofline ms",
      "images/s/chip", "command"
  ]
  rows = []
  for config in args.configs:
    for topology in args.topologies:
      for mode in args.modes:
        r = compile_row(config, topology, mode, overrides, results, args.recount, args.kept)
        if r is not None:
          rows.append(cells(r))
          print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
  print(markdown_table(header, rows))


if __name__ == "__main__":
  main()
