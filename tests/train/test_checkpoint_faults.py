"""Issue 29: only real damage sets a checkpoint aside. A storage error during a restore is
retried, then is one line with the checkpoints left as they were; the data iterator is restored
after the state is verified, and one saved with another data.num_workers is repositioned at the
same batch; a step without checksums among steps that have them is damage. A stage with no
checkpoint left but work on record starts over only when the user names it."""

import logging
import sys
from pathlib import Path

import grain
import numpy as np
import pytest

from linearsr_jax import storage_errors
from linearsr_jax.data import pipeline, sources
from linearsr_jax.errors import UserError
from linearsr_jax.run import run_dir
from linearsr_jax.train import loop
from linearsr_jax.train.checkpoint import StageCheckpoints
from train_runs import small_config

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from test_damaged_checkpoints import _abstract, _saved, _state  # noqa: E402
from test_pipeline import assert_same, take, tokenize  # noqa: E402


def _tree(directory):
  return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def _failing_reads(monkeypatch, ckpts, failures: int, error):
  """Orbax's restore fails the first `failures` times as TensorStore reports a dropped GCS
  connection (a bare Exception around its ValueError), then reads."""
  real, calls = ckpts.manager.restore, []

  def restore(*args, **kwargs):
    calls.append(args)
    if len(calls) <= failures:
      try:
        raise error
      except Exception as e:
        raise Exception("Encountered error while reading array index") from e
    return real(*args, **kwargs)

  monkeypatch.setattr(ckpts.manager, "restore", restore)
  monkeypatch.setattr(storage_errors, "FIRST_WAIT_S", 0.01)
  monkeypatch.setattr(storage_errors, "ATTEMPTS", 3)
  return calls


UNAVAILABLE = ValueError('UNAVAILABLE: Error reading "params.w/0.0" in OCDBT database at '
                         'gs://runs/x/checkpoints/2/state/: CURL error Couldn\'t connect')
STORAGE_ERRORS = [
    UNAVAILABLE,
    ValueError("ABORTED: All 32 retry attempts failed"),
    ConnectionResetError(104, "Connection reset by peer"),
    TimeoutError("timed out"),
    OSError(5, "Input/output error")
]


@pytest.mark.parametrize("error", STORAGE_ERRORS, ids=lambda e: str(e).split(":")[0][:20])
def test_a_storage_error_during_a_restore_is_retried_and_sets_nothing_aside(
    tmp_path, monkeypatch, error, caplog):
  directory = tmp_path / "checkpoints"
  ckpts = _saved(directory)
  calls = _failing_reads(monkeypatch, ckpts, failures=2, error=error)
  with caplog.at_level(logging.WARNING):
    step, state, _ = ckpts.restore_intact(ckpts.all_steps()[::-1], _abstract(_state(0)))
  ckpts.close()
  assert step == 2 and len(calls) == 3
  np.testing.assert_array_equal(state["params"]["w"], _state(2)["params"]["w"])
  assert "storage error" in caplog.text and "damaged" not in caplog.text
  assert not (tmp_path / "damaged_checkpoints").exists()


def test_a_storage_error_that_lasts_is_one_line_and_changes_nothing(tmp_path, monkeypatch):
  directory = tmp_path / "checkpoints"
  _saved(directory).close()
  before = _tree(tmp_path)
  ckpts = StageCheckpoints(directory, keep_latest=3, best_metric="val/psnr_y", best_mode="max",
                           async_save=False)
  _failing_reads(monkeypatch, ckpts, failures=99, error=UNAVAILABLE)
  with pytest.raises(UserError) as error:
    ckpts.restore_intact(ckpts.all_steps()[::-1], _abstract(_state(0)))
  message = str(error.value)
  assert "\n" not in message and f"checkpoint {directory}/2" in message, message
  assert "UNAVAILABLE: Error reading" in message and "3 tries" in message, message
  assert _tree(tmp_path) == before


def test_a_save_the_storage_refuses_is_one_line_and_leaves_the_saved_steps(tmp_path, monkeypatch):
  """The run stops there (bench/chaos.py's write error: resumed, it ends as if never stopped)."""
  directory = tmp_path / "checkpoints"
  ckpts = _saved(directory)
  before = _tree(tmp_path)

  def refused(*args, **kwargs):
    try:
      raise UNAVAILABLE
    except Exception as e:
      raise Exception("Encountered error while writing array") from e

  monkeypatch.setattr(ckpts.manager, "save", refused)
  data_iter = iter(grain.MapDataset.range(8).to_iter_dataset())
  with pytest.raises(UserError) as error:
    ckpts.save(3, _state(3), data_iter, {"val/psnr_y": 3.0})
  ckpts.close()
  message = str(error.value)
  assert "\n" not in message and f"checkpoint 3 in {directory}" in message, message
  assert "UNAVAILABLE: Error reading" in message, message
  assert _tree(tmp_path) == before


