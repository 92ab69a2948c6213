"""A full disk as one line naming the path and the bytes needed: checked before a write whose
size is known, and recognised in the error of one whose size was not."""

import errno
import shutil
from pathlib import Path

import numpy as np

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


def ensure_room_on_every_host(directory, needed: int, what: str):
  """ensure_room before a write every process takes part in (a checkpoint): decided together,
  so that a host short of room does not raise alone while the others wait for it in the save's
  barrier. Each host checks its own device; every host raises when one is short."""
  import jax
  from jax.experimental import multihost_utils

  if jax.process_count() == 1 or storage.is_url(directory):
    ensure_room(directory, needed, what)
    return
  # Byte counts pass as two int32 words each: without jax_enable_x64 an int64 array is cast
  # to int32 on its way through JAX, and any disk over 2 GiB would wrap around.
  words = np.array([[n >> 31, n & (2**31 - 1)] for n in (free_bytes(directory), needed)], np.int32)
  hosts = np.asarray(multihost_utils.process_allgather(words)).astype(np.int64).reshape(-1, 2, 2)
  for process, (free, wanted) in enumerate((hosts[..., 0] << 31) | hosts[..., 1]):
    if wanted > free:
      raise full(directory, int(wanted), what, int(free), f" on process {process}")


def full(directory, needed: int, what: str, free=None, where: str = "") -> DiskFull:
  free = free_bytes(directory) if free is None else free
  return DiskFull(f"no space left on the device of {directory}{where} for {what}: it needs "
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
