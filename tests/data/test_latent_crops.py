"""`linearsr data encode` and data.hr_latents="precomputed": stored crops are real crops of the
images, their latents are the latent space's, any host count writes the same records, and a
train step from stored latents is the step with the encoder in it."""

import json
import threading
import time

import jax
import numpy as np
import pytest

from linearsr_jax.commands import encode
from linearsr_jax.commands.cli import main
from linearsr_jax.configs.sana600m_x4 import get_config as sana600m
from linearsr_jax.configs.tiny import get_config as tiny
from linearsr_jax.data import latent_crops, pipeline, sources
from linearsr_jax.data.image_io import to_uint8
from linearsr_jax.errors import UserError
from linearsr_jax.models.latent_space import PIXEL_SCALE, PIXEL_SHIFT
from linearsr_jax.train.loop import Run
from linearsr_jax.train.state import create_train_state
from model_helpers import tiny_f32_dcae

TINY_F32 = tiny_f32_dcae(latent_channels=8, widths=(4, 8, 8, 16, 16, 16))


def _records(path):
  index = json.loads((path / latent_crops.INDEX).read_text())
  source = latent_crops.LatentCropSource(path, _tiny_data(), 48, 4)
  return index, {r["name"]: r for r in (source[i] for i in range(len(source)))}


def _tiny_data():
  return tiny().data


