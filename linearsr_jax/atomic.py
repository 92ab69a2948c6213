"""Atomic outputs: readers never see a partial file.

Locally: write beside the target, then rename. On object storage (gs://) an object appears
whole when its upload ends, so a file is one upload, and a directory is staged locally and
uploaded file by file, its largest file (the params, which readers open last) last.
"""

import contextlib
import io
import os
import secrets
import shutil
import tempfile
from pathlib import Path

from linearsr_jax import disk_space, storage


def _sibling(path: Path, create):
  """A new hidden sibling of `path`, made by `create(name)`. Created with the modes a plain
  open() / mkdir() would use (0666 / 0777, less the umask the kernel applies), unlike tempfile's
  0600 / 0700, and without reading the umask: os.umask() sets it process-wide, under the threads
  of Orbax and grain that create files meanwhile."""
  while True:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
      return tmp, create(tmp)
    except FileExistsError:
      continue


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
  contents are complete.
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
      old = path.with_name(f".{path.name}.old")
      os.replace(path, old)
      os.replace(tmp, path)
      shutil.rmtree(old)
    else:
      os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


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
  deletes what an earlier output left there that the new one does not have."""
  files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  for file in files:
    storage.upload(file, url / file.relative_to(local).as_posix())  # no parent folders needed
  new = {file.relative_to(local).as_posix() for file in files}
  for folder, _, names in url.walk():
    for name in names:
      target = folder / name
      if target.relative_to(url).as_posix() not in new:
        target.unlink()
