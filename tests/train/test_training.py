"""Issue 6's training guarantees: kill and resume bit for bit, the sharded step equals one
device, non-finite steps are skipped and recovered from, clear errors. (The two-process run is
in tests/test_gcs.py: it trains into a bucket, as a pod does.)

The CLI runs are subprocesses (a real SIGKILL, a real second process); the sharded-step and
NaN tests run in this process on conftest's 8 CPU devices.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from linearsr_jax import sharding
from linearsr_jax.configs.base import stage_config
from linearsr_jax.data import pipeline
from linearsr_jax.errors import UserError
from linearsr_jax.models.build import build_model
from linearsr_jax.train import loop
from linearsr_jax.train.state import create_train_state
from bench.run_outcome import saved_state
from linearsr_jax.train.step import make_train_step
from repo_paths import REPO
from train_runs import (MAX_STEPS, checkpoint_steps, cli_env, small_config, start, train_command,
                        wait_ok)


@pytest.fixture(scope="module")
def cached_env(tmp_path_factory):
  return cli_env()


def restored_state(workdir, step, stage="pretrain"):
  """The saved TrainState of a run's checkpoint, as a dict of host arrays."""
  return saved_state(Path(workdir) / stage / "checkpoints" / str(step) / "state")


# ------------------------------------------------------------------------- kill and resume


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory, cached_env):
  """(uninterrupted workdir, killed-and-resumed workdir, step the kill happened after)."""
  root = tmp_path_factory.mktemp("resume")
  straight, killed = root / "straight", root / "killed"
  wait_ok(start(train_command(straight), root / "straight.log", cached_env), root / "straight.log")
  victim = start(train_command(killed), root / "killed.log", cached_env)
  deadline = time.time() + 240
  while not [s for s in checkpoint_steps(killed) if s >= 3]:
    assert victim.poll() is None, (root / "killed.log").read_text()[-3000:]
    assert time.time() < deadline
    time.sleep(0.02)
  os.killpg(victim.pid, signal.SIGKILL)  # the whole process group, as a preemption would
  victim.wait()
  kill_after = max(checkpoint_steps(killed))
  assert kill_after < MAX_STEPS, "the run finished before it could be killed"
  wait_ok(start(train_command(killed), root / "resumed.log", cached_env), root / "resumed.log")
  resumed_log = (root / "resumed.log").read_text()
  assert f"resumed from checkpoint {kill_after}" in resumed_log
  # The killed run's lock was left behind; no process holds its flock any more, so the resumed
  # run took it over (its heartbeat two periods late) and released it at the end.
  assert f"pid {victim.pid}" in resumed_log
  assert "no process on this host holds the lock" in resumed_log
  assert not (killed / "run.lock").exists()
  return straight, killed, kill_after


@pytest.mark.slow
def test_killed_run_resumes_bit_for_bit(resumed_runs):
  straight, killed, kill_after = resumed_runs
  assert MAX_STEPS in checkpoint_steps(straight) and MAX_STEPS in checkpoint_steps(killed)
  a, b = restored_state(straight, MAX_STEPS), restored_state(killed, MAX_STEPS)
  assert int(a["step"]) == MAX_STEPS and int(b["step"]) == MAX_STEPS
  leaves_a, leaves_b = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  for (path, x), (_, y) in zip(leaves_a, leaves_b):  # params, EMA, optimizer, RNG, counters
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
  # Every line (train losses, which depend on the data order and the RNG, and evaluations).
  lines_a = (straight / "pretrain" / "metrics.jsonl").read_text().splitlines()
  lines_b = (killed / "pretrain" / "metrics.jsonl").read_text().splitlines()
  assert len(lines_a) == MAX_STEPS + MAX_STEPS // 3 + 1
  assert lines_a == lines_b, f"killed after checkpoint {kill_after}"


