"""SIGKILL a two-stage tiny run (pretrain → moe) at seeded random moments, resume it with the
same command after each kill, and check that it ends bit for bit as the uninterrupted run:
run.json, each stage's knee and last evaluation, and every leaf of the final states.

  .venv/bin/python bench/chaos.py --kills 30 --seed 0

Kills go to one workdir until its run finishes; then it is compared and a new one starts. A
workdir's first kill, and half of the later ones, land on a named moment
(linearsr_jax/run/kill_points.py: a checkpoint write in flight, half a metrics line, a drawn but
unwritten knee plot, between a stage's result.json and the next stage, a knee restore, run.json)
at a random occurrence, taking the points in turn from a shuffled cycle so each gets its share;
the first kill has all of a run's occurrences ahead, so it cannot come after the end. The other
kills land at a random time.

Then `--faults` tries of each fault kind, each on a fresh workdir (linearsr_jax/train/
fault_points.py makes a checkpoint read or write fail as GCS does when it answers 503):
- read error on resume: killed while a checkpoint is written, resumed with the restore's first
  one or two reads failing (storage_errors retries them);
- write error: a checkpoint save fails, which stops the run; then resumed;
- rollback, then kill: a stage whose learning rate of 1 makes it diverge, killed right after the
  guard's first or second rollback, resumed, compared with the uninterrupted diverging run;
- stale lock race: killed while a checkpoint is written, its run.lock made another host's with
  a heartbeat older than train.lock_stale_seconds (a preempted VM's), then two starters at once:
  one must train, the other stop in one line.
Every kill and fault counts as survived when the run ends bit for bit as the uninterrupted one;
a step moved to a damaged_checkpoints/ folder counts as set aside (none was damaged).

  .venv/bin/python bench/chaos.py --kills 8 --faults 2   # 19 min on 2 cores shared (load 7)
"""

import argparse
import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import run_outcome
from common import markdown_table
from linearsr_jax.run import fault_points, kill_points
from linearsr_jax.train import run_lock

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = {
    "model.depth": 1, "model.hidden": 64, "model.heads": 2, "model.cross_heads": 2,
    "model.scan_layers": False, "data.crop_size": 32, "data.batch_size": 4,
    "data.eval.crop_size": 64, "train.eval_every": 3, "train.eval_steps": 1, "train.log_every": 1,
    "train.lock_heartbeat_seconds": 0.25, "train.lock_stale_seconds": 20,
    "stage_order": "pretrain,moe", "stages.pretrain.max_steps": 12, "stages.moe.max_steps": 6
}
# As tests/train/test_guard_resume.py: a fine-tuning stage that explodes at steps 2 and 4.
DIVERGING = {
    **{
        k: v for k, v in OVERRIDES.items() if not k.startswith("stage")
    }, "stage_order": "pretrain,finetune", "optimizer.warmup_steps": 0,
    "train.guard.max_rollbacks": 2, "stages.pretrain.max_steps": 1, "stages.pretrain.esgf": False,
    "stages.finetune.num_experts": 1, "stages.finetune.max_steps": 6, "stages.finetune.esgf": False,
    "stages.finetune.optimizer.learning_rate": 1.0
}
FAULTS = ("read error on resume", "write error", "rollback, then kill", "stale lock race")
# How often each point is reached by a whole run, bounding the occurrence drawn (rolled_back,
# never reached by this run, is the "rollback, then kill" fault's).
REACHED = {
    "checkpoint_write": 8, "metrics_append": 26, "knee_restored": 2, "knee_plot": 2,
    "stage_ended": 2, "run_json": 2
}


