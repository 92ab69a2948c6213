"""The encode tool of `linearsr data encode`: fixed random HR crops of every training image,
encoded with the config's latent space and written in the format of data/latent_crops.py, which
training reads back instead of running the encoder."""

import logging

import numpy as np

from linearsr_jax import storage
from linearsr_jax.atomic import staged_file
from linearsr_jax.data import degradations, image_io, latent_crops, pipeline
from linearsr_jax.errors import UserError

log = logging.getLogger(__name__)


def _latent_description(config, latent_space) -> dict:
  return {
      "kind": config.latent.kind, "channels": latent_space.channels, "factor": latent_space.factor,
      "dcae_params": str(config.latent.dcae_params or "")
  }


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
  latent_crops.start_output(out, latent_crops.INDEX, overwrite, process_index)
  data_cfg = config.data
  source = pipeline.make_source(data_cfg, "train", config.tags.encoder)
  latent_space = make_latent_space(config.latent)
  mine = range(process_index, len(source), process_count)
  name = latent_crops.shard_name(process_index, process_count)
  with staged_file(out / name) as local:
    written = _write_shard(local, source, mine, latent_space, data_cfg, crops_per_image, batch_size,
                           progress=progress and process_index == 0)
  index = {
      "format": latent_crops.FORMAT, "crop_size": data_cfg.crop_size, "scale": data_cfg.scale,
      "crops_per_image": crops_per_image, "seed": data_cfg.seed, "augment": data_cfg.augment,
      "usm_target": bool(data_cfg.degradation.usm_target
                        ), "latent": _latent_description(config, latent_space),
      "latent_shape": list(_latent_shape(latent_space, data_cfg.crop_size)), "images": len(source),
      "shards": [latent_crops.shard_name(p, process_count) for p in range(process_count)]
  }
  latent_crops.write_index(out, latent_crops.INDEX, index, process_index, process_count)
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
      writer.write(latent_crops.serialise(item_name, hr, lr, latent, tags))
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