@pytest.mark.slow
def test_a_partial_last_metrics_line_is_dropped_and_the_run_resumes(resumed_runs, cached_env,
                                                                    tmp_path):
  """A kill during an append leaves half a line in metrics.jsonl. The uninterrupted run's
  directory is rolled back to such a state: its last checkpoints gone, the log cut mid-line a
  few steps past the checkpoint kept. The resumed run warns, and its log ends up line for line
  the uninterrupted one's."""
  straight, _, _ = resumed_runs
  cut = tmp_path / "cut"
  shutil.copytree(straight, cut)
  stage = cut / "pretrain"
  keep = [s for s in checkpoint_steps(cut) if s < MAX_STEPS][-1]
  for step in checkpoint_steps(cut):
    if step > keep:
      shutil.rmtree(stage / "checkpoints" / str(step))
  (stage / "result.json").unlink()
  (cut / "run.json").unlink()
  lines = (stage / "metrics.jsonl").read_text().splitlines(keepends=True)
  through = next(i for i, l in enumerate(lines) if json.loads(l)["step"] == keep + 2)
  (stage / "metrics.jsonl").write_text("".join(lines[:through]) + lines[through][:25])
  wait_ok(start(train_command(cut), tmp_path / "resumed.log", cached_env), tmp_path / "resumed.log")
  log_text = (tmp_path / "resumed.log").read_text()
  assert f"resumed from checkpoint {keep}" in log_text
  assert "dropped a partial last line" in log_text
  assert (stage / "metrics.jsonl").read_text() == (straight / "pretrain" /
                                                   "metrics.jsonl").read_text()


@pytest.mark.slow
def test_checkpoint_of_another_model_is_a_clear_error(resumed_runs, cached_env):
  straight, _, _ = resumed_runs
  result = subprocess.run(train_command(straight, "--config.model.hidden=32"), cwd=REPO,
                          env=cached_env, capture_output=True, text=True, timeout=240)
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("linearsr: error:")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert "does not match" in errors[0] and "params/dit/" in errors[0], errors[0]
  assert "(1, 64, 64) in the checkpoint but (1, 32, 32) in this model" in errors[0], errors[0]


# ------------------------------------------------------------------------------ clear errors


@pytest.mark.slow
@pytest.mark.parametrize("args, expected", [
    (["--config", "configs/tiny.py", "--config.model.nope=1"], "model.nope"),
    (["--config", "configs/no_such_config.py"], "no_such_config.py"),
])
def test_bad_config_is_one_line_and_exit_2(tmp_path, args, expected):
  command = [
      sys.executable, "-m", "linearsr_jax.commands.cli", "train", "--workdir",
      str(tmp_path / "w"), *args
  ]
  result = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("linearsr: error:")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert expected in errors[0], errors[0]
  assert not (tmp_path / "w").exists()  # nothing was started


# ------------------------------------------------------------------- sharded step vs one device


def _model_and_step(config, tx):
  model, latent_space = build_model(config)
  step = make_train_step(model, latent_space, tx, config.diffusion, scale=config.data.scale,
                         cond_dropout=config.tags.dropout_prob, ema_decay=0.9)
  return model, step


