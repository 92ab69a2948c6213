"""`linearsr eval` end to end on small real images with constructed distortions."""

import csv
import hashlib
import json

import numpy as np
import pytest
import skimage.data
from PIL import Image

from linearsr_jax.commands import cli
from linearsr_jax.evaluate import evaluate

OFFSET = 10  # 8-bit levels added to every channel of the "SR" images


def _photo(index, size=64):
  """Real crops, kept inside [20, 230] so that adding OFFSET never clips."""
  image = (skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea())[index]
  crop = image[60:60 + size, 120:120 + size].astype(np.float64)
  return np.round(20 + crop * (210 / 255)).astype(np.uint8)


def _save(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


def _read_csv(path):
  with open(path, newline="") as f:
    return {row["name"]: row for row in csv.DictReader(f)}


def _hashes(root):
  return {
      p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
  }


def test_eval_sr_dir_constant_offset_gives_the_exact_psnr(tmp_path, capsys):
  for i, name in enumerate(["a", "b", "sub/c"]):
    hr = _photo(i)
    _save(tmp_path / "hr" / f"{name}.png", hr)
    # A different suffix on the SR side still pairs by name.
    _save(tmp_path / "sr" / f"{name}{'.bmp' if i == 1 else '.png'}", hr + OFFSET)
  code = cli.main([
      "eval", "--hr_dir",
      str(tmp_path / "hr"), "--sr_dir",
      str(tmp_path / "sr"), "--out",
      str(tmp_path / "out"), "--metrics", "psnr_rgb,psnr_y,ssim_rgb", "--no_progress"
  ])
  assert code == 0
  # Every pixel moves by OFFSET/255 in R, G and B, and by OFFSET/255 * 219/255 in BT.601 Y.
  expected_rgb = 20 * np.log10(255 / OFFSET)
  expected_y = 20 * np.log10(255 * 255 / (OFFSET * (65.481 + 128.553 + 24.966)))
  rows = _read_csv(tmp_path / "out" / "per_image.csv")
  assert sorted(rows) == ["a", "b", "sub/c"]
  for row in rows.values():
    assert row["status"] == "ok"
    assert float(row["psnr_rgb"]) == pytest.approx(expected_rgb, abs=1e-3)
    assert float(row["psnr_y"]) == pytest.approx(expected_y, abs=1e-3)
    assert 0.9 < float(row["ssim_rgb"]) < 1.0  # a shift lowers only SSIM's luminance term
  summary = json.loads((tmp_path / "out" / "summary.json").read_text())
  assert summary["scored"] == 3 and summary["failed"] == 0
  assert summary["mean"]["psnr_rgb"] == pytest.approx(expected_rgb, abs=1e-3)
  table = (tmp_path / "out" / "table.md").read_text()
  assert f"| sr | 3/3 | {expected_rgb:.2f} | {expected_y:.2f} |" in table
  assert table in capsys.readouterr().out


def test_bad_pairs_are_reported_per_image_and_the_rest_scored(tmp_path, capsys):
  hr_dir, sr_dir = tmp_path / "hr", tmp_path / "sr"
  for i, name in enumerate(["good", "small", "missing_sr", "corrupt"]):
    _save(hr_dir / f"{name}.png", _photo(i % 3))
  _save(sr_dir / "good.png", _photo(0) + OFFSET)
  _save(sr_dir / "small.png", _photo(1)[:48, :40])
  _save(sr_dir / "missing_hr.png", _photo(2))
  (sr_dir / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
  (sr_dir / "notes.txt").write_text("not an image: ignored, not a pair")
  before = _hashes(tmp_path)
  code = cli.main([
      "eval", "--hr_dir",
      str(hr_dir), "--sr_dir",
      str(sr_dir), "--out",
      str(tmp_path / "out"), "--metrics", "psnr_y,ssim_y,lpips_alex", "--no_progress"
  ])
  assert code == 1
  assert _hashes(tmp_path / "hr") == {p: h for p, h in before.items() if "hr" in p.parts}
  assert _hashes(sr_dir) == {p: h for p, h in before.items() if "sr" in p.parts}
  rows = _read_csv(tmp_path / "out" / "per_image.csv")
  assert set(rows) == {"good", "small", "missing_sr", "missing_hr", "corrupt"}
  assert rows["good"]["status"] == "ok"
  assert float(rows["good"]["psnr_y"]) == pytest.approx(20 * np.log10(255 * 255 / (OFFSET * 219.0)),
                                                        abs=1e-3)
  assert float(rows["good"]["lpips_alex"]) > 0
  failed = {name: row["error"] for name, row in rows.items() if row["status"] == "error"}
  assert "size mismatch: SR 40x48 vs HR 64x64" in failed["small"]
  assert "no SR image" in failed["missing_sr"]
  assert "no HR image" in failed["missing_hr"]
  assert "corrupt.png" in failed["corrupt"]
  assert all(rows[n]["psnr_y"] == "" for n in failed)
  err = capsys.readouterr().err
  for name in failed:
    assert f"linearsr eval: {name}: " in err
  summary = json.loads((tmp_path / "out" / "summary.json").read_text())
  assert (summary["scored"], summary["failed"]) == (1, 4)
  assert summary["mean"]["psnr_y"] == pytest.approx(float(rows["good"]["psnr_y"]))


def _keys_weight(t, a=-0.5):
  t = np.abs(t)
  return np.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
                  np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))


