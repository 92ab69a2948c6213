"""Params FSDP-sharded over the 8 fake CPU devices (conftest.py): the one-device image, an
eighth of the params per device, and the loader restoring them that way."""

import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import skimage

from linearsr_jax.configs import sana1600m_x4
from linearsr_jax.errors import UserError
from linearsr_jax.inference import param_placement
from linearsr_jax.inference.trained import load_trained
from linearsr_jax.inference.upscale import UpscaleOptions, Upscaler
from linearsr_jax.models.build import build_model
from model_helpers import random_trained
from repo_paths import REPO
from train_runs import xla_flags
from trained_run import trained_run


def held_bytes(shapes, shardings) -> dict:
  """{device: bytes} from the index ranges JAX assigns each device."""
  held = {}
  for x, s in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)):
    for device, index in s.devices_indices_map(x.shape).items():
      size = math.prod(len(range(*i.indices(n))) for i, n in zip(index, x.shape))
      held[device] = held.get(device, 0) + size * np.dtype(x.dtype).itemsize
  return held


@pytest.mark.slow  # two sampler compiles, one of them for 8 devices
def test_fsdp_params_on_eight_devices_give_the_one_device_image():
  lr = skimage.transform.resize(skimage.data.coffee(), (24, 40),
                                anti_aliasing=True).astype(np.float32)
  trained = random_trained(scale=0.05, num_experts=2)
  one = Upscaler(trained, UpscaleOptions(tile=16, overlap=4, color_fix="none"))
  # 4 tiles per call: the tiles over 4 devices, the params over all 8 (both mesh axes)
  fsdp = Upscaler(trained,
                  UpscaleOptions(tile=16, overlap=4, color_fix="none", batch=4, shard_params=True))
  assert one.mesh.devices.size == 1 and dict(fsdp.mesh.shape)["data"] == 4
  total = sum(x.nbytes for x in jax.tree.leaves(trained.params))
  held = held_bytes(fsdp.params, fsdp.param_shardings)
  assert len(held) == 8 and max(held.values()) < total / 6  # 1/8 and the small stems
  assert fsdp.param_bytes_per_device() == max(held.values())
  image = fsdp(lr)
  np.testing.assert_allclose(image, one(lr), atol=1e-5)
  assert np.abs(image - np.repeat(np.repeat(lr, 4, 0), 4, 1)).mean() > 0.02  # not a no-op


def sana_1600m():
  model, _ = build_model(sana1600m_x4.get_config(), load_latent_params=False)
  return model


def test_sana_1600m_puts_an_eighth_of_its_params_on_each_of_8_devices():
  """Abstract only. What stays replicated is the LR stem's convolutions and the output bias
  (0.6 M of 1.6 G params)."""
  model = sana_1600m()
  mesh = param_placement.upscale_mesh(jax.local_devices(), 8, True)
  shardings = param_placement.fsdp_shardings(model, 4, mesh)
  shapes = jax.tree.map(lambda b: b.value, param_placement.boxed_param_shapes(model, 4),
                        is_leaf=lambda b: hasattr(b, "names"))
  total = sum(x.size * 4 for x in jax.tree.leaves(shapes))
  assert 4 * 6.3e9 < total < 4 * 6.5e9  # 4 experts of 1.6 G float32 params
  held = held_bytes(shapes, shardings)
  assert len(held) == 8 and max(held.values()) <= total / 8 * 1.002
  assert param_placement.bytes_per_device(shapes, shardings) == max(held.values())


def test_a_device_count_that_divides_no_axis_is_one_line():
  mesh = param_placement.upscale_mesh(jax.local_devices()[:6], 6, True)
  with pytest.raises(
      UserError, match=r"--shard_params: 6 devices divide no axis of dit/\S+ "
      r"\[1, .*embed 2240"):
    param_placement.fsdp_shardings(sana_1600m(), 1, mesh)


@pytest.mark.slow  # the tiny trained run
def test_the_loader_restores_the_params_fsdp_sharded(tmp_path_factory):
  run_dir = trained_run(tmp_path_factory)
  mesh = param_placement.upscale_mesh(jax.local_devices(), 8, True)
  sharded = load_trained(run_dir, sharded_on=mesh).params
  whole = load_trained(run_dir).params
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(whole)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  held = held_bytes(sharded, jax.tree.map(lambda a: a.sharding, sharded))
  assert len(held) == 8 and max(held.values()) < sum(x.nbytes for x in jax.tree.leaves(whole)) / 6


@pytest.mark.slow  # the tiny trained run, and a CLI process
def test_upscale_with_a_device_count_that_divides_no_axis_is_one_line(tmp_path_factory, tmp_path):
  run_dir = trained_run(tmp_path_factory)
  skimage.io.imsave(tmp_path / "in.png", skimage.data.coffee()[:32, :32], check_contrast=False)
  env = dict(os.environ, XLA_FLAGS=xla_flags(3))
  proc = subprocess.run([
      sys.executable, "-m", "linearsr_jax.commands.cli", "upscale", tmp_path / "in.png",
      "--checkpoint", run_dir, "--out", tmp_path / "out", "--shard_params", "--no_progress"
  ], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "linearsr: error: --shard_params: 3 devices divide no axis of ")
  assert "Traceback" not in proc.stderr and not (tmp_path / "out" / "in_x4.png").exists()
