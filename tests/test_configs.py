"""Every config in configs/ builds its whole run on the 8 test devices: mesh, model, latent
space, state shardings. The SANA-sized ones are built from shapes only (`load_weights=False`):
nothing the size of the model is allocated."""

import importlib

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
from diffusers import AutoencoderDC, SanaTransformer2DModel

from linearsr_jax import sharding
from linearsr_jax.aot.step_compile import abstract_batch
from linearsr_jax.interop.diffusers_sana import diffusers_config
from linearsr_jax.models.latent_space import lr_stem_depth
from linearsr_jax.train.loop import Run
from repo_paths import CONFIGS

# Files that hold sections or shared helpers rather than a training run.
NOT_RUNS = {"__init__", "base", "sana_x4", "dcae_f32c32_sana"}
RUN_CONFIGS = sorted(p.stem for p in CONFIGS.glob("*.py") if p.stem not in NOT_RUNS)


def test_every_config_file_is_covered():
  assert {"tiny", "sana600m_x4", "sana1600m_x4"} <= set(RUN_CONFIGS)
  for name in sorted(p.stem for p in CONFIGS.glob("*.py")):
    importlib.import_module(f"linearsr_jax.configs.{name}")  # each imports cleanly


def _torch_param_count(module_cls, **kwargs) -> int:
  """Parameters of a diffusers model built on the meta device (no memory)."""
  with torch.device("meta"):
    return sum(p.numel() for p in module_cls(**kwargs).parameters())


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_config_builds_its_run_on_the_mesh(name, tmp_path):
  config = importlib.import_module(f"configs.{name}").get_config()
  run = Run(config, tmp_path, load_weights=False)
  assert run.mesh.devices.size == 8
  for axis in ("data", "fsdp", "tensor", "expert"):
    want = config.mesh[axis]
    assert run.mesh.shape[axis] == (want if want != -1 else 8 //
                                    np.prod([v for v in config.mesh.values() if v != -1])), axis
  # The LR stem takes the LR crop to the latent grid of the HR crop.
  scale, factor = config.data.scale, run.latent_space.factor
  assert config.model.lr_stem_convs == lr_stem_depth(factor, scale)
  assert config.data.crop_size % factor == 0 and config.data.eval.crop_size % factor == 0
  for stage in run.stage_names():
    abstract, shardings = run.abstract_state(stage)
    experts = config.stages[stage].num_experts
    assert {x.shape[0] for x in jax.tree.leaves(abstract.params)} == {experts}
    # Sharding over fsdp leaves under 1 % of the params whole on every chip (biases, the LR
    # stem, the null condition); a large table or kernel left out of the rules would not be.
    if run.mesh.shape["fsdp"] > 1:
      leaves = jax.tree.leaves(abstract.params)
      whole = sum(x.size for x in leaves if "fsdp" not in str(x.sharding.spec))
      assert whole < 0.01 * sum(x.size for x in leaves), (stage, whole)
  if config.latent.kind == "dcae":
    # The DC-AE params are abstract, replicated on the mesh, and the same count as diffusers'.
    leaves = jax.tree.leaves(run.latent_params)
    assert all(
        isinstance(x, jax.ShapeDtypeStruct) and x.sharding.is_fully_replicated for x in leaves)
    dcae = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.latent.dcae.items()}
    assert sum(x.size for x in leaves) == _torch_param_count(AutoencoderDC, **dcae)


def test_a_run_built_from_shapes_reads_no_data(tmp_path):
  """Compiling for a pod needs no data: a source only the pod can see (here, one that does
  not exist) does not stop it."""
  config = importlib.import_module("configs.sana600m_x4").get_config()
  for section in (config.data.source, config.data.eval_source):
    section.kind, section.path = "folder", str(tmp_path / "on_the_pod")
  run = Run(config, tmp_path, load_weights=False)
  assert run.eval_batches == [] and run.train_source is None


