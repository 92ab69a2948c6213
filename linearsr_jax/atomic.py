"""Atomic outputs: write beside the target, then rename, so readers never see a partial file."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_file(path, mode="wb"):
  """Yields a file object; on success the file replaces `path` in one rename."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    # mkstemp creates 0600; give the file the mode a plain open() would.
    os.chmod(tmp, 0o666 & ~_umask())
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
  tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
  os.chmod(tmp, 0o777 & ~_umask())
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
