"""Scoring paired folders: match images by name, compute metrics per image, write reports.

The images scored are either files made by any method (an SR folder) or what a
`super_resolve(lr, lr_path) -> sr` function makes from an LR folder: `bicubic_upscaler` for the
baseline row, a model's sampler later. A pair that cannot be scored (a missing side, an
unreadable file, sizes that differ) is recorded with its reason and the rest go on.

No-reference metrics (MUSIQ, MANIQA, CLIPIQA) need network weights that cannot be had
offline; scores computed elsewhere can be merged in from a CSV (`read_extra_scores`).
"""

import csv
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from tqdm import tqdm

from linearsr_jax import disk_space, storage
from linearsr_jax.atomic import write_atomically
from linearsr_jax.resize import imresize_bicubic
from linearsr_jax.data.image_io import list_images, read_image
from linearsr_jax.errors import UserError
from linearsr_jax.evaluate import metrics

# The peers' protocol on RealSR / DRealSR: PSNR / SSIM on Y as pyiqa computes them, LPIPS
# (Alex, v0.1) and DISTS.
DEFAULT_METRICS = ("psnr_y", "ssim_y_pyiqa", "lpips_alex", "dists")
# LPIPS's AlexNet needs 31 px per side; smaller pairs are reported instead of crashing XLA.
MIN_SIDE = 32

SuperResolve = Callable[[np.ndarray, Path], np.ndarray]  # the path finds per-image conditions


@dataclasses.dataclass(frozen=True)
class Pair:
  """Two files with the same name (relative path without suffix); a missing side is None.

  `error` marks a name that cannot be paired (several files hold it in one folder).
  """
  name: str
  reference: Optional[Path]
  source: Optional[Path]
  error: Optional[str] = None


@dataclasses.dataclass
class ImageResult:
  name: str
  scores: dict
  error: Optional[str] = None


def _images_by_name(root) -> tuple[dict, set]:
  """{relative path without suffix: path} under root, and the names held by several files."""
  root = storage.path(root)
  found, clashes = {}, set()
  for path in list_images(root):
    name = path.relative_to(root).with_suffix("").as_posix()
    if name in found:
      clashes.add(name)
    found[name] = path
  return found, clashes


def match_pairs(reference_dir, source_dir) -> list:
  """Pairs matched by name (suffixes may differ: a.png pairs with a.jpg), sorted by name.

  A name held by two files in one folder becomes a Pair with an error.
  """
  references, ref_clashes = _images_by_name(reference_dir)
  sources, src_clashes = _images_by_name(source_dir)
  errors = {
      name: f"several files named {name}.* in {folder}"
      for clashes, folder in ((ref_clashes, reference_dir), (src_clashes, source_dir))
      for name in clashes
  }
  names = sorted(references.keys() | sources.keys())
  if not names:
    raise UserError(f"no images in {reference_dir} or {source_dir}")
  return [Pair(name, references.get(name), sources.get(name), errors.get(name)) for name in names]


def bicubic_upscaler(scale: int) -> SuperResolve:
  """MATLAB-style bicubic up-sampling by `scale` (Keys kernel a = -0.5, symmetric borders),
  the usual bicubic row of SR papers, rounded to 8 bits as a saved image would be."""

  def upscale(lr, lr_path=None):
    del lr_path  # the same for every image
    sr = imresize_bicubic(lr, lr.shape[0] * scale, lr.shape[1] * scale)
    return np.round(np.clip(sr, 0.0, 1.0) * 255.0) / 255.0

  return upscale


def _score_pair(pair, super_resolve, metric_fns, crop_border, source_kind):
  if pair.error:
    raise UserError(pair.error)
  if pair.reference is None:
    raise UserError("no HR image with this name")
  if pair.source is None:
    raise UserError(f"no {source_kind} image with this name")
  reference = read_image(pair.reference)
  image = read_image(pair.source)
  if super_resolve is not None:
    image = super_resolve(image, pair.source)
  if image.shape != reference.shape:
    raise UserError(f"size mismatch: {source_kind if super_resolve is None else 'SR'} "
                    f"{image.shape[1]}x{image.shape[0]} vs HR "
                    f"{reference.shape[1]}x{reference.shape[0]}")
  if min(reference.shape[:2]) - 2 * crop_border < MIN_SIDE:
    raise UserError(f"image smaller than {MIN_SIDE} px per side after the border crop")
  x, y = np.asarray(image, np.float32)[None], reference[None]
  return {name: float(fn(x, y)[0]) for name, fn in metric_fns.items()}


def evaluate_pairs(pairs: Sequence[Pair], super_resolve: Optional[SuperResolve] = None,
                   metric_names: Sequence[str] = DEFAULT_METRICS, crop_border: int = 0,
                   progress: bool = True, desc: str = "eval") -> list:
  """Scores every pair; failures become ImageResults with an error and empty scores.

  With `super_resolve`, each pair's source is an LR image and the scored image is
  `super_resolve(lr, lr_path)` (float32 HxWx3 in [0, 1] in and out); without it the source is
  scored.
  """
  metric_fns = {name: metrics.metric_fn(name, crop_border) for name in metric_names}
  source_kind = "SR" if super_resolve is None else "LR"
  results = []
  for pair in tqdm(pairs, desc=desc, unit="img", disable=not progress):
    try:
      scores = _score_pair(pair, super_resolve, metric_fns, crop_border, source_kind)
      results.append(ImageResult(pair.name, scores))
    except UserError as e:
      results.append(ImageResult(pair.name, {}, str(e)))
  return results