def _bicubic_float64(lr, scale):
  """Keys bicubic (a = -0.5) in float64, half-pixel centres, borders mirrored (MATLAB's
  'symmetric' padding: index -1 reads 0, index n reads n - 1)."""

  def axis_matrix(n_in):
    centres = (np.arange(n_in * scale) + 0.5) / scale - 0.5
    taps = np.floor(centres)[:, None] + np.arange(-1, 3)[None]
    weights = _keys_weight(centres[:, None] - taps)
    taps = np.where(taps < 0, -taps - 1, np.where(taps > n_in - 1, 2 * n_in - 1 - taps, taps))
    matrix = np.zeros((n_in * scale, n_in))
    np.add.at(matrix, (np.repeat(np.arange(n_in * scale), 4), taps.astype(int).ravel()),
              weights.ravel())
    return matrix

  return np.einsum("ih,hwc,jw->ijc", axis_matrix(lr.shape[0]), lr.astype(np.float64),
                   axis_matrix(lr.shape[1]))


def test_bicubic_upscaler_matches_float64_keys_kernel():
  lr = _photo(0, size=24).astype(np.float32) / 255
  sr = evaluate.bicubic_upscaler(4)(lr)
  assert sr.shape == (96, 96, 3)
  expected = np.round(np.clip(_bicubic_float64(lr, 4), 0, 1) * 255)
  got = sr * 255
  assert np.max(np.abs(got - expected)) <= 1  # 8-bit rounding at a .5 boundary
  assert np.mean(got != expected) < 0.01


def test_eval_lr_dir_bicubic_row_and_extra_scores(tmp_path):
  hr = _photo(1, size=64)
  _save(tmp_path / "hr" / "x.png", hr)
  _save(tmp_path / "lr" / "x.png", np.asarray(Image.fromarray(hr).resize((16, 16), Image.BICUBIC)))
  _save(tmp_path / "lr" / "y.png", _photo(2, size=16))
  (tmp_path / "nr.csv").write_text("name,musiq\nx.png,41.5\ny,7\n")
  code = cli.main([
      "eval", "--hr_dir",
      str(tmp_path / "hr"), "--lr_dir",
      str(tmp_path / "lr"), "--scale", "4", "--out",
      str(tmp_path / "out"), "--metrics", "psnr_y", "--extra_scores",
      str(tmp_path / "nr.csv"), "--no_progress"
  ])
  assert code == 1  # y.png has no HR image
  rows = _read_csv(tmp_path / "out" / "per_image.csv")
  upscaled = evaluate.bicubic_upscaler(4)(
      np.asarray(Image.open(tmp_path / "lr" / "x.png"), np.float32) / 255)
  y_ref = (np.dot(hr / 255.0, [65.481, 128.553, 24.966]) + 16) / 255
  y_sr = (np.dot(upscaled.astype(np.float64), [65.481, 128.553, 24.966]) + 16) / 255
  assert float(rows["x"]["psnr_y"]) == pytest.approx(10 * np.log10(1 / np.mean((y_ref - y_sr)**2)),
                                                     abs=1e-3)
  assert float(rows["x"]["musiq"]) == 41.5 and rows["y"]["musiq"] == ""
  summary = json.loads((tmp_path / "out" / "summary.json").read_text())
  assert summary["label"] == "bicubic" and summary["mean"]["musiq"] == 41.5
  assert "| bicubic | 1/2 |" in (tmp_path / "out" / "table.md").read_text()


@pytest.mark.parametrize("args,message", [
    (["--metrics", "psnr_y,musiq"], "unknown metric"),
    (["--extra_scores", "/nonexistent.csv"], "cannot read"),
    (["--out", "/dev/null/report"], "--out /dev/null/report: cannot create the folder (Not a "
     "directory)"),
])
def test_bad_arguments_exit_2(tmp_path, capsys, args, message):
  _save(tmp_path / "hr" / "a.png", _photo(0))
  _save(tmp_path / "sr" / "a.png", _photo(0))
  code = cli.main([
      "eval", "--hr_dir",
      str(tmp_path / "hr"), "--sr_dir",
      str(tmp_path / "sr"), "--out",
      str(tmp_path / "out"), "--no_progress", *args
  ])
  assert code == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_two_files_with_one_name_are_reported(tmp_path):
  _save(tmp_path / "hr" / "a.png", _photo(0))
  _save(tmp_path / "sr" / "a.png", _photo(0))
  _save(tmp_path / "sr" / "a.bmp", _photo(0))
  (pair,) = evaluate.match_pairs(tmp_path / "hr", tmp_path / "sr")
  assert pair.name == "a" and "several files named a.*" in pair.error
  (result,) = evaluate.evaluate_pairs([pair], metric_names=["psnr_y"], progress=False)
  assert result.scores == {} and result.error == pair.error