def test_a_step_without_checksums_among_steps_with_them_is_damaged(tmp_path, caplog):
  directory = tmp_path / "checkpoints"
  _saved(directory).close()
  (directory / "2" / "checksums").rename(tmp_path / "lost_checksums")
  ckpts = StageCheckpoints(directory, keep_latest=3, best_metric="val/psnr_y", best_mode="max",
                           async_save=False)
  with caplog.at_level(logging.WARNING):
    step, state, _ = ckpts.restore_intact(ckpts.all_steps()[::-1], _abstract(_state(0)))
  ckpts.close()
  assert step == 1
  np.testing.assert_array_equal(state["params"]["w"], _state(1)["params"]["w"])
  assert "checkpoint 2 is damaged: its checksums are missing" in caplog.text
  assert (tmp_path / "damaged_checkpoints" / "2").is_dir()


@pytest.fixture(scope="module")
def demo():
  return sources.DemoSource("train")


def _data_config(num_workers):
  cfg = pipeline.default_config()
  cfg.crop_size, cfg.batch_size, cfg.seed, cfg.num_workers = 32, 4, 7, num_workers
  return cfg


@pytest.mark.slow
@pytest.mark.parametrize("saved_with, resumed_with", [(1, 0), (0, 2)])
def test_a_resume_with_another_num_workers_continues_with_the_same_batches(
    tmp_path, demo, saved_with, resumed_with, caplog):
  """The saved iterator had consumed 3 batches; the resumed one, built with another number of
  workers, gives batches 3 and 4 of the stream a single process reads from the start."""
  reference = take(iter(pipeline.make_train_dataset(demo, _data_config(0), tokenize, 0, 1)), 5)
  directory = tmp_path / "checkpoints"
  ckpts = StageCheckpoints(directory, keep_latest=3, best_metric="val/psnr_y", best_mode="max",
                           async_save=False)
  saved = iter(pipeline.make_train_dataset(demo, _data_config(saved_with), tokenize, 0, 1))
  take(saved, 3)
  ckpts.save(3, _state(3), saved, {"val/psnr_y": 3.0})
  ckpts.close()
  ckpts = StageCheckpoints(directory, keep_latest=3, best_metric="val/psnr_y", best_mode="max",
                           async_save=False)
  resumed = iter(pipeline.make_train_dataset(demo, _data_config(resumed_with), tokenize, 0, 1))
  with caplog.at_level(logging.INFO):
    step, state, _ = ckpts.restore_intact([3], _abstract(_state(0)), resumed)
  ckpts.close()
  assert step == 3 and int(state["step"]) == 3
  assert_same(take(resumed, 2), reference[3:])
  assert (f"saved with data.num_workers={saved_with}, this run has {resumed_with}: "
          "repositioned at the same batch (3 consumed)") in caplog.text
  assert not (tmp_path / "damaged_checkpoints").exists()


def test_an_iterator_state_of_another_pipeline_is_one_line_not_damage(tmp_path, demo):
  directory = tmp_path / "checkpoints"
  _saved(directory).close()  # its iterator: a grain MapDataset's, of no shape this pipeline has
  (directory / "2" / "data_iter" / "process_0-of-1.json").write_text('{"parent": {"x": 1}}')
  ckpts = StageCheckpoints(directory, keep_latest=3, best_metric="val/psnr_y", best_mode="max",
                           async_save=False)
  data_iter = iter(pipeline.make_train_dataset(demo, _data_config(0), tokenize, 0, 1))
  with pytest.raises(UserError, match="does not fit this data pipeline .*data.num_workers"):
    ckpts.restore_intact(ckpts.all_steps()[::-1], _abstract(_state(0)), data_iter)
  ckpts.close()
  assert not (tmp_path / "damaged_checkpoints").exists()


@pytest.mark.slow
def test_a_stage_with_work_on_record_but_no_checkpoint_starts_over_only_when_named(tmp_path):
  """Its checkpoints were all set aside (a previous start found them damaged): starting again
  stops in one line saying what exists, instead of training from step 0 over its metrics;
  train.restart_stage=pretrain starts it over, the set-aside steps kept."""
  config = small_config(
      **{"stages.pretrain.max_steps": 2, "train.eval_every": 2, "data.batch_size": 8})
  loop.run(config, tmp_path)
  stage = run_dir.RunDir(tmp_path).stage("pretrain")
  for name in ("result.json", "run.json"):  # as if it had been stopped mid-stage
    (stage.result_json if name == "result.json" else tmp_path / name).unlink()
  stage.damaged_checkpoints.mkdir()
  for step in stage.checkpoint_steps():
    stage.checkpoint(step).rename(stage.damaged_checkpoints / str(step))
  metrics = stage.metrics_jsonl.read_bytes()
  with pytest.raises(UserError) as error:
    loop.run(config, tmp_path)
  message = str(error.value)
  assert "\n" not in message and message.startswith(
      "stage pretrain has no checkpoint to resume from, but set-aside checkpoints in "), message
  assert "evaluations up to step 2" in message, message
  assert message.endswith("pass --config.train.restart_stage=pretrain"), message
  assert stage.metrics_jsonl.read_bytes() == metrics and stage.checkpoint_steps() == []
  config.train.restart_stage = "pretrain"
  loop.run(config, tmp_path)
  assert stage.checkpoint_steps() == [0, 2] and stage.result()["final_step"] == 2
  assert sorted(p.name for p in stage.damaged_checkpoints.iterdir()) == ["0", "2"]
