"""The config is checked once, at load: a bad value is one `linearsr: error:` line naming the
field, before anything starts (no workdir), and every shipped config passes."""

import importlib

import flax
import grain
import jax
import jax.numpy as jnp
import pytest

from linearsr_jax import config_check
from linearsr_jax.commands.cli import main
from linearsr_jax.configs import tiny
from linearsr_jax.errors import UserError
from linearsr_jax.train.checkpoint import StageCheckpoints
from repo_paths import CONFIGS


@pytest.mark.parametrize(
    "override, expected",
    [
        # choice fields
        ("optimizer.name=adamx", "config.optimizer.name='adamx' must be 'adamw' or 'adafactor'"),
        ("data.degradation.mode=nearest",
         "config.data.degradation.mode='nearest' must be 'realesrgan', 'first_order' or 'bicubic'"),
        # numeric ranges (a stage's optimizer override is checked as the field it overrides)
        ("stages.moe.optimizer.learning_rate=0",
         "config.stages.moe.optimizer.learning_rate=0.0 must be > 0"),
        ("tags.dropout_prob=1.5", "config.tags.dropout_prob=1.5 must be in [0, 1]"),
        ("diffusion.source_prob=1.5", "config.diffusion.source_prob=1.5 must be in [0, 1]"),
        ("data.degradation.pass1.jpeg_range=(95,30)",
         "config.data.degradation.pass1.jpeg_range=(95, 30) must be a (low, high) pair"),
        ("train.eval_every=0", "config.train.eval_every=0 must be >= 1"),
        ("train.lock_heartbeat_seconds=0", "config.train.lock_heartbeat_seconds=0.0 must be > 0"),
        ("train.lock_stale_seconds=60", "config.train.lock_stale_seconds=60.0 must be at least 3 × "
         "train.lock_heartbeat_seconds (30): a live run's heartbeat"),
        ("data.crop_size=66", "config.data.crop_size=66 must be a multiple of 4 (the scale 4 and "
         "the latent factor 4)"),
        ("stages.moe.num_experts=3", "config.stages.moe.num_experts must be a power of two, got 3"),
        # a field that moved: where it went, not "no such key"
        ("diffusion.experts.num_experts=4", "config.diffusion.experts.num_experts is no field any "
         "more: set config.stages.<stage>.num_experts instead"),
        # stage_order
        ("stage_order=pretrain,moo", "config.stage_order='pretrain,moo' names stage 'moo', which "
         "config.stages does not define"),
        ("train.restart_stage=pretrian", "config.train.restart_stage='pretrian' must name a stage "
         "of stage_order (pretrain, moe)"),
        # the mesh against conftest's 8 devices, and the batch against its batch shards
        ("mesh.data=3",
         "config.mesh: mesh {'data': 3, 'fsdp': 1, 'tensor': 1, 'expert': 1} needs 3 "
         "devices, have 8"),
        ("mesh.fsdp=0",
         "config.mesh: mesh {'data': -1, 'fsdp': 0, 'tensor': 1, 'expert': 1}: sizes "
         "must be positive"),
        ("data.batch_size=12", "config.data.batch_size=12 does not split over the mesh's 8 batch "
         "shards (expert 1 × data 8 × fsdp 1)"),
        # ESGF and best-checkpoint metrics against what validation logs
        ("esgf.metrics=val/psnr:max", "config.esgf.metrics='val/psnr:max' names 'val/psnr', which "
         "validation does not log; choose from 'val/psnr_y'"),
        ("train.best_metric=val/lpips", "config.train.best_metric='val/lpips' must be "
         "'val/psnr_y', 'val/ssim_y' or 'val/lpips_alex'"),
    ])
