"""The demo's three sets of photographs, as image folders with tag sidecars:

  train/        what the model trains on
  validation/   what ESGF's curves are measured on while it trains
  test/         what the report scores: never seen by training or by the knee

From the embedded scikit-image photographs (no download), or from a user's folder, split by a
seeded shuffle of its file names.
"""

import shutil
from pathlib import Path

import numpy as np

from linearsr_jax.atomic import atomic_dir
from linearsr_jax.errors import UserError

SETS = ("train", "validation", "test")
# The embedded photographs' split. chelsea and coffee were the demo's held-out pair from the
# start; rocket and motorcycle are photographs of the same kind to validate on.
EMBEDDED = {"validation": ("rocket", "motorcycle"), "test": ("chelsea", "coffee")}
# scikit-image's grey photographs, trained on as grey RGB images: their luminance detail is what
# PSNR-Y and LPIPS judge, and the colour photographs alone are few.
GREY = {
    "camera": ("man", "camera", "tripod", "grass"), "brick": ("brick wall",), "grass": ("grass",),
    "gravel": ("gravel",), "moon": ("moon", "craters"), "coins": ("coins",
                                                                 ), "clock": ("clock", "wall")
}
TEST_FRACTION, VALIDATION_FRACTION = 0.2, 0.1


def split_photos(out: Path, photos=None, seed: int = 0, min_size: int = 0) -> dict:
  """Writes `out`/{train,validation,test}/ and returns {set: [file names]}. Re-running with the
  same photos writes the same split."""
  with atomic_dir(out, overwrite=True) as tmp:
    split = _embedded(tmp) if photos is None else _folder(tmp, Path(photos), seed, min_size)
  return split


def _embedded(tmp: Path) -> dict:
  from linearsr_jax.data.image_io import write_image
  from linearsr_jax.data.sources import DemoSource

  source = DemoSource("all")
  split = {name: [] for name in SETS}
  for record in (source[i] for i in range(len(source))):
    name = record["name"]
    kind = next((k for k, names in EMBEDDED.items() if name in names), "train")
    write_image(tmp / kind / f"{name}.png", record["hr"])
    (tmp / kind / f"{name}.txt").write_text(", ".join(record["tags"]))
    split[kind].append(f"{name}.png")
  for name, tags in GREY.items():
    write_image(tmp / "train" / f"{name}.png", np.repeat(_grey(name)[..., None], 3, -1))
    (tmp / "train" / f"{name}.txt").write_text(", ".join(tags))
    split["train"].append(f"{name}.png")
  return {kind: sorted(names) for kind, names in split.items()}


def _grey(name) -> np.ndarray:
  import skimage.data

  return getattr(skimage.data, name)()


def _folder(tmp: Path, root: Path, seed: int, min_size: int) -> dict:
  """Copies the usable images of `root` (and their IMAGE.txt tag sidecars) into the three
  sets: a fifth for test and a tenth for validation, at least one each."""
  from linearsr_jax.data.sources import FolderSource

  if not root.is_dir():
    raise UserError(f"--photos {root}: not a directory")
  folder = FolderSource(root, min_size=min_size)
  count = len(folder.paths)
  if count < 3:
    raise UserError(f"--photos {root}: {count} usable photo(s) of at least {min_size} px; the "
                    "demo needs 3 (one each to train on, validate on and test on)")
  order = np.random.default_rng(seed).permutation(count)
  test = max(1, round(TEST_FRACTION * count))
  validation = max(1, round(VALIDATION_FRACTION * count))
  if count - test - validation < 1:
    test = count - validation - 1
  kinds = ["test"] * test + ["validation"] * validation + ["train"] * (count - test - validation)
  split = {name: [] for name in SETS}
  for index, kind in zip(order, kinds):
    path = folder.paths[index]
    # Flattened: the three folders hold files, whatever the tree under `root` was.
    name = folder.names[index].replace("/", "__")
    (tmp / kind).mkdir(exist_ok=True)
    shutil.copyfile(path, tmp / kind / name)
    sidecar = path.with_suffix(".txt")
    if sidecar.is_file():
      shutil.copyfile(sidecar, (tmp / kind / name).with_suffix(".txt"))
    split[kind].append(name)
  return {kind: sorted(names) for kind, names in split.items()}
