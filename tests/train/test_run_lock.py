"""One `linearsr train` per workdir: a live holder refuses a second run with one line, a lock
whose heartbeat stopped is taken over with a warning whatever its pid says, of starters racing
for it exactly one wins, the heartbeat outlives storage errors, a run that lost its lock stops
in one line, and the readers never need the lock. The lock's settings are fractions of a second
here, so no test waits for the 10 minutes of the default."""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from linearsr_jax.commands.cli import main
from linearsr_jax.errors import UserError
from linearsr_jax.run import run_dir
from linearsr_jax.train import loop, run_lock
from lock_race import race
from repo_paths import REPO
from trained_run import tiny_run_config, trained_run

FAST = dict(heartbeat_seconds=0.25, stale_seconds=1.0)
STALE = 3600.0  # a heartbeat an hour old


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


def new_lock(workdir, **settings):
  return run_lock.RunLock(workdir, **FAST | settings)


def write_lock(workdir, host, pid, age_seconds=0.0):
  """Another run's lock, its heartbeat `age_seconds` old."""
  path, written = workdir / run_lock.LOCK_NAME, workdir / "lock.tmp"
  written.write_text(
      json.dumps({"host": host, "pid": pid, "since": "2026-11-30T01:00:00+00:00",
                  "token": "other"}))
  stamp = time.time() - age_seconds
  os.utime(written, (stamp, stamp))
  # Whole, as a run writes it: a live run's heartbeat may read the lock at any moment.
  os.replace(written, path)
  return path


def held_by(workdir) -> dict:
  return json.loads((workdir / run_lock.LOCK_NAME).read_text())


def wait_until(condition, timeout=10.0):
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, "timed out"
    time.sleep(0.01)


def test_a_live_holder_refuses_naming_it(tmp_path, live_pid):
  path = write_lock(tmp_path, socket.gethostname(), live_pid)
  before = path.read_bytes()
  with pytest.raises(
      UserError, match=rf"in use by another linearsr train: host "
      rf"{socket.gethostname()}, pid {live_pid}, since 2026-11-30T01:00:00\S*; "
      rf"its heartbeat is 0\.\d s old, and it is taken over once older than "
      rf"1 s \(train\.lock_stale_seconds; delete {path} if that run is gone\)"):
    new_lock(tmp_path).acquire()
  assert path.read_bytes() == before


@pytest.mark.parametrize(
    "host, pid, age, taken",
    [
        # A dead pid on this host is no proof: the holder may live in another pid namespace.
        ("this host", "dead", 0.0, False),
        # A live pid is no proof either: a restarted container's new run has its old one's pid.
        ("this host", "ours", STALE, True),
        ("this host", 1, STALE, True),
        ("elsewhere", "dead", 0.0, False),
        ("elsewhere", "dead", STALE, True),
    ])
def test_a_lock_is_taken_over_by_its_heartbeats_age_whatever_its_pid(tmp_path, caplog, host, pid,
                                                                     age, taken):
  host = socket.gethostname() if host == "this host" else host
  pid = {"dead": dead_pid(), "ours": os.getpid()}.get(pid, pid)
  write_lock(tmp_path, host, pid, age)
  lock = new_lock(tmp_path)
  if not taken:
    with pytest.raises(UserError, match=f"host {host}, pid {pid}"):
      lock.acquire()
    assert held_by(tmp_path)["token"] == "other"
    return
  with caplog.at_level(logging.WARNING, logger=run_lock.__name__):
    lock.acquire()
  assert (f"took over {tmp_path / run_lock.LOCK_NAME} from host {host}, pid {pid}, since "
          "2026-11-30T01:00:00+00:00: its heartbeat stopped 3600") in caplog.text
  held = held_by(tmp_path)
  assert (held["host"], held["pid"], held["token"]) == (socket.gethostname(), os.getpid(),
                                                        lock.token)
  lock.release()
  assert sorted(p.name for p in tmp_path.iterdir()) == []  # no probe or guard file left


def test_a_holder_killed_on_this_host_is_taken_over_as_soon_as_its_heartbeat_is_late(
    tmp_path, caplog):
  """The same-host shortcut: a holder whose flock on the lock file is gone. A stopped one (a
  paused container) still holds it, however late its heartbeat."""
  holder = subprocess.Popen([
      sys.executable, "-c", "import sys, time; from linearsr_jax.train import run_lock; "
      f"run_lock.RunLock(sys.argv[1], **{FAST}).acquire(); print(flush=True); time.sleep(120)",
      str(tmp_path)
  ], stdout=subprocess.PIPE, cwd=REPO)
  try:
    holder.stdout.readline()
    holder.send_signal(signal.SIGSTOP)
    time.sleep(3 * FAST["heartbeat_seconds"])
    with pytest.raises(UserError, match=f"pid {holder.pid}"):
      new_lock(tmp_path, stale_seconds=60.0).acquire()
  finally:
    holder.kill()
    holder.wait()
  with caplog.at_level(logging.WARNING, logger=run_lock.__name__):
    lock = new_lock(tmp_path, stale_seconds=60.0).acquire()
  assert f"pid {holder.pid}" in caplog.text and "no process on this host holds the lock" in (
      caplog.text)
  lock.release()