def _random_batch(config, batch_size, seed=0):
  rng = np.random.default_rng(seed)
  crop, scale, tokens = config.data.crop_size, config.data.scale, config.tags.max_tokens
  return {
      "hr": rng.uniform(-1, 1, (batch_size, crop, crop, 3)).astype(np.float32),
      "lr": rng.uniform(-1, 1, (batch_size, crop // scale, crop // scale, 3)).astype(np.float32),
      "cond": rng.integers(1, config.tags.vocab_size, (batch_size, tokens),
                           np.int32), "cond_mask": rng.uniform(size=(batch_size, tokens)) < 0.6
  }


def one_step(config, mesh_shape, devices, num_experts, tx, batch):
  """(loss, params after one step on the host, state shardings) on the given mesh."""
  mesh = sharding.make_mesh(mesh_shape, devices=devices)
  rules = [tuple(r) for r in config.sharding_rules]
  model, step = _model_and_step(config, tx)
  state, shardings = create_train_state(model, tx, num_experts, jax.random.PRNGKey(3), mesh, rules)
  step_fn = jax.jit(step, in_shardings=(shardings, sharding.batch_sharding(mesh), {}),
                    out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  with jax.set_mesh(mesh):
    state, metrics = step_fn(state, pipeline.make_global_batch(batch, mesh), {})
  return float(metrics["train/loss"]), jax.device_get(state.params), shardings


@pytest.mark.slow
def test_sharded_step_equals_one_device():
  """4 experts on one device vs (data 2 × fsdp 2 × tensor 2) and (expert 4 × data 2)."""
  config = small_config(**{"tags.dropout_prob": 0.5})
  # Plain SGD: the update is the gradient itself, so a gradient that differs shows up in the
  # params (Adam's first step, g/|g|, would hide its size).
  tx = optax.sgd(0.5)
  batch = _random_batch(config, 8)
  loss_1, params_1, _ = one_step(config, {"data": 1}, jax.devices()[:1], 4, tx, batch)
  assert jax.tree.leaves(params_1)[0].shape[0] == 4
  for mesh_shape, sharded_axes in [({"data": 2, "fsdp": 2, "tensor": 2}, {"fsdp", "tensor"}),
                                   ({"expert": 4, "data": 2}, {"expert"})]:
    loss_8, params_8, shardings = one_step(config, mesh_shape, jax.devices(), 4, tx, batch)
    used = {
        axis for s in jax.tree.leaves(shardings.params) for entry in s.spec if entry
        for axis in (entry if isinstance(entry, tuple) else (entry,))
    }
    assert sharded_axes <= used, (mesh_shape, used)
    np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5)
    for (path, a), b in zip(jax.tree.leaves_with_path(params_1), jax.tree.leaves(params_8)):
      np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6,
                                 err_msg=f"{mesh_shape} {jax.tree_util.keystr(path)}")


# ------------------------------------------------------------------------- non-finite steps


@pytest.mark.slow
def test_nan_batch_is_skipped_and_counted():
  config = small_config()
  tx = optax.adamw(1e-3)
  mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  model, step = _model_and_step(config, tx)
  state, shardings = create_train_state(model, tx, 1, jax.random.PRNGKey(0), mesh,
                                        [tuple(r) for r in config.sharding_rules])
  step_fn = jax.jit(step)
  good = _random_batch(config, 2)
  bad = dict(good, hr=good["hr"].copy())
  bad["hr"][1, 5, 7, 0] = np.nan
  before = jax.device_get(state.params)
  with jax.set_mesh(mesh):
    for expected_skips in (1, 2):
      state, metrics = step_fn(state, bad, {})
      assert int(state.skipped) == expected_skips
      assert int(state.consecutive_skips) == expected_skips
      assert not bool(metrics["train/finite"])
      jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), before)
      jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.ema_params), before)
    state, metrics = step_fn(state, good, {})
  assert bool(metrics["train/finite"]) and np.isfinite(float(metrics["train/loss"]))
  assert int(state.step) == 3 and int(state.skipped) == 2 and int(state.consecutive_skips) == 0
  after = jax.device_get(state.params)
  changed = [
      not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before))
  ]
  assert sum(changed) > len(changed) // 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(after))


def poison_batches(monkeypatch, poisoned_calls) -> list:
  """Makes the global batches of the given calls (counted from 1) NaN; returns the list of
  calls made, which grows as the loop draws batches."""
  real = pipeline.make_global_batch
  calls = []

  def poisoned(local_batch, mesh, *args, **kwargs):
    calls.append(len(calls) + 1)
    if len(calls) in poisoned_calls:
      local_batch = dict(local_batch, hr=np.full_like(local_batch["hr"], np.nan))
    return real(local_batch, mesh, *args, **kwargs)

  monkeypatch.setattr(loop.pipeline, "make_global_batch", poisoned)
  return calls