def start(workdir: Path, env: dict, log: Path, overrides=None) -> subprocess.Popen:
  """`linearsr train` on `workdir`, in its own process group, its output to `log`."""
  command = [
      sys.executable, "-m", "linearsr_jax.commands.cli", "train", "--config", "configs/tiny.py",
      "--workdir",
      str(workdir), *(f"--config.{k}={v}" for k, v in (overrides or OVERRIDES).items())
  ]
  with open(log, "w") as out:
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def train(workdir: Path, env: dict, log: Path, kill_after=None, overrides=None) -> int:
  """Runs `linearsr train` on `workdir`; `kill_after` seconds: SIGKILL its process group then.
  Returns the exit code (−9 when killed)."""
  process = start(workdir, env, log, overrides)
  try:
    return process.wait(kill_after)
  except subprocess.TimeoutExpired:
    os.killpg(process.pid, signal.SIGKILL)
    return process.wait()


def set_aside(workdir: Path) -> int:
  """How many steps the run moved to a damaged_checkpoints/ folder."""
  return len(list(workdir.glob("*/damaged_checkpoints/*")))


def killed(workdir: Path, env: dict, log: Path, moment: str, overrides=None):
  """Runs `linearsr train` on `workdir` until kill_points SIGKILLs it at `moment`."""
  code = train(workdir, dict(env, **{kill_points.ENV: moment}), log, overrides=overrides)
  assert code == -signal.SIGKILL, (moment, code, log.read_text()[-2000:])


def make_stale(workdir: Path, stale_seconds: float):
  """Leaves run.lock as a run on a preempted VM would: another host's, its heartbeat late."""
  lock = workdir / run_lock.LOCK_NAME
  lock.write_text(
      json.dumps({"host": "preempted-vm", "pid": 1, "since": "earlier", "token": "stale"}))
  late = time.time() - 2 * stale_seconds
  os.utime(lock, (late, late))


def inject(kind: str, workdir: Path, env: dict, root: Path, rng: random.Random) -> str:
  """Delivers one fault of `kind` to a fresh `workdir` and finishes its run; returns what was
  done. Raises AssertionError when the run did not survive as it should."""
  log = root / "fault.log"
  if kind == "read error on resume":
    moment, tries = pretrain_save_in_flight(rng), rng.randint(1, 2)
    killed(workdir, env, log, moment)
    fault = f"checkpoint_read@1x{tries}"
    assert train(workdir, dict(env, **{fault_points.ENV: fault}), log) == 0, log.read_text()[-3000:]
    retries = log.read_text().count("storage error (UNAVAILABLE: injected")
    assert retries == tries, (retries, log.read_text()[-3000:])
    return f"killed at {moment}, resumed with {fault}"
  if kind == "write error":
    fault = f"checkpoint_save@{rng.randint(1, REACHED['checkpoint_write'])}"
    code = train(workdir, dict(env, **{fault_points.ENV: fault}), log)
    said = one_line(log, code)
    assert train(workdir, env, log) == 0, log.read_text()[-3000:]
    return f"{fault}: {said}; resumed"
  if kind == "rollback, then kill":
    moment = f"rolled_back@{rng.randint(1, 2)}"
    killed(workdir, env, log, moment, DIVERGING)
    assert train(workdir, env, log, overrides=DIVERGING) == 0, log.read_text()[-3000:]
    return f"killed at {moment}, resumed"
  assert kind == "stale lock race", kind
  moment = pretrain_save_in_flight(rng)
  killed(workdir, env, log, moment)
  make_stale(workdir, float(OVERRIDES["train.lock_stale_seconds"]))
  racers = [start(workdir, env, root / f"racer{i}.log") for i in range(2)]
  codes = [r.wait() for r in racers]
  assert codes.count(0) == 1, codes
  loser = 1 - codes.index(0)
  said = one_line(root / f"racer{loser}.log", codes[loser])
  return f"killed at {moment}, lock made stale; one racer trained, the other: {said}"


def pretrain_save_in_flight(rng: random.Random) -> str:
  """A kill while one of pretrain's checkpoints 3 to 12 is written (steps 0, 3, …, 12 are
  saved), so that a whole one is there to resume from."""
  return f"checkpoint_write@{rng.randint(2, 5)}"


