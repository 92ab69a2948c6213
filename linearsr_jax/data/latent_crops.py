"""HR crops stored with their latents, so training need not run the DC-AE encoder.

`linearsr data encode` takes `crops_per_image` fixed random crops of every training image (their
flips and rotations drawn once and stored as the crop), encodes them with the config's latent
space and writes an array_record dataset:

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

import grain
import numpy as np
from flax import serialization

from linearsr_jax import storage
from linearsr_jax.atomic import atomic_file, staged_file
from linearsr_jax.data import degradations, image_io, pipeline, tag_sources
from linearsr_jax.errors import UserError

log = logging.getLogger(__name__)

FORMAT = "linearsr-latent-crops/1"
INDEX = "latents.json"


def shard_name(process_index: int, process_count: int) -> str:
  return f"shard-{process_index:05d}-of-{process_count:05d}.array_record"


def _serialise(name, hr, lr, latent, condition_source) -> bytes:
  ref = condition_source if isinstance(condition_source, tag_sources.ArrayRef) else None
  record = {"name": name, "hr_png": image_io.encode_image(hr, ".png"),
            "latent": np.asarray(latent, np.float32),
            "tags": None if ref is not None or condition_source is None else list(condition_source),
            "cond_ref": list(ref) if ref is not None else None}
  if lr is not None:
    record["lr_png"] = image_io.encode_image(lr, ".png")
  return serialization.msgpack_serialize(record)


def _deserialise(data: bytes) -> dict:
  record = serialization.msgpack_restore(data)
  name = record["name"]
  out = {"name": name, "hr": image_io.decode_image(record["hr_png"], name),
         "latent": record["latent"],
         "tags": tag_sources.ArrayRef(*record["cond_ref"]) if record["cond_ref"] else
         record["tags"]}
  if "lr_png" in record:
    out["lr"] = image_io.decode_image(record["lr_png"], name)
  return out


def _latent_description(config, latent_space) -> dict:
  return {"kind": config.latent.kind, "channels": latent_space.channels,
          "factor": latent_space.factor, "dcae_params": str(config.latent.dcae_params or "")}


def _fixed_crop(record, index, k, data_cfg):
  """Crop k of image `index`: its position, flip and rotation seeded by (seed, index, k), Real-
  ESRGAN's target sharpening applied, rounded to the 8 bits it is stored with."""
  rng = np.random.default_rng([data_cfg.seed, index, k])
  hr, lr = pipeline.random_crop(record, data_cfg.crop_size, data_cfg.scale, data_cfg.augment, rng)
  if data_cfg.degradation.usm_target and lr is None:
    d = data_cfg.degradation
    hr = degradations.usm_sharpen(np.asarray(hr, np.float32), d.usm_weight, d.usm_radius,
                                  d.usm_threshold)
  quantise = lambda im: image_io.to_uint8(im).astype(np.float32) / 255.0
  return quantise(hr), None if lr is None else quantise(lr)


def encode_crops(config, out, crops_per_image: int, batch_size: int = 8, overwrite=False,
                 process_index=None, process_count=None, progress=True) -> dict:
  """Writes this host's shard of `out` (and, on host 0, latents.json once every shard is done).

  Returns the index. process_index / count default to JAX's; tests pass them to simulate hosts.
  `config` is validated (config_check.validate) by whoever loaded it.
  """
  from linearsr_jax.models.latent_space import make_latent_space

  if crops_per_image < 1 or batch_size < 1:
    raise UserError("--crops_per_image and --batch must be positive")
  process_index, process_count = pipeline.host_of(process_index, process_count)
  out = storage.path(out)
  if (out / INDEX).exists() and not overwrite:
    raise UserError(f"output {out} already exists (pass --overwrite to replace it)")
  data_cfg = config.data
  source = pipeline.make_source(data_cfg, "train", config.tags.encoder)
  latent_space = make_latent_space(config.latent)
  if process_index == 0 and (out / INDEX).exists():
    (out / INDEX).unlink()  # readers must not trust a mix of old and new shards
  mine = range(process_index, len(source), process_count)
  name = shard_name(process_index, process_count)
  with staged_file(out / name) as local:
    written = _write_shard(local, source, mine, latent_space, data_cfg, crops_per_image,
                           batch_size, progress=progress and process_index == 0)
  _wait_for_hosts(process_count)
  index = {"format": FORMAT, "crop_size": data_cfg.crop_size, "scale": data_cfg.scale,
           "crops_per_image": crops_per_image, "seed": data_cfg.seed, "augment": data_cfg.augment,
           "usm_target": bool(data_cfg.degradation.usm_target),
           "latent": _latent_description(config, latent_space),
           "latent_shape": list(_latent_shape(latent_space, data_cfg.crop_size)),
           "images": len(source),
           "shards": [shard_name(p, process_count) for p in range(process_count)]}
  if process_index == 0 and all((out / s).exists() for s in index["shards"]):
    with atomic_file(out / INDEX, "w") as f:
      json.dump(index, f, indent=2, sort_keys=True)
  log.info("host %d wrote %d crops to %s", process_index, written, out / name)
  return index


def _write_shard(path, source, indices, latent_space, data_cfg, crops_per_image: int,
                 batch_size: int, progress: bool) -> int:
  """Writes the fixed crops of `source[indices]` with their latents (encoded `batch_size` at a
  time) to one local array_record file. Returns the number of crops."""
  from array_record.python.array_record_module import ArrayRecordWriter
  from tqdm import tqdm

  writer = ArrayRecordWriter(str(path), "group_size:1")
  pending, written = [], 0

  def flush():
    latents = np.asarray(latent_space.encode(np.stack([hr for _, hr, _, _ in pending]) * 2 - 1))
    for (item_name, hr, lr, tags), latent in zip(pending, latents):
      writer.write(_serialise(item_name, hr, lr, latent, tags))
    pending.clear()

  try:
    for index in tqdm(indices, desc="encode", unit="img", disable=not progress):
      record = source[index]
      for k in range(crops_per_image):
        hr, lr = _fixed_crop(record, index, k, data_cfg)
        pending.append((f"{record['name']}#{k}", hr, lr, record["tags"]))
        written += 1
        if len(pending) == batch_size:
          flush()
    if pending:
      flush()
  finally:
    writer.close()
  return written


def _latent_shape(latent_space, crop_size: int) -> tuple:
  import jax

  image = jax.ShapeDtypeStruct((1, crop_size, crop_size, 3), np.float32)
  return jax.eval_shape(latent_space.encode_fn, latent_space.abstract_params(), image).shape[1:]


def _wait_for_hosts(process_count: int):
  import jax

  if process_count > 1 and jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("linearsr data encode: shards written")


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
    missing = [s for s in index["shards"] if not (path / s).is_file()]
    if missing:
      raise UserError(f"{path}: shard {missing[0]} is missing")
    self.index = index
    self._records = grain.sources.ArrayRecordDataSource([str(path / s) for s in index["shards"]])

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
