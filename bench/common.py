"""Shared by the bench scripts: wall-clock timing, the machine's matmul rate, peak memory (also
read by the memory tests' child processes), markdown tables.

Run scripts from the repo root, e.g. `.venv/bin/python bench/attention_scaling.py`.
"""

import re
from pathlib import Path

import jax
import jax.numpy as jnp

from linearsr_jax.timing import median_seconds  # noqa: F401 (the benches' timer)


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
  """Achieved float32 GFLOP/s of one n×n matmul under XLA on this machine right now."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  mm = jax.jit(lambda x: x @ x)
  seconds = median_seconds(lambda: mm(a).block_until_ready(), repeats)
  return 2 * n**3 / seconds / 1e9


def xla_flops(compiled) -> float:
  """FLOPs of a compiled computation as XLA's cost analysis counts them."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def peak_rss_mib() -> float:
  """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries that across
  execve, so a benchmark's child process would report its parent's peak."""
  status = Path("/proc/self/status").read_text()
  return int(re.search(r"VmHWM:\s*(\d+) kB", status).group(1)) / 1024


def markdown_table(header, rows) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)
