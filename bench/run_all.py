"""Runs the benchmarks at sizes that fit a 2-core CPU and refreshes their tables in the docs.

Each benchmark's stdout replaces the block between `<!-- bench:NAME -->` and
`<!-- /bench:NAME -->`, preceded by the command that made it and the date, in whichever of
README.md and docs/*.md holds it (docs/results.md today).

  .venv/bin/python bench/run_all.py                 # all
  .venv/bin/python bench/run_all.py vs_diffusers    # some
"""

import datetime
import os
import re
import subprocess
import sys
from pathlib import Path

from linearsr_jax.atomic import atomic_file

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# name -> arguments after `python bench/<name>.py`
BENCHMARKS = {
    "attention_scaling": ["--sides", "16", "32", "64", "128"],
    "vs_diffusers": ["--depth", "4", "--sides", "32", "64"],
    "sampling": ["--repeats", "5"],
    "train_step": [],
    "upscale": [],
    "data_pipeline": [],
    "autoencoder": ["--dcae-sizes", "256", "512", "1024", "--dcae-tiled-sizes", "512", "1024"],
}


def run(name: str) -> str:
  argv = [PYTHON, f"bench/{name}.py", *BENCHMARKS[name]]
  print(f"running: {' '.join(argv[1:])}", flush=True)
  out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True).stdout
  command = " ".join([".venv/bin/python", *argv[1:]])
  return f"`{command}` ({datetime.date.today()}, {os.cpu_count()} CPU cores):\n\n{out.strip()}\n"


def block(name: str) -> re.Pattern:
  return re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)


def home(name: str):
  """The Markdown file that holds bench:NAME's block, or None."""
  for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
    if block(name).search(path.read_text()):
      return path
  return None


def main(names):
  for name in names or BENCHMARKS:
    if name not in BENCHMARKS:
      sys.exit(f"unknown benchmark {name}; choose from {', '.join(BENCHMARKS)}")
    path = home(name)
    body = run(name)
    if path is None:
      print(f"no Markdown file has a bench:{name} block; printing instead\n{body}")
      continue
    text = block(name).sub(lambda m: m.group(1) + body + m.group(2), path.read_text())
    with atomic_file(path, "w") as f:
      f.write(text)
    print(f"{path.relative_to(ROOT)}:\n{body}")


if __name__ == "__main__":
  main(sys.argv[1:])
