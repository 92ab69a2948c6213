"""Per-image tags: from a sidecar text file, a JSON / CSV mapping file, or nowhere.

A tag source is a picklable callable `image_path -> list[str]` (grain ships it to worker
processes). Tags are returned raw: split on commas and stripped, nothing more; lower-casing,
deduplication and hashing belong to the tag encoder (models/tags.py).

- sidecar: `photo.png` takes its tags from `photo.txt` (or `photo.png.txt`) beside it,
  e.g. `dog, grass, frisbee`. A missing sidecar means no tags.
- mapping: one file for the whole set. JSON `{"photo.png": ["dog", "grass"], ...}` (a value
  may also be one comma-separated string). CSV rows `photo.png,"dog, grass"` or
  `photo.png,dog,grass`; a first row naming the columns (file/name/image/path) is skipped.
  Keys may be the path relative to the image root, the file name, or the stem.
- none: every image has no tags.
"""

import csv
import json
from pathlib import Path

from linearsr_jax.errors import UserError

TAG_SOURCE_KINDS = ("sidecar", "mapping", "none")
_CSV_HEADER_NAMES = ("file", "filename", "file_name", "name", "image", "path")


def split_tags(text) -> list:
  """'a, b ,,c' -> ['a', 'b', 'c']; a list is split element-wise."""
  items = [text] if isinstance(text, str) else list(text)
  return [t.strip() for item in items for t in str(item).split(",") if t.strip()]


def sidecar_paths(image_path) -> tuple:
  """The files SidecarTags would read for `image_path` (so folder scans can skip them)."""
  image_path = Path(image_path)
  return image_path.with_suffix(".txt"), image_path.with_name(image_path.name + ".txt")


class NoTags:
  def __call__(self, image_path) -> list:
    return []


class SidecarTags:
  """Tags from `STEM.txt` (or `NAME.txt`) next to each image."""

  def __call__(self, image_path) -> list:
    for sidecar in sidecar_paths(image_path):
      if sidecar.is_file():
        try:
          return split_tags(sidecar.read_text(encoding="utf-8", errors="replace"))
        except OSError as e:
          raise UserError(f"{sidecar}: cannot read tags ({e.strerror or e})") from None
    return []


def _read_json_mapping(path: Path) -> dict:
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: not a readable JSON tag mapping ({e})") from None
  if not isinstance(data, dict):
    raise UserError(f"{path}: a JSON tag mapping must be an object {{image name: tags}}")
  return {str(k): split_tags(v or []) for k, v in data.items()}


def _read_csv_mapping(path: Path) -> dict:
  try:
    with open(path, newline="", encoding="utf-8") as f:
      rows = [row for row in csv.reader(f) if row and row[0].strip()]
  except (OSError, csv.Error, UnicodeDecodeError) as e:
    raise UserError(f"{path}: not a readable CSV tag mapping ({e})") from None
  if rows and rows[0][0].strip().lower() in _CSV_HEADER_NAMES:
    rows = rows[1:]
  return {row[0].strip(): split_tags(row[1:]) for row in rows}


class MappingTags:
  """Tags looked up in a JSON or CSV file by relative path, file name, or stem."""

  def __init__(self, mapping_path, root=None):
    mapping_path = Path(mapping_path)
    readers = {".json": _read_json_mapping, ".csv": _read_csv_mapping}
    if mapping_path.suffix.lower() not in readers:
      raise UserError(f"{mapping_path}: a tag mapping must be a .json or .csv file")
    if not mapping_path.is_file():
      raise UserError(f"{mapping_path}: no such tag mapping file")
    self.path = mapping_path
    self.root = Path(root) if root is not None else None
    self.mapping = readers[mapping_path.suffix.lower()](mapping_path)

  def __call__(self, image_path) -> list:
    image_path = Path(image_path)
    keys = [image_path.name, image_path.stem]
    if self.root is not None and image_path.is_relative_to(self.root):
      keys.insert(0, image_path.relative_to(self.root).as_posix())
    for key in keys:
      if key in self.mapping:
        return list(self.mapping[key])
    return []


def make_tag_source(kind="sidecar", mapping_path=None, root=None):
  """A tag source by name; `mapping_path` is required for (and implies) 'mapping'."""
  if mapping_path and kind != "none":
    return MappingTags(mapping_path, root)
  if kind == "mapping":
    raise UserError("tag source 'mapping' needs a mapping file (.json or .csv)")
  if kind == "sidecar":
    return SidecarTags()
  if kind == "none":
    return NoTags()
  raise UserError(f"unknown tag source '{kind}' (choose from {', '.join(TAG_SOURCE_KINDS)})")
