"""Ways a checkpoint step directory gets damaged: a truncated array file, a missing metadata
file, flipped bytes in a param shard, an empty directory left by a crash."""

import shutil


def _largest_file(directory):
  return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def truncate_array_file(step_dir):
  data = _largest_file(step_dir / "state")
  data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])


def remove_metadata(step_dir):
  (step_dir / "state" / "_METADATA").unlink()


def flip_bytes(step_dir):
  """Flips bytes in the middle of the largest array data file (a param shard)."""
  data = _largest_file(step_dir / "state")
  raw = bytearray(data.read_bytes())
  middle = len(raw) // 2
  raw[middle:middle + 4] = bytes(b ^ 0xFF for b in raw[middle:middle + 4])
  data.write_bytes(bytes(raw))


def empty_step_dir(step_dir):
  shutil.rmtree(step_dir)
  step_dir.mkdir()


def flip_bytes_throughout(step_dir):
  """Flips one byte in every KiB of every array data file: whichever arrays a reader takes
  (a tool reads only the EMA params), some of theirs are hit."""
  for data in (p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"):
    raw = bytearray(data.read_bytes())
    for i in range(512, len(raw), 1024):
      raw[i] ^= 0xFF
    data.write_bytes(bytes(raw))
