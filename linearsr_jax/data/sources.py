"""Random-access image sources: HR folders, paired LR/HR folders, the demo set, TFDS.

Every source has `len()` and `source[i] -> record`, a dict with
  'hr'   float32 HxWx3 in [0, 1],
  'lr'   float32 (H/s)x(W/s)x3 (paired sources only),
  'tags' the condition source: list[str] of raw tags, or for precomputed arrays an ArrayRef
         or None (see tag_sources.py),
  'name' str,
so grain can use it directly (`grain.MapDataset.source(src)`). Sources are picklable: worker
processes decode the images. Files that cannot be used are skipped when the source is built
and reported in one counted warning; `source.skipped` maps the reason to the paths.
"""

import functools
import logging
from pathlib import Path

import numpy as np

from linearsr_jax import storage
from linearsr_jax.data import image_io, tag_sources
from linearsr_jax.errors import UserError

log = logging.getLogger(__name__)

# The colour photographs bundled with scikit-image, with short hand-written tags.
DEMO_IMAGES = {
    "astronaut": ("astronaut", "spacesuit", "woman", "american flag", "space shuttle model"),
    "coffee": ("coffee cup", "saucer", "spoon", "coffee", "table"),
    "chelsea": ("cat", "tabby cat", "whiskers"),
    "rocket": ("rocket", "launch pad", "sky", "trees"),
    "hubble_deep_field": ("galaxies", "stars", "space", "night sky"),
    "retina": ("retina", "eye fundus", "blood vessels", "medical image"),
    "immunohistochemistry": ("microscopy", "tissue", "cells", "stain"),
    "motorcycle": ("motorcycle", "garage", "wall", "tools"),
}
DEMO_EVAL_NAMES = ("chelsea", "coffee")  # held out for validation by default
_SKIP_REASONS = {
    "unreadable": "unreadable or truncated",
    "too_small": "too small",
    "not_image": "not an image",
    "unmatched": "without a partner",
    "size_mismatch": "LR/HR sizes that disagree with the scale",
}


def _skip_summary(skipped, total, min_size=0) -> str:
  """'skipped 2 of 3 files: 2 unreadable or truncated (e.g. a.png, b.jpg)', or '' for none."""
  counts = {reason: len(paths) for reason, paths in skipped.items() if paths}
  if not counts:
    return ""
  parts = [
      f"{n} {_SKIP_REASONS[r]}" + (f" (< {min_size} px)" if r == "too_small" else "")
      for r, n in counts.items()
  ]
  examples = ", ".join(str(p) for paths in skipped.values() for p in paths[:2])
  return (f"skipped {sum(counts.values())} of {total} files: {', '.join(parts)} "
          f"(e.g. {examples})")


def _report_skipped(where, skipped, total, min_size=0, usable=True):
  """One counted warning; none when nothing is usable, where the error carries it."""
  summary = _skip_summary(skipped, total, min_size)
  if summary and usable:
    log.warning("%s: %s", where, summary)


def _is_usable(path, min_size, verify, skipped) -> bool:
  """Decodes (verify) or reads the header of one file; records why it is not usable."""
  try:
    height, width = (image_io.read_image(path).shape[:2] if verify else image_io.image_size(path))
  except UserError as e:
    skipped["not_image" if "not an image" in str(e) else "unreadable"].append(path)
    return False
  if min(height, width) < min_size:
    skipped["too_small"].append(path)
    return False
  return True


class FolderSource:
  """HR images found recursively under `root` (any mix of formats, see image_io).

  `min_size` drops images whose shorter side is smaller (e.g. the crop size). With
  `verify` every image is decoded once here, so truncated files are found up front;
  without it only headers are read (fast on large sets, but a broken file fails on use).
  Tag sidecars (.txt) and array sidecars (.npy) of an image are not counted as skipped.
  """

  def __init__(self, root, min_size=0, tags=None, recursive=True, verify=True):
    self.root = storage.path(root)
    self.tag_source = tags if tags is not None else tag_sources.SidecarTags()
    if not self.root.is_dir():
      raise UserError(f"{self.root}: no such image folder")
    files = [
        p for p in storage.files(self.root, recursive)
        if not any(part.startswith(".") for part in p.relative_to(self.root).parts)
    ]
    images = [p for p in files if image_io.is_image_path(p)]
    # Condition files (sidecars, the mapping) are expected, not skipped.
    expected_text = {
        s for p in images for suffix in (".txt", ".npy")
        for s in tag_sources.sidecar_paths(p, suffix)
    }
    mapping = getattr(self.tag_source, "path", None)
    expected_text |= {mapping.resolve()} if mapping else set()
    self.skipped = {reason: [] for reason in _SKIP_REASONS}
    self.skipped["not_image"] = [
        p for p in files if not image_io.is_image_path(p) and p not in expected_text and
        p.resolve() not in expected_text
    ]
    self.paths = [p for p in images if _is_usable(p, min_size, verify, self.skipped)]
    total = len(self.paths) + sum(map(len, self.skipped.values()))
    _report_skipped(self.root, self.skipped, total, min_size, usable=bool(self.paths))
    if not self.paths:
      summary = _skip_summary(self.skipped, total, min_size)
      raise UserError(f"{self.root}: no usable image (need PNG/JPEG/WebP/BMP/TIFF files with "
                      f"a shorter side of at least {min_size} px)" +
                      (f"; {summary}" if summary else ""))
    self.names = [p.relative_to(self.root).as_posix() for p in self.paths]

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, index):
    path = self.paths[index]
    return {
        "hr": image_io.read_image(path), "tags": self.tag_source(path), "name": self.names[index]
    }


