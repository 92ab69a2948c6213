"""`linearsr upscale` and `linearsr eval --checkpoint` with a tiny trained run (trained_run.py)."""

import csv
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import skimage
from PIL import Image
from scipy import ndimage

from linearsr_jax.commands.cli import main
from linearsr_jax.data.image_io import read_image
from linearsr_jax.inference import tiling
from linearsr_jax.inference.trained import load_trained
from linearsr_jax.inference.upscale import UpscaleOptions, Upscaler
from repo_paths import REPO
from trained_run import trained_run

SCALE = 4


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def photo_lr():
  """A 1500×900 real photograph (astronaut, resized) downscaled ×4 to a 375×225 LR input.

  The LR side is kept at 375×225 (output 1500×900) so the test stays within its time budget;
  the tile logic is the same as for a 1500×900 LR input.
  """
  hr = skimage.transform.resize(skimage.data.astronaut(), (900, 1500), anti_aliasing=True)
  return skimage.transform.resize(hr, (225, 375), anti_aliasing=True).astype(np.float32)


def tile_edges(size, tile, overlap):
  """Output positions where an LR tile starts or ends inside the image."""
  starts = tiling.tile_starts(size, tile, overlap)
  edges = {s for s in starts if s > 0} | {s + tile for s in starts if s + tile < size}
  return sorted(e * SCALE for e in edges)


def seam_ratio(tiled, untiled, edges_y, edges_x):
  """Mean |gradient of the error| across tile edges over the mean elsewhere (as test_tiling.py).

  Tiled and untiled sampling draw different noise, so their error is mostly pixel noise; it is
  smoothed (Gaussian, sigma 4 px) first, which keeps a seam's step and averages the noise out.
  """
  error = ndimage.gaussian_filter((tiled - untiled).mean(-1), 4)
  ratios = []
  for axis, edges in ((0, edges_y), (1, edges_x)):
    per_step = np.abs(np.diff(error, axis=axis)).mean(axis=1 - axis)
    at_edge = np.zeros(per_step.shape, bool)
    at_edge[[e - 1 for e in edges]] = True  # the step from pixel e-1 to e crosses edge e
    ratios.append(per_step[at_edge].mean() / per_step[~at_edge].mean())
  return max(ratios)


@pytest.mark.slow
def test_tiled_photo_has_the_right_size_and_no_seam(run_dir, photo_lr):
  trained = load_trained(run_dir)
  assert trained.num_experts == 4
  tile, overlap = 128, 32
  tiled = Upscaler(trained, UpscaleOptions(tile=tile, overlap=overlap, color_fix="none"))
  assert tiled.tile_count(225, 375) == 3 * 4  # starts y: 0, 96, 97; x: 0, 96, 192, 247
  out = tiled(photo_lr)
  assert out.shape == (900, 1500, 3) and out.dtype == np.float32
  untiled = Upscaler(trained, UpscaleOptions(tile=512, overlap=0, color_fix="none"))
  assert untiled.tile_count(225, 375) == 1
  reference = untiled(photo_lr)
  edges_y, edges_x = tile_edges(225, tile, overlap), tile_edges(375, tile, overlap)
  assert seam_ratio(out, reference, edges_y, edges_x) < 1.5
  # the measure sees a seam where there is one: a 1 % step at every tile edge
  stepped = out.copy()
  for e in edges_x:
    stepped[:, e:] += 0.01
  assert seam_ratio(stepped, reference, edges_y, edges_x) > 3


_MEMORY_CHILD = textwrap.dedent("""
    import json, sys
    from bench.common import peak_rss_mib  # VmHWM: ru_maxrss would carry pytest's peak
    from linearsr_jax.commands.cli import main
    code = main(["upscale", *sys.argv[1:], "--no_progress"])
    print(json.dumps({"code": code, "peak_mib": peak_rss_mib()}))
""")


