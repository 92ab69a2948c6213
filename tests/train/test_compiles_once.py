"""A stage builds each of its programs once: its evaluations after the first, and its checkpoint
saves, reuse them. On this suite's tiny runs a second build was seconds a stage: the first
evaluation traced outside the loop's mesh context compiled the sampler, the metrics and the
checksums again inside it, and Orbax compiled a slice program per array shape and per device
to split each replicated array's write between its replicas (train/checkpoint.py)."""

import collections
import logging

import jax

from linearsr_jax.run import run_dir
from linearsr_jax.train import loop
from train_runs import small_config


def test_a_stage_builds_its_evaluation_once_and_no_slice_programs_for_its_saves(tmp_path, caplog):
  # On conftest's 8 CPU devices (data 8): every param is replicated 8 times.
  config = small_config(
      **{"stages.pretrain.max_steps": 2, "train.eval_every": 1, "data.batch_size": 8})
  with caplog.at_level(logging.WARNING), jax.log_compiles(True):
    loop.run(config, tmp_path / "run")
  # Logged for every program JAX lowers, whether XLA then compiles it or its cache has it.
  built = collections.Counter(
      r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("Compiling "))
  rows, _ = run_dir.read_jsonl(run_dir.RunDir(tmp_path / "run").stage("pretrain").metrics_jsonl)
  assert [r["step"] for r in rows if "val/psnr_y" in r] == [0, 1, 2]
  assert built["jit(super_resolve)"] == 1, built
  assert built["jit(train_step)"] == 1, built
  assert built["jit(slice)"] == 0, built
