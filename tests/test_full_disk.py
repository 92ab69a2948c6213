"""Issue 15: a full disk. A small tmpfs (CI runs as root) is filled while a run trains: it
stops with one line naming the path and the bytes it needed, its newest checkpoint and
metrics.jsonl are intact, and once space is freed it resumes and ends as an uninterrupted run.
`upscale` and `eval --out` on a full disk leave no partial output."""

import json
import os
import subprocess

import jax
import numpy as np
import pytest

from linearsr_jax.commands.cli import main
from linearsr_jax.data.image_io import write_image
from linearsr_jax.run import run_dir, state_checksum
from bench import run_outcome
from train_runs import cli_env, start, train_command, wait_ok
from trained_run import trained_run

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def small_disk(tmp_path):
  disk = tmp_path / "disk"
  disk.mkdir()
  subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], check=True)
  yield disk
  subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk, leave: int):
  """Takes all but `leave` bytes of the disk with one file; returns it."""
  filler = disk / "filler"
  with open(filler, "wb") as f:
    os.posix_fallocate(f.fileno(), 0, os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize - leave)
  return filler


def _one_error_line(text: str) -> str:
  lines = [line for line in text.splitlines() if line.startswith("linearsr:")]
  assert len(lines) == 1 and "Traceback" not in text, text[-3000:]
  return lines[0]


def _bytes(directory) -> int:
  return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


@pytest.mark.slow
def test_training_on_a_disk_that_fills_stops_in_one_line_and_resumes(small_disk, tmp_path):
  """The disk is filled to leave room for the run's checkpoints 0 and 3 but not 6: before each
  save the run checks for room for its state's uncompressed bytes (an upper bound of what Orbax
  writes), so it stops before writing step 6, not halfway through."""
  env = cli_env()
  straight, workdir = tmp_path / "straight", small_disk / "run"
  keep_all = "--config.train.keep_latest=10"
  wait_ok(start(train_command(straight, keep_all), tmp_path / "straight.log", env),
          tmp_path / "straight.log")
  saved = straight / "pretrain" / "checkpoints"
  upper_bound = sum(
      x.nbytes for x in jax.tree.leaves(run_outcome.saved_state(saved / "0" / "state")))
  first, second = _bytes(saved / "0"), _bytes(saved / "3")
  assert second < upper_bound
  filler = fill(small_disk, leave=first + upper_bound + second // 2)
  process = start(train_command(workdir, keep_all), tmp_path / "full.log", env)
  assert process.wait(240) == 2
  checkpoints = workdir / "pretrain" / "checkpoints"
  line = _one_error_line((tmp_path / "full.log").read_text())
  assert line.startswith(f"linearsr: error: no space left on the device of {checkpoints} for "
                         f"checkpoint 6: it needs {upper_bound:,} bytes, "), line
  assert line.endswith("are free"), line

  # The newest complete checkpoint reads back as saved; metrics.jsonl has no broken line.
  newest = run_dir.RunDir(workdir).stage("pretrain").checkpoint_steps()[-1]
  saved = json.loads((checkpoints / str(newest) / "checksums" / "metadata").read_text())
  state = run_outcome.saved_state(checkpoints / str(newest) / "state")
  assert state_checksum.mismatches(state, saved) == [] and len(saved) > 10
  rows, unreadable = run_dir.read_jsonl(workdir / "pretrain" / "metrics.jsonl")
  assert unreadable == 0 and rows

  filler.unlink()
  wait_ok(start(train_command(workdir, keep_all), tmp_path / "resumed.log", env),
          tmp_path / "resumed.log")
  assert run_outcome.differences(run_outcome.outcome(straight), run_outcome.outcome(workdir)) == []


def _files(directory):
  return sorted(p.relative_to(directory) for p in directory.rglob("*") if p.is_file())


@pytest.mark.slow
def test_upscale_and_eval_on_a_full_disk_leave_no_partial_output(small_disk, tmp_path_factory,
                                                                 tmp_path, capsys):
  images = tmp_path / "images"
  rng = np.random.default_rng(0)
  for name in ("a", "b"):
    write_image(images / f"{name}.png", rng.uniform(size=(24, 32, 3)))
  fill(small_disk, leave=256)
  out = small_disk / "out"
  code = main([
      "upscale",
      str(images), "--checkpoint",
      str(trained_run(tmp_path_factory)), "--out",
      str(out), "--tile", "16", "--overlap", "4", "--no_progress"
  ])
  stdout, stderr = capsys.readouterr()
  assert code == 1 and "upscaled 0, skipped 0 existing, failed 2" in stdout
  failures = [line for line in stderr.splitlines() if line.startswith("linearsr: failed:")]
  assert len(failures) == 2 and all("no space left on the device of" in f for f in failures)
  assert "a_x4.png" in failures[0] and "b_x4.png" in failures[1], failures
  assert not out.exists() or _files(out) == []

  code = main([
      "eval", "--hr_dir",
      str(images), "--sr_dir",
      str(images), "--out",
      str(small_disk / "scores"), "--metrics", "psnr_y", "--no_progress"
  ])
  line = _one_error_line(capsys.readouterr().err)
  assert code == 2 and "no space left on the device of" in line and "summary.json" in line
  assert not (small_disk / "scores").exists() or _files(small_disk / "scores") == []
