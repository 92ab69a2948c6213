"""A distill stage's targets sampled once (train/distill_targets.py) instead of in every step
(`config.distill.targets`): the format, and the source that reads it back for training.

  DIR/targets.json                          what was sampled (the teacher's sampler, the key
                                            the starts were drawn from, the batches), the shards
  DIR/shard-PPPPP-of-NNNNN.array_record     host P's rows of the batches the teacher sampled

One record (msgpack) per example: its row of a training batch as the teacher saw it ('lr',
'cond', 'cond_mask' and 'hr' or 'hr_latent'), the sampler's start drawn for it ('x1') and the
teacher's sampled output from there ('teacher_x0'). Training reads the rows as they are: the
degradation ran once, when the teacher sampled, because a new LR image would need a new target.
And in the order they were sampled, unshuffled (`in_batch_order`): training step i takes batch
i, with the starts its own key would have drawn (past the last batch, they repeat).
"""

import json

import grain
import numpy as np
from flax import serialization

from linearsr_jax import storage
from linearsr_jax.data import latent_crops
from linearsr_jax.errors import UserError

FORMAT = "linearsr-teacher-targets/2"
INDEX = "targets.json"


def serialise(row: dict) -> bytes:
  return serialization.msgpack_serialize({k: np.asarray(v) for k, v in row.items()})


class TeacherTargetSource:
  """The records of a targets directory, checked against the teacher's sampler of the config:
  element g is row g % B of global batch g // B (B: the batches' size), whichever host wrote
  it."""

  in_batch_order = True  # the train pipeline does not shuffle it (data/pipeline.py)

  def __init__(self, path, sampler_cfg):
    path = storage.path(path)
    try:
      index = json.loads((path / INDEX).read_text())
    except FileNotFoundError:
      raise UserError(f"config.distill.targets={str(path)!r}: no {INDEX}, so no teacher "
                      "targets (`linearsr data teacher_targets` writes them)") from None
    except (OSError, ValueError) as e:
      raise UserError(f"{path / INDEX}: unreadable ({e})") from None
    if index.get("format") != FORMAT:
      raise UserError(f"{path / INDEX}: format {index.get('format')!r}, expected {FORMAT!r}")
    if index["sampler"] != sampler_cfg.to_dict():
      raise UserError(f"{path}: the teacher sampled with {index['sampler']}, but the config's "
                      f"diffusion.sampler is {sampler_cfg.to_dict()}")
    self.index = index
    self._records = latent_crops.shard_records(path, index["shards"])
    # Host p's shard holds rows p·local ... of every batch, batch after batch.
    self._local = index["batch_size"] // len(index["shards"])
    self._per_shard = index["batches"] * self._local

  def __len__(self):
    return len(self._records)

  def _record(self, index: int) -> int:
    batch, row = divmod(index, self.index["batch_size"])
    host, row = divmod(row, self._local)
    return host * self._per_shard + batch * self._local + row

  def train_transform(self, data_cfg, tokenize):
    del data_cfg, tokenize  # the rows are stored as the teacher saw them
    return AsStored()

  def __getitem__(self, index):
    return serialization.msgpack_restore(self._records[self._record(index)])


class AsStored(grain.transforms.RandomMap):

  def random_map(self, record, rng):
    del rng
    return record
