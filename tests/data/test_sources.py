"""Image sources and tag sources on small folders built here, the demo set and RealSR."""

import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from linearsr_jax.data import image_io, sources, tag_sources
from linearsr_jax.errors import UserError


def _rgb(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def mixed_folder(tmp_path):
  """Five usable images (one per awkward kind) and five files that must be skipped."""
  root = tmp_path / "hr"
  (root / "sub").mkdir(parents=True)
  Image.fromarray(_rgb(40, 48)).save(root / "plain.jpg", quality=90)
  cv2.imwrite(str(root / "sub" / "deep16.png"),
              np.random.default_rng(1).integers(0, 65536, (40, 44, 3), dtype=np.uint16))
  Image.fromarray(_rgb(36, 40)[..., 0]).save(root / "gray.png")
  Image.fromarray(np.dstack([_rgb(40, 40), np.full((40, 40), 128, np.uint8)]),
                  "RGBA").save(root / "alpha.png")
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 degrees clockwise to display
  Image.fromarray(_rgb(32, 56)).save(root / "sub" / "rotated.jpg", exif=exif)
  good = (root / "plain.jpg").read_bytes()
  (root / "corrupt.jpg").write_bytes(good[:len(good) // 3])
  (root / "notes.txt").write_text("shopping list\n")
  (root / "fake.png").write_text("this is not a PNG\n")
  Image.fromarray(_rgb(20, 60)).save(root / "small.png")
  (root / "plain.txt").write_text("dog, frisbee")  # sidecar: neither an image nor skipped
  return root


def test_folder_loads_good_images_and_reports_the_rest(mixed_folder, caplog):
  with caplog.at_level(logging.WARNING):
    src = sources.FolderSource(mixed_folder, min_size=32)
  assert sorted(
      src.names) == ["alpha.png", "gray.png", "plain.jpg", "sub/deep16.png", "sub/rotated.jpg"]
  skipped = {why: sorted(p.name for p in paths) for why, paths in src.skipped.items() if paths}
  assert skipped == {
      "unreadable": ["corrupt.jpg"], "not_image": ["fake.png", "notes.txt"],
      "too_small": ["small.png"]
  }
  assert "skipped 4 of 9 files" in caplog.text
  records = {src.names[i]: src[i] for i in range(len(src))}
  for record in records.values():
    assert record["hr"].dtype == np.float32 and record["hr"].shape[2] == 3
    assert 0 <= record["hr"].min() and record["hr"].max() <= 1
  assert records["sub/rotated.jpg"]["hr"].shape == (56, 32, 3)  # shown upright
  assert records["plain.jpg"]["tags"] == ["dog", "frisbee"]
  assert records["gray.png"]["tags"] == []
  deep = records["sub/deep16.png"]["hr"]
  assert len(np.unique(deep)) > 1000  # 16-bit levels kept, not cut to 256


def test_header_only_scan_misses_truncation_but_finds_the_rest(mixed_folder):
  src = sources.FolderSource(mixed_folder, min_size=32, verify=False)
  assert "corrupt.jpg" in src.names  # only decoding finds it
  assert sorted(p.name for p in src.skipped["not_image"]) == ["fake.png", "notes.txt"]


def test_folder_without_usable_images_is_an_error(tmp_path):
  (tmp_path / "readme.md").write_text("hi")
  Image.fromarray(_rgb(8, 8)).save(tmp_path / "tiny.png")
  with pytest.raises(UserError, match="no usable image"):
    sources.FolderSource(tmp_path, min_size=16)
  with pytest.raises(UserError, match="no such image folder"):
    sources.FolderSource(tmp_path / "missing")


def test_tag_mappings(tmp_path):
  (tmp_path / "a").mkdir()
  image = tmp_path / "a" / "x.png"
  json_map = tmp_path / "tags.json"
  json_map.write_text(json.dumps({"a/x.png": ["cat", " sofa "], "y.png": "dog, ball", "z": None}))
  tags = tag_sources.make_tag_source(mapping_path=json_map, root=tmp_path)
  assert tags(image) == ["cat", "sofa"]
  assert tags(tmp_path / "b" / "y.png") == ["dog", "ball"]
  assert tags(tmp_path / "z.jpg") == []
  assert tags(tmp_path / "unknown.png") == []
  csv_map = tmp_path / "tags.csv"
  csv_map.write_text('file,tags\nx.png,"tree, house"\ny,car,road\n')
  tags = tag_sources.make_tag_source("mapping", mapping_path=csv_map)
  assert tags(image) == ["tree", "house"]
  assert tags(tmp_path / "y.jpg") == ["car", "road"]
  (tmp_path / "a" / "x.png.txt").write_text("a, , b\n")
  assert tag_sources.make_tag_source("sidecar")(image) == ["a", "b"]
  assert tag_sources.make_tag_source("none")(image) == []
  with pytest.raises(UserError, match="needs a mapping"):
    tag_sources.make_tag_source("mapping")
  with pytest.raises(UserError, match=".json or .csv"):
    tag_sources.make_tag_source(mapping_path=tmp_path / "tags.yaml")
  bad = tmp_path / "bad.json"
  bad.write_text("[1, 2")
  with pytest.raises(UserError, match="not a readable JSON"):
    tag_sources.make_tag_source(mapping_path=bad)


def test_folder_source_with_mapping_does_not_report_the_mapping_file(tmp_path):
  Image.fromarray(_rgb(16, 16)).save(tmp_path / "p.png")
  (tmp_path / "tags.csv").write_text("p.png,bird\n")
  relative = Path(os.path.relpath(tmp_path / "tags.csv"))  # as a user might type it
  tags = tag_sources.make_tag_source(mapping_path=relative, root=tmp_path)
  src = sources.FolderSource(tmp_path, tags=tags)
  assert src[0]["tags"] == ["bird"] and not src.skipped["not_image"]


def test_paired_folders(tmp_path):
  lr, hr = tmp_path / "LR", tmp_path / "HR"
  lr.mkdir(), hr.mkdir()
  for i in range(3):
    Image.fromarray(_rgb(8, 6, i)).save(lr / f"p{i}.png")
    Image.fromarray(_rgb(32, 24, i)).save(hr / f"p{i}.png")
  Image.fromarray(_rgb(8, 8)).save(lr / "alone.png")
  Image.fromarray(_rgb(8, 8)).save(lr / "odd.png")
  Image.fromarray(_rgb(30, 32)).save(hr / "odd.png")
  src = sources.PairedSource(lr, hr)
  assert src.scale == 4 and src.names == ["p0", "p1", "p2"]
  assert [p.name for p in src.skipped["unmatched"]] == ["alone.png"]
  assert [p.name for p in src.skipped["size_mismatch"]] == ["odd.png"]
  record = src[1]
  np.testing.assert_array_equal(np.round(record["lr"] * 255), _rgb(8, 6, 1))
  assert record["hr"].shape == (32, 24, 3)
  with pytest.raises(UserError, match="no LR/HR pair"):
    sources.PairedSource(lr, hr, scale=3)


def test_demo_set_splits():
  train, held_out = sources.DemoSource("train"), sources.DemoSource("eval")
  assert set(train.names) | set(held_out.names) == set(sources.DEMO_IMAGES)
  assert not set(train.names) & set(held_out.names)
  assert held_out.names == ["coffee", "chelsea"]  # DEMO_IMAGES order
  record = held_out[1]
  assert record["hr"].shape == (300, 451, 3) and record["tags"][0] == "cat"
  assert sources.DemoSource("all", min_size=501).names == [
      "astronaut", "hubble_deep_field", "retina", "immunohistochemistry"
  ]
  with pytest.raises(UserError, match="unknown demo image"):
    sources.DemoSource("train", eval_names=("lena",))


def test_tfds_folder_round_trip_is_bit_exact(mixed_folder, tmp_path):
  out = sources.build_tfds_folder(mixed_folder, tmp_path / "tfds", name="mixed", min_size=32)
  assert (out / "dataset_info.json").exists()
  assert any(p.name.startswith("mixed-train.array_record") for p in out.iterdir())
  direct = sources.FolderSource(mixed_folder, min_size=32)
  stored = sources.TfdsFolderSource(out)
  assert len(stored) == len(direct)
  for i in range(len(direct)):
    a, b = direct[i], stored[i]
    assert a["name"] == b["name"] and a["tags"] == b["tags"]
    np.testing.assert_array_equal(a["hr"], b["hr"])
    assert stored.data[i]["image"] == (mixed_folder / a["name"]).read_bytes()
  with pytest.raises(UserError, match="already exists"):
    sources.build_tfds_folder(mixed_folder, tmp_path / "tfds")
  with pytest.raises(UserError, match="not a TFDS dataset"):
    sources.TfdsFolderSource(tmp_path)


def test_div2k_not_prepared_is_a_clear_error(tmp_path):
  with pytest.raises(UserError, match="tfds build div2k/bicubic_x4"):
    sources.Div2kSource(tmp_path)


def test_div2k_reads_a_locally_prepared_copy(tmp_path):
  """A stand-in with the catalogue entry's name, version and features, as `tfds build` leaves."""
  import tensorflow_datasets as tfds

  rng = np.random.default_rng(0)
  examples = [(i, {
      "hr": rng.integers(0, 256, (16, 12, 3), dtype=np.uint8),
      "lr": rng.integers(0, 256, (4, 3, 3), dtype=np.uint8)
  }) for i in range(3)]
  image = tfds.features.Image(shape=(None, None, 3))
  tfds.dataset_builders.store_as_tfds_dataset(
      name="div2k", version="2.0.0", config="bicubic_x4",
      features=tfds.features.FeaturesDict({"hr": image,
                                           "lr": image}), split_datasets={"train": examples},
      data_dir=tmp_path, file_format="array_record", disable_shuffling=True)
  src = sources.Div2kSource(tmp_path)
  assert len(src) == 3
  for i, (_, example) in enumerate(examples):
    for key in ("hr", "lr"):
      np.testing.assert_array_equal(np.round(src[i][key] * 255), example[key])


def test_image_size_reads_only_the_header(mixed_folder):
  assert image_io.image_size(mixed_folder / "sub" / "rotated.jpg") == (56, 32)
