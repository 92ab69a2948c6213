"""The input pipeline: grain MapDataset -> random HR crop -> degrade -> LR/HR/tags -> batch.

    source -> shuffle (reseeded each epoch; stored teacher targets keep their batches' order)
    -> repeat -> crop + augment + degrade + tokenize
    (seeded by element index) -> this host's rows of each global batch -> batch
    -> [mp_prefetch workers]

Batches are dicts of NumPy arrays:
  'hr'         [B, H, W, 3]      float32 in [-1, 1]
  (or 'hr_latent' [B, h, w, C]   float32, the stored latents of data.hr_latents="precomputed")
  'lr'         [B, H/s, W/s, 3]  float32 in [-1, 1]
  'cond'       [B, L] int32 hashed tag ids, or [B, L, C] float32 precomputed tokens
  'cond_mask'  [B, L] bool                          (both from the `tokenize` argument)
  (a distill stage's 'x1', 'teacher_x0' [B, h, w, C] float32 with config.distill.targets:
  the rows are stored whole, data/teacher_targets.py)
The pipeline knows nothing of the model: a record's 'tags' is its condition source (a tag list,
or for precomputed arrays an ArrayRef or None, see tag_sources.py) and `tokenize(source) ->
(cond, cond_mask)` (data/conditions.py make_condition) turns it into arrays. Every random choice
is drawn from a generator seeded by (seed, element index), so a seed fixes the batches
whatever the number of workers or hosts, and the iterator state (`get_state` / `set_state`,
grain's Orbax handler) resumes mid-epoch.
`make_global_batch` assembles the hosts' batches into jax.Arrays sharded over the mesh's batch
axes (sharding.batch_sharding). The fixed evaluation pairs are eval_set.py's.
"""

import logging
from typing import Callable

import cv2
import grain
import ml_collections
import numpy as np

from linearsr_jax.data import degradations, sources, tag_sources
from linearsr_jax.errors import UserError

log = logging.getLogger(__name__)

Tokenize = Callable[[object], tuple]  # condition source -> (cond, cond_mask)
SOURCE_KINDS = ("demo", "folder", "paired", "tfds_folder", "div2k")
BATCH_KEYS = ("hr", "hr_latent", "lr", "cond", "cond_mask", "x1", "teacher_x0")
HR_LATENTS = ("encode", "precomputed")


def default_config() -> ml_collections.ConfigDict:
  """The `data` section."""
  return ml_collections.ConfigDict(
      dict(
          # demo | folder (HR images, recursive) | paired (lr_path + hr_path) |
          # tfds_folder (a build_tfds_folder output) | div2k (TFDS catalogue, prepared locally).
          source=dict(kind="demo", path="", lr_path="", hr_path="", tfds_split="train",
                      div2k_config="bicubic_x4", verify=True),
          eval_source=dict(kind="demo", path="", lr_path="", hr_path="", tfds_split="validation",
                           div2k_config="bicubic_x4", verify=True),
          demo_eval_names=sources.DEMO_EVAL_NAMES,
          tags=dict(kind="sidecar", mapping=""),  # sidecar | mapping | none
          scale=4,
          crop_size=256,  # HR crop; LR is crop_size / scale
          batch_size=16,  # global, split evenly over hosts
          augment=True,  # random horizontal flip and 90-degree rotation of the crop
          seed=0,
          num_workers=0,  # grain worker processes per host (0: in the main process)
          worker_buffer_size=2,  # batches each worker prepares ahead
          # Threads per process computing batches, and how many finished batches may wait
          # (grain's default of 500 would hold gigabytes of 256 px batches).
          read_threads=2,
          prefetch_batches=4,
          degradation=degradations.default_config(),
          eval=dict(crop_size=256, seed=1234, batch_size=4),  # crop_size 0: full images
          # encode: the train step encodes the HR crops. precomputed: it takes their latents from
          # latents_path, a `linearsr data encode` output (no encoder in the step; the LR side is
          # still degraded on the fly). The eval pairs stay pixels either way.
          hr_latents="encode",
          latents_path="",
      ))


