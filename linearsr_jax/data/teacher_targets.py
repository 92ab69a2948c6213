"""A distill stage's targets sampled once (train/distill_targets.py) instead of in every step
(`config.distill.targets`): the format, and the source that reads it back for training.

  DIR/targets.json                          what was sampled (the teacher's sampler), the shards
  DIR/shard-PPPPP-of-NNNNN.array_record     host P's rows of the batches the teacher sampled

One record (msgpack) per example: its row of a training batch as the teacher saw it ('lr',
'cond', 'cond_mask' and 'hr' or 'hr_latent'), the sampler's start drawn for it ('x1') and the
teacher's sampled output from there ('teacher_x0'). Training reads the rows as they are: the
degradation ran once, when the teacher sampled, because a new LR image would need a new target.
"""

import json

import grain
import numpy as np
from flax import serialization

from linearsr_jax import storage
from linearsr_jax.data import latent_crops
from linearsr_jax.errors import UserError

FORMAT = "linearsr-teacher-targets/1"
INDEX = "targets.json"


def serialise(row: dict) -> bytes:
  return serialization.msgpack_serialize({k: np.asarray(v) for k, v in row.items()})


class TeacherTargetSource:
  """The records of a targets directory, checked against the teacher's sampler of the config."""

  def __init__(self, path, sampler_cfg):
    path = storage.path(path)
    try:
      index = json.loads((path / INDEX).read_text())
    except FileNotFoundError:
      raise UserError(f"config.distill.targets={str(path)!r}: no {INDEX}, so no teacher "
                      "targets") from None
    except (OSError, ValueError) as e:
      raise UserError(f"{path / INDEX}: unreadable ({e})") from None
    if index.get("format") != FORMAT:
      raise UserError(f"{path / INDEX}: format {index.get('format')!r}, expected {FORMAT!r}")
    if index["sampler"] != sampler_cfg.to_dict():
      raise UserError(f"{path}: the teacher sampled with {index['sampler']}, but the config's "
                      f"diffusion.sampler is {sampler_cfg.to_dict()}")
    self.index = index
    self._records = latent_crops.shard_records(path, index["shards"])

  def __len__(self):
    return len(self._records)

  def train_transform(self, data_cfg, tokenize):
    del data_cfg, tokenize  # the rows are stored as the teacher saw them
    return AsStored()

  def __getitem__(self, index):
    return serialization.msgpack_restore(self._records[index])


class AsStored(grain.transforms.RandomMap):

  def random_map(self, record, rng):
    del rng
    return record