@pytest.mark.slow
def test_peak_memory_of_a_tiled_photo_in_a_subprocess(tmp_path, run_dir, photo_lr):
  # Stated bound: upscaling the 375×225 photo (1500×900 output) in 128 px LR tiles peaks under
  # 1.5 GiB resident for the whole process (JAX runtime and compiled sampler included; the
  # float32 output, weight map and colour-fix buffers are ~50 MiB).
  Image.fromarray((photo_lr * 255).round().astype(np.uint8)).save(tmp_path / "photo.png")
  # a clean environment: nothing that earlier tests or the training run put in os.environ
  env = {
      "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "JAX_PLATFORMS": "cpu",
      "TF_CPP_MIN_LOG_LEVEL": "3"
  }
  proc = subprocess.run([
      sys.executable, "-c", _MEMORY_CHILD,
      str(tmp_path / "photo.png"), "--checkpoint",
      str(run_dir), "--out",
      str(tmp_path / "out"), "--tile", "128", "--overlap", "32"
  ], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["code"] == 0
  assert read_image(tmp_path / "out" / "photo_x4.png").shape == (900, 1500, 3)
  assert result["peak_mib"] <= 1536, result


def digest(folder):
  return {
      p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
      for p in sorted(folder.rglob("*"))
      if p.is_file()
  }


@pytest.fixture
def messy_folder(tmp_path):
  """Good images (one in a sub-folder), a corrupt PNG, a text file named .jpg, an RGBA PNG."""
  src = tmp_path / "in"
  (src / "sub").mkdir(parents=True)
  photo = skimage.transform.resize(skimage.data.coffee(), (20, 28), anti_aliasing=True)
  photo8 = (photo * 255).round().astype(np.uint8)
  Image.fromarray(photo8).save(src / "good.png")
  Image.fromarray(photo8[:16, :12]).save(src / "sub" / "small.jpg", quality=90)
  (src / "corrupt.png").write_bytes((src / "good.png").read_bytes()[:60])
  (src / "notes.jpg").write_text("not an image\n")
  rgba = np.dstack([photo8, np.full(photo8.shape[:2], 128, np.uint8)])
  Image.fromarray(rgba, "RGBA").save(src / "alpha.png")
  return src


def run_cli(*args):
  proc = subprocess.run([sys.executable, "-m", "linearsr_jax.commands.cli", *map(str, args)],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.slow
def test_folder_with_bad_files(tmp_path, run_dir, messy_folder):
  out = tmp_path / "out"
  out.mkdir()
  (out / "alpha_x4.png").write_bytes(b"an existing output")
  before = digest(messy_folder)
  code, stdout, stderr = run_cli("upscale", messy_folder, "--checkpoint", run_dir, "--out", out,
                                 "--tile", "16", "--overlap", "4", "--no_progress")
  assert code == 1, stderr
  assert digest(messy_folder) == before  # inputs untouched
  assert read_image(out / "good_x4.png").shape == (80, 112, 3)
  assert read_image(out / "sub" / "small_x4.png").shape == (64, 48, 3)
  assert (out / "alpha_x4.png").read_bytes() == b"an existing output"  # skipped
  assert "corrupt.png" in stderr and "notes.jpg" in stderr and "skip" in stderr
  assert "upscaled 2, skipped 1 existing, failed 2" in stdout
  assert sorted(
      p.name for p in out.rglob("*")) == ["alpha_x4.png", "good_x4.png", "small_x4.png",
                                          "sub"]  # no temporary files left
  # --overwrite replaces the existing output; with only good inputs the exit code is 0
  assert main([
      "upscale",
      str(messy_folder / "alpha.png"),
      str(messy_folder / "good.png"), "--checkpoint",
      str(run_dir), "--out",
      str(out), "--tile", "16", "--overlap", "4", "--overwrite", "--no_progress"
  ]) == 0
  assert read_image(out / "alpha_x4.png").shape == (80, 112, 3)
  assert digest(messy_folder) == before


@pytest.mark.slow
def test_output_over_an_input_is_refused(tmp_path, run_dir, messy_folder, capsys):
  target = messy_folder / "good_x4.png"
  target.write_bytes((messy_folder / "good.png").read_bytes())
  before = digest(messy_folder)
  assert main([
      "upscale",
      str(messy_folder / "good.png"),
      str(target), "--checkpoint",
      str(run_dir), "--out",
      str(messy_folder), "--overwrite", "--tile", "16", "--overlap", "4", "--no_progress"
  ]) == 1
  assert "would overwrite an input" in capsys.readouterr().err
  assert digest(messy_folder) == {
      **before, Path("good_x4_x4.png"): digest(messy_folder)[Path("good_x4_x4.png")]
  }


@pytest.mark.slow
def test_eval_reads_each_lr_images_tags_beside_it(tmp_path, run_dir, photo_pairs):
  """As upscale does: with no --tags, each LR image's IMAGE.txt gives its tags. Each image
  then scores what it scores alone with those tags given by --tags, and not what the null
  condition gives."""
  names = sorted(p.stem for p in (photo_pairs / "LR").iterdir())
  tags = dict(zip(names, ["cat, whiskers, fur", "rocket, launch pad, sky"]))

  def folder(name, images, sidecars):
    for kind in ("LR", "HR"):
      (tmp_path / name / kind).mkdir(parents=True)
      for image in images:
        (tmp_path / name / kind / f"{image}.png").write_bytes(
            (photo_pairs / kind / f"{image}.png").read_bytes())
    for image in images if sidecars else ():
      (tmp_path / name / "LR" / f"{image}.txt").write_text(tags[image])
    return tmp_path / name

  def scores(pairs, *extra):
    out = tmp_path / f"report_{len(list(tmp_path.iterdir()))}"
    assert main([
        "eval", "--checkpoint",
        str(run_dir), "--lr_dir",
        str(pairs / "LR"), "--hr_dir",
        str(pairs / "HR"), "--out",
        str(out), "--metrics", "psnr_y", "--no_progress", *extra
    ]) == 0
    return {
        r["name"]: float(r["psnr_y"])
        for r in csv.DictReader(io.StringIO((out / "per_image.csv").read_text()))
    }

  from_sidecars = scores(folder("sidecars", names, True))
  untagged = scores(folder("untagged", names, False))
  for name in names:
    alone = scores(folder(f"alone_{name}", [name], False), "--tags", tags[name])
    assert from_sidecars[name] == alone[name]
  assert from_sidecars != untagged


@pytest.mark.slow
def test_eval_with_a_checkpoint_on_photo_pairs(tmp_path, run_dir, photo_pairs, monkeypatch):
  bench = photo_pairs
  names = sorted(p.name for p in (bench / "LR").iterdir())
  for kind in ("LR", "HR"):
    (tmp_path / kind).mkdir()
    for name in names:
      (tmp_path / kind / name).write_bytes((bench / kind / name).read_bytes())
  out = tmp_path / "report"
  monkeypatch.chdir(tmp_path)  # relative paths, as typed (Orbax itself wants absolute ones)
  assert main([
      "eval", "--checkpoint",
      os.path.relpath(run_dir), "--lr_dir", "LR", "--hr_dir", "HR", "--out", "report", "--metrics",
      "psnr_y,ssim_y", "--no_progress"
  ]) == 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["scored"] == 2 and summary["label"] == "linearsr"
  assert "moe step 2" in summary["settings"]["upsampler"]
  # The bicubic row beside the model's is the one `eval --lr_dir` alone gives.
  assert main([
      "eval", "--lr_dir", "LR", "--hr_dir", "HR", "--out", "bicubic", "--metrics", "psnr_y,ssim_y",
      "--no_progress"
  ]) == 0
  bicubic = json.loads((tmp_path / "bicubic" / "summary.json").read_text())
  assert summary["baseline"]["mean"] == bicubic["mean"] and summary["baseline"]["scored"] == 2
  assert summary["baseline"]["mean"] != summary["mean"]
  table = (out / "table.md").read_text().splitlines()
  assert [row.split(" | ")[0] for row in table[2:]] == ["| bicubic", "| linearsr"]
  rows = list(csv.DictReader(io.StringIO((out / "per_image.csv").read_text())))
  assert len(rows) == 2 and list(rows[0]) == [
      "name", "status", "psnr_y", "ssim_y", "bicubic_psnr_y", "bicubic_ssim_y", "error"
  ]
  assert np.mean([float(r["bicubic_psnr_y"]) for r in rows
                 ]) == pytest.approx(bicubic["mean"]["psnr_y"])
  # an almost untrained model on the LR-anchored flow stays near bicubic
  assert 20 < summary["mean"]["psnr_y"] < 35


@pytest.mark.slow
def test_host_memory_holds_about_one_output_copy(run_dir):
  """The tiles' sum is the result: the colour fix and the 8-bit conversion work in it band by
  band. NumPy's peak while a 2048×256 output is made (tracemalloc) stays under 1.6 float32
  copies of it; building it as separate arrays (the blend, the [0, 1] mapping, the clip, the
  upsampled reference, the wavelet levels, the 8-bit rounding) took six or more."""
  import tracemalloc

  from linearsr_jax.data.image_io import to_uint8
  upscaler = Upscaler(load_trained(run_dir), UpscaleOptions(tile=64, overlap=16))
  lr = np.random.default_rng(0).random((512, 64, 3), dtype=np.float32)
  upscaler(lr[:64])  # compiled outside the measurement
  tracemalloc.start()
  try:
    sr = upscaler(lr)
    image = to_uint8(sr)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert image.shape == (2048, 256, 3)
  assert peak < 1.6 * sr.nbytes, peak / sr.nbytes


def header_only_png(path, width, height):
  """A PNG whose header declares width×height RGB pixels and that holds no pixel data."""

  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)))

  path.write_bytes(b"\x89PNG\r\n\x1a\n" +
                   chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) +
                   chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.slow