def make_source(config, split="train", encoder="hash"):
  """The train or eval source named by the config (min size = crop size for training).

  Its records' condition sources suit `encoder` (data/conditions.py): tag lists for 'hash';
  for 'precomputed', the arrays beside the images or in the mapping file.
  """
  section = "source" if split == "train" else "eval_source"
  spec = config[section]
  needed = {
      "folder": ("path",), "paired": ("lr_path", "hr_path"), "tfds_folder": ("path",),
      "div2k": ("path",)
  }.get(spec.kind, ())
  for field in needed:
    if not str(spec[field]):
      raise UserError(f"data.{section}.kind={spec.kind} needs data.{section}.{field}")
  if encoder == "precomputed" and spec.kind not in ("folder", "paired"):
    source = make_source(config, split)
    log.warning(
        "data.%s.kind=%s has no image files to find precomputed arrays beside: every "
        "image uses the null condition", section, spec.kind)
    return WithoutArrays(source)
  tags = tag_sources.make_tag_source(config.tags.kind, config.tags.mapping or None,
                                     root=spec.path or spec.hr_path or None, encoder=encoder)
  min_size = config.crop_size if split == "train" else max(config.eval.crop_size, config.scale)
  if spec.kind == "demo":
    return sources.DemoSource(split, eval_names=tuple(config.demo_eval_names), min_size=min_size)
  if spec.kind == "folder":
    return sources.FolderSource(spec.path, min_size=min_size, tags=tags, verify=spec.verify)
  if spec.kind == "paired":
    return sources.PairedSource(spec.lr_path, spec.hr_path, scale=config.scale, tags=tags)
  if spec.kind == "tfds_folder":
    return sources.TfdsFolderSource(spec.path, split=spec.tfds_split)
  if spec.kind == "div2k":
    return sources.Div2kSource(spec.path, config=spec.div2k_config, split=spec.tfds_split)
  raise UserError(f"unknown data source '{spec.kind}' (choose from {', '.join(SOURCE_KINDS)})")