def read_extra_scores(path) -> dict:
  """{image name: {column: float}} from a CSV with a `name` column (file name or stem) and
  one column per precomputed score, e.g. MUSIQ / MANIQA / CLIPIQA from pyiqa."""
  path = storage.path(path)
  try:
    with storage.local_file(path) as file, open(file, newline="") as f:
      rows = list(csv.DictReader(f))
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
  if not rows or "name" not in rows[0]:
    raise UserError(f"{path}: expected a CSV with a 'name' column and score columns")
  scores = {}
  for line, row in enumerate(rows, start=2):
    name = Path(row.pop("name")).with_suffix("").as_posix()
    try:
      scores[name] = {column: float(value) for column, value in row.items() if value != ""}
    except ValueError:
      raise UserError(f"{path}:{line}: scores must be numbers") from None
  return scores


def merge_extra_scores(results, extra: dict) -> list:
  """Adds precomputed scores to the scored images of the same name; returns the columns."""
  columns = sorted({column for row in extra.values() for column in row})
  clashes = set(columns) & set(metrics.METRICS)
  if clashes:
    raise UserError(f"precomputed scores repeat computed metrics: {', '.join(sorted(clashes))}")
  for result in results:
    if result.error is None:
      result.scores.update(extra.get(result.name, {}))
  return columns


def summarize(results, columns: Sequence[str], label: str, settings: dict) -> dict:
  """Means over the scored images (infinite PSNRs of identical pairs are left out and counted)."""
  scored = [r for r in results if r.error is None]
  means, counts = {}, {}
  for column in columns:
    values = [
        r.scores[column] for r in scored if column in r.scores and math.isfinite(r.scores[column])
    ]
    means[column] = float(np.mean(values)) if values else None
    counts[column] = len(values)
  return {
      "label": label,
      "images": len(results),
      "scored": len(scored),
      "failed": len(results) - len(scored),
      "mean": means,
      "count": counts,
      "settings": settings,
      "failures": [{"name": r.name, "error": r.error} for r in results if r.error],
  }


def _heading(column):
  if column in metrics.METRICS:
    info = metrics.METRICS[column]
    return f"{info.heading} {'↑' if info.higher_is_better else '↓'}"
  return column


def _format(column, value):
  if value is None:
    return "–"
  return f"{value:.2f}" if column.startswith("psnr") or abs(value) >= 10 else f"{value:.4f}"


def markdown_table(summaries: Sequence[dict], columns: Sequence[str]) -> str:
  """One row per summary: method, images scored / total, then the mean of each column."""
  lines = [
      "| method | images | " + " | ".join(_heading(c) for c in columns) + " |",
      "|---|---|" + "---|" * len(columns)
  ]
  for s in summaries:
    cells = [_format(c, s["mean"].get(c)) for c in columns]
    lines.append(f"| {s['label']} | {s['scored']}/{s['images']} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_report(out_dir, results, summary: dict, columns: Sequence[str],
                 baseline: Optional[tuple] = None) -> dict:
  """per_image.csv, summary.json and table.md in out_dir, each written atomically.

  `baseline`: (results, summary) of another method on the same pairs (bicubic beside a model),
  so that one report says whether the model helps: its row comes first in table.md, its
  scores follow the method's in per_image.csv (columns named `<its label>_<metric>`), and
  summary.json holds its summary under "baseline".
  """
  out_dir = storage.path(out_dir)
  summaries, scored = [summary], [(results, columns, "")]
  if baseline is not None:
    base_results, base_summary = baseline
    base_columns = [c for c in columns if c in base_summary["mean"]]
    summary = dict(summary, baseline=base_summary)
    summaries.insert(0, base_summary)
    scored.append((base_results, base_columns, f"{base_summary['label']}_"))
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(
      ["name", "status", *(prefix + c for _, cols, prefix in scored for c in cols), "error"])
  for row in zip(*(rows for rows, _, _ in scored)):
    cells = [
        repr(r.scores[c]) if c in r.scores else ""
        for r, (_, cols, _) in zip(row, scored)
        for c in cols
    ]
    errors = "; ".join(dict.fromkeys(r.error for r in row if r.error))
    writer.writerow([row[0].name, "error" if errors else "ok", *cells, errors])
  outputs = {
      "per_image.csv": buffer.getvalue(),
      "summary.json": json.dumps(summary, indent=2, ensure_ascii=False) + "\n",
      "table.md": markdown_table(summaries, columns),
  }
  data = {filename: text.encode("utf-8") for filename, text in outputs.items()}
  # All three or none: room for the lot is checked before the first is written.
  disk_space.ensure_room(out_dir, sum(map(len, data.values())), ", ".join(data))
  for filename, content in data.items():
    write_atomically(out_dir / filename, content)
  return {name: out_dir / name for name in outputs}
