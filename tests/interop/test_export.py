"""`linearsr export` of a trained run: diffusers and npz layouts, checked against diffusers and
against the checkpoint itself (a tiny 2-stage run trained in tests/trained_run.py)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from diffusers import SanaTransformer2DModel
from safetensors.numpy import load_file

from linearsr_jax import params_io
from linearsr_jax.commands.cli import main
from linearsr_jax.commands.cli_export import read_npz_export
from linearsr_jax.inference.trained import load_trained
from linearsr_jax.models.dit import DiT, LRStem
from sana_reference import torch_forward
from trained_run import trained_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def moe(run_dir):
  return load_trained(run_dir, stage="moe")


def flat_expert(params, index):
  return {k: np.asarray(v)[index] for k, v in params_io.flatten(params).items()}


@pytest.mark.slow
def test_diffusers_export_then_import_is_bit_exact_per_expert(tmp_path, run_dir, moe):
  assert moe.num_experts == 4
  assert main(["export", str(run_dir), "--layout", "diffusers", "--out", str(tmp_path / "e")]) == 0
  for i in range(4):
    folder = tmp_path / "e" / f"expert_{i}"
    assert main(["import", "diffusers",
                 str(folder), "--no_scan", "--out",
                 str(tmp_path / f"p{i}")]) == 0
    config, params = params_io.load_params_dir(tmp_path / f"p{i}", "dit")
    assert config == moe.config.model.to_dict()
    want, got = flat_expert(moe.params["dit"], i), params_io.flatten(params)
    assert sorted(want) == sorted(got)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    # The tag encoder has no slot in diffusers: it rides in the extra file beside the LR stem.
    extra = load_file(str(folder / "linearsr_extra.safetensors"))
    for key, value in flat_expert(moe.params["tag_encoder"], i).items():
      np.testing.assert_array_equal(extra[f"tag_encoder/{key}"], value)
    info = json.loads((folder / "linearsr_export.json").read_text())
    assert info["expert"] == i and info["tags"]["max_tokens"] == moe.config.tags.max_tokens
  # the experts differ after MoE training, so the test would notice a mixed-up index
  assert not np.array_equal(
      flat_expert(moe.params["dit"], 0)["proj_out/kernel"],
      flat_expert(moe.params["dit"], 3)["proj_out/kernel"])


@pytest.mark.slow
def test_diffusers_layout_runs_in_diffusers_like_our_dit(tmp_path, run_dir, moe):
  assert main(["export", str(run_dir), "--expert", "2", "--raw", "--out", str(tmp_path / "e")]) == 0
  model = SanaTransformer2DModel.from_pretrained(tmp_path / "e").eval()
  raw = load_trained(run_dir, stage="moe", ema=False).params
  dit = {k: v[2] for k, v in params_io.flatten(raw["dit"]).items()}
  cfg = moe.model.dit
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 6, 5, cfg.latent_channels)).astype(np.float32)
  lr = rng.uniform(-1, 1, (2, 6, 5, 3)).astype(np.float32)
  t = np.array([130.0, 870.0], np.float32)
  cond = rng.standard_normal((2, 4, cfg.caption_channels)).astype(np.float32)
  mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
  ours = np.asarray(DiT(cfg).apply({"params": params_io.unflatten(dit)}, x, t, lr, cond, mask))
  # diffusers runs on [x_t, E_conv(lr)]; E_conv comes from the exported extra file.
  extra = params_io.unflatten(load_file(str(tmp_path / "e" / "linearsr_extra.safetensors")))
  stem = LRStem(cfg.lr_stem_convs, cfg.lr_stem_width, cfg.lr_channels)
  lr_feat = np.asarray(stem.apply({"params": extra["lr_stem"]}, jnp.asarray(lr)))
  theirs = torch_forward(model, np.concatenate([x, lr_feat], -1), t, cond, mask)
  rel = np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
  assert rel <= 1e-5, rel


@pytest.mark.slow
def test_npz_round_trip_is_exact(tmp_path, run_dir, moe):
  assert main(["export", str(run_dir), "--layout", "npz", "--out", str(tmp_path / "n")]) == 0
  config, params = read_npz_export(tmp_path / "n")
  assert config["experts"] == [0, 1, 2, 3] and config["model"]["hidden"] == cfg_hidden(moe)
  want, got = params_io.flatten(moe.params), params_io.flatten(params)
  assert sorted(want) == sorted(got) and any(k.startswith("tag_encoder/") for k in got)
  for key in want:
    assert got[key].shape[0] == 4
    np.testing.assert_array_equal(got[key], np.asarray(want[key]), err_msg=key)
  np.testing.assert_allclose(np.array(config["intervals"])[1:, 0], [0.223, 0.875, 0.939], atol=1e-3)
  # one expert of the pretrain stage keeps a leading axis of one
  assert main([
      "export",
      str(run_dir), "--stage", "pretrain", "--step", "2", "--layout", "npz", "--out",
      str(tmp_path / "p")
  ]) == 0
  config, params = read_npz_export(tmp_path / "p")
  pre = load_trained(run_dir, stage="pretrain", step=2)
  for key, value in params_io.flatten(pre.params).items():
    np.testing.assert_array_equal(params_io.flatten(params)[key], np.asarray(value))


def cfg_hidden(trained):
  return trained.model.dit.hidden


@pytest.mark.slow
def test_bad_expert_and_existing_output(tmp_path, run_dir, capsys):
  assert main(["export", str(run_dir), "--expert", "7", "--out", str(tmp_path / "x")]) == 2
  assert "has 4 expert(s)" in capsys.readouterr().err
  (tmp_path / "x").mkdir()
  assert main(["export", str(run_dir), "--layout", "npz", "--out", str(tmp_path / "x")]) == 2
  assert "already exists" in capsys.readouterr().err
  assert main(["export", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
