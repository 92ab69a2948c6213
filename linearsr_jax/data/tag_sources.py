"""Per-image conditions: tags or precomputed arrays, from sidecar files, one mapping file, or
nowhere.

A tag source is a picklable callable `image_path -> condition source` (grain ships it to
worker processes). For the hash encoder the source is the image's tags, raw: split on commas
and stripped, nothing more; lower-casing, deduplication and hashing belong to the tag encoder
(conditions.py). For the precomputed encoder it is an `ArrayRef` to the image's [L, C] array,
or None when it has none; data/conditions.py loads and checks it.

- sidecar: `photo.png` takes its tags from `photo.txt` (or `photo.png.txt`) beside it,
  e.g. `dog, grass, frisbee`, or its array from `photo.npy` (or `photo.png.npy`). A missing
  sidecar means no tags / no array.
- mapping: one file for the whole set. JSON `{"photo.png": ["dog", "grass"], ...}` (a value
  may also be one comma-separated string). CSV rows `photo.png,"dog, grass"` or
  `photo.png,dog,grass`; a first row naming the columns (file/name/image/path) is skipped.
  Arrays: an .npz or .safetensors file with one array per image.
  Keys may be the path relative to the image root, the file name, or the stem.
- none: every image has no tags / no array.
"""

import contextlib
import csv
import json
import zipfile
from typing import NamedTuple, Optional

import numpy as np

from linearsr_jax import storage
from linearsr_jax.errors import UserError

TAG_SOURCE_KINDS = ("sidecar", "mapping", "none")
_CSV_HEADER_NAMES = ("file", "filename", "file_name", "name", "image", "path")
ARRAY_MAPPING_SUFFIXES = (".npz", ".safetensors")


class ArrayRef(NamedTuple):
  """Where one image's precomputed array is: a file, and its entry in a mapping file."""
  path: str
  key: Optional[str] = None  # None: the file's only array (an .npy sidecar)


def split_tags(text) -> list:
  """'a, b ,,c' -> ['a', 'b', 'c']; a list is split element-wise."""
  items = [text] if isinstance(text, str) else list(text)
  return [t.strip() for item in items for t in str(item).split(",") if t.strip()]


def sidecar_paths(image_path, suffix=".txt") -> tuple:
  """The sidecars SidecarTags (.txt) or SidecarArrays (.npy) would read for `image_path`, in
  order (so folder scans can skip them)."""
  image_path = storage.path(image_path)
  return image_path.with_suffix(suffix), image_path.with_name(image_path.name + suffix)


class NoTags:

  def __call__(self, image_path) -> list:
    return []


class NoArrays:

  def __call__(self, image_path) -> None:
    return None


class SidecarTags:
  """Tags from `STEM.txt` (or `NAME.txt`) next to each image."""

  def __call__(self, image_path) -> list:
    for sidecar in sidecar_paths(image_path):
      if sidecar.is_file():
        try:
          return split_tags(sidecar.read_bytes().decode("utf-8", errors="replace"))
        except OSError as e:
          raise UserError(f"{sidecar}: cannot read tags ({e.strerror or e})") from None
    return []


class SidecarArrays:
  """The array of `STEM.npy` (or `NAME.npy`) next to each image; read later, by the encoder."""

  def __call__(self, image_path) -> Optional[ArrayRef]:
    found = [p for p in sidecar_paths(image_path, ".npy") if p.is_file()]
    return ArrayRef(str(found[0])) if found else None


def _read_json_mapping(path) -> dict:
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: not a readable JSON tag mapping ({e})") from None
  if not isinstance(data, dict):
    raise UserError(f"{path}: a JSON tag mapping must be an object {{image name: tags}}")
  return {str(k): split_tags(v or []) for k, v in data.items()}


def _read_csv_mapping(path) -> dict:
  try:
    with storage.local_file(path) as file, open(file, newline="", encoding="utf-8") as f:
      rows = [row for row in csv.reader(f) if row and row[0].strip()]
  except (OSError, csv.Error, UnicodeDecodeError) as e:
    raise UserError(f"{path}: not a readable CSV tag mapping ({e})") from None
  if rows and rows[0][0].strip().lower() in _CSV_HEADER_NAMES:
    rows = rows[1:]
  return {row[0].strip(): split_tags(row[1:]) for row in rows}


