"""One `linearsr train` per workdir: <workdir>/run.lock names the run that holds it.

The lock is a small JSON file {host, pid, since, token}, created exclusively, and kept fresh by
a heartbeat every `train.lock_heartbeat_seconds`. A second run refuses with one line naming the
holder. A lock whose heartbeat is older than `train.lock_stale_seconds` is taken over with a
warning, whatever its host and pid say: a restarted container has pid 1 again, and containers
with separate pid namespaces share a host name, so a pid proves neither that the holder lives
nor that it died. The age is read on the storage's own clock, against a probe written beside
the lock, so the clocks of the hosts do not matter. One shortcut, on a filesystem: a holder that
names this host, whose heartbeat is more than two periods late, and whose flock on the lock file
no process holds any more (the kernel drops it with its process, whatever pid namespace it ran
in), is gone: a run killed and restarted on the same machine or container does not wait the
stale threshold. A live holder is never taken over that way, so it need not stop itself sooner
than after the stale threshold of failed heartbeats.

A takeover is fenced, so that of runs starting at once exactly one wins: on a filesystem the
stale lock is replaced (atomically, by a rename) only while a flock on a guard file beside it
is held and the lock is still the one read; on object storage (a gs:// workdir) the lock is
created with GCS's `ifGenerationMatch=0` and replaced by a write conditional on the generation
read.

The heartbeat retries any error with backoff. Once it finds the lock gone or another run's, or
has failed for longer than the stale threshold (another run may have taken over), `check()`
raises: the training loop calls it before it writes, so the run stops in one line, and leaves
the new holder's lock in place. Only process 0 of a multi-process run takes the lock; the
readers (`knee`, `eval --checkpoint`, `export`, `upscale`) never do, so they work while a run
trains.

Over 350 lines on purpose: the lock, its heartbeat and its two fenced takeovers (filesystem and
object storage) are one protocol whose races are only readable side by side.
"""

import contextlib
import dataclasses
import datetime
import fcntl
import json
import logging
import os
import secrets
import socket
import threading
import time

from linearsr_jax import atomic, storage
from linearsr_jax.errors import UserError

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"


@dataclasses.dataclass(frozen=True)
class _Found:
  """The lock as read: its text, when its heartbeat last landed (on the storage's clock, in
  seconds since the epoch), and what tells this version of it from a later one."""
  text: str
  beat: float
  version: object


def _parse(text: str) -> dict:
  try:
    holder = json.loads(text)
  except json.JSONDecodeError:
    holder = None
  return holder if isinstance(holder, dict) else {"unreadable": True}


def _describe(holder: dict) -> str:
  if holder.get("unreadable"):  # being written, or left half-written by a crash
    return "an unreadable lock file"
  return f"host {holder.get('host')}, pid {holder.get('pid')}, since {holder.get('since')}"


class _LocalFile:
  """The lock file on a local or shared filesystem. Its version is its text: each holder's has
  its own token, and a heartbeat changes only the mtime."""

  def __init__(self, path):
    self.path = path
    self._held = None  # the lock file, open with a shared flock while this run holds it

  def create(self, text: str) -> bool:
    """Creates the file; False when it exists already. It is the run's first write into the
    workdir, so a workdir it cannot write is said here."""
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
      return False
    except OSError as e:
      raise UserError(f"--workdir {self.path.parent} is not writable: {e.strerror}") from e
    os.write(fd, text.encode())
    self._hold(fd)
    return True

  def _hold(self, fd: int):
    """Keeps the lock file open with a shared flock until `close`. (Opened read-write: NFS
    emulates flocks with POSIX locks, which need it.)"""
    with contextlib.suppress(OSError):  # a filesystem without flocks: no shortcut then
      fcntl.flock(fd, fcntl.LOCK_SH)
    self._held = fd

  def holder_gone_here(self) -> bool:
    """Whether no process on this host (or NFS client) holds the lock file's flock."""
    try:
      fd = os.open(self.path, os.O_RDWR)
    except OSError:
      return False
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return True
    except OSError:  # held, or a filesystem without flocks: cannot tell
      return False
    finally:
      os.close(fd)

  def close(self):
    if self._held is not None:
      os.close(self._held)
      self._held = None

  def read(self):
    """The lock as _Found, or None when there is none."""
    try:
      with open(self.path) as f:
        return _Found(f.read(), os.fstat(f.fileno()).st_mtime, None)
    except FileNotFoundError:
      return None

  def now(self) -> float:
    """The filesystem's clock: the mtime of a probe just created beside the lock (a shared
    filesystem stamps both with its server's time)."""
    probe = self._probe_path()
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
      return os.fstat(fd).st_mtime
    finally:
      os.close(fd)
      os.unlink(probe)

  def beat(self, text: str, token: str):
    """Refreshes the lock if it holds `token`; returns the holder found (None: no lock)."""
    try:
      with open(self.path) as f:
        holder = _parse(f.read())
        if holder.get("token") == token:
          os.utime(f.fileno())  # the file read, even where a takeover renamed it meanwhile
        return holder
    except FileNotFoundError:
      return None

  def remove(self, found: _Found) -> bool:
    """Removes the lock if it is still `found`."""
    with self._guard():
      if self._text() != found.text:
        return False
      os.unlink(self.path)
      return True

  def replace(self, found: _Found, text: str) -> bool:
    """Replaces the lock with `text` if it is still `found`."""
    with self._guard():
      if self._text() != found.text:
        return False
      atomic.write_atomically(self.path, text.encode())
      self._hold(os.open(self.path, os.O_RDWR))
      return True

  @contextlib.contextmanager
  def _guard(self):
    """An exclusive flock on a guard file beside the lock, held while a takeover or a release
    checks the lock and then replaces or removes it, so that two starters that read the same
    stale lock cannot both replace it. (Renaming the lock aside and putting back another's
    leaves a moment without a lock, in which a third run creates one.) The kernel, or the NFS
    server, releases the flock of a process that dies. The holder removes the guard file, so
    a waiter that then gets the flock of the removed file opens the path again."""
    guard = self.path.parent / f".{self.path.name}.guard"
    while True:
      fd = os.open(guard, os.O_RDWR | os.O_CREAT, 0o666)
      fcntl.flock(fd, fcntl.LOCK_EX)
      with contextlib.suppress(FileNotFoundError):
        if os.stat(guard).st_ino == os.fstat(fd).st_ino:
          break
      os.close(fd)
    try:
      yield
    finally:
      os.unlink(guard)
      os.close(fd)

  def _text(self):
    try:
      return self.path.read_text()
    except FileNotFoundError:
      return None

  def _probe_path(self):
    return self.path.parent / f"{self.path.name}.probe-{secrets.token_hex(8)}"