class PairedSource:
  """LR / HR pairs from two folders, matched by relative path without the suffix.

  The layout of the standard real-world test sets (RealSR/{LR,HR}, DRealSR/{LR,HR}). `scale`
  (HR size / LR size) is checked for every pair; None takes the most common ratio. Tags
  are read for the HR file.
  """

  def __init__(self, lr_root, hr_root, scale=None, tags=None):
    self.lr_root, self.hr_root = Path(lr_root), Path(hr_root)
    self.tag_source = tags if tags is not None else tag_sources.SidecarTags()
    self.skipped = {reason: [] for reason in _SKIP_REASONS}
    lr = {
        p.relative_to(self.lr_root).with_suffix("").as_posix(): p
        for p in image_io.list_images(self.lr_root)
    }
    hr = {
        p.relative_to(self.hr_root).with_suffix("").as_posix(): p
        for p in image_io.list_images(self.hr_root)
    }
    self.skipped["unmatched"] = sorted([lr[k] for k in lr.keys() - hr.keys()] +
                                       [hr[k] for k in hr.keys() - lr.keys()])
    sizes = {}
    for key in sorted(lr.keys() & hr.keys()):
      try:
        sizes[key] = tuple(image_io.read_image(p).shape[:2] for p in (lr[key], hr[key]))
      except UserError:
        self.skipped["unreadable"].append(hr[key])
    if scale is None:  # the most common whole ratio
      ratios = [h[0] // l[0] for l, h in sizes.values() if h[0] % l[0] == 0]
      scale = max(set(ratios), key=ratios.count) if ratios else 1
    self.pairs, self.names = [], []
    for key, (lr_hw, hr_hw) in sizes.items():
      if (lr_hw[0] * scale, lr_hw[1] * scale) != hr_hw:
        self.skipped["size_mismatch"].append(hr[key])
        continue
      self.pairs.append((lr[key], hr[key]))
      self.names.append(key)
    self.scale = scale
    _report_skipped(f"{self.lr_root} + {self.hr_root}", self.skipped,
                    len(lr) + len(hr), usable=bool(self.pairs))
    if not self.pairs:
      summary = _skip_summary(self.skipped, len(lr) + len(hr))
      raise UserError(f"{self.lr_root}, {self.hr_root}: no LR/HR pair with matching names "
                      "and sizes" + (f"; {summary}" if summary else ""))

  def __len__(self):
    return len(self.pairs)

  def __getitem__(self, index):
    lr_path, hr_path = self.pairs[index]
    return {
        "hr": image_io.read_image(hr_path), "lr": image_io.read_image(lr_path),
        "tags": self.tag_source(hr_path), "name": self.names[index]
    }


@functools.lru_cache(maxsize=None)
def _demo_image(name) -> np.ndarray:
  """Float32 [0, 1], cached read-only per process (crops are views, nothing is re-decoded)."""
  import skimage.data

  image = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(
      skimage.data, name)()
  image = image.astype(np.float32) / 255.0
  image.setflags(write=False)
  return image


class DemoSource:
  """The scikit-image colour photographs (no download), with hand-written tags.

  split 'train' leaves out `eval_names`, 'eval' is only those, 'all' is every image.
  """

  def __init__(self, split="train", eval_names=DEMO_EVAL_NAMES, min_size=0):
    unknown = set(eval_names) - DEMO_IMAGES.keys()
    if unknown:
      raise UserError(f"unknown demo image(s) {sorted(unknown)}; choose from "
                      f"{', '.join(DEMO_IMAGES)}")
    chosen = {
        "train": [n for n in DEMO_IMAGES if n not in eval_names],
        "eval": [n for n in DEMO_IMAGES if n in eval_names], "all": list(DEMO_IMAGES)
    }
    if split not in chosen:
      raise UserError(f"unknown demo split '{split}' (train, eval or all)")
    self.names = [n for n in chosen[split] if min(_demo_image(n).shape[:2]) >= min_size]
    if not self.names:
      raise UserError(f"the demo '{split}' split has no image of at least {min_size} px")

  def __len__(self):
    return len(self.names)

  def __getitem__(self, index):
    name = self.names[index]
    return {"hr": _demo_image(name), "tags": list(DEMO_IMAGES[name]), "name": name}


# ------------------------------------------------------------------------------------ TFDS


def _tfds():
  import tensorflow_datasets as tfds

  return tfds


def build_tfds_folder(src, data_dir, name="image_folder", split="train", min_size=0, tags=None,
                      overwrite=False):
  """Turns an image folder into an array_record TFDS dataset under `data_dir`.

  Each example holds the file's bytes unchanged ('image'), its relative path ('name'), its
  tags and its upright size, so reading it back is bit-exact for any format or bit depth.
  Unusable files (and, with `min_size`, small ones) are skipped as in FolderSource. Returns
  the dataset's version directory (what TfdsFolderSource reads).
  """
  from linearsr_jax.atomic import atomic_dir

  tfds = _tfds()
  folder = FolderSource(src, min_size=min_size, tags=tags)

  def examples():
    for index, path in enumerate(folder.paths):
      image = image_io.read_image(path)
      yield index, {
          "image": path.read_bytes(), "name": folder.names[index], "tags": folder.tag_source(path),
          "height": image.shape[0], "width": image.shape[1]
      }

  features = tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=(), dtype=np.object_),
      "name": tfds.features.Text(),
      "tags": tfds.features.Sequence(tfds.features.Text()),
      "height": np.int32,
      "width": np.int32,
  })
  with atomic_dir(data_dir, overwrite=overwrite) as tmp:
    builder = tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version="1.0.0", features=features, split_datasets={split: examples()},
        data_dir=tmp, file_format="array_record", disable_shuffling=True,
        description=f"Images of {storage.absolute(src)}, stored as the original file bytes.")
    version_dir = Path(builder.data_dir).relative_to(tmp)
  return storage.path(data_dir) / version_dir.as_posix()


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TfdsFolderSource:
  """Reads a dataset written by build_tfds_folder (random access through array_record)."""

  def __init__(self, dataset_dir, split="train"):
    tfds = _tfds()
    dataset_dir = storage.path(dataset_dir)
    try:
      builder = tfds.builder_from_directory(str(dataset_dir))
    except Exception as e:  # TFDS raises several types for a missing / foreign directory.
      raise UserError(f"{dataset_dir}: not a TFDS dataset version directory ({e})") from None
    if split not in builder.info.splits:
      raise UserError(f"{dataset_dir}: no split '{split}' (has {', '.join(builder.info.splits)})")
    self.data = builder.as_data_source(split=split)
    if not len(self.data):
      raise UserError(f"{dataset_dir}: split '{split}' is empty")

  def __len__(self):
    return len(self.data)

  def __getitem__(self, index):
    example = self.data[index]
    name = _text(example["name"])
    return {
        "hr": image_io.decode_image(example["image"], name),
        "tags": [_text(t) for t in example["tags"]], "name": name
    }


class Div2kSource:
  """The TFDS catalogue's `div2k` (HR with its LR), when prepared locally as array_record.

  Nothing is downloaded: prepare it where the network is available with
  `tfds build div2k/bicubic_x4 --file_format=array_record --data_dir=DIR`.
  """

  def __init__(self, data_dir, config="bicubic_x4", split="train"):
    tfds = _tfds()
    builder = tfds.builder(f"div2k/{config}", data_dir=str(data_dir))
    if not builder.is_prepared():
      raise UserError(
          f"div2k/{config} is not prepared under {data_dir}; build it where the network is "
          f"available: tfds build div2k/{config} --file_format=array_record --data_dir=DIR")
    try:
      self.data = builder.as_data_source(split=split)
    except NotImplementedError as e:
      raise UserError(f"div2k/{config} under {data_dir} is not in array_record format ({e}); "
                      "rebuild it with --file_format=array_record") from None

  def __len__(self):
    return len(self.data)

  def __getitem__(self, index):
    example = self.data[index]
    return {
        "hr": np.asarray(example["hr"], np.float32) / 255.0,
        "lr": np.asarray(example["lr"], np.float32) / 255.0, "tags": [],
        "name": f"div2k_{index:04d}"
    }
