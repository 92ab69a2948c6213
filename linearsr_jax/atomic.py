"""Atomic outputs: write beside the target, then rename, so readers never see a partial file."""

import contextlib
import os
import secrets
import shutil
from pathlib import Path


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


@contextlib.contextmanager
def atomic_file(path, mode="wb"):
  """Yields a file object; on success the file replaces `path` in one rename."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp, fd = _sibling(path, lambda p: os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
  try:
    with os.fdopen(fd, mode) as f:
      yield f
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


@contextlib.contextmanager
def atomic_dir(path, overwrite=False):
  """Yields a temporary directory that becomes `path` when the block succeeds.

  An existing `path` is an error unless `overwrite`; then it is replaced only after the new
  contents are complete.
  """
  from linearsr_jax.errors import UserError

  path = Path(path)
  if path.exists() and not overwrite:
    raise UserError(f"output {path} already exists (pass --overwrite to replace it)")
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
