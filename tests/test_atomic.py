"""Atomic outputs: a plain open()'s file mode, no partial file on failure, the umask untouched."""

import os
import stat

import pytest

from linearsr_jax.atomic import atomic_dir, atomic_file
from linearsr_jax.errors import UserError


def _mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


def test_outputs_get_the_modes_a_plain_open_and_mkdir_give(tmp_path):
  with open(tmp_path / "plain", "w"):
    pass
  os.mkdir(tmp_path / "plain_dir")
  with atomic_file(tmp_path / "out.txt", "w") as f:
    f.write("x")
  with atomic_dir(tmp_path / "out_dir") as d:
    (d / "a").write_text("a")
  assert _mode(tmp_path / "out.txt") == _mode(tmp_path / "plain")
  assert _mode(tmp_path / "out_dir") == _mode(tmp_path / "plain_dir")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt", "out_dir", "plain",
                                                         "plain_dir"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  target = tmp_path / "result.json"
  target.write_text("old")
  with pytest.raises(RuntimeError):
    with atomic_file(target, "w") as f:
      f.write("new, half")
      raise RuntimeError("killed")
  assert target.read_text() == "old" and os.listdir(tmp_path) == ["result.json"]
  with pytest.raises(UserError, match="already exists"):
    with atomic_dir(tmp_path / "result.json"):
      pass


def test_the_umask_is_never_touched(tmp_path, monkeypatch):
  """os.umask() sets the mask process-wide even to read it: a file Orbax or grain creates in
  another thread meanwhile would get mode 0666 / 0777."""
  def umask(mask):
    raise AssertionError("os.umask called")

  monkeypatch.setattr(os, "umask", umask)
  with atomic_file(tmp_path / "a.txt", "w") as f:
    f.write("x")
  with atomic_dir(tmp_path / "d"):
    pass