def test_of_starters_racing_for_a_stale_lock_exactly_one_wins(tmp_path):
  for _ in range(10):
    write_lock(tmp_path, "elsewhere", 12345, STALE)
    starters = [new_lock(tmp_path, heartbeat_seconds=60.0) for _ in range(6)]
    won, refused = race(starters)
    assert len(won) == 1 and len(refused) == len(starters) - 1
    assert held_by(tmp_path)["token"] == won[0].token
    won[0].release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("how, why", [
    ("taken over", "was taken over by another linearsr train: host elsewhere, pid 12345, since "
     r"\S+"),
    ("deleted", "was deleted"),
], ids=["taken over", "deleted"])
def test_a_run_whose_lock_is_lost_is_told_and_leaves_the_new_holders(tmp_path, how, why):
  lock = new_lock(tmp_path).acquire()
  lock.check()
  if how == "deleted":
    (tmp_path / run_lock.LOCK_NAME).unlink()
  else:
    write_lock(tmp_path, "elsewhere", 12345)
  wait_until(lambda: lock.lost is not None)
  with pytest.raises(UserError, match=f"this run's lock {why}; this run stops"):
    lock.check()
  lock.release()
  if how == "deleted":
    assert not (tmp_path / run_lock.LOCK_NAME).exists()
  else:
    assert held_by(tmp_path)["token"] == "other"


def test_the_heartbeat_keeps_the_lock_fresh_through_storage_errors(tmp_path, monkeypatch, caplog):
  lock = new_lock(tmp_path, stale_seconds=30.0).acquire()
  path = tmp_path / run_lock.LOCK_NAME
  os.utime(path, (time.time() - STALE, time.time() - STALE))
  touch, failures = os.utime, []

  def flaky_utime(*args, **kwargs):  # an unexpected error, then an I/O error, then it works
    if len(failures) < 2:
      failures.append(args)
      raise (RuntimeError("injected") if len(failures) == 1 else OSError(5, "injected EIO"))
    return touch(*args, **kwargs)

  with caplog.at_level(logging.WARNING, logger=run_lock.__name__):
    monkeypatch.setattr(os, "utime", flaky_utime)
    wait_until(lambda: time.time() - path.stat().st_mtime < 60)
    monkeypatch.undo()
  assert len(failures) == 2 and lock._heartbeat.is_alive()
  assert "the lock's heartbeat failed (RuntimeError: injected); retrying" in caplog.text
  lock.check()
  lock.release()


def test_a_heartbeat_that_fails_past_the_stale_threshold_stops_the_run(tmp_path, monkeypatch):
  lock = new_lock(tmp_path, heartbeat_seconds=0.02, stale_seconds=0.1).acquire()

  def unreachable(*args, **kwargs):
    raise OSError(5, "Input/output error")

  monkeypatch.setattr(lock.file, "beat", unreachable)
  time.sleep(0.2)
  with pytest.raises(
      UserError, match=r"the lock's heartbeat has not landed for 0\.\d s "
      r"\(OSError: \[Errno 5\] Input/output error\), so another run may take the "
      "workdir over; this run stops"):
    lock.check()
  lock.release()


def tiny_overrides(**extra) -> list:
  config = tiny_run_config()
  return [
      f"--config.{k}={v}" for k, v in {
          "model.depth": 1, "model.hidden": 64, "model.heads": 2, "model.cross_heads": 2,
          "data.crop_size": 32, "data.batch_size": 8, "data.eval.crop_size": 64,
          "stages.pretrain.max_steps": config.stages.pretrain.max_steps, **extra
      }.items()
  ]


def test_train_on_a_held_workdir_is_one_line_and_exit_2(tmp_path, live_pid, capsys):
  write_lock(tmp_path, socket.gethostname(), live_pid)
  assert main(
      ["train", "--config", "configs/tiny.py", "--workdir",
       str(tmp_path), *tiny_overrides()]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and f"pid {live_pid}" in err[0], err
  assert sorted(p.name for p in tmp_path.iterdir()) == [run_lock.LOCK_NAME]  # nothing written


@pytest.mark.slow
def test_a_run_whose_lock_is_taken_over_stops_in_one_line_before_writing(
    tmp_path, monkeypatch, capsys):
  set_up = loop._StageTraining.__init__

  def set_up_then_lose_the_lock(stage, *args):
    set_up(stage, *args)
    write_lock(tmp_path, "elsewhere", 12345)  # another run took the workdir over meanwhile
    wait_until(lambda: stage.run.lock.lost is not None)

  monkeypatch.setattr(loop._StageTraining, "__init__", set_up_then_lose_the_lock)
  assert main([
      "train", "--config", "configs/tiny.py", "--workdir",
      str(tmp_path),
      *tiny_overrides(**{"train.lock_heartbeat_seconds": 0.05, "train.lock_stale_seconds": 5})
  ]) == 2
  log_record = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")  # what it logged before
  err = [l for l in capsys.readouterr().err.strip().splitlines() if not log_record.match(l)]
  assert err == [
      f"linearsr: error: {tmp_path / run_lock.LOCK_NAME}: this run's lock was taken "
      "over by another linearsr train: host elsewhere, pid 12345, since "
      "2026-11-30T01:00:00+00:00; this run stops rather than write over that one"
  ]
  assert held_by(tmp_path)["token"] == "other"
  stage = run_dir.RunDir(tmp_path).stage("pretrain")
  assert stage.checkpoint_steps() == [] and run_dir.read_jsonl(stage.metrics_jsonl) == ([], 0)


@pytest.mark.slow
def test_readers_work_on_a_workdir_a_live_run_holds(tmp_path_factory, live_pid, capsys):
  run = trained_run(tmp_path_factory)
  path = write_lock(run, socket.gethostname(), live_pid)
  try:
    assert main(["knee", "--workdir", str(run), "--stage", "pretrain"]) == 0
    assert main(["export", str(run), "--out", str(tmp_path_factory.mktemp("export") / "x")]) == 0
  finally:
    path.unlink()