def test_images_that_cannot_be_upscaled_fail_a_line_each_and_the_rest_are_done(
    tmp_path, run_dir, messy_folder, monkeypatch, capsys):
  """Over --max_output_pixels (refused from the header: never decoded), a decompression bomb
  (40000² in a few bytes), an output whose folder cannot be made: each one line, exit 1."""
  from linearsr_jax.data import image_io
  src = messy_folder
  (src / "corrupt.png").unlink()
  (src / "notes.jpg").unlink()
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(src / "large.png")  # 160² = 25600 px
  header_only_png(src / "bomb.png", 40000, 40000)
  out = tmp_path / "out"
  out.mkdir()
  (out / "sub").write_text("a file where sub/small_x4.png's folder would go")
  decoded = []
  decode = image_io.decode_image
  monkeypatch.setattr(image_io, "decode_image",
                      lambda data, name="image": decoded.append(name) or decode(data, name))
  assert main([
      "upscale",
      str(src), "--checkpoint",
      str(run_dir), "--out",
      str(out), "--tile", "16", "--overlap", "4", "--max_output_pixels", "20000", "--no_progress"
  ]) == 1
  captured = capsys.readouterr()
  assert "upscaled 2, skipped 0 existing, failed 3" in captured.out
  assert sorted(p.name for p in out.iterdir()) == ["alpha_x4.png", "good_x4.png", "sub"]
  assert read_image(out / "good_x4.png").shape == (80, 112, 3)  # 8960 px, under the limit
  failed = captured.err.strip().splitlines()[-3:]  # the failures are listed last
  assert failed[0].startswith(f"linearsr: failed: {src / 'bomb.png'}: "), captured.err
  assert "decompression bomb" in failed[0]
  assert failed[1] == (f"linearsr: failed: {src / 'large.png'}: 40x40 at x4 makes 25600 output "
                       "pixels, over --max_output_pixels 20000")
  assert failed[2].startswith(f"linearsr: failed: {src / 'sub' / 'small.jpg'}: cannot write "
                              f"{out / 'sub' / 'small_x4.png'}"), captured.err
  assert all(Path(name).name not in ("large.png", "bomb.png") for name in map(str, decoded))


