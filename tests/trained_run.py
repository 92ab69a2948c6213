"""A tiny two-stage training run (1-expert pretrain, 4-expert MoE) shared by the tool tests.

`trained_run(tmp_path_factory)` trains it once per test session (cached by path) in ~tens of
seconds on CPU; the run directory has the layout `linearsr train` writes (train/loop.py).
"""

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
  """Path of the run directory (trained on first use)."""
  if "run" not in _RUNS:
    from linearsr_jax.train import loop
    path = tmp_path_factory.mktemp("tiny_run")
    loop.run(tiny_run_config(), path)
    _RUNS["run"] = path
  return _RUNS["run"]
