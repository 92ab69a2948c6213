"""HR crops stored with their latents, so training need not run the DC-AE encoder: the format,
and the source that reads it back for training.

`linearsr data encode` (commands/encode.py) takes `crops_per_image` fixed random crops of every
training image (their flips and rotations drawn once and stored as the crop), encodes them with
the config's latent space and writes an array_record dataset:

  DIR/latents.json                          what was encoded, how, and the shard files
  DIR/shard-PPPPP-of-NNNNN.array_record     host P's images: indices P, P + N, P + 2N, ...

One record (msgpack) per crop: 'name', 'hr_png' (the HR crop, 8-bit PNG: the LR source), 'lr_png'
(the aligned LR crop, paired sources only), 'latent' (float32 [h, w, C], the latent of exactly
the stored pixels), 'tags' / 'cond_ref' (the condition source). With `data.hr_latents =
"precomputed"` the train pipeline reads these: the degradation still runs on the fly, from the
stored HR crop, so every epoch sees new LR images of the same crops.
"""

import json
import logging
import time

import grain
import numpy as np
from flax import serialization

from linearsr_jax import storage
from linearsr_jax.atomic import atomic_file
from linearsr_jax.data import degradations, image_io, pipeline, tag_sources
from linearsr_jax.errors import UserError

log = logging.getLogger(__name__)

FORMAT = "linearsr-latent-crops/1"
INDEX = "latents.json"
# How long host 0 waits, once the hosts have met, for a shard the storage does not show yet.
SHARD_WAIT_SECONDS = 120.0


def shard_name(process_index: int, process_count: int) -> str:
  return f"shard-{process_index:05d}-of-{process_count:05d}.array_record"


def shard_records(path, shards) -> grain.sources.ArrayRecordDataSource:
  """The records of the shard files `shards` in `path`, in order; a missing one is one line."""
  missing = [s for s in shards if not (path / s).is_file()]
  if missing:
    raise UserError(f"{path}: shard {missing[0]} is missing")
  return grain.sources.ArrayRecordDataSource([str(path / s) for s in shards])


def check_output(out, index_name: str, overwrite: bool):
  """An output in `out` already (its index there) is refused unless `overwrite`."""
  if (out / index_name).exists() and not overwrite:
    raise UserError(f"output {out} already exists (pass --overwrite to replace it)")


def start_output(out, index_name: str, overwrite: bool, process_index: int):
  """Before the hosts write their shards of `out`: check_output, then the index of the output
  it replaces goes first (readers must not trust a mix of old and new shards)."""
  check_output(out, index_name, overwrite)
  if process_index == 0 and (out / index_name).exists():
    (out / index_name).unlink()


def write_index(out, index_name: str, index: dict, process_index: int, process_count: int,
                wait_seconds: float = SHARD_WAIT_SECONDS):
  """Once every host has written its shard of `out` (`index["shards"]`), host 0 writes `index`
  to out/index_name, atomically, so an index never names a shard that is not there yet. Every
  host calls it after its own shard is written. A shard that host 0 still cannot see
  `wait_seconds` after the hosts met (a slow shared file system, or a host that failed) is one
  line, and no index."""
  _wait_for_hosts(process_count, f"shards of {out} written")
  if process_index != 0:
    return
  deadline = time.monotonic() + wait_seconds
  while missing := [s for s in index["shards"] if not (out / s).exists()]:
    if time.monotonic() > deadline:
      raise UserError(f"{out}: shard {missing[0]} is missing {wait_seconds:g} s after every "
                      f"host finished writing, so no {index_name} was written")
    time.sleep(min(0.5, wait_seconds / 10))
  with atomic_file(out / index_name, "w") as f:
    json.dump(index, f, indent=2, sort_keys=True)


def _wait_for_hosts(process_count: int, what: str):
  import jax

  if process_count > 1 and jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(what)


def serialise(name, hr, lr, latent, condition_source) -> bytes:
  """One crop's record (the encode tool's writer, commands/encode.py)."""
  ref = condition_source if isinstance(condition_source, tag_sources.ArrayRef) else None
  record = {
      "name": name, "hr_png": image_io.encode_image(hr, ".png"),
      "latent": np.asarray(latent, np.float32),
      "tags": None if ref is not None or condition_source is None else list(condition_source),
      "cond_ref": list(ref) if ref is not None else None
  }
  if lr is not None:
    record["lr_png"] = image_io.encode_image(lr, ".png")
  return serialization.msgpack_serialize(record)


def _deserialise(data: bytes) -> dict:
  record = serialization.msgpack_restore(data)
  name = record["name"]
  out = {
      "name": name, "hr": image_io.decode_image(record["hr_png"], name), "latent": record["latent"],
      "tags": tag_sources.ArrayRef(*record["cond_ref"]) if record["cond_ref"] else record["tags"]
  }
  if "lr_png" in record:
    out["lr"] = image_io.decode_image(record["lr_png"], name)
  return out


class LatentCropSource:
  """The records of a `linearsr data encode` output, checked against the training config."""

  def __init__(self, path, data_cfg, latent_channels: int, latent_factor: int):
    path = storage.path(path)
    if not (path / INDEX).is_file():
      raise UserError(f"data.latents_path={path}: not a `linearsr data encode` output "
                      f"(no {INDEX})")
    try:
      index = json.loads((path / INDEX).read_text())
    except (OSError, ValueError) as e:
      raise UserError(f"{path / INDEX}: unreadable ({e})") from None
    if index.get("format") != FORMAT:
      raise UserError(f"{path / INDEX}: format {index.get('format')!r}, expected {FORMAT!r}")
    theirs = (index["crop_size"], index["scale"], index["latent"]["channels"],
              index["latent"]["factor"])
    ours = (data_cfg.crop_size, data_cfg.scale, latent_channels, latent_factor)
    if theirs != ours:
      raise UserError(f"{path}: crops of {theirs[0]} px at ×{theirs[1]} with {theirs[2]}-channel "
                      f"f{theirs[3]} latents, but the config trains on {ours[0]} px at ×{ours[1]} "
                      f"with {ours[2]}-channel f{ours[3]} latents")
    self.index = index
    self._records = shard_records(path, index["shards"])

  def __len__(self):
    return len(self._records)

  def train_transform(self, data_cfg, tokenize):
    return LatentTrainTransform(data_cfg.scale, data_cfg.degradation, tokenize)

  def __getitem__(self, index):
    return _deserialise(self._records[index])


class LatentTrainTransform(grain.transforms.RandomMap):
  """A stored crop -> its latent and a fresh LR image (the stored LR crop for real pairs)."""

  def __init__(self, scale, degradation, tokenize):
    self.scale, self.tokenize = scale, tokenize
    # The stored HR crop is already sharpened when the config sharpens targets.
    self.degradation = degradation.copy_and_resolve_references()
    self.degradation.usm_target = False

  def random_map(self, record, rng):
    hr, lr = record["hr"], record.get("lr")
    if lr is None:
      hr, lr = degradations.degrade_pair(hr, self.scale, rng, self.degradation)
    example = pipeline.to_example(hr, lr, record["tags"], self.tokenize)
    del example["hr"]
    example["hr_latent"] = record["latent"]
    return example
