"""Issue 15: a damaged checkpoint is never loaded silently. Restore falls back to the newest
intact one with a warning naming the damaged step and its damage; none intact is one line; a
damaged knee is replaced by the nearest intact checkpoint, and run.json says so; the tools
refuse a damaged checkpoint."""

import logging
import shutil
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linearsr_jax.errors import UserError
from linearsr_jax.run import run_dir, state_checksum
from linearsr_jax.train import loop
from linearsr_jax.train.checkpoint import StageCheckpoints
from damage import (empty_step_dir, flip_bytes, flip_bytes_throughout, remove_metadata,
                    truncate_array_file)
from trained_run import trained_run
from train_runs import cli_env, small_config

STEPS = (0, 1, 2)

DAMAGE = [truncate_array_file, remove_metadata, flip_bytes, empty_step_dir]


def _state(step):
  rng = np.random.default_rng(step)
  return {
      "params": {"w": jnp.asarray(rng.normal(size=(64, 64)), jnp.float32)}, "step": jnp.int32(step)
  }


def _abstract(state):
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), state)


def _saved(directory):
  ckpts = StageCheckpoints(directory, keep_latest=len(STEPS), best_metric="val/psnr_y",
                           best_mode="max", async_save=False)
  data_iter = iter(grain.MapDataset.range(8).to_iter_dataset())
  for step in STEPS:
    ckpts.save(step, _state(step), data_iter, {"val/psnr_y": float(step)})
  ckpts.close()
  return StageCheckpoints(directory, keep_latest=len(STEPS), best_metric="val/psnr_y",
                          best_mode="max", async_save=False)


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_restore_falls_back_to_the_newest_intact_checkpoint(tmp_path, damage, caplog):
  directory = tmp_path / "checkpoints"
  _saved(directory).close()
  damage(directory / "2")
  ckpts = StageCheckpoints(directory, keep_latest=len(STEPS), best_metric="val/psnr_y",
                           best_mode="max", async_save=False)
  with caplog.at_level(logging.WARNING):
    step, state, _ = ckpts.restore_intact(ckpts.all_steps()[::-1], _abstract(_state(0)))
  assert step == 1
  np.testing.assert_array_equal(state["params"]["w"], _state(1)["params"]["w"])
  warning = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
  assert warning and warning[0].startswith("checkpoint 2 is damaged: "), warning
  # Set aside, not deleted, and out of the way of the resumed run's own save of step 2.
  assert (tmp_path / "damaged_checkpoints" / "2").is_dir()
  ckpts.save(2, _state(2), iter(grain.MapDataset.range(8).to_iter_dataset()), {"val/psnr_y": 2.0})
  assert ckpts.restore(2, _abstract(_state(0)))[0]["step"] == 2
  ckpts.close()


def test_a_checkpoint_from_before_checksums_is_read_with_a_warning(tmp_path, caplog):
  """Checkpoints written by a version without checksums (no `checksums` item) are a user's run
  resumed after an upgrade, not damage: the latest is restored, unverified, and says so."""
  directory = tmp_path / "checkpoints"
  _saved(directory).close()
  for step in STEPS:
    shutil.rmtree(directory / str(step) / "checksums")
  ckpts = StageCheckpoints(directory, keep_latest=len(STEPS), best_metric="val/psnr_y",
                           best_mode="max", async_save=False)
  with caplog.at_level(logging.WARNING):
    step, state, metrics = ckpts.restore_intact(ckpts.all_steps()[::-1], _abstract(_state(0)))
  ckpts.close()
  assert step == 2 and metrics == {"val/psnr_y": 2.0}
  np.testing.assert_array_equal(state["params"]["w"], _state(2)["params"]["w"])
  assert "checkpoint 2 has no checksums" in caplog.text and "damaged" not in caplog.text
  assert not (tmp_path / "damaged_checkpoints").exists()


def test_no_intact_checkpoint_is_one_line(tmp_path):
  directory = tmp_path / "checkpoints"
  _saved(directory).close()
  for step, damage in zip(STEPS, DAMAGE):
    damage(directory / str(step))
  ckpts = StageCheckpoints(directory, keep_latest=3, best_metric="val/psnr_y", best_mode="max")
  with pytest.raises(UserError, match="no intact checkpoint in .*checkpoints") as error:
    ckpts.restore_intact(ckpts.all_steps()[::-1], _abstract(_state(0)))
  assert "\n" not in str(error.value) and "2: " in str(error.value)