@pytest.mark.parametrize("name, published", [("sana600m_x4", 590e6), ("sana1600m_x4", 1604e6)])
def test_sana_dit_has_the_published_size_and_diffusers_layout(name, published, tmp_path):
  """The DiT of the SANA configs has exactly the params of diffusers' SanaTransformer2DModel
  with the LR channels added (about the SANA paper's 590M / 1604M), plus the LR stem."""
  config = importlib.import_module(f"configs.{name}").get_config()
  run = Run(config, tmp_path, load_weights=False)
  abstract, _ = run.abstract_state("pretrain")
  flat = jax.tree_util.tree_flatten_with_path(abstract.params)[0]
  dit = sum(x.size
            for p, x in flat
            if "'dit'" in jax.tree_util.keystr(p) and "lr_stem" not in jax.tree_util.keystr(p))
  reference = _torch_param_count(SanaTransformer2DModel, **diffusers_config(run.model.dit))
  assert dit == reference
  assert abs(reference - published) / published < 0.01


# SANA's released 512 px training config (configs/sana_config/512ms/Sana_600M_img512.yaml):
# scheduler.flow_shift 3.0 with logit-normal(0, 1) times; train_scripts/train.py hands that
# flow_shift to the training Scheduler, so SANA trains on the shifted density it samples with.
SANA_512PX = {"flow_shift": 3.0, "logit_mean": 0.0, "logit_std": 1.0}


@pytest.mark.parametrize("name", ["sana600m_x4", "sana1600m_x4"])
def test_sana_configs_train_on_sanas_shifted_timestep_density(name):
  diffusion = importlib.import_module(f"linearsr_jax.configs.{name}").get_config().diffusion
  assert diffusion.timestep_sampling == "logit_normal"
  assert (diffusion.train_shift, diffusion.logit_mean,
          diffusion.logit_std) == (SANA_512PX["flow_shift"], SANA_512PX["logit_mean"],
                                   SANA_512PX["logit_std"])
  assert diffusion.sampler.shift == SANA_512PX["flow_shift"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sana600m_x4", "sana1600m_x4"])
def test_sana_configs_distill_their_experts_on_the_mesh(name, tmp_path):
  """A distill stage after the SANA configs' 4 experts, from shapes alone: the config holds, the
  teacher is the experts' EMA params placed as that stage places them, the student is one expert
  sharded by the same rules, and the distill step (the teacher's guided sampler in it) traces on
  the 8 devices' mesh to a state of the student's shapes and shardings."""
  config = importlib.import_module(f"configs.{name}").get_config()
  config.stage_order = "pretrain,moe,distill"
  # A guided teacher; 2 of its 20 steps: each step traces the same forwards again.
  config.diffusion.sampler.update(dict(guidance_scale=2.0, steps=2))
  run = Run(config, tmp_path, load_weights=False)
  teacher = run.abstract_teacher("distill")
  moe, _ = run.abstract_state("moe")
  assert jax.tree.map(lambda t, m: (t.shape, t.sharding), teacher,
                      moe.ema_params) == jax.tree.map(lambda m: (m.shape, m.sharding),
                                                      moe.ema_params)
  assert {x.shape[0] for x in jax.tree.leaves(teacher)} == {4}
  student, shardings = run.abstract_state("distill")
  assert {x.shape[0] for x in jax.tree.leaves(student.params)} == {1}
  leaves = jax.tree.leaves(student.params)
  whole = sum(x.size for x in leaves if "fsdp" not in str(x.sharding.spec))
  assert whole < 0.01 * sum(x.size for x in leaves), whole

  step = run.jit_train_step("distill", shardings, jax.tree.map(lambda x: x.sharding, teacher))
  batch = abstract_batch(run, config.data.batch_size, config.data.crop_size,
                         sharding.batch_sharding(run.mesh, run.rules))
  with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
    state, metrics = jax.eval_shape(step, student, batch, run.latent_params, teacher)
  same = lambda a, b: (a.shape, a.dtype, a.sharding) == (b.shape, b.dtype, b.sharding)
  assert all(jax.tree.leaves(jax.tree.map(same, state, student)))
  assert {"train/loss", "train/loss_teacher"} <= set(metrics)
