"""A full disk as one line naming the path and the bytes needed: checked before a write whose
size is known, and recognised in the error of one whose size was not."""

import errno
import shutil
from pathlib import Path

from linearsr_jax import storage
from linearsr_jax.errors import UserError


class DiskFull(UserError):
  pass


def free_bytes(directory) -> int:
  """Free bytes on the device of `directory` (of its nearest existing parent, if not made yet)."""
  path = Path(directory).absolute()
  while not path.exists():
    path = path.parent
  return shutil.disk_usage(path).free


def ensure_room(directory, needed: int, what: str):
  """DiskFull unless `needed` bytes fit on the device of `directory`. Object storage has no
  device to fill: nothing to check there."""
  if storage.is_url(directory):
    return
  free = free_bytes(directory)
  if needed > free:
    raise full(directory, needed, what, free)


def full(directory, needed: int, what: str, free=None) -> DiskFull:
  free = free_bytes(directory) if free is None else free
  return DiskFull(f"no space left on the device of {directory} for {what}: it needs "
                  f"{needed:,} bytes, {free:,} are free")


def is_full_disk(error: BaseException) -> bool:
  """Whether `error`, or an error behind it, is ENOSPC (also as TensorStore words it)."""
  while error is not None:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False
