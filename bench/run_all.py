"""Runs the benchmarks at sizes that fit a 2-core CPU and refreshes the README's tables.

Each benchmark's stdout replaces the README block between `<!-- bench:NAME -->` and
`<!-- /bench:NAME -->`, preceded by the command that made it and the date.

  .venv/bin/python bench/run_all.py                 # all
  .venv/bin/python bench/run_all.py vs_diffusers    # some
"""

import datetime
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
from linearsr_jax.atomic import atomic_file
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


def refresh(readme: str, name: str, body: str) -> str:
  pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
  if not pattern.search(readme):
    print(f"README has no bench:{name} block; printing instead\n{body}")
    return readme
  return pattern.sub(lambda m: m.group(1) + body + m.group(2), readme)


def main(names):
  readme_path = ROOT / "README.md"
  for name in names or BENCHMARKS:
    if name not in BENCHMARKS:
      sys.exit(f"unknown benchmark {name}; choose from {', '.join(BENCHMARKS)}")
    body = run(name)
    with atomic_file(readme_path, "w") as f:
      f.write(refresh(readme_path.read_text(), name, body))
    print(body)


if __name__ == "__main__":
  main(sys.argv[1:])
