"""SIGKILL a two-stage tiny run (pretrain → moe) at seeded random moments, resume it with the
same command after each kill, and check that it ends bit for bit as the uninterrupted run:
run.json, each stage's knee and last evaluation, and every leaf of the final states.

  .venv/bin/python bench/chaos.py --kills 30 --seed 0

Kills go to one workdir until its run finishes; then it is compared and a new one starts. A
workdir's first kill, and half of the later ones, land on a named moment
(linearsr_jax/train/kill_points.py: a checkpoint write in flight, half a metrics line, a drawn but
unwritten knee plot, between a stage's result.json and the next stage, a knee restore, run.json)
at a random occurrence, taking the points in turn from a shuffled cycle so each gets its share;
the first kill has all of a run's occurrences ahead, so it cannot come after the end. The other
kills land at a random time.
"""

import argparse
import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import markdown_table
from linearsr_jax.train import kill_points, run_outcome

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = {"model.depth": 1, "model.hidden": 64, "model.heads": 2, "model.cross_heads": 2,
             "model.scan_layers": False, "data.crop_size": 32, "data.batch_size": 4,
             "data.eval.crop_size": 64, "train.eval_every": 3, "train.eval_steps": 1,
             "train.log_every": 1, "train.lock_heartbeat_seconds": 0.25,
             "stage_order": "pretrain,moe",
             "stages.pretrain.max_steps": 12, "stages.moe.max_steps": 6}
# How often each point is reached by a whole run, bounding the occurrence drawn.
REACHED = {"checkpoint_write": 8, "metrics_append": 26, "knee_restored": 2, "knee_plot": 2,
           "stage_ended": 2, "run_json": 2}


def train(workdir: Path, env: dict, log: Path, kill_after=None) -> int:
  """Runs `linearsr train` on `workdir`; `kill_after` seconds: SIGKILL its process group then.
  Returns the exit code (−9 when killed)."""
  command = [sys.executable, "-m", "linearsr_jax.cli", "train", "--config", "configs/tiny.py",
             "--workdir", str(workdir), *(f"--config.{k}={v}" for k, v in OVERRIDES.items())]
  with open(log, "w") as out:
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
      return process.wait(kill_after)
    except subprocess.TimeoutExpired:
      os.killpg(process.pid, signal.SIGKILL)
      return process.wait()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kills", type=int, default=30)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  rng = random.Random(args.seed)
  root = Path(tempfile.mkdtemp(prefix="chaos-"))
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.pop("XLA_FLAGS", None)
  env.pop(kill_points.ENV, None)
  # Twice: the second run, with the compilation cache warm as every resumed run has it, sets
  # the span of the random-time kills.
  for name in ("warm-up", "straight"):
    start = time.perf_counter()
    assert train(root / name, env, root / f"{name}.log") == 0, root / f"{name}.log"
    seconds = time.perf_counter() - start
  expected = run_outcome.outcome(root / "straight")
  print(f"uninterrupted run: {seconds:.0f} s; kills go to {root}", file=sys.stderr)

  tried, survived, missed = collections.Counter(), collections.Counter(), collections.Counter()
  runs, delivered = 0, 0
  named = []  # a shuffled cycle of the points: a plain random choice left knee_plot out of 30
  while delivered < args.kills:
    runs += 1
    workdir, pending = root / f"run{runs}", []
    while delivered < args.kills:
      if not pending or rng.random() < 0.5:
        if not named:
          named = rng.sample(kill_points.POINTS, len(kill_points.POINTS))
        point = named.pop()
        kind, moment = point, f"{point}@{rng.randint(1, REACHED[point])}"
        code = train(workdir, dict(env, **{kill_points.ENV: moment}), root / "kill.log")
      else:
        kind, moment = "random time", f"{rng.uniform(1.0, seconds):.1f} s"
        code = train(workdir, env, root / "kill.log", kill_after=float(moment[:-2]))
      if code == 0:  # the moment came too late: this run has finished
        missed[kind] += 1
        break
      assert code == -signal.SIGKILL, (moment, code, (root / "kill.log").read_text()[-2000:])
      tried[kind] += 1
      delivered += 1
      pending.append(kind)
      print(f"run {runs}: killed at {moment}", file=sys.stderr, flush=True)
    if train(workdir, env, root / "resume.log") != 0:
      sys.exit(f"run {runs} did not resume: {(root / 'resume.log').read_text()[-2000:]}")
    differences = run_outcome.differences(expected, run_outcome.outcome(workdir))
    print(f"run {runs}: {len(pending)} kills, "
          f"{'same outcome' if not differences else f'DIFFERS at {differences[:5]}'}",
          file=sys.stderr, flush=True)
    if not differences:
      survived.update(pending)
  rows = [[kind, str(tried[kind]), str(survived[kind]), str(missed[kind])]
          for kind in [*kill_points.POINTS, "random time"]]
  print(markdown_table(["kill moment", "kills", "resumed bit for bit", "came after the end"],
                       rows))
  print(f"\n{sum(survived.values())} of {delivered} kills survived, over {runs} runs "
        f"(seed {args.seed})")
  shutil.rmtree(root)


if __name__ == "__main__":
  main()