class _Mapping:
  """One file that maps images, by relative path, file name or stem, to their condition."""
  SUFFIXES, WHAT = (), ""

  def __init__(self, mapping_path, root=None):
    mapping_path = storage.path(mapping_path)
    if mapping_path.suffix.lower() not in self.SUFFIXES:
      raise UserError(f"{mapping_path}: a {self.WHAT} mapping must be a "
                      f"{' or '.join(self.SUFFIXES)} file")
    if not mapping_path.is_file():
      raise UserError(f"{mapping_path}: no such {self.WHAT} mapping file")
    self.path = mapping_path
    self.root = storage.path(root) if root is not None else None

  def _key(self, image_path, keys) -> Optional[str]:
    """The first of the image's relative path, file name and stem that is in `keys`."""
    image_path = storage.path(image_path)
    candidates = [image_path.name, image_path.stem]
    if self.root is not None and image_path.is_relative_to(self.root):
      candidates.insert(0, image_path.relative_to(self.root).as_posix())
    return next((key for key in candidates if key in keys), None)


class MappingTags(_Mapping):
  """Tags looked up in a JSON or CSV file."""
  SUFFIXES, WHAT = (".json", ".csv"), "tag"

  def __init__(self, mapping_path, root=None):
    super().__init__(mapping_path, root)
    readers = {".json": _read_json_mapping, ".csv": _read_csv_mapping}
    self.mapping = readers[self.path.suffix.lower()](self.path)

  def __call__(self, image_path) -> list:
    key = self._key(image_path, self.mapping)
    return [] if key is None else list(self.mapping[key])


class MappingArrays(_Mapping):
  """Arrays looked up in an .npz or .safetensors file (only the names are read here)."""
  SUFFIXES, WHAT = ARRAY_MAPPING_SUFFIXES, "precomputed-array"

  def __init__(self, mapping_path, root=None):
    super().__init__(mapping_path, root)
    self.names = frozenset(array_names(self.path))

  def __call__(self, image_path) -> Optional[ArrayRef]:
    key = self._key(image_path, self.names)
    return None if key is None else ArrayRef(str(self.path), key)


@contextlib.contextmanager
def _array_file(path):
  """(entry names, get(name) -> array) of an open .npz or .safetensors file."""
  from safetensors import SafetensorError, safe_open

  try:
    with storage.local_file(path) as file:
      if path.suffix.lower() == ".npz":
        with np.load(file, allow_pickle=False) as arrays:
          yield list(arrays.files), arrays.__getitem__
      else:
        with safe_open(str(file), "numpy") as arrays:
          yield list(arrays.keys()), arrays.get_tensor
  except (OSError, ValueError, TypeError, zipfile.BadZipFile, SafetensorError) as e:
    raise UserError(f"{path}: not a readable {path.suffix} array file ({e})") from None


def array_names(path) -> list:
  """The entry names of an .npz or .safetensors file."""
  with _array_file(storage.path(path)) as (names, _):
    return names


def read_array(path, key=None) -> np.ndarray:
  """An .npy file's array, or entry `key` of an .npz / .safetensors file (no key: its only
  entry). Shapes and values are the encoder's to check (conditions.py)."""
  path = storage.path(path)
  if not path.is_file():
    raise UserError(f"{path}: no such condition file")
  if path.suffix.lower() == ".npy":
    try:
      with storage.local_file(path) as file:
        # Mapped, not read: a header that declares more data than the file holds is an error
        # here instead of an allocation of that size.
        return np.array(np.load(file, mmap_mode="r", allow_pickle=False))
    except (OSError, ValueError) as e:
      raise UserError(f"{path}: not a readable .npy array ({str(e).splitlines()[0]})") from None
  if path.suffix.lower() not in ARRAY_MAPPING_SUFFIXES:
    raise UserError(f"{path}: condition arrays must be .npy, .npz or .safetensors files")
  with _array_file(path) as (names, get):
    if key is None and len(names) != 1:
      raise UserError(f"{path}: expected exactly one array, found {sorted(names)}")
    if key is not None and key not in names:
      raise UserError(f"{path}: no array named {key!r}")
    return get(names[0] if key is None else key)


def make_tag_source(kind="sidecar", mapping_path=None, root=None, encoder="hash"):
  """A tag source by name; `mapping_path` is required for (and implies) 'mapping'. For the
  'precomputed' encoder it finds arrays (ArrayRef or None) instead of tags."""
  arrays = encoder == "precomputed"
  if mapping_path and kind != "none":
    return (MappingArrays if arrays else MappingTags)(mapping_path, root)
  if kind == "mapping":
    suffixes = ARRAY_MAPPING_SUFFIXES if arrays else MappingTags.SUFFIXES
    raise UserError(f"tag source 'mapping' needs a mapping file ({' or '.join(suffixes)})")
  if kind == "sidecar":
    return SidecarArrays() if arrays else SidecarTags()
  if kind == "none":
    return NoArrays() if arrays else NoTags()
  raise UserError(f"unknown tag source '{kind}' (choose from {', '.join(TAG_SOURCE_KINDS)})")
