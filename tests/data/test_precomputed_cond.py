"""`tags.encoder = "precomputed"` end to end: [L, C] arrays from IMAGE.npy sidecars or one
mapping file reach the batches, a tiny run trains on them, and `linearsr eval --checkpoint` /
`linearsr upscale` use them; bad arrays are one-line errors naming the file.

Every expectation is built here from the arrays written with NumPy (zero-padded to max_tokens,
mask = the rows present), never from the code under test.
"""

import csv
import json
import math
import os
import shutil
import struct
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from linearsr_jax.commands.cli import main
from linearsr_jax.data import eval_set, pipeline
from linearsr_jax.data.conditions import make_condition
from linearsr_jax.data.image_io import read_image
from linearsr_jax.data.tag_sources import read_array
from linearsr_jax.errors import UserError
from linearsr_jax.inference.trained import load_trained
from linearsr_jax.inference.upscale import UpscaleOptions, Upscaler, check_condition_flags
from repo_paths import REPO
from trained_run import tiny_run_config

C = 16  # model.caption_channels of the tiny precomputed model
L_MAX = 4  # tags.max_tokens


def write_images(folder, names, size=40, seed=0):
  rng = np.random.default_rng(seed)
  for name in names:
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / name)


def random_array(rows, seed):
  return np.random.default_rng(seed).normal(0.0, 3.0, (rows, C)).astype(np.float32)


def padded(array):
  """What the model must receive for `array` (None: the null condition)."""
  rows = 0 if array is None else len(array)
  tokens = np.zeros((L_MAX, C), np.float32)
  if rows:
    tokens[:rows] = array
  return tokens, np.arange(L_MAX) < rows


def tags_config():
  return ml_collections.ConfigDict(dict(encoder="precomputed", vocab_size=64, max_tokens=L_MAX))


def data_config(folder):
  cfg = pipeline.default_config()
  for section in (cfg.source, cfg.eval_source):
    section.kind, section.path = "folder", str(folder)
  cfg.crop_size, cfg.batch_size, cfg.eval.crop_size = 32, 4, 32
  cfg.degradation.mode = "bicubic"
  return cfg


@pytest.fixture
def sidecar_folder(tmp_path):
  """Four images: arrays as STEM.npy, NAME.npy and in a sub-folder; one image without any."""
  folder = tmp_path / "photos"
  write_images(folder, ["a.png", "b.png", "sub/c.jpg", "d.png"])
  arrays = {
      "a.png": random_array(2, 1), "b.png": random_array(L_MAX, 2), "sub/c.jpg": random_array(1, 3)
  }
  np.save(folder / "a.npy", arrays["a.png"])
  np.save(folder / "b.png.npy", arrays["b.png"])
  np.save(folder / "sub" / "c.npy", arrays["sub/c.jpg"])
  return folder, arrays


def assert_carries(examples, arrays):
  for example in examples:
    tokens, mask = padded(arrays.get(example["name"]))
    np.testing.assert_array_equal(example["cond"], tokens)
    np.testing.assert_array_equal(example["cond_mask"], mask)


def rows(batch):
  return sorted(batch["cond"][i].tobytes() + batch["cond_mask"][i].tobytes()
                for i in range(len(batch["cond"])))


def test_batches_carry_the_sidecar_arrays(sidecar_folder):
  folder, arrays = sidecar_folder
  cfg = data_config(folder)
  condition = make_condition(tags_config(), C)
  source = pipeline.make_source(cfg, "train", "precomputed")
  assert len(source) == 4 and not any(source.skipped.values())  # sidecars are not "skipped"
  with pytest.warns(UserWarning, match="no precomputed array"):
    examples = eval_set.make_eval_examples(pipeline.make_source(cfg, "eval", "precomputed"), cfg,
                                           condition)
  assert sorted(e["name"] for e in examples) == ["a.png", "b.png", "d.png", "sub/c.jpg"]
  assert_carries(examples, arrays)
  # Training batches (grain threads): one batch is one shuffled epoch of the four images.
  batch = next(iter(pipeline.make_train_dataset(source, cfg, condition, 0, 1)))
  assert batch["cond"].shape == (4, L_MAX, C) and batch["cond"].dtype == np.float32
  expected = [padded(arrays.get(name)) for name in ("a.png", "b.png", "sub/c.jpg", "d.png")]
  assert rows(batch) == sorted(t.tobytes() + m.tobytes() for t, m in expected)