class _ObjectFile:
  """The lock file as a GCS object, through google-cloud-storage's preconditions. Its version is
  the object's generation."""

  def __init__(self, path):
    from google.cloud import storage as gcs

    self.path = path
    bucket, _, self.name = str(path).removeprefix("gs://").partition("/")
    self.bucket = gcs.Client().bucket(bucket)
    self.generation = None  # of the last version this run wrote

  def create(self, text: str) -> bool:
    return self._write(text, 0)

  def holder_gone_here(self) -> bool:
    return False  # object storage has no flocks: the heartbeat's age alone tells

  def close(self):
    pass

  def read(self):
    from google.api_core import exceptions

    # The metadata first: `updated` is set by it, not by a download alone.
    blob = self.bucket.get_blob(self.name)
    if blob is None:
      return None
    generation, beat = blob.generation, blob.updated.timestamp()
    try:
      text = blob.download_as_text()
    except exceptions.NotFound:  # removed since
      return None
    # The download sets the generation it read: another one is a lock replaced meanwhile,
    # whose text does not go with the heartbeat time read.
    return _Found(text, beat, generation) if blob.generation == generation else None

  def now(self) -> float:
    """GCS's clock: the `updated` time of a probe just written beside the lock."""
    probe = self.bucket.blob(f"{self.name}.probe-{secrets.token_hex(8)}")
    probe.upload_from_string(b"")
    try:
      return probe.updated.timestamp()
    finally:
      probe.delete()

  def beat(self, text: str, token: str):
    """Rewrites the lock if it is still the version this run wrote; returns the holder found
    (None: no lock)."""
    from google.api_core import exceptions

    blob = self.bucket.blob(self.name)
    try:
      blob.upload_from_string(text, if_generation_match=self.generation)
      self.generation = blob.generation
      return _parse(text)
    except (exceptions.PreconditionFailed, exceptions.NotFound):
      found = self.read()
    holder = None if found is None else _parse(found.text)
    if holder is not None and holder.get("token") == token:  # a retried write had landed
      self.generation = found.version
    return holder

  def remove(self, found: _Found) -> bool:
    from google.api_core import exceptions

    try:
      self.bucket.delete_blob(self.name, if_generation_match=found.version)
    except (exceptions.PreconditionFailed, exceptions.NotFound):
      return False
    return True

  def replace(self, found: _Found, text: str) -> bool:
    return self._write(text, found.version)

  def _write(self, text: str, generation: int) -> bool:
    """Writes the lock if its generation is `generation` (0: there is none); False if not."""
    from google.api_core import exceptions

    blob = self.bucket.blob(self.name)
    try:
      blob.upload_from_string(text, if_generation_match=generation)
    except exceptions.PreconditionFailed:
      return False
    except exceptions.GoogleAPICallError as e:
      raise UserError(f"--workdir {self.path.parent} is not writable: "
                      f"{storage.describe(e)}") from e
    self.generation = blob.generation
    return True


