"""One `linearsr train` per workdir: <workdir>/run.lock names the run that holds it.

The lock is a small JSON file {host, pid, since, token}, created exclusively (O_EXCL), and
kept fresh by a heartbeat (its mtime, touched every `HEARTBEAT_SECONDS`). A second run refuses
with one line naming the holder. A lock whose holder is gone is taken over with a warning:
on this host when its pid no longer runs, from another host (a shared filesystem) when its
heartbeat is older than `STALE_SECONDS`. Only process 0 of a multi-process run takes it; the
readers (`knee`, `eval --checkpoint`, `export`, `upscale`) never do, so they work while a run
trains.

On object storage (a gs:// workdir) the same file is an object created with GCS's
`ifGenerationMatch=0` precondition, the object store's exclusive create; its heartbeat is a
rewrite conditional on the generation this run wrote last, so a run whose lock was taken over
cannot overwrite the new holder's.
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

from linearsr_jax import storage
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


def _parse(text: str) -> dict:
  try:
    holder = json.loads(text)
  except json.JSONDecodeError:
    holder = None
  return holder if isinstance(holder, dict) else {"unreadable": True}


class _LocalFile:
  """The lock file on a local or shared filesystem."""

  def __init__(self, path):
    self.path = path

  def create(self, text: str) -> bool:
    """Creates the file; False when it exists already. It is the run's first write into the
    workdir, so a workdir it cannot write is said here."""
    try:
      fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
      return False
    except OSError as e:
      raise UserError(f"--workdir {self.path.parent} is not writable: {e.strerror}") from e
    with os.fdopen(fd, "w") as f:
      f.write(text)
    return True

  def read(self):
    """(text, seconds since its heartbeat), or None when the file vanished."""
    try:
      return self.path.read_text(), time.time() - self.path.stat().st_mtime
    except FileNotFoundError:
      return None

  def touch(self):
    with contextlib.suppress(FileNotFoundError):
      os.utime(self.path)

  def delete(self):
    with contextlib.suppress(FileNotFoundError):
      self.path.unlink()


class _ObjectFile:
  """The lock file as a GCS object, through google-cloud-storage's preconditions."""

  def __init__(self, path):
    from google.cloud import storage as gcs

    self.path = path
    bucket, _, name = str(path).removeprefix("gs://").partition("/")
    self.blob = gcs.Client().bucket(bucket).blob(name)
    self.generation = None  # of the last version this process wrote

  def create(self, text: str) -> bool:
    from google.api_core import exceptions

    try:
      self.blob.upload_from_string(text, if_generation_match=0)
    except exceptions.PreconditionFailed:
      return False
    except exceptions.GoogleAPICallError as e:
      raise UserError(f"--workdir {self.path.parent} is not writable: "
                      f"{storage.describe(e)}") from e
    self.generation = self.blob.generation
    return True

  def read(self):
    from google.api_core import exceptions

    try:
      text = self.blob.download_as_text()
    except exceptions.NotFound:
      return None
    updated = self.blob.updated.timestamp() if self.blob.updated else time.time()
    return text, time.time() - updated

  def touch(self):
    from google.api_core import exceptions

    try:
      self.blob.upload_from_string(self.blob.download_as_text(),
                                   if_generation_match=self.generation)
      self.generation = self.blob.generation
    except (exceptions.PreconditionFailed, exceptions.NotFound):
      log.warning("%s: no longer this run's lock (taken over or deleted)", self.path)

  def delete(self):
    from google.api_core import exceptions

    with contextlib.suppress(exceptions.NotFound, exceptions.PreconditionFailed):
      self.blob.delete()


def _read(file):
  """(holder dict, seconds since its heartbeat), or (None, 0) when the file vanished."""
  found = file.read()
  return (None, 0.0) if found is None else (_parse(found[0]), found[1])


class RunLock:
  """Holds <workdir>/run.lock from `acquire` to `release` (see the module docstring)."""

  def __init__(self, workdir):
    self.path = storage.path(workdir) / LOCK_NAME
    self.file = (_ObjectFile if storage.is_url(self.path) else _LocalFile)(self.path)
    self.record = {"host": socket.gethostname(), "pid": os.getpid(),
                   "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                   "token": secrets.token_hex(8)}
    self._stop = threading.Event()
    self._heartbeat = None

  def acquire(self):
    while not self.file.create(json.dumps(self.record)):
      holder, age = _read(self.file)
      if holder is None:
        continue  # released meanwhile: try again
      reason = _stale_reason(holder, age)
      if reason is None:
        raise UserError(f"{self.path.parent} is in use by another linearsr train: host "
                        f"{holder.get('host')}, pid {holder.get('pid')}, since "
                        f"{holder.get('since')} (delete {self.path} if that run is gone)")
      log.warning("taking over %s from host %s, pid %s, since %s: %s", self.path,
                  holder.get("host"), holder.get("pid"), holder.get("since"), reason)
      if _read(self.file)[0] == holder:  # not a run that took it over meanwhile
        self.file.delete()
    self._heartbeat = threading.Thread(target=self._beat, daemon=True, name="run-lock")
    self._heartbeat.start()
    return self

  def _beat(self):
    while not self._stop.wait(HEARTBEAT_SECONDS):
      self.file.touch()

  def release(self):
    """Removes the lock if it is still this run's (a run that took it over keeps it)."""
    self._stop.set()
    if self._heartbeat is not None:
      self._heartbeat.join()
    holder, _ = _read(self.file)
    if holder is not None and holder.get("token") == self.record["token"]:
      self.file.delete()


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