def save_mapping(path, arrays):
  if path.suffix == ".npz":
    np.savez(path, **arrays)
  else:
    from safetensors.numpy import save_file
    save_file(arrays, str(path))


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_a_mapping_file_gives_each_image_its_array(tmp_path, suffix):
  folder = tmp_path / "photos"
  write_images(folder, ["sub/a.png", "b.png", "c.png", "d.png"])
  arrays = {
      "sub/a.png": random_array(3, 4), "b.png": random_array(1, 5), "c.png": random_array(2, 6)
  }
  # keyed by the path relative to the root, the file name, and the stem
  mapping = tmp_path / f"arrays{suffix}"
  save_mapping(mapping,
               {"sub/a.png": arrays["sub/a.png"], "b.png": arrays["b.png"], "c": arrays["c.png"]})
  cfg = data_config(folder)
  cfg.tags.kind, cfg.tags.mapping = "mapping", str(mapping)
  examples = eval_set.make_eval_examples(pipeline.make_source(cfg, "eval", "precomputed"), cfg,
                                         make_condition(tags_config(), C))
  assert len(examples) == 4
  assert_carries(examples, arrays)


def test_sources_without_image_files_give_the_null_condition():
  cfg = pipeline.default_config()
  cfg.eval.crop_size = 32  # the demo photos, held out: no files to find arrays beside
  with pytest.warns(UserWarning, match="no precomputed array"):
    examples = eval_set.make_eval_examples(pipeline.make_source(cfg, "eval", "precomputed"), cfg,
                                           make_condition(tags_config(), C))
  assert len(examples) == 2
  assert_carries(examples, {})


def write_bad_array(path, kind):
  bad = {
      "wide": np.zeros((2, C + 1), np.float32),
      "nan": np.where(np.eye(2, C) > 0, np.nan, 1.0).astype(np.float32), "cube": np.zeros(
          (1, 2, C), np.float32)
  }[kind]
  np.save(path, bad)


@pytest.mark.slow
@pytest.mark.parametrize("kind,workers", [("wide", 0), ("nan", 0), ("cube", 0), ("nan", 1)])
def test_a_bad_array_stops_the_training_batches_with_one_line(tmp_path, kind, workers):
  folder = tmp_path / "photos"
  write_images(folder, ["a.png", "b.png", "c.png", "d.png"])
  write_bad_array(folder / "c.npy", kind)
  cfg = data_config(folder)
  cfg.num_workers = workers
  source = pipeline.make_source(cfg, "train", "precomputed")
  batches = pipeline.make_train_dataset(source, cfg, make_condition(tags_config(), C), 0, 1)
  with pytest.raises(UserError) as error:
    next(iter(batches))
  message = str(error.value)
  assert "\n" not in message and message.startswith(str(folder / "c.npy"))
  assert {"wide": "shape (2, 17)", "nan": "non-finite", "cube": "shape (1, 2, 16)"}[kind] in message


# ----------------------------------------------------------------------- a trained model


def precomputed_config(folder):
  config = tiny_run_config()
  config.model.caption_channels = C
  config.tags.encoder, config.tags.max_tokens = "precomputed", L_MAX
  for section in (config.data.source, config.data.eval_source):
    section.kind, section.path = "folder", str(folder)
  config.data.eval.crop_size = 32
  config.data.degradation.mode = "bicubic"
  config.stage_order = "pretrain"
  # No warm-up and a large step, so four steps leave the condition a visible effect.
  config.optimizer.warmup_steps, config.optimizer.learning_rate = 0, 1e-2
  return config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  from linearsr_jax.train import loop

  root = tmp_path_factory.mktemp("precomputed_run")
  folder = root / "photos"
  names = [f"p{i}.png" for i in range(8)]
  write_images(folder, names)
  for i, name in enumerate(names[:6]):
    np.save(folder / name.replace(".png", ".npy"), random_array(1 + i % L_MAX, 10 + i))
  loop.run(precomputed_config(folder), root / "run")
  return root / "run"