def one_line(log: Path, code: int) -> str:
  """The one line a run that stopped on an error said; AssertionError when it did not stop
  that way (exit 2, no traceback)."""
  text = log.read_text()
  assert code == 2 and "Traceback" not in text, (code, text[-3000:])
  said = text.strip().splitlines()[-1]
  assert said.startswith("linearsr: error:"), text[-3000:]
  return f"exit 2, {said[len('linearsr: error: '):][:150]!r}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kills", type=int, default=30)
  parser.add_argument("--faults", type=int, default=4, help="tries of each fault kind")
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
  env.pop(fault_points.ENV, None)
  began = time.perf_counter()
  # Twice: the second run, with the compilation cache warm as every resumed run has it, sets
  # the span of the random-time kills.
  for name in ("warm-up", "straight"):
    start_s = time.perf_counter()
    assert train(root / name, env, root / f"{name}.log") == 0, root / f"{name}.log"
    seconds = time.perf_counter() - start_s
  expected = run_outcome.outcome(root / "straight")
  print(f"uninterrupted run: {seconds:.0f} s; kills go to {root}", file=sys.stderr)

  tried, survived, missed = collections.Counter(), collections.Counter(), collections.Counter()
  aside = collections.Counter()
  runs, delivered = 0, 0
  named = []  # a shuffled cycle of the points: a plain random choice left knee_plot out of 30
  while delivered < args.kills:
    runs += 1
    workdir, pending = root / f"run{runs}", []
    while delivered < args.kills:
      if not pending or rng.random() < 0.5:
        if not named:
          named = rng.sample(list(REACHED), len(REACHED))
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
    if compare(f"run {runs}: {len(pending)} kills", expected, workdir):
      survived.update(pending)
    aside["kills"] += set_aside(workdir)
  rows = [[kind, str(tried[kind]), str(survived[kind]),
           str(missed[kind])] for kind in [*REACHED, "random time"]]
  print(markdown_table(["kill moment", "kills", "resumed bit for bit", "came after the end"], rows))
  print(f"\n{sum(survived.values())} of {delivered} kills survived, over {runs} runs, "
        f"{aside['kills']} steps set aside (seed {args.seed})\n")

  faulted = collections.Counter()
  if args.faults:
    assert train(root / "diverging", env, root / "diverging.log", overrides=DIVERGING) == 0, \
        root / "diverging.log"
    diverging = run_outcome.outcome(root / "diverging")
  for kind in FAULTS:
    for n in range(args.faults):
      workdir = root / f"{kind.replace(' ', '-').replace(',', '')}{n}"
      try:
        what = inject(kind, workdir, env, root, rng)
      except AssertionError as e:
        print(f"{kind} {n}: FAILED {str(e)[-2000:]}", file=sys.stderr, flush=True)
        continue
      if compare(f"{kind} {n}: {what}", diverging if kind == "rollback, then kill" else expected,
                 workdir):
        faulted[kind, "survived"] += 1
      aside[kind] += set_aside(workdir)
  if args.faults:
    print(
        markdown_table(
            ["fault", "tried", "survived bit for bit", "steps set aside"],
            [[kind, str(args.faults),
              str(faulted[kind, "survived"]),
              str(aside[kind])] for kind in FAULTS]))
  print(f"\n{sum(aside.values())} steps set aside in all; {time.perf_counter() - began:.0f} s "
        f"(seed {args.seed})")
  shutil.rmtree(root)


def compare(what: str, expected: dict, workdir: Path) -> bool:
  """Whether the finished run in `workdir` ended as `expected`; says so on stderr."""
  differences = run_outcome.differences(expected, run_outcome.outcome(workdir))
  print(
      f"{what}: {'same outcome' if not differences else f'DIFFERS at {differences[:5]}'}"
      f"{f', {set_aside(workdir)} steps set aside' if set_aside(workdir) else ''}", file=sys.stderr,
      flush=True)
  return not differences


if __name__ == "__main__":
  main()