class WithoutArrays:
  """A source without image files (demo, TFDS) for the precomputed encoder: every record's
  condition source is None, the null condition."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    return {**self.source[index], "tags": None}


# ------------------------------------------------------------------------------- examples


def _fit_to_crop(image, crop_size):
  """Up-scales (bicubic) an image whose shorter side is below the crop size."""
  short = min(image.shape[:2])
  if short >= crop_size:
    return image
  factor = crop_size / short
  size = (max(crop_size,
              round(image.shape[1] * factor)), max(crop_size, round(image.shape[0] * factor)))
  return np.clip(cv2.resize(image, size, interpolation=cv2.INTER_CUBIC), 0, 1)


def _augment(images, rng):
  """The same random flip / rotation for aligned images (BasicSR's hflip + rot90)."""
  flip, turns = rng.uniform() < 0.5, int(rng.integers(4))
  return [np.rot90(im[:, ::-1] if flip else im, turns) for im in images]


def to_example(hr, lr, condition_source, tokenize):
  cond, mask = tokenize(condition_source)
  return {
      "hr": np.ascontiguousarray(hr * 2 - 1,
                                 np.float32), "lr": np.ascontiguousarray(lr * 2 - 1, np.float32),
      "cond": np.asarray(cond), "cond_mask": np.asarray(mask, bool)
  }


def random_crop(record, crop_size, scale, augment, rng):
  """(HR crop, aligned LR crop or None): a random crop of a record, flipped / rotated when
  `augment`. A real pair (a record with 'lr') is cropped at aligned positions on the LR grid;
  an HR-only record smaller than the crop is first up-scaled to it."""
  c, s = crop_size, scale
  if "lr" in record:
    lr_full = record["lr"]
    if min(lr_full.shape[:2]) < c // s:
      raise UserError(f"{record['name']}: LR image smaller than the LR crop {c // s} px")
    top = int(rng.integers(lr_full.shape[0] - c // s + 1))
    left = int(rng.integers(lr_full.shape[1] - c // s + 1))
    lr = lr_full[top:top + c // s, left:left + c // s]
    hr = record["hr"][top * s:top * s + c, left * s:left * s + c]
    return tuple(_augment([hr, lr], rng)) if augment else (hr, lr)
  image = _fit_to_crop(record["hr"], c)
  top = int(rng.integers(image.shape[0] - c + 1))
  left = int(rng.integers(image.shape[1] - c + 1))
  hr = image[top:top + c, left:left + c]
  if augment:
    (hr,) = _augment([hr], rng)
  return np.ascontiguousarray(hr), None


class TrainTransform(grain.transforms.RandomMap):
  """Random HR crop (aligned LR crop for paired sources), augmentation, degradation."""

  def __init__(self, crop_size, scale, degradation, tokenize, augment=True):
    if crop_size % scale:
      raise UserError(f"crop size {crop_size} is not divisible by the scale {scale}")
    self.crop_size, self.scale = crop_size, scale
    self.degradation, self.tokenize, self.augment = degradation, tokenize, augment

  def random_map(self, record, rng):
    hr, lr = random_crop(record, self.crop_size, self.scale, self.augment, rng)
    if lr is None:
      hr, lr = degradations.degrade_pair(hr, self.scale, rng, self.degradation)
    return to_example(hr, lr, record["tags"], self.tokenize)


def host_of(process_index, process_count):
  if process_index is None or process_count is None:
    import jax

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  return process_index, process_count


class HostRows(grain.MapDataset):
  """This host's rows of every global batch: element j is global element
  (j // local)·global + process_index·local + j % local, for local = global / hosts.

  Elements are computed lazily, so a host reads and degrades only its own rows; the global
  stream, and with it training, is the same for any number of hosts.
  """

  def __init__(self, parent: grain.MapDataset, global_batch: int, process_index: int,
               process_count: int):
    super().__init__(parent)
    self._global, self._local = global_batch, global_batch // process_count
    self._offset = process_index * self._local

  def __len__(self) -> int:
    return len(self._parent) // self._global * self._local

  def _global_index(self, index: int) -> int:
    batch, row = divmod(index, self._local)
    return batch * self._global + self._offset + row

  def __getitem__(self, index):
    return self._parent[self._global_index(index)]

  def __str__(self) -> str:
    return f"HostRows(rows {self._offset}+{self._local} of {self._global})"


def _start_workers():
  # grain's worker processes read absl flags; a library caller has not parsed them.
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _check_picklable(transform):
  import pickle

  try:
    pickle.dumps(transform)
  except (pickle.PicklingError, AttributeError, TypeError) as e:
    raise UserError("worker processes need a picklable tokenize (a module-level function or "
                    f"functools.partial, not a lambda or closure): {e}") from None


def _init_worker(worker_index, worker_count):
  del worker_index, worker_count
  cv2.setNumThreads(1)  # the workers are the parallelism; OpenCV threads would oversubscribe


def make_train_dataset(source, config, tokenize: Tokenize, process_index=None,
                       process_count=None) -> grain.IterDataset:
  """An endless grain IterDataset of this host's rows of each global batch (batch_size / hosts).

  One global stream (shuffled and degraded by the seed and the global element index) is split
  by rows, so every host count trains on the same batches. `iter()` it for a DatasetIterator
  with get_state / set_state. process_index / count default to JAX's; tests pass them to
  simulate hosts.
  """
  process_index, process_count = host_of(process_index, process_count)
  if config.batch_size % process_count:
    raise UserError(f"batch size {config.batch_size} is not divisible by {process_count} hosts")
  if hasattr(source, "train_transform"):  # stored crops (latent_crops.py) bring their own
    transform = source.train_transform(config, tokenize)
  else:
    transform = TrainTransform(config.crop_size, config.scale, config.degradation, tokenize,
                               config.augment)
  ds = grain.MapDataset.source(source).seed(config.seed)
  if not getattr(source, "in_batch_order", False):  # teacher targets: element g is batch g // B's
    ds = ds.shuffle()
  ds = ds.repeat()
  ds = HostRows(ds.random_map(transform), config.batch_size, process_index, process_count)
  ds = ds.batch(config.batch_size // process_count, drop_remainder=True)
  ds = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=config.read_threads,
                        prefetch_buffer_size=config.prefetch_batches))
  if config.num_workers > 0:
    _check_picklable(transform)
    _start_workers()
    ds = ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=config.num_workers,
                                     per_worker_buffer_size=config.worker_buffer_size),
        worker_init_fn=_init_worker)
  return ds


# ---------------------------------------------------------------------------- global batch


def make_global_batch(local_batch, mesh, rules=None) -> dict:
  """The hosts' local batches -> global jax.Arrays (batch = sum of the local batches)."""
  import jax

  from linearsr_jax.sharding import batch_sharding

  sharding = batch_sharding(mesh, rules)
  return {
      k: jax.make_array_from_process_local_data(sharding, np.asarray(local_batch[k]))
      for k in BATCH_KEYS
      if k in local_batch
  }
