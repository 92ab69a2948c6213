"""A distill stage's targets sampled once, for runs where sampling the teacher in every step
costs too much: the teacher samples each batch sharded over the mesh, and every host writes its
rows (data/teacher_targets.py), which `config.distill.targets` then trains from.

`write_stage_targets` (`linearsr data teacher_targets`) samples what the stage itself would:
its teacher, its first batches and the starts its steps draw, so that the stage trained from
the targets steps through the same batches and targets as one that samples its teacher.
"""

import jax
import numpy as np

from linearsr_jax import config_check, storage
from linearsr_jax.atomic import staged_file
from linearsr_jax.data import latent_crops, pipeline, teacher_targets
from linearsr_jax.errors import UserError
from linearsr_jax.train import loop, run_fit
from linearsr_jax.train.distill_step import make_teacher_targets
from linearsr_jax.train.distill_teacher import stage_teacher
from linearsr_jax.train.state import split_rng


def write_stage_targets(config, workdir, out, steps=None, *, overwrite=False,
                        progress=True) -> dict:
  """Samples the teacher of the distill stage of `config` (trained, or to be trained, in
  `workdir`) on the first `steps` (default: its max_steps) training batches that stage draws,
  from the starts its steps 0, 1, ... draw, and writes them to `out`. Returns the index."""
  name = _distill_stage(config)
  steps = config.stages[name].max_steps if steps is None else steps
  if steps < 1:
    raise UserError(f"--steps {steps}: sample at least one batch")
  latent_crops.check_output(storage.path(out), teacher_targets.INDEX, overwrite)
  the_run = loop.Run(config, workdir)
  run_fit.check(the_run)  # the teacher is a knee of this model; reads only
  index = the_run.stage_names().index(name)
  teacher = stage_teacher(the_run, name)
  data_iter = iter(
      pipeline.make_train_dataset(the_run.train_source, loop.stage_data_config(config, index),
                                  the_run.tokenize))
  _, key = split_rng(loop.stage_rng(config, index))
  return write_targets(the_run, teacher, (next(data_iter) for _ in range(steps)), out, key=key,
                       total=steps, overwrite=overwrite, progress=progress)


def _distill_stage(config) -> str:
  names = [
      n for n in config_check.stage_names(config) if config_check.stage_kind(config, n) == "distill"
  ]
  if len(names) != 1:
    raise UserError(f"config.stage_order={config.stage_order!r} has " +
                    (f"{len(names)} distill stages ({', '.join(names)}): config.distill.targets "
                     "holds one stage's" if names else "no distill stage to sample targets for"))
  return names[0]


def write_targets(the_run, teacher_params, batches, out, *, key, total=None, overwrite=False,
                  progress=False, process_index=None, process_count=None) -> dict:
  """Samples the teacher on each of `batches` (this host's rows of the training batches, as the
  train pipeline yields them; `total` of them, for the progress bar) and writes this host's
  shard of `out`, and once every host's is written, on host 0 its index. Batch i's start x1 is
  drawn from fold_in(key, i): what distill step i of a state whose rng is `key` draws. Returns
  the index."""
  from array_record.python.array_record_module import ArrayRecordWriter
  from tqdm import tqdm

  process_index, process_count = pipeline.host_of(process_index, process_count)
  config, out = the_run.config, storage.path(out)
  latent_crops.start_output(out, teacher_targets.INDEX, overwrite, process_index)
  targets = jax.jit(
      make_teacher_targets(the_run.model, the_run.latent_space, config.diffusion,
                           scale=config.data.scale))
  batch_size, count = None, 0
  with staged_file(out / latent_crops.shard_name(process_index, process_count)) as local:
    writer = ArrayRecordWriter(str(local), "group_size:1")
    try:
      for i, rows in enumerate(
          tqdm(batches, desc="teacher", unit="batch", total=total,
               disable=not (progress and process_index == 0))):
        batch = pipeline.make_global_batch(rows, the_run.mesh, the_run.rules)
        x1, x0 = targets(batch, jax.random.fold_in(key, i), the_run.latent_params, teacher_params)
        local_rows = dict({k: np.asarray(v) for k, v in rows.items() if k in batch},
                          x1=_host_rows(x1), teacher_x0=_host_rows(x0))
        for r in range(len(local_rows["x1"])):
          writer.write(teacher_targets.serialise({k: v[r] for k, v in local_rows.items()}))
        batch_size, count = x1.shape[0], count + 1
    finally:
      writer.close()
  index = {
      "format": teacher_targets.FORMAT, "sampler": config.diffusion.sampler.to_dict(),
      "key": np.asarray(jax.random.key_data(key)).tolist(), "batch_size": batch_size,
      "batches": count,
      "shards": [latent_crops.shard_name(p, process_count) for p in range(process_count)]
  }
  latent_crops.write_index(out, teacher_targets.INDEX, index, process_index, process_count)
  return index


def _host_rows(x) -> np.ndarray:
  """This host's rows of a batch-sharded global array, in order (replicas once)."""
  shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}
  return np.concatenate([np.asarray(shards[start]) for start in sorted(shards)])
