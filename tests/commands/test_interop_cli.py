"""`linearsr import` / `linearsr export` as a user runs them, including bad inputs."""

import json
import subprocess
import sys

import numpy as np
import pytest
from diffusers import SanaTransformer2DModel
from safetensors.numpy import load_file, save_file

from linearsr_jax import params_io
from linearsr_jax.commands.cli import main
from sana_reference import random_sana, reference_inputs, torch_forward

CONFIG = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2,
              num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32,
              caption_channels=24, in_channels=8, out_channels=8, patch_size=1)


def run_cli(*args):
  """The real console entry in a subprocess: exit code and stderr as a user sees them."""
  proc = subprocess.run([sys.executable, "-m", "linearsr_jax.commands.cli", *map(str, args)],
                        capture_output=True, text=True, timeout=300)
  return proc.returncode, proc.stderr


@pytest.fixture(scope="module")
def sana_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("sana") / "src"
  random_sana(seed=11, **CONFIG).save_pretrained(path)
  return path


@pytest.mark.slow
def test_import_then_export_sr_model_roundtrips_through_diffusers(tmp_path, sana_dir):
  assert main([
      "import", "diffusers",
      str(sana_dir), "--out",
      str(tmp_path / "p"), "--lr_channels", "4", "--lr_stem_convs", "1", "--lr_stem_width", "8"
  ]) == 0
  config, params = params_io.load_params_dir(tmp_path / "p", "dit")
  assert config["lr_channels"] == 4 and "lr_stem" in params
  assert main(
      ["export", "--layout", "diffusers",
       str(tmp_path / "p"), "--out",
       str(tmp_path / "e")]) == 0
  # diffusers loads the SR export: the LR channels are extra patch-embed inputs, zero-initialised.
  exported = SanaTransformer2DModel.from_pretrained(tmp_path / "e").eval()
  assert exported.config.in_channels == 12
  x, t, cond, mask = reference_inputs(0, 2, (6, 10), 8, 5, 24)
  x_sr = np.concatenate([x, np.random.default_rng(0).standard_normal((2, 6, 10, 4))], -1)
  np.testing.assert_array_equal(
      torch_forward(exported, x_sr.astype(np.float32), t, cond, mask),
      torch_forward(SanaTransformer2DModel.from_pretrained(sana_dir), x, t, cond, mask))
  # and re-importing the export restores the very same params, LR stem included.
  assert main(["import", "diffusers", str(tmp_path / "e"), "--out", str(tmp_path / "p2")]) == 0
  config2, params2 = params_io.load_params_dir(tmp_path / "p2", "dit")
  assert config2 == config
  flat, flat2 = params_io.flatten(params), params_io.flatten(params2)
  assert sorted(flat) == sorted(flat2)
  for key in flat:
    np.testing.assert_array_equal(flat[key], flat2[key], err_msg=key)


def test_lone_safetensors_with_config_json(tmp_path, sana_dir):
  weights = tmp_path / "w.safetensors"
  weights.write_bytes((sana_dir / "diffusion_pytorch_model.safetensors").read_bytes())
  code, err = run_cli("import", "diffusers", weights, "--out", tmp_path / "p")
  assert code == 2 and "missing model config" in err
  assert main([
      "import", "diffusers",
      str(weights), "--config_json",
      str(sana_dir / "config.json"), "--out",
      str(tmp_path / "p")
  ]) == 0


def corrupt_copy(src, dst, edit):
  dst.mkdir()
  (dst / "config.json").write_text((src / "config.json").read_text())
  tensors = load_file(str(src / "diffusion_pytorch_model.safetensors"))
  edit(tensors)
  save_file(tensors, str(dst / "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.pop("transformer_blocks.1.attn2.to_k.weight"),
     "missing tensor 'transformer_blocks.1.attn2.to_k.weight'"),
    (lambda t: t.update({"caption_norm.weight": np.ones(7, np.float32)}),
     "tensor 'caption_norm.weight' has shape (7,), expected (32,)"),
    (lambda t: t.update({"transformer_blocks.2.scale_shift_table": np.ones(
        (6, 32), np.float32)}), "'transformer_blocks.2.scale_shift_table'"),
])
def test_bad_checkpoints_give_one_line_errors_and_no_output(tmp_path, sana_dir, edit, message):
  corrupt_copy(sana_dir, tmp_path / "bad", edit)
  code, err = run_cli("import", "diffusers", tmp_path / "bad", "--out", tmp_path / "out")
  assert code == 2, err
  assert err.startswith("linearsr: error: ") and message in err and err.count("\n") == 1
  assert not (tmp_path / "out").exists()
  assert [p.name for p in tmp_path.iterdir()] == ["bad"]  # no temporary left behind


@pytest.mark.slow
def test_checkpoint_of_another_model_and_missing_paths(tmp_path, sana_dir):
  other = tmp_path / "vae"
  other.mkdir()
  config = json.loads((sana_dir / "config.json").read_text()) | {"_class_name": "AutoencoderDC"}
  (other / "config.json").write_text(json.dumps(config))
  (other / "diffusion_pytorch_model.safetensors").write_bytes(
      (sana_dir / "diffusion_pytorch_model.safetensors").read_bytes())
  code, err = run_cli("import", "diffusers", other, "--out", tmp_path / "o")
  assert code == 2 and "is a AutoencoderDC, expected a SanaTransformer2DModel" in err
  code, err = run_cli("import", "diffusers", tmp_path / "nope", "--out", tmp_path / "o")
  assert code == 2 and "no such file or directory" in err
  code, err = run_cli("export", tmp_path / "nope", "--out", tmp_path / "o")
  assert code == 2 and "not a linearsr params directory" in err
  (tmp_path / "o").mkdir()
  code, err = run_cli("import", "diffusers", sana_dir, "--out", tmp_path / "o")
  assert code == 2 and "already exists" in err
  assert not any((tmp_path / "o").iterdir())