def _unshuffle_reference(hr, factor=4, shift=PIXEL_SHIFT, scale=PIXEL_SCALE):
  """Pixel unshuffle in float64 NumPy: channel index = (dy·f + dx)·3 + c, as torch's."""
  h, w, c = hr.shape
  x = (hr.astype(np.float64) * 2 - 1).reshape(h // factor, factor, w // factor, factor, c)
  x = x.transpose(0, 2, 4, 1, 3).reshape(h // factor, w // factor, c * factor * factor)
  return (x - shift) * scale


def _find_in(image_u8, crop_u8) -> bool:
  """Whether the crop is a window of the image under one of the 8 flips / rotations."""
  for flip in (False, True):
    for turns in range(4):
      # Undo the augmentation: rotate back, then flip back.
      window = np.rot90(crop_u8, -turns)
      window = window[:, ::-1] if flip else window
      c = window.shape[0]
      ys, xs = np.nonzero(
          np.all(image_u8[:-c + 1 or None, :-c + 1 or None] == window[0, 0], axis=-1))
      for y, x in zip(ys, xs):
        if np.array_equal(image_u8[y:y + c, x:x + c], window):
          return True
  return False


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
  out = tmp_path_factory.mktemp("latents") / "tiny"
  assert main([
      "data", "encode", "--config", "configs/tiny.py", "--out",
      str(out), "--crops_per_image", "2", "--batch", "3"
  ]) == 0
  return out


@pytest.mark.slow
def test_stored_crops_are_crops_of_the_images_and_their_latents_encode_them(encoded):
  index, records = _records(encoded)
  demo = sources.DemoSource("train", min_size=64)
  assert index["images"] == len(demo) and len(records) == 2 * len(demo)
  assert index["latent_shape"] == [16, 16, 48]
  for i in range(len(demo)):
    image = to_uint8(demo[i]["hr"])
    for k in range(2):
      record = records[f"{demo[i]['name']}#{k}"]
      assert record["hr"].shape == (64, 64, 3) and "lr" not in record
      assert _find_in(image, to_uint8(record["hr"])), record["name"]
      np.testing.assert_allclose(record["latent"], _unshuffle_reference(record["hr"]), atol=1e-6)
  # Two crops of one image are different crops (seeded by image and crop index).
  first = demo[0]["name"]
  assert not np.array_equal(records[f"{first}#0"]["hr"], records[f"{first}#1"]["hr"])


@pytest.mark.slow
def test_two_hosts_write_the_records_one_host_writes(encoded, tmp_path):
  config = tiny()
  out = tmp_path / "two"
  # Host 1 finishes first: latents.json appears only when host 0 sees every shard.
  encode.encode_crops(config, out, 2, process_index=1, process_count=2, progress=False)
  assert not (out / latent_crops.INDEX).exists()
  encode.encode_crops(config, out, 2, process_index=0, process_count=2, progress=False)
  index, two = _records(out)
  assert index["shards"] == [latent_crops.shard_name(p, 2) for p in range(2)]
  _, one = _records(encoded)
  assert two.keys() == one.keys()
  for name, record in one.items():
    np.testing.assert_array_equal(two[name]["hr"], record["hr"])
    np.testing.assert_array_equal(two[name]["latent"], record["latent"])


def test_host_0_writes_the_index_only_once_a_late_shard_is_there(tmp_path):
  """Host 0 of two, done first: the other host's shard turns up later (a slow host, or storage
  that shows it late), and the index waits for it; when it never comes, one line and no index."""
  shards = [latent_crops.shard_name(p, 2) for p in range(2)]
  index = {"format": "test", "shards": shards}
  (tmp_path / shards[0]).write_bytes(b"host 0")
  seen_at_arrival = []

  def arrive():
    seen_at_arrival.append((tmp_path / "index.json").exists())
    (tmp_path / shards[1]).write_bytes(b"host 1")

  late = threading.Timer(0.5, arrive)
  late.start()
  started = time.monotonic()
  latent_crops.write_index(tmp_path, "index.json", index, 0, 2, wait_seconds=30)
  late.join()
  assert seen_at_arrival == [False] and time.monotonic() - started >= 0.5
  assert json.loads((tmp_path / "index.json").read_text()) == index

  (tmp_path / "index.json").unlink()
  (tmp_path / shards[1]).unlink()
  with pytest.raises(
      UserError, match=rf"shard {shards[1]} is missing 0.2 s after every host "
      "finished writing, so no index.json was written"):
    latent_crops.write_index(tmp_path, "index.json", index, 0, 2, wait_seconds=0.2)
  assert not (tmp_path / "index.json").exists()
  # The other hosts write no index.
  latent_crops.write_index(tmp_path, "index.json", index, 1, 2, wait_seconds=0.2)
  assert not (tmp_path / "index.json").exists()


@pytest.mark.slow
def test_precomputed_batches_hold_latents_and_fresh_lr_images(encoded):
  data = _tiny_data()
  data.hr_latents, data.latents_path, data.batch_size = "precomputed", str(encoded), 4
  source = latent_crops.LatentCropSource(encoded, data, 48, 4)
  batches = iter(
      pipeline.make_train_dataset(source, data, lambda tags:
                                  (np.zeros(2, np.int32), np.zeros(2, bool)), 0, 1))
  batch = next(batches)
  assert set(batch) == {"hr_latent", "lr", "cond", "cond_mask"}
  assert batch["hr_latent"].shape == (4, 16, 16, 48) and batch["lr"].shape == (4, 16, 16, 3)
  # The degradation runs per element: a crop seen again gets another LR image.
  record = source[0]
  transform = source.train_transform(data, lambda tags: (np.zeros(2), np.zeros(2, bool)))
  a, b = (transform.random_map(record, np.random.default_rng(seed)) for seed in (1, 2))
  np.testing.assert_array_equal(a["hr_latent"], record["latent"])
  assert not np.array_equal(a["lr"], b["lr"])


def _sana_with_tiny_dcae(tmp_path):
  config = sana600m()
  config.model.update(depth=2, hidden=64, heads=2, cross_heads=2, cross_head_dim=32,
                      caption_channels=16, lr_stem_width=16, latent_channels=8, dtype="float32")
  config.latent.dcae = TINY_F32
  config.latent.dcae_random_init = True
  config.tags.max_tokens = 4
  config.data.update(crop_size=64, batch_size=8, num_workers=0, augment=True)
  config.data.eval.update(crop_size=64, batch_size=2)
  return config


@pytest.mark.slow
def test_a_step_from_stored_latents_is_the_step_with_the_encoder(tmp_path):
  config = _sana_with_tiny_dcae(tmp_path)
  encode.encode_crops(config, tmp_path / "latents", 2, batch_size=4, progress=False)
  encoder_run = Run(config, tmp_path / "a")
  config.data.hr_latents, config.data.latents_path = "precomputed", str(tmp_path / "latents")
  stored_run = Run(config, tmp_path / "b")
  source = stored_run.train_source
  transform = source.train_transform(config.data, stored_run.tokenize)
  records = [source[i] for i in range(8)]
  examples = [transform.random_map(r, np.random.default_rng(i)) for i, r in enumerate(records)]
  stored = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  # The same crops as pixels: the encoder runs inside the step.
  pixels = dict(stored, hr=np.stack([r["hr"] * 2 - 1 for r in records]).astype(np.float32))
  del pixels["hr_latent"]

  def one_step(run, batch):
    tx, _ = run.optimizer("moe")
    state, shardings = create_train_state(run.model, tx, 4, jax.random.PRNGKey(0), run.mesh,
                                          run.rules)
    step = run.jit_train_step("moe", shardings)
    with jax.set_mesh(run.mesh):
      state, metrics = step(state, pipeline.make_global_batch(batch, run.mesh), run.latent_params)
    return jax.device_get((state.params, metrics))

  (p_stored, m_stored), (p_pixels, m_pixels) = (one_step(stored_run,
                                                         stored), one_step(encoder_run, pixels))
  assert bool(m_stored["train/finite"])
  np.testing.assert_allclose(m_stored["train/loss"], m_pixels["train/loss"], rtol=1e-5)
  np.testing.assert_allclose(m_stored["train/grad_norm"], m_pixels["train/grad_norm"], rtol=1e-4)
  for a, b in zip(jax.tree.leaves(p_stored), jax.tree.leaves(p_pixels)):
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("overrides, message", [
    (["--config.data.hr_latents=precomputed"], "needs data.latents_path"),
    (["--config.data.hr_latents=stored"], "must be 'encode' or 'precomputed'"),
    (["--config.data.hr_latents=precomputed", "--config.data.latents_path=/nonexistent"
     ], "not a `linearsr data encode` output"),
    (["--config.data.hr_latents=precomputed", "--config.data.crop_size=32", "LATENTS"
     ], "crops of 64 px"),
])
def test_bad_latent_settings_are_one_line(encoded, tmp_path, capsys, overrides, message):
  overrides = [f"--config.data.latents_path={encoded}" if o == "LATENTS" else o for o in overrides]
  code = main(
      ["train", "--config", "configs/tiny.py", "--workdir",
       str(tmp_path / "run"), *overrides])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and message in err[0], err
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_encode_refuses_to_overwrite_and_rejects_stray_arguments(encoded, capsys):
  before = sorted(p.stat().st_mtime_ns for p in encoded.iterdir())
  assert main(["data", "encode", "--config", "configs/tiny.py", "--out", str(encoded)]) == 2
  assert "already exists" in capsys.readouterr().err
  assert sorted(p.stat().st_mtime_ns for p in encoded.iterdir()) == before
  assert main(["data", "degrade", "demo", "--out", str(encoded / "x"), "--bogus"]) == 2
  assert "unrecognized arguments: --bogus" in capsys.readouterr().err
