"""Atomic outputs: readers never see a partial file.

Locally: write beside the target, then rename. On object storage (gs://) an object appears
whole when its upload ends, so a file is one upload, and a directory is staged locally and
uploaded file by file, its largest file (the params, which readers open last) last. A directory
has no rename there: an in-progress marker (WRITING) is uploaded before its first file and
deleted after its last, and readers refuse a directory that holds one (`check_complete`), so a
kill mid-upload leaves an output that fails in one line, never a new header over old params.
The marker marks the unfinished state rather than the finished one so that the directories
older versions wrote, which have no marker at all, still read.
"""

import contextlib
import errno
import io
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

from linearsr_jax import disk_space, storage

WRITING = ".linearsr-writing"


def _sibling(path: Path, create, kind="tmp"):
  """A new hidden sibling of `path` (`.NAME.<12 hex>.<kind>`), made by `create(name)`. Created
  with the modes a plain open() / mkdir() would use (0666 / 0777, less the umask the kernel
  applies), unlike tempfile's 0600 / 0700, and without reading the umask: os.umask() sets it
  process-wide, under the threads of Orbax and grain that create files meanwhile."""
  while True:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.{kind}")
    try:
      return tmp, create(tmp)
    except OSError as e:  # taken: a file or a folder (a rename onto a full one: ENOTEMPTY)
      if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
        continue
      raise


def _new_file(path) -> int:
  """A file descriptor of a new file at `path` (FileExistsError if one is there)."""
  return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)


@contextlib.contextmanager
def atomic_file(path, mode="wb"):
  """Yields an in-memory file; when the block succeeds, its contents replace `path` in one
  rename. The outputs written this way are small (images, JSON, plots, tables), and knowing
  their size before writing lets a full disk be one line that names the path and the bytes
  needed, with nothing left behind."""
  buffer = io.BytesIO() if "b" in mode else io.StringIO()
  yield buffer
  data = buffer.getvalue()
  write_atomically(path, data.encode("utf-8") if isinstance(data, str) else data)


def write_atomically(path, data: bytes):
  path = storage.path(path)
  if storage.is_url(path):
    with storage.errors_as_one_line(f"cannot write {path}"):
      path.write_bytes(data)
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  disk_space.ensure_room(path.parent, len(data), path.name)
  tmp, fd = _sibling(path, _new_file)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    if disk_space.is_full_disk(e):
      raise disk_space.full(path.parent, len(data), path.name) from None
    raise


@contextlib.contextmanager
def atomic_dir(path, overwrite=False):
  """Yields a temporary directory that becomes `path` when the block succeeds.

  An existing `path` is an error unless `overwrite`; then it is replaced only after the new
  contents are complete. Locally the old output is parked under a unique hidden name and
  removed; parked outputs an earlier kill left behind are removed too, once the new output is
  in place.
  """
  from linearsr_jax.errors import UserError

  path = storage.path(path)
  if path.exists() and not overwrite:
    raise UserError(f"output {path} already exists (pass --overwrite to replace it)")
  if storage.is_url(path):
    with tempfile.TemporaryDirectory(prefix="linearsr-") as tmp:
      yield Path(tmp)
      with storage.errors_as_one_line(f"cannot write {path}"):
        _upload_tree(Path(tmp), path)
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp, _ = _sibling(path, lambda p: os.mkdir(p, 0o777))
  try:
    yield tmp
    if path.exists():
      _sibling(path, lambda p: os.replace(path, p), "old")
    os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  for parked in _parked(path):
    shutil.rmtree(parked, ignore_errors=True)  # a kill here leaves it for the next overwrite


def _parked(path: Path) -> list:
  """Old outputs of `path` parked by atomic_dir: `.NAME.<12 hex>.old`, and `.NAME.old` that
  versions before the unique names used."""
  pattern = re.compile(rf"\.{re.escape(path.name)}(\.[0-9a-f]{{12}})?\.old")
  return [p for p in path.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir()]


@contextlib.contextmanager
def staged_file(path):
  """Yields a local filename for a writer that needs one (array_record's); when the block
  succeeds, the file becomes `path`: renamed into place locally, one upload to object storage.
  On failure nothing is left."""
  path = storage.path(path)
  if storage.is_url(path):
    with tempfile.TemporaryDirectory(prefix="linearsr-") as tmp:
      local = Path(tmp) / path.name
      yield local
      with storage.errors_as_one_line(f"cannot write {path}"):
        storage.upload(local, path)
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp, fd = _sibling(path, _new_file)
  os.close(fd)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def _upload_tree(local: Path, url):
  """Uploads the files under `local` to the object-store prefix `url`, smallest first, then
  deletes what an earlier output left there that the new one does not have; the WRITING marker
  covers the whole time the prefix holds a mix of old and new files."""
  files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  (url / WRITING).write_bytes(b"")
  for file in files:
    storage.upload(file, url / file.relative_to(local).as_posix())  # no parent folders needed
  new = {file.relative_to(local).as_posix() for file in files} | {WRITING}
  for folder, _, names in url.walk():
    for name in names:
      target = folder / name
      if target.relative_to(url).as_posix() not in new:
        target.unlink()
  (url / WRITING).unlink()


def check_complete(path) -> None:
  """Refuses a directory whose writing was interrupted (an upload to object storage killed
  midway leaves its WRITING marker), in one line."""
  from linearsr_jax.errors import UserError

  path = storage.path(path)
  if (path / WRITING).exists():
    raise UserError(f"{path}: incomplete: its writing was interrupted (write it again with "
                    "--overwrite)")
