"""Bad input to `linearsr train`, tried systematically: each case is one line on stderr,
exit 2, and the workdir (holding an earlier file) is left as it was."""

import contextlib
import dataclasses
import errno
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from linearsr_jax import params_io
from linearsr_jax.commands.cli import main
from linearsr_jax.models.dit import DiTConfig
from linearsr_jax.train import init_from

SMALL = [
    "--config.model.depth=1", "--config.model.hidden=64", "--config.model.heads=2",
    "--config.model.cross_heads=2", "--config.data.crop_size=32", "--config.data.eval.crop_size=64",
    "--config.stages.pretrain.max_steps=2", "--config.stage_order=pretrain"
]


def _folder(tmp_path, name, files):
  folder = tmp_path / name
  folder.mkdir()
  for file_name, write in files.items():
    write(folder / file_name)
  return folder


def _small_png(path):
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)


def _params_dir(tmp_path, name, damage):
  """A params dir with a valid header for the small model, then damaged."""
  config = dataclasses.asdict(DiTConfig(depth=1, hidden=64, heads=2, cross_heads=2))
  path = tmp_path / name
  params_io.save_params_dir(path, init_from.DIT_KIND, config, {"w": np.ones((64, 64), np.float32)})
  damage(path / params_io.PARAMS_FILE)
  return path


@contextlib.contextmanager
def _read_only(path, monkeypatch):
  """`path` on a read-only filesystem: a read-only tmpfs where this user may mount one (CI
  runs as root, which chmod would not stop), else a directory without write permission, else
  (root without mount rights) EROFS injected into every open for writing under it."""
  path.mkdir()
  (path / "earlier.txt").write_text("an earlier file")
  if os.geteuid() != 0:
    path.chmod(0o555)
    yield path
    path.chmod(0o755)
    return
  try:
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                              str(path)], capture_output=True).returncode == 0
  except FileNotFoundError:  # no mount(8)
    mounted = False
  if not mounted:
    real_open = os.open

    def read_only_open(file, flags, *args, **kwargs):
      if str(file).startswith(str(path)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
      return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    yield path
    return
  (path / "earlier.txt").write_text("an earlier file")
  subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
  try:
    yield path
  finally:
    subprocess.run(["umount", str(path)], check=True)


CASES = {
    "a config file that raises": (lambda t: [
        "--config",
        str(_write(t / "raises.py", "def get_config():\n"
                   "  raise RuntimeError('boom')\n"))
    ], "the config file .*raises.py raised RuntimeError: boom \\(line 2\\)"),
    "an override of the wrong type":
        (lambda t: ["--config", "configs/tiny.py", "--config.data.batch_size=eight"],
         "--config.data.batch_size=eight"),
    "an empty dataset folder": (lambda t: [
        "--config", "configs/tiny.py", "--config.data.source.kind=folder",
        f"--config.data.source.path={_folder(t, 'empty', {})}"
    ], "no usable image"),
    "an all-corrupt dataset folder": (lambda t: [
        "--config", "configs/tiny.py", "--config.data.source.kind=folder",
        "--config.data.source.path=" + str(
            _folder(t, "corrupt", {
                "a.png": lambda p: p.write_bytes(b"not a png"), "b.jpg": lambda p: p.write_bytes(b""
                                                                                                )
            }))
    ], "no usable image"),
    "images smaller than the crop": (lambda t: [
        "--config", "configs/tiny.py", "--config.data.source.kind=folder",
        "--config.data.source.path=" + str(
            _folder(t, "small", {"a.png": _small_png, "b.png": _small_png}))
    ], "shorter side of at least 32 px"),
    "a 0-byte params dir for init_from": (lambda t: [
        "--config", "configs/tiny.py", "--config.train.init_from=" + str(
            _params_dir(t, "zero", lambda f: f.write_bytes(b"")))
    ], "params.safetensors: unreadable"),
    "a truncated params dir for init_from": (lambda t: [
        "--config", "configs/tiny.py", "--config.train.init_from=" + str(
            _params_dir(t, "cut", lambda f: os.truncate(f,
                                                        f.stat().st_size // 2)))
    ], "params.safetensors: unreadable"),
}


def _write(path, text):
  path.write_text(text)
  return path


def _snapshot(workdir):
  return {p.relative_to(workdir): p.read_bytes() for p in workdir.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_the_workdir_is_untouched(tmp_path, capsys, case):
  args, expected = CASES[case]
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "earlier.txt").write_text("an earlier file")
  before = _snapshot(workdir)
  assert main(["train", "--workdir", str(workdir), *args(tmp_path), *SMALL]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("linearsr: error:"), err
  assert __import__("re").search(expected, err[0]), err[0]
  assert _snapshot(workdir) == before


def test_a_workdir_that_is_a_file(tmp_path, capsys):
  workdir = _write(tmp_path / "run", "a file")
  assert main(["train", "--config", "configs/tiny.py", "--workdir", str(workdir), *SMALL]) == 2
  [line] = capsys.readouterr().err.strip().splitlines()
  assert line == f"linearsr: error: --workdir {workdir} is a file, not a directory"
  assert workdir.read_text() == "a file"


def test_a_read_only_workdir(tmp_path, capsys, monkeypatch):
  with _read_only(tmp_path / "run", monkeypatch) as workdir:
    assert main(["train", "--config", "configs/tiny.py", "--workdir", str(workdir), *SMALL]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"linearsr: error: --workdir {workdir} is not writable"), line
    assert sorted(p.name for p in workdir.iterdir()) == ["earlier.txt"]
