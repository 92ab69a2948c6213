"""`linearsr train` runs as subprocesses of the tests: a small config, its command line, and
waiting for it (a real SIGKILL and a real second process need a real process)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from linearsr_jax import storage
from linearsr_jax.run import kill_points
from linearsr_jax.configs import tiny
from repo_paths import REPO

MAX_STEPS = 12
# A model and data small enough that a whole CLI run takes well under a minute on 2 cores.
SMALL = dict(
    model=dict(depth=1, hidden=64, heads=2, cross_heads=2, scan_layers=False),
    data=dict(crop_size=32, batch_size=4, eval=dict(crop_size=64)),
    # A heartbeat 4 times a second: a run SIGKILLed here is taken over (run_lock.py's
    # same-host shortcut) as soon as its resume starts, not 60 s after.
    train=dict(eval_every=3, eval_steps=1, log_every=1, lock_heartbeat_seconds=0.25),
    stages=dict(pretrain=dict(max_steps=MAX_STEPS)),
    stage_order="pretrain")


def flatten(tree, prefix=""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from flatten(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def small_config(**extra):
  config = tiny.get_config()
  config.update_from_flattened_dict(dict(flatten(SMALL)) | extra)
  return config


def cli_env(**extra):
  """The CLI runs' environment: one CPU device, and the session's compilation cache
  (conftest.py), so that the runs after the first reuse its executables."""
  # One CPU device, like a plain user's machine.
  return dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=xla_flags(),
              **extra)


def xla_flags(devices: int = 1) -> str:
  """XLA_FLAGS for a training process of its own with `devices` CPU devices, XLA:CPU's code
  generation without LLVM's optimisations: these runs compile small programs that run a few
  times (a tiny two-stage run on 8 devices: 82 s of CPU with them, 61 s without). Not for this
  process: libtpu and XLA:GPU read the flag too, and the TPU / GPU compile tests here must
  compile the programs users get (a TPU report took 3 times as long with it)."""
  return " ".join(["--xla_backend_optimization_level=0"] +
                  [f"--xla_force_host_platform_device_count={devices}"] * (devices > 1))


def train_command(workdir, *overrides, tree=SMALL):
  return [
      sys.executable, "-m", "linearsr_jax.commands.cli", "train", "--config", "configs/tiny.py",
      "--workdir",
      str(workdir), *(f"--config.{k}={v}" for k, v in flatten(tree)), *overrides
  ]


def start(command, log_path, env):
  return subprocess.Popen(command, cwd=REPO, env=env, stdout=open(log_path, "w"),
                          stderr=subprocess.STDOUT, start_new_session=True)


def wait_ok(proc, log_path, timeout=240):
  assert proc.wait(timeout) == 0, Path(log_path).read_text()[-3000:]


def straight_killed_resumed(logs, tree, kills, env, *, workdirs=None, after_kill=None, pause=0.0,
                            timeout=240):
  """Trains `tree` into one workdir uninterrupted, and into another SIGKILLed at each kill point
  of `kills` in turn (kill_points.py; `after_kill(point)` then runs) and resumed to its end
  `pause` s after the last kill; returns (straight, killed). The workdirs: `workdirs` (a
  bucket's, say), or logs/straight and logs/killed; each process's log is in `logs`."""
  straight, killed = workdirs or (logs / "straight", logs / "killed")
  wait_ok(start(train_command(straight, tree=tree), logs / "straight.log", env),
          logs / "straight.log", timeout)
  for n, point in enumerate(kills):
    log = logs / f"killed{n}.log"
    process = start(train_command(killed, tree=tree), log, dict(env, **{kill_points.ENV: point}))
    assert process.wait(timeout) == -signal.SIGKILL, f"{point}:\n{log.read_text()[-2000:]}"
    if after_kill is not None:
      after_kill(point)
  time.sleep(pause)
  wait_ok(start(train_command(killed, tree=tree), logs / "resumed.log", env), logs / "resumed.log",
          timeout)
  return straight, killed


def checkpoint_steps(workdir, stage="pretrain"):
  directory = storage.path(workdir) / stage / "checkpoints"
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