@pytest.mark.slow
def test_loop_restores_last_checkpoint_after_consecutive_skips(tmp_path, monkeypatch, caplog):
  """Batches 5 and 6 carry a NaN; with max_consecutive_skips=2 the loop must restore
  checkpoint 3 (state and data iterator) and then finish the stage with finite params."""
  config = small_config(
      **{"train.max_consecutive_skips": 2, "stages.pretrain.max_steps": 7, "data.batch_size": 8})
  calls = poison_batches(monkeypatch, (5, 6))
  with caplog.at_level(logging.WARNING, logger=loop.__name__):
    loop.run(config, tmp_path)
  assert "2 consecutive non-finite steps at step 6; restoring checkpoint 3" in caplog.text
  rows = [json.loads(l) for l in (tmp_path / "pretrain" / "metrics.jsonl").read_text().splitlines()]
  train_rows = [
      (r["step"], r["train/finite"], r["train/skipped"]) for r in rows if "train/loss" in r
  ]
  # 1..6 as trained (5, 6 skipped and counted), then 4..7 again from checkpoint 3.
  assert train_rows == [(1, 1, 0), (2, 1, 0), (3, 1, 0), (4, 1, 0), (5, 0, 1), (6, 0, 2), (4, 1, 0),
                        (5, 1, 0), (6, 1, 0), (7, 1, 0)]
  assert len(calls) == 10
  final = restored_state(tmp_path, 7)
  assert int(final["step"]) == 7 and int(final["skipped"]) == 0
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(final["params"]))


@pytest.mark.slow
def test_restores_after_non_finite_steps_are_bounded(tmp_path, monkeypatch):
  """Steps 5 and 6 are non-finite however often checkpoint 3 is restored (the first two
  restores replay them): the second replay ends in one line instead of a third restore."""
  config = small_config(
      **{"train.max_consecutive_skips": 2, "stages.pretrain.max_steps": 7, "data.batch_size": 8})
  calls = poison_batches(monkeypatch, (5, 6, 8, 9, 11, 12))  # steps 5 and 6 each time
  with pytest.raises(
      UserError, match=r"^stage pretrain: 2 consecutive non-finite steps at step "
      r"6, again after restoring checkpoint 3 2 times"):
    loop.run(config, tmp_path)
  assert len(calls) == 12


@pytest.mark.slow
def test_a_stage_that_runs_out_of_budget_branches_near_its_peak(tmp_path, monkeypatch):
  """Validation scores scripted to peak at step 6 and fall to the budget's end (14), with ESGF
  off for the stage: the next stage must start from the peak region's checkpoint, not the
  last one, and run.json must say which and why."""
  config = small_config(
      **{
          "stages.pretrain.max_steps": 14, "stages.pretrain.esgf": False, "train.eval_every": 1,
          "train.log_every": 7, "data.batch_size": 8
      })
  real, evaluations = loop.Validator.__call__, []

  def scripted(self, params):
    val, sr = real(self, params)
    i = len(evaluations)  # = the step: one evaluation per step from 0
    evaluations.append(i)
    psnr = 22 + 2 * (1 - np.exp(-i / 3)) - 0.12 * max(0, i - 6)
    return dict(val, **{"val/psnr_y": psnr, "val/lpips_alex": 0.5 - 0.05 * (psnr - 22)}), sr

  monkeypatch.setattr(loop.Validator, "__call__", scripted)
  loop.run(config, tmp_path)
  stage = json.loads((tmp_path / "run.json").read_text())["stages"][0]
  assert not stage["fired"] and 3 <= stage["knee_step"] <= 8, stage
  # ESGF off for the stage: it never fires, but both curves confirm the knee it branches from.
  assert f"branching from step {stage['knee_step']}, the knee a metric confirmed" in stage["reason"]
  assert (tmp_path / "pretrain" / "checkpoints" / str(stage["knee_step"])).is_dir()
  assert json.loads((tmp_path / "pretrain" / "result.json").read_text())["final_step"] == 14


