"""Issue 11: a SANA config trains from imported SANA and DC-AE weights, as a user runs it.

A small random diffusers `SanaTransformer2DModel` (text-to-image) and `AutoencoderDC` go
through `linearsr import`, then `linearsr train --config configs/sana600m_x4.py` at reduced
depth and width on 8 devices (its own mesh: expert 4 × fsdp 2). At step 0 the model must
predict exactly what the text-to-image model does in diffusers, whatever the LR image (its
channels start at zero).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from diffusers import AutoencoderDC

from linearsr_jax.commands.cli import main
from linearsr_jax.inference.trained import load_trained
from model_helpers import tiny_f32_dcae
from repo_paths import REPO
from sana_reference import random_sana, reference_inputs, torch_forward
from train_runs import xla_flags

T2I = dict(num_attention_heads=2, attention_head_dim=32, num_layers=2, num_cross_attention_heads=2,
           cross_attention_head_dim=32, cross_attention_dim=64, caption_channels=16, in_channels=32,
           out_channels=32, patch_size=1)
DCAE = tiny_f32_dcae(latent_channels=32)
# sana600m_x4 at the random model's size; everything else is the config's own.
REDUCED = [
    "--config.model.depth=2", "--config.model.hidden=64", "--config.model.heads=2",
    "--config.model.cross_heads=2", "--config.model.cross_head_dim=32",
    "--config.model.caption_channels=16", "--config.model.lr_stem_width=16"
]
SHORT = [
    "--config.model.dtype=float32", "--config.data.batch_size=8", "--config.data.num_workers=0",
    "--config.data.crop_size=256", "--config.data.eval.crop_size=128",
    "--config.data.eval.batch_size=2", "--config.stage_order=pretrain",
    "--config.stages.pretrain.max_steps=2", "--config.train.eval_every=2",
    "--config.train.eval_steps=1", "--config.train.log_every=1"
]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """(T2I torch model, DiT params dir, DC-AE params dir), both imported with the CLI."""
  root = tmp_path_factory.mktemp("pretrained")
  t2i = random_sana(seed=5, **T2I)
  t2i.save_pretrained(root / "sana")
  torch.manual_seed(6)
  AutoencoderDC(**DCAE).eval().save_pretrained(root / "dcae")
  assert main(["import", "diffusers", str(root / "sana"), "--out", str(root / "dit")]) == 0
  assert main(["import", "diffusers-vae", str(root / "dcae"), "--out", str(root / "vae")]) == 0
  return t2i, root / "dit", root / "vae"


def train(workdir, dit, vae, *extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=xla_flags(8))
  command = [
      sys.executable, "-m", "linearsr_jax.commands.cli", "train", "--config",
      "configs/sana600m_x4.py", "--workdir",
      str(workdir), f"--config.train.init_from={dit}", f"--config.latent.dcae_params={vae}",
      *REDUCED, *SHORT, *extra
  ]
  return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(imported, tmp_path_factory):
  _, dit, vae = imported
  workdir = tmp_path_factory.mktemp("sana_run") / "run"
  result = train(workdir, dit, vae)
  assert result.returncode == 0, result.stderr[-4000:]
  return workdir


@pytest.mark.slow
def test_step_zero_predicts_what_the_text_to_image_model_does(imported, trained):
  t2i, _, _ = imported
  start = load_trained(trained, stage="pretrain", step=0)
  x, t, cond, mask = reference_inputs(3, 2, (4, 6), 32, 7, 16)
  expected = torch_forward(t2i, x, t, cond, mask)
  # The config's precomputed tokens come padded to tags.max_tokens; padding is masked out.
  length = start.config.tags.max_tokens
  cond_padded = np.zeros((2, length, 16), np.float32)
  cond_padded[:, :7] = cond
  mask_padded = np.arange(length) < 7
  mask_padded = mask_padded[None] & np.pad(mask, ((0, 0), (0, length - 7)))
  for seed in (0, 1):  # any LR image: its channels start at zero
    lr = np.random.default_rng(seed).uniform(-1, 1, (2, 32, 48, 3)).astype(np.float32)
    ours = start.model.apply({"params": jax.tree.map(lambda p: p[0], start.params)}, x, t, lr,
                             cond_padded, mask_padded)
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-4, atol=1e-5)
  # The run records where it started, the DC-AE it encoded with, and that it trained on.
  origin = json.loads((trained / "pretrain" / "stage.json").read_text())["init_from"]
  assert origin["init_from"] == str(imported[1]) and origin["pretrained_tensors"] > 0
  end = load_trained(trained, stage="pretrain", step=2, ema=False)
  kernel = np.asarray(end.params["dit"]["patch_embed"]["kernel"][0])
  assert np.abs(kernel[32:]).max() > 0, "the LR columns never left zero"
  rows = [json.loads(l) for l in (trained / "pretrain" / "metrics.jsonl").read_text().splitlines()]
  assert all(np.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)
  assert {r["step"] for r in rows if "val/psnr_y" in r} == {0, 2}


@pytest.mark.slow
@pytest.mark.parametrize("what, expected", [
    ("missing", "no such params directory"),
    ("vae", "holds a 'autoencoder_dc' model, expected 'dit'"),
    ("wider", "tensor dit/blocks/block/attn1/to_k/kernel has shape (2, 64, 64) there but "
     "(2, 128, 128) in this model"),
    ("heads", "a DiT with heads=2, but this config has model.heads=4"),
])
def test_wrong_init_from_is_one_line_before_anything_trains(imported, tmp_path, capsys, what,
                                                            expected):
  _, dit, vae = imported
  init_from = {"missing": tmp_path / "nope", "vae": vae}.get(what, dit)
  extra = {
      "wider": ["--config.model.hidden=128", "--config.model.cross_head_dim=64"],
      "heads": ["--config.model.heads=4"]
  }.get(what, [])
  workdir = tmp_path / "run"
  # In this process (its 8 devices): the errors come before any compilation.
  code = main([
      "train", "--config",
      str(REPO / "configs/sana600m_x4.py"), "--workdir",
      str(workdir), f"--config.train.init_from={init_from}", f"--config.latent.dcae_params={vae}",
      *REDUCED, *SHORT, *extra
  ])
  err = capsys.readouterr().err
  assert code == 2, err[-3000:]
  errors = [l for l in err.splitlines() if l.startswith("linearsr: error:")]
  assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
  assert expected in errors[0], errors[0]
  assert not workdir.exists()  # nothing to clean up before the corrected command
