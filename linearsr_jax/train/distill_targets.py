"""A distill stage's targets sampled once, for runs where sampling the teacher in every step
costs too much: the teacher samples each batch sharded over the mesh, and every host writes its
rows (data/teacher_targets.py), which `config.distill.targets` then trains from."""

import json

import jax
import numpy as np

from linearsr_jax import storage
from linearsr_jax.atomic import atomic_file, staged_file
from linearsr_jax.data import latent_crops, pipeline, teacher_targets
from linearsr_jax.train.distill_step import make_teacher_targets


def write_targets(the_run, teacher_params, batches, out, *, seed: int, process_index=None,
                  process_count=None) -> int:
  """Samples the teacher on each of `batches` (this host's rows of the training batches, as the
  train pipeline yields them) and writes this host's shard of `out`, and on host 0 its index.
  Batch i's start x1 is drawn from fold_in(PRNGKey(seed), i): what a distill step i of a state
  whose rng is PRNGKey(seed) draws. Returns the number of rows written."""
  from array_record.python.array_record_module import ArrayRecordWriter

  process_index, process_count = pipeline.host_of(process_index, process_count)
  config, out = the_run.config, storage.path(out)
  targets = jax.jit(
      make_teacher_targets(the_run.model, the_run.latent_space, config.diffusion,
                           scale=config.data.scale))
  written = 0
  with staged_file(out / latent_crops.shard_name(process_index, process_count)) as local:
    writer = ArrayRecordWriter(str(local), "group_size:1")
    try:
      for i, rows in enumerate(batches):
        batch = pipeline.make_global_batch(rows, the_run.mesh, the_run.rules)
        x1, x0 = targets(batch, jax.random.fold_in(jax.random.PRNGKey(seed), i),
                         the_run.latent_params, teacher_params)
        local_rows = dict({k: np.asarray(v) for k, v in rows.items() if k in batch},
                          x1=_host_rows(x1), teacher_x0=_host_rows(x0))
        for r in range(len(local_rows["x1"])):
          writer.write(teacher_targets.serialise({k: v[r] for k, v in local_rows.items()}))
          written += 1
    finally:
      writer.close()
  if process_index == 0:
    index = {
        "format": teacher_targets.FORMAT, "sampler": config.diffusion.sampler.to_dict(),
        "seed": seed,
        "shards": [latent_crops.shard_name(p, process_count) for p in range(process_count)]
    }
    with atomic_file(out / teacher_targets.INDEX, "w") as f:
      json.dump(index, f, indent=2, sort_keys=True)
  return written


def _host_rows(x) -> np.ndarray:
  """This host's rows of a batch-sharded global array, in order (replicas once)."""
  shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}
  return np.concatenate([np.asarray(shards[start]) for start in sorted(shards)])
