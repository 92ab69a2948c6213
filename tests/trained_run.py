"""A tiny two-stage training run (1-expert pretrain, 4-expert MoE) shared by the tool tests.

`trained_run(tmp_path_factory)` trains it once per test session in ~tens of seconds on CPU;
the run directory has the layout `linearsr train` writes (train/loop.py).
"""

import fcntl
import os

from linearsr_jax.configs import tiny

_RUNS = {}


def tiny_run_config():
  c = tiny.get_config()
  c.model.depth = 1
  c.model.hidden = 64
  c.model.heads = 2
  c.model.cross_heads = 2
  c.model.scan_layers = False
  c.data.crop_size = 32
  c.data.batch_size = 8  # divisible by the 8 test devices
  c.data.eval.crop_size = 64
  c.train.eval_every = 2
  c.train.eval_steps = 1
  c.train.log_every = 2
  c.stages.pretrain.max_steps = 4
  c.stages.moe.max_steps = 2
  c.diffusion.sampler.steps = 2
  return c


def trained_run(tmp_path_factory):
  """Path of the run directory, trained once per test session: the xdist workers share it,
  the first to ask trains it under a file lock and the others wait for it. Tests that change
  a run copy it first."""
  if "run" not in _RUNS:
    from linearsr_jax.train import loop
    base = tmp_path_factory.getbasetemp()
    session = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = session / "tiny_run"
    with open(session / "tiny_run.lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if not (path / "run.json").is_file():
        loop.run(tiny_run_config(), path)
    _RUNS["run"] = path
  return _RUNS["run"]
