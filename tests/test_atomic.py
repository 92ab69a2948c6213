"""Atomic outputs: a plain open()'s file mode, no partial file on failure, the umask untouched,
no parked old output left after a kill."""

import os
import stat
from pathlib import Path

import pytest

from linearsr_jax import atomic
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
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt", "out_dir", "plain", "plain_dir"]


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


def test_a_kill_while_the_old_output_is_removed_does_not_block_the_next_overwrite(
    tmp_path, monkeypatch):
  """The old output is parked under a unique name; what a kill leaves parked is removed by the
  next overwrite, and nothing else beside it is."""
  out = tmp_path / "out"
  with atomic_dir(out) as d:
    for i in range(3):
      (d / f"part{i}").write_text("first")
  unrelated = [tmp_path / ".out.old.bak", tmp_path / ".other.old", tmp_path / ".out.notes.old"]
  for folder in unrelated:
    folder.mkdir()
  real_rmtree = atomic.shutil.rmtree

  def killed_midway(folder, ignore_errors=False):
    next(Path(folder).iterdir()).unlink()  # one file gone, then the process dies
    raise KeyboardInterrupt

  monkeypatch.setattr(atomic.shutil, "rmtree", killed_midway)
  with pytest.raises(KeyboardInterrupt):
    with atomic_dir(out, overwrite=True) as d:
      (d / "part0").write_text("second")
  monkeypatch.setattr(atomic.shutil, "rmtree", real_rmtree)
  assert (out / "part0").read_text() == "second"
  for text in ("third", "fourth"):
    with atomic_dir(out, overwrite=True) as d:
      (d / "part0").write_text(text)
    assert [p.name for p in out.iterdir()] == ["part0"] and (out / "part0").read_text() == text
    assert sorted(tmp_path.iterdir()) == sorted([out, *unrelated])


def test_an_old_fixed_name_leftover_is_removed_by_the_next_overwrite(tmp_path):
  """Versions before the unique names parked at `.NAME.old`; a kill left it there."""
  out, leftover = tmp_path / "out", tmp_path / ".out.old"
  for folder in (out, leftover):
    folder.mkdir()
    (folder / "params").write_text("old")
  with atomic_dir(out, overwrite=True) as d:
    (d / "params").write_text("new")
  assert sorted(tmp_path.iterdir()) == [out] and (out / "params").read_text() == "new"
