"""One `linearsr train` per workdir: <workdir>/run.lock names the run that holds it.

The lock is a small JSON file {host, pid, since, token}, created exclusively (O_EXCL), and
kept fresh by a heartbeat (its mtime, touched every `HEARTBEAT_SECONDS`). A second run refuses
with one line naming the holder. A lock whose holder is gone is taken over with a warning:
on this host when its pid no longer runs, from another host (a shared filesystem) when its
heartbeat is older than `STALE_SECONDS`. Only process 0 of a multi-process run takes it; the
readers (`knee`, `eval --checkpoint`, `export`, `upscale`) never do, so they work while a run
trains.
"""

import contextlib
import datetime
import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path

from linearsr_jax.errors import UserError

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0  # 20 missed heartbeats: a host that stopped, not a slow one


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  return True


def _stale_reason(holder: dict, age: float):
  """Why the holder is gone, or None while it may still be running."""
  if holder.get("unreadable"):  # being written, or left half-written by a crash
    return "the lock file is unreadable" if age > 5.0 else None
  if holder.get("host") == socket.gethostname():
    pid = holder.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
      return f"pid {pid} no longer runs on this host"
    return None
  if age > STALE_SECONDS:
    return f"its heartbeat stopped {age / 60:.0f} min ago"
  return None


def _read(path: Path):
  """(holder dict, seconds since its heartbeat), or (None, 0) when the file vanished."""
  try:
    text, age = path.read_text(), time.time() - path.stat().st_mtime
  except FileNotFoundError:
    return None, 0.0
  try:
    holder = json.loads(text)
  except json.JSONDecodeError:
    holder = None
  return (holder if isinstance(holder, dict) else {"unreadable": True}), age


def _write_new(path: Path, record: dict) -> bool:
  """Creates the lock; False when it exists already. It is the run's first write into the
  workdir, so a workdir it cannot write is said here."""
  try:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  except FileExistsError:
    return False
  except OSError as e:
    raise UserError(f"--workdir {path.parent} is not writable: {e.strerror}") from e
  with os.fdopen(fd, "w") as f:
    json.dump(record, f)
  return True


class RunLock:
  """Holds <workdir>/run.lock from `acquire` to `release` (see the module docstring)."""

  def __init__(self, workdir):
    self.path = Path(workdir) / LOCK_NAME
    self.record = {"host": socket.gethostname(), "pid": os.getpid(),
                   "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                   "token": secrets.token_hex(8)}
    self._stop = threading.Event()
    self._heartbeat = None

  def acquire(self):
    while not _write_new(self.path, self.record):
      holder, age = _read(self.path)
      if holder is None:
        continue  # released meanwhile: try again
      reason = _stale_reason(holder, age)
      if reason is None:
        raise UserError(f"{self.path.parent} is in use by another linearsr train: host "
                        f"{holder.get('host')}, pid {holder.get('pid')}, since "
                        f"{holder.get('since')} (delete {self.path} if that run is gone)")
      log.warning("taking over %s from host %s, pid %s, since %s: %s", self.path,
                  holder.get("host"), holder.get("pid"), holder.get("since"), reason)
      if _read(self.path)[0] == holder:  # not a run that took it over meanwhile
        with contextlib.suppress(FileNotFoundError):
          self.path.unlink()
    self._heartbeat = threading.Thread(target=self._beat, daemon=True, name="run-lock")
    self._heartbeat.start()
    return self

  def _beat(self):
    while not self._stop.wait(HEARTBEAT_SECONDS):
      with contextlib.suppress(FileNotFoundError):
        os.utime(self.path)

  def release(self):
    """Removes the lock if it is still this run's (a run that took it over keeps it)."""
    self._stop.set()
    if self._heartbeat is not None:
      self._heartbeat.join()
    holder, _ = _read(self.path)
    if holder is not None and holder.get("token") == self.record["token"]:
      self.path.unlink()


@contextlib.contextmanager
def holding(workdir, lead: bool = True):
  """The lock around a run; a no-op on processes other than the lead."""
  if not lead:
    yield
    return
  lock = RunLock(workdir).acquire()
  try:
    yield
  finally:
    lock.release()