@pytest.mark.slow
@pytest.mark.parametrize("trigger", ["loss", "psnr"])
def test_divergence_after_a_branch_rolls_back_to_it_with_a_lower_lr(tmp_path, caplog, trigger):
  """A fine-tuning stage with a learning rate of 1 diverges at once. The guard must roll back
  to the branch point (the pretrain knee) with half the learning rate: on the logged training
  loss, or, with that check off, on the validation PSNR. Each rollback restores the branch
  params, so the loss right after it is back to its scale before the explosion."""
  config = small_config(
      **{
          "stages.pretrain.max_steps": 3, "stages.pretrain.esgf": False, "data.batch_size": 8,
          "train.guard.max_rollbacks": 1
      })
  config.stage_order = "pretrain,finetune"
  config.stages.finetune = stage_config(1, 6, esgf=False, learning_rate=1.0, warmup_steps=0)
  if trigger == "psnr":
    config.train.guard.loss_factor = float("inf")
  with caplog.at_level(logging.WARNING, logger="linearsr_jax.train"):
    loop.run(config, tmp_path)
  expected = {
      "loss": "stage finetune step 2: training loss exploded to",
      "psnr": "stage finetune step 3: validation PSNR collapsed to"
  }[trigger]
  assert expected in caplog.text and caplog.text.count("rolling back to the branch point") == 1
  rows = [json.loads(l) for l in (tmp_path / "finetune" / "metrics.jsonl").read_text().splitlines()]
  loss = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
  rolled_back_at = 2 if trigger == "loss" else 3
  assert loss[2] > 10 * loss[1]  # it did explode
  assert loss[rolled_back_at + 1] < 10 * loss[1]  # the branch params are back
  lr_scale = {r["step"]: r["train/lr_scale"] for r in rows if "train/lr_scale" in r}
  assert lr_scale[0] == 1.0 and lr_scale[6] == 0.5
  # Recorded and checkpointed at once: a kill now resumes from the branch point, not the
  # collapsed state.
  assert [(r["step"], r["guard/trigger"]) for r in rows if "guard/rollbacks" in r
         ] == [(rolled_back_at, {"loss": "train/loss", "psnr": "val/psnr_y"}[trigger])]
  saved = restored_state(tmp_path, rolled_back_at, stage="finetune")
  assert float(saved["lr_scale"]) == 0.5 and int(saved["step"]) == rolled_back_at
  assert json.loads(
      (tmp_path / "finetune" / "stage.json").read_text())["init_from"]["knee_step"] == 3
  # TensorBoard got the curves, the LR / bicubic / SR / HR grid and the knee plot
  assert {"train/loss", "val/psnr_y", "val/lr_bicubic_sr_hr",
          "esgf/knee_plot"} <= (tensorboard_tags(tmp_path / "finetune"))


def tensorboard_tags(directory) -> set:
  import tensorflow as tf

  return {
      value.tag
      for path in Path(directory).glob("events.*")
      for event in tf.compat.v1.train.summary_iterator(str(path))
      for value in event.summary.value
  }


@pytest.mark.slow
def test_relative_workdir_trains(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # Orbax wants absolute checkpoint paths; users type relative ones
  loop.run(small_config(**{"data.batch_size": 8, "stages.pretrain.max_steps": 1}), "runs/rel")
  assert checkpoint_steps(tmp_path / "runs" / "rel") == [0, 1]


def test_batch_that_does_not_split_over_the_mesh_is_a_clear_error(tmp_path):
  with pytest.raises(UserError, match=r"data.batch_size=4 does not split over the mesh's 8 "):
    loop.run(small_config(), tmp_path)  # conftest's 8 devices, batch 4


# ---------------------------------------------------------------------- two processes, gloo