@pytest.mark.slow
def test_inputs_with_the_same_output_name_are_refused_before_any_work(tmp_path, run_dir,
                                                                      messy_folder, capsys):
  Image.open(messy_folder / "good.png").convert("RGB").save(messy_folder / "good.jpg")
  out = tmp_path / "out"
  assert main([
      "upscale",
      str(messy_folder), "--checkpoint",
      str(run_dir), "--out",
      str(out), "--no_progress"
  ]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [
      f"linearsr: error: {messy_folder / 'good.jpg'} and {messy_folder / 'good.png'} "
      "would both be written as good_x<scale>: rename one, or upscale them into "
      "separate --out folders"
  ]
  assert not out.exists()


@pytest.mark.slow
def test_an_unusable_out_and_a_damaged_run_config_are_one_line(tmp_path, run_dir, messy_folder,
                                                               capsys):
  good = str(messy_folder / "good.png")
  (tmp_path / "file").write_text("not a folder")
  assert main([
      "upscale", good, "--checkpoint",
      str(run_dir), "--out",
      str(tmp_path / "file" / "out"), "--no_progress"
  ]) == 2
  damaged = tmp_path / "run"
  shutil.copytree(run_dir, damaged)
  (damaged / "config.json").write_text('{"model": {"depth": 1,')  # cut short
  assert main([
      "upscale", good, "--checkpoint",
      str(damaged), "--out",
      str(tmp_path / "out"), "--no_progress"
  ]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 2, err
  assert err[0] == (f"linearsr: error: --out {tmp_path / 'file' / 'out'}: cannot create the "
                    "folder (Not a directory)")
  assert err[1].startswith(f"linearsr: error: {damaged / 'config.json'}: damaged JSON ("), err
  assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