def test_a_flipped_bit_changes_the_checksum():
  """The checksum the restore compares notices any single flipped bit: it is Σ wordᵢ·(2i + 1)
  mod 2³² (a float64 NumPy reference here), whatever the sharding of the array."""
  x = np.random.default_rng(0).normal(size=(33, 7)).astype(np.float32)
  words = x.view(np.uint32).astype(np.uint64).ravel()
  reference = int((words * (2 * np.arange(words.size, dtype=np.uint64) + 1)).sum() % 2**32)
  mesh = jax.make_mesh((len(jax.devices()),), ("d",))
  sharded = jax.device_put(
      np.pad(x, ((0, 7), (0, 0)))[:33], jax.sharding.NamedSharding(mesh, jax.P()))
  assert state_checksum.checksums({"x": x}) == {"x": reference}
  assert state_checksum.checksums({"x": sharded}) == {"x": reference}
  for bit in (0, 13, 31):
    flipped = x.copy().view(np.uint32)
    flipped.ravel()[100] ^= np.uint32(1 << bit)
    assert state_checksum.mismatches({"x": flipped.view(np.float32)}, {"x": reference}) == ["x"]


@pytest.mark.slow
def test_a_damaged_knee_is_replaced_by_the_nearest_intact_checkpoint(tmp_path):
  """A finished stage whose knee checkpoint is then damaged: the run, started again, takes the
  nearest intact checkpoint instead (the earlier of two as near), and result.json and run.json
  say so. (Resuming past a damaged latest checkpoint: test_kills.py.)"""
  config = small_config(
      **{"stages.pretrain.max_steps": 4, "train.eval_every": 2, "data.batch_size": 8})
  loop.run(config, tmp_path)
  stage = run_dir.RunDir(tmp_path).stage("pretrain")
  assert stage.checkpoint_steps() == [0, 2, 4]
  run_dir.write_json(stage.result_json, dict(stage.result(), knee_step=2))
  flip_bytes(stage.checkpoint(2))
  loop.run(config, tmp_path)
  result, entry = stage.result(), run_dir.read_json(tmp_path / "run.json")["stages"][0]
  assert result["knee_step"] == entry["knee_step"] == 0
  assert "its checkpoint 2 was damaged, so the nearest intact one, 0, was used" in entry["reason"]
  assert [p.name for p in (stage.path / "damaged_checkpoints").iterdir()] == ["2"]


@pytest.mark.slow
def test_tools_refuse_a_damaged_checkpoint(tmp_path_factory, tmp_path):
  """In a process of its own, so that the whole of its stderr is seen: Orbax's abandoned
  sibling reads report into a closed event loop after the error line, even at exit."""
  run = tmp_path / "run"
  shutil.copytree(trained_run(tmp_path_factory), run)
  stage = run_dir.RunDir(run).stage("moe")
  step = stage.result()["knee_step"]
  # The step directory the tools read the knee's EMA params from: its knee snapshot.
  read = stage.ema_params_dir(step).relative_to(run)
  assert read.parts[1] == "knee_snapshots"
  flip_bytes_throughout(run / read)
  done = subprocess.run([
      sys.executable, "-m", "linearsr_jax.commands.cli", "export",
      str(run), "--out",
      str(tmp_path / "out")
  ], env=cli_env(), capture_output=True, text=True)
  assert done.returncode == 2, done.stderr
  error = done.stderr.strip().splitlines()
  assert len(error) == 1 and str(step) in error[0] and ("damaged checkpoint" in error[0] or
                                                        "unreadable checkpoint" in error[0]), error
  assert not (tmp_path / "out").exists()
  # Without checksums (a checkpoint from before them), the tools read it and warn.
  shutil.rmtree(run / read)
  shutil.copytree(trained_run(tmp_path_factory) / read, run / read)
  shutil.rmtree(run / read / "checksums")
  done = subprocess.run([
      sys.executable, "-m", "linearsr_jax.commands.cli", "export",
      str(run), "--out",
      str(tmp_path / "out")
  ], env=cli_env(), capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  assert "has no checksums" in done.stderr and (tmp_path / "out").is_dir()