class RunLock:
  """Holds <workdir>/run.lock from `acquire` to `release` (see the module docstring)."""

  def __init__(self, workdir, *, heartbeat_seconds: float, stale_seconds: float):
    self.path = storage.path(workdir) / LOCK_NAME
    self.file = (_ObjectFile if storage.is_url(self.path) else _LocalFile)(self.path)
    self.heartbeat_seconds, self.stale_seconds = heartbeat_seconds, stale_seconds
    self.token = secrets.token_hex(8)
    self.text = json.dumps({
        "host": socket.gethostname(), "pid": os.getpid(),
        "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "token": self.token
    })
    self.lost = None  # how this run lost the lock, once the heartbeat finds out
    self._last_beat = None  # time.monotonic() when the lock was last known fresh
    self._failure = None  # the heartbeat's error, while it fails
    self._stop = threading.Event()
    self._heartbeat = None

  def acquire(self):
    while not self.file.create(self.text):
      found = self.file.read()
      if found is None:
        continue  # released meanwhile: try again
      holder, age = _parse(found.text), max(self.file.now() - found.beat, 0.0)
      reason = self._stale_reason(holder, age)
      if reason is None:
        raise UserError(
            f"{self.path.parent} is in use by another linearsr train: {_describe(holder)}; its "
            f"heartbeat is {age:.1f} s old, and it is taken over once older than "
            f"{self.stale_seconds:g} s (train.lock_stale_seconds; delete {self.path} if that "
            f"run is gone)")
      if self.file.replace(found, self.text):
        log.warning("took over %s from %s: %s", self.path, _describe(holder), reason)
        break
      # Another run changed it meanwhile (took it over, or its heartbeat landed): read again.
    self._last_beat = time.monotonic()
    self._heartbeat = threading.Thread(target=self._beat, daemon=True, name="run-lock")
    self._heartbeat.start()
    return self

  def _stale_reason(self, holder: dict, age: float):
    """Why the holder is gone, or None while it may still be running (see the module
    docstring)."""
    if age > self.stale_seconds:
      return f"its heartbeat stopped {age:.1f} s ago"
    if (holder.get("host") == socket.gethostname() and age > 2 * self.heartbeat_seconds and
        self.file.holder_gone_here()):
      return (f"its heartbeat stopped {age:.1f} s ago, and no process on this host holds "
              "the lock")
    return None

  def _beat(self):
    failures = 0
    while not self._stop.wait(self._pause(failures)):
      try:
        holder = self.file.beat(self.text, self.token)
      except Exception as e:  # whatever the storage raises, the heartbeat goes on
        failures, self._failure = failures + 1, e
        log.warning("%s: the lock's heartbeat failed (%s: %s); retrying", self.path,
                    type(e).__name__, storage.describe(e))
        continue
      failures, self._failure = 0, None
      if holder is not None and holder.get("token") == self.token:
        self._last_beat = time.monotonic()
        continue
      self.lost = ("was deleted" if holder is None else
                   f"was taken over by another linearsr train: {_describe(holder)}")
      return

  def _pause(self, failures: int) -> float:
    """The heartbeat period; after 1, 2, 3 failures in a row, an 8th, a quarter, a half of it."""
    if not failures:
      return self.heartbeat_seconds
    return self.heartbeat_seconds / 2**max(4 - failures, 0)

  def check(self):
    """Raises UserError once this run no longer holds the lock, or can no longer tell: the
    training loop calls it before it writes."""
    if self.lost:
      raise UserError(f"{self.path}: this run's lock {self.lost}; this run stops rather than "
                      "write over that one")
    silent = time.monotonic() - self._last_beat
    if silent > self.stale_seconds:
      cause = (f"{type(self._failure).__name__}: {storage.describe(self._failure)}"
               if self._failure else "its thread was not scheduled")
      raise UserError(f"{self.path}: the lock's heartbeat has not landed for {silent:.1f} s "
                      f"({cause}), so another run may take the workdir over; this run stops")

  def release(self):
    """Removes the lock if it is still this run's (a run that took it over keeps it)."""
    self._stop.set()
    if self._heartbeat is not None:
      self._heartbeat.join()
    try:
      found = self.file.read()
      if found is not None and _parse(found.text).get("token") == self.token:
        self.file.remove(found)
    except Exception as e:  # it ends the run, often on another error: one line, not a second
      log.warning(
          "%s: the lock was not removed (%s: %s); the next run takes it over once it "
          "is stale", self.path,
          type(e).__name__, storage.describe(e))
    finally:
      self.file.close()


class _NotHeld:
  """What the processes other than the lead hold: no lock, nothing to lose."""

  def check(self):
    pass


NOT_HELD = _NotHeld()


@contextlib.contextmanager
def holding(workdir, *, lead: bool, heartbeat_seconds: float, stale_seconds: float):
  """The lock around a run (its `check()` says when it is lost); NOT_HELD on processes other
  than the lead."""
  if not lead:
    yield NOT_HELD
    return
  lock = RunLock(workdir, heartbeat_seconds=heartbeat_seconds,
                 stale_seconds=stale_seconds).acquire()
  try:
    yield lock
  finally:
    lock.release()
