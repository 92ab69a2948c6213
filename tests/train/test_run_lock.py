"""One `linearsr train` per workdir: a live holder refuses a second run with one line, a dead
one's lock is taken over with a warning, and the readers never need the lock."""

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from linearsr_jax.cli import main
from linearsr_jax.errors import UserError
from linearsr_jax.train import run_lock
from trained_run import tiny_run_config, trained_run


@pytest.fixture
def live_pid():
  proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  yield proc.pid
  proc.kill()
  proc.wait()


def dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def write_lock(workdir, host, pid, age_seconds=0.0):
  path = workdir / run_lock.LOCK_NAME
  path.write_text(json.dumps({"host": host, "pid": pid, "since": "2026-11-30T01:00:00+00:00",
                              "token": "other"}))
  stamp = time.time() - age_seconds
  os.utime(path, (stamp, stamp))
  return path


def test_a_live_holder_on_this_host_refuses_naming_it(tmp_path, live_pid):
  path = write_lock(tmp_path, socket.gethostname(), live_pid)
  before = path.read_bytes()
  with pytest.raises(UserError, match=rf"in use by another linearsr train: host "
                     rf"{socket.gethostname()}, pid {live_pid}, since 2026-11-30T01:00:00"):
    run_lock.RunLock(tmp_path).acquire()
  assert path.read_bytes() == before


@pytest.mark.parametrize("host, age, taken", [
    ("this host", 0.0, True),             # its pid is dead
    ("elsewhere", 0.0, False),            # a fresh heartbeat from another host
    ("elsewhere", 11 * 60.0, True),       # a heartbeat stopped 11 minutes ago
])
def test_a_dead_holders_lock_is_taken_over_with_a_warning(tmp_path, caplog, host, age, taken):
  host = socket.gethostname() if host == "this host" else host
  write_lock(tmp_path, host, dead_pid(), age)
  lock = run_lock.RunLock(tmp_path)
  if not taken:
    with pytest.raises(UserError, match="host elsewhere"):
      lock.acquire()
    return
  with caplog.at_level(logging.WARNING, logger=run_lock.__name__):
    lock.acquire()
  assert f"taking over {tmp_path / run_lock.LOCK_NAME} from host {host}" in caplog.text
  held = json.loads((tmp_path / run_lock.LOCK_NAME).read_text())
  assert (held["host"], held["pid"]) == (socket.gethostname(), os.getpid())
  lock.release()
  assert not (tmp_path / run_lock.LOCK_NAME).exists()


def test_release_leaves_a_lock_another_run_took_over(tmp_path, live_pid):
  lock = run_lock.RunLock(tmp_path).acquire()
  write_lock(tmp_path, socket.gethostname(), live_pid)  # taken over meanwhile
  lock.release()
  assert json.loads((tmp_path / run_lock.LOCK_NAME).read_text())["pid"] == live_pid


def test_the_heartbeat_keeps_the_lock_fresh(tmp_path, monkeypatch):
  monkeypatch.setattr(run_lock, "HEARTBEAT_SECONDS", 0.05)
  lock = run_lock.RunLock(tmp_path).acquire()
  path = tmp_path / run_lock.LOCK_NAME
  os.utime(path, (time.time() - 3600, time.time() - 3600))
  time.sleep(0.5)
  assert time.time() - path.stat().st_mtime < 5
  lock.release()


def test_train_on_a_held_workdir_is_one_line_and_exit_2(tmp_path, live_pid, capsys):
  write_lock(tmp_path, socket.gethostname(), live_pid)
  config = tiny_run_config()
  overrides = [f"--config.{k}={v}" for k, v in {
      "model.depth": 1, "model.hidden": 64, "model.heads": 2, "model.cross_heads": 2,
      "data.crop_size": 32, "data.batch_size": 8, "data.eval.crop_size": 64,
      "stages.pretrain.max_steps": config.stages.pretrain.max_steps}.items()]
  assert main(["train", "--config", "configs/tiny.py", "--workdir", str(tmp_path),
               *overrides]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and f"pid {live_pid}" in err[0], err
  assert sorted(p.name for p in tmp_path.iterdir()) == [run_lock.LOCK_NAME]  # nothing written


def test_readers_work_on_a_workdir_a_live_run_holds(tmp_path_factory, live_pid, capsys):
  run = trained_run(tmp_path_factory)
  path = write_lock(run, socket.gethostname(), live_pid)
  try:
    assert main(["knee", "--workdir", str(run), "--stage", "pretrain"]) == 0
    assert main(["export", str(run), "--out", str(tmp_path_factory.mktemp("export") / "x")]) == 0
  finally:
    path.unlink()