def test_bad_value_is_one_line_naming_the_field_and_nothing_starts(override, expected, tmp_path,
                                                                   capsys):
  workdir = tmp_path / "run"
  code = main(
      ["train", "--config", "configs/tiny.py", "--workdir",
       str(workdir), f"--config.{override}"])
  err = capsys.readouterr().err
  errors = [line for line in err.splitlines() if line.startswith("linearsr: error:")]
  assert code == 2 and len(errors) == 1 and "Traceback" not in err, err[-3000:]
  assert expected in errors[0], errors[0]
  assert not workdir.exists()


def _run_configs():
  """Every configs/ module whose get_config() is a whole run (not a section, like the DC-AE's)."""
  for path in sorted(CONFIGS.glob("*.py")):
    module = importlib.import_module(f"configs.{path.stem}")
    config = module.get_config() if hasattr(module, "get_config") else None
    if config is not None and "stage_order" in config:
      yield path.stem, config


def test_every_shipped_config_validates_on_8_devices():
  names = []
  for name, config in _run_configs():
    config_check.validate(config, num_devices=8)
    names.append(name)
  assert {"tiny", "sana600m_x4", "sana1600m_x4"} <= set(names)


def test_every_rule_names_a_field():
  """A renamed field must not leave a rule that checks nothing."""
  keys = {config_check._rule_key(path) for path in config_check.flatten(tiny.get_config())}
  assert set(config_check.CHOICES) | set(config_check.RANGES) <= keys


def test_a_config_that_sets_a_moved_field_says_where_it_went():
  config = tiny.get_config()
  config.diffusion.experts.num_experts = 4
  with pytest.raises(
      UserError, match=r"^config\.diffusion\.experts\.num_experts is no field any "
      r"more: set config\.stages\.<stage>\.num_experts instead"):
    config_check.validate(config)


def test_without_devices_only_the_mesh_shape_is_checked():
  config = tiny.get_config()
  config.mesh.data, config.data.batch_size = 3, 12
  config_check.validate(config)  # 3 devices, 12 = 4 × 3: fine until the devices are known
  with pytest.raises(UserError, match="needs 3 devices, have 8"):
    config_check.validate(config, num_devices=8)
  config.mesh.data = config.mesh.fsdp = -1
  with pytest.raises(UserError, match="except one -1"):
    config_check.validate(config)


def test_a_config_file_that_raises_is_one_line_naming_the_file_and_line(tmp_path, capsys):
  """The file's own AttributeError is not taken for an override naming no field: it is said
  as what it is, with the line, and the cause stays chained."""
  buggy = tmp_path / "buggy.py"
  buggy.write_text("from linearsr_jax.configs.tiny import get_config as tiny\n\n"
                   "def get_config():\n  config = tiny()\n  config.no_such_section.depth = 1\n"
                   "  return config\n")
  assert main([
      "train", "--config",
      str(buggy), "--workdir",
      str(tmp_path / "run"), "--config.model.depth=3"
  ]) == 2
  [line] = capsys.readouterr().err.strip().splitlines()
  assert f"the config file {buggy} raised AttributeError" in line and "no_such_section" in line
  assert line.endswith("(line 5)") and not (tmp_path / "run").exists()


@flax.struct.dataclass
class _State:
  params: dict
  opt_state: tuple


def test_checkpoint_of_another_optimizer_is_a_user_error(tmp_path):
  """Orbax's ValueError for a tree of another structure is the mismatch the user caused."""
  params = {"w": jnp.ones((2, 3))}
  ckpts = StageCheckpoints(tmp_path, keep_latest=1, best_metric="val/psnr_y", best_mode="max",
                           async_save=False)
  data_iter = iter(grain.MapDataset.range(4).to_iter_dataset())
  ckpts.save(0, _State(params, (jnp.zeros(()),)), data_iter, {"val/psnr_y": 1.0})
  other = _State(params, (jnp.zeros(()), jnp.zeros(())))
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(
          jax.devices()[0])), other)
  with pytest.raises(UserError, match="does not match this model and config"):
    ckpts.restore(0, abstract)