@pytest.mark.slow
def test_a_precomputed_run_trains_and_checkpoints(run_dir):
  config = json.loads((run_dir / "config.json").read_text())
  assert config["tags"]["encoder"] == "precomputed"
  losses = [
      row["train/loss"]
      for row in map(json.loads, (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines())
      if "train/loss" in row
  ]
  assert losses and all(math.isfinite(loss) for loss in losses)
  assert (run_dir / "pretrain" / "checkpoints" / "4" / "state").is_dir()


def lr_hr_pairs(folder, names, seed=1):
  """16 px LR images and 64 px HR images of the same names."""
  write_images(folder / "LR", names, size=16, seed=seed)
  write_images(folder / "HR", names, size=64, seed=seed + 1)
  return folder / "LR", folder / "HR"


def eval_psnr(lr_dir, hr_dir, out, run_dir, *extra):
  code = main([
      "eval", "--hr_dir",
      str(hr_dir), "--lr_dir",
      str(lr_dir), "--checkpoint",
      str(run_dir), "--out",
      str(out), "--metrics", "psnr_rgb", "--no_progress", *extra
  ])
  with open(out / "per_image.csv", newline="") as f:
    return code, {row["name"]: row for row in csv.DictReader(f)}


@pytest.mark.slow
def test_eval_takes_each_lr_images_array_from_its_sidecar_or_a_mapping(tmp_path, run_dir):
  plain, hr_dir = lr_hr_pairs(tmp_path, ["x.png", "y.png"])
  array = random_array(3, 20)
  with_sidecar = tmp_path / "with_sidecar"
  shutil.copytree(plain, with_sidecar)
  np.save(with_sidecar / "x.npy", array)
  np.savez(tmp_path / "arrays.npz", x=array)
  code, null = eval_psnr(plain, hr_dir, tmp_path / "null", run_dir)
  assert code == 0
  code, sidecar = eval_psnr(with_sidecar, hr_dir, tmp_path / "sidecar", run_dir)
  assert code == 0
  code, mapped = eval_psnr(plain, hr_dir, tmp_path / "mapped", run_dir, "--cond_mapping",
                           str(tmp_path / "arrays.npz"))
  assert code == 0
  assert sidecar["x"]["psnr_rgb"] == mapped["x"]["psnr_rgb"] != null["x"]["psnr_rgb"]
  assert sidecar["y"]["psnr_rgb"] == mapped["y"]["psnr_rgb"] == null["y"]["psnr_rgb"]


def upscale(inputs, out, run_dir, *extra):
  return main([
      "upscale", *map(str, inputs), "--checkpoint",
      str(run_dir), "--out",
      str(out), "--color_fix", "none", "--no_progress", *extra
  ])


@pytest.mark.slow
def test_upscale_cond_feeds_the_array_to_the_model(tmp_path, run_dir):
  write_images(tmp_path / "in", ["p.png"], size=16)
  photo = tmp_path / "in" / "p.png"
  array = random_array(2, 30)
  np.save(tmp_path / "a.npy", array)
  assert upscale([photo], tmp_path / "cond", run_dir, "--cond", str(tmp_path / "a.npy")) == 0
  assert upscale([photo], tmp_path / "null", run_dir) == 0
  np.save(tmp_path / "in" / "p.npy", array)
  assert upscale([photo], tmp_path / "sidecar", run_dir) == 0
  with_cond = read_image(tmp_path / "cond" / "p_x4.png")
  # The model given the NumPy-padded array directly, as the CLI runs it.
  upscaler = Upscaler(load_trained(run_dir), UpscaleOptions(color_fix="none"))
  expected = upscaler(read_image(photo), padded(array))
  np.testing.assert_allclose(with_cond, expected, atol=0.5 / 255 + 1e-6)
  np.testing.assert_array_equal(read_image(tmp_path / "sidecar" / "p_x4.png"), with_cond)
  assert np.abs(read_image(tmp_path / "null" / "p_x4.png") - with_cond).max() > 0


@pytest.mark.slow
def test_tools_report_bad_arrays_per_image_and_finish_the_rest(tmp_path, run_dir, capsys):
  names = ["good.png", "wide.png", "nan.png", "cube.png"]
  lr_dir, hr_dir = lr_hr_pairs(tmp_path, names)
  for kind in ("wide", "nan", "cube"):
    write_bad_array(lr_dir / f"{kind}.npy", kind)
  assert upscale([lr_dir], tmp_path / "up", run_dir) == 1
  err = capsys.readouterr().err
  assert [p.name for p in (tmp_path / "up").iterdir()] == ["good_x4.png"]
  for kind in ("wide", "nan", "cube"):
    assert f"failed: {lr_dir / kind}.png: {lr_dir / kind}.npy: condition array" in err
  code, results = eval_psnr(lr_dir, hr_dir, tmp_path / "report", run_dir)
  assert code == 1 and results["good"]["status"] == "ok"
  for kind in ("wide", "nan", "cube"):
    assert results[kind]["status"] == "error"
    assert results[kind]["error"].startswith(f"{lr_dir / kind}.npy: condition array")


def write_npy_header(path, header: str, version=(1, 0)):
  """An .npy file of `header` (NumPy's dict literal) and 64 bytes of data."""
  text = header.encode("latin1")
  text += b" " * (-(len(text) + 11) % 64) + b"\n"
  size = struct.pack("<H" if version == (1, 0) else "<I", len(text))
  path.write_bytes(b"\x93NUMPY" + bytes(version) + size + text + bytes(64))


def test_an_npy_file_with_a_huge_header_or_shape_is_one_line(tmp_path):
  write_npy_header(
      tmp_path / "header.npy", "{'descr': '<f4', 'fortran_order': False, "
      "'shape': (2, 16), " + " " * 100_000 + "}", version=(2, 0))
  write_npy_header(tmp_path / "shape.npy",
                   "{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000, 4), }")
  for kind in ("header", "shape"):
    with pytest.raises(UserError) as error:
      read_array(tmp_path / f"{kind}.npy")
    message = str(error.value)
    assert "\n" not in message and message.startswith(
        f"{tmp_path / kind}.npy: not a readable .npy array ("), message


@pytest.mark.slow
def test_npy_sidecars_with_a_huge_header_or_shape_fail_one_line_each(tmp_path, run_dir, capsys):
  """A header larger than NumPy reads safely, and one that declares 1.6 TB of data in a small
  file (which np.load would try to allocate), beside a good image: each one line, and the good
  image done."""
  names = ["good.png", "header.png", "shape.png"]
  write_images(tmp_path / "in", names, size=16)
  write_npy_header(
      tmp_path / "in" / "header.npy", "{'descr': '<f4', 'fortran_order': False, "
      "'shape': (2, 16), " + " " * 100_000 + "}", version=(2, 0))
  write_npy_header(tmp_path / "in" / "shape.npy",
                   "{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000, 4), }")
  assert upscale([tmp_path / "in"], tmp_path / "up", run_dir) == 1
  err = capsys.readouterr().err
  assert "Traceback" not in err
  assert [p.name for p in (tmp_path / "up").iterdir()] == ["good_x4.png"]
  failed = err.strip().splitlines()[-2:]  # the failures are listed last, a line each
  for line, kind in zip(failed, ("header", "shape")):
    assert line.startswith(f"linearsr: failed: {tmp_path / 'in' / kind}.png: "
                           f"{tmp_path / 'in' / kind}.npy: not a readable .npy array"), err


@pytest.mark.slow
def test_tools_refuse_a_condition_of_the_other_encoder_in_one_line(tmp_path, run_dir, capsys):
  write_images(tmp_path, ["p.png"], size=16)
  write_bad_array(tmp_path / "cube.npy", "cube")
  assert upscale([tmp_path / "p.png"], tmp_path / "out", run_dir, "--cond",
                 str(tmp_path / "cube.npy")) == 2
  assert upscale([tmp_path / "p.png"], tmp_path / "out", run_dir, "--tags", "dog, grass") == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert lines[-2] == (f"linearsr: error: {tmp_path / 'cube.npy'}: condition array has shape "
                       f"(1, 2, {C}), expected [L, {C}] with L <= {L_MAX} (tags.max_tokens)")
  assert lines[-1].startswith("linearsr: error: --tags: this model takes precomputed arrays")
  with pytest.raises(UserError, match="--cond: this model hashes tags"):
    check_condition_flags("hash", None, "a.npy", "--cond")


@pytest.mark.slow
def test_training_cli_stops_on_a_bad_array_with_one_line_and_exit_2(tmp_path):
  """A real `linearsr train`, the array read in a grain worker process."""
  train, held_out = tmp_path / "train", tmp_path / "eval"
  write_images(train, [f"p{i}.png" for i in range(4)])
  write_images(held_out, ["q.png"])
  write_bad_array(train / "p2.npy", "nan")
  overrides = {
      "model.depth": 1, "model.hidden": 64, "model.heads": 2, "model.cross_heads": 2,
      "model.caption_channels": C, "tags.encoder": "precomputed", "tags.max_tokens": L_MAX,
      "data.source.kind": "folder", "data.source.path": train, "data.eval_source.kind": "folder",
      "data.eval_source.path": held_out, "data.crop_size": 32, "data.batch_size": 4,
      "data.eval.crop_size": 32, "data.num_workers": 1, "data.degradation.mode": "bicubic",
      "stage_order": "pretrain", "stages.pretrain.max_steps": 2, "train.eval_steps": 1,
      "diffusion.sampler.steps": 1
  }
  env = {
      "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "JAX_PLATFORMS": "cpu",
      "TF_CPP_MIN_LOG_LEVEL": "3"
  }
  proc = subprocess.run([
      sys.executable, "-m", "linearsr_jax.commands.cli", "train", "--config", "configs/tiny.py",
      "--workdir",
      str(tmp_path / "run"), *(f"--config.{k}={v}" for k, v in overrides.items())
  ], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines()[-1] == (
      f"linearsr: error: {train / 'p2.npy'}: condition array has non-finite values (NaN or inf)")
