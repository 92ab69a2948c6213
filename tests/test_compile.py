"""`linearsr compile`: the real train step compiled for a Cloud TPU slice by libtpu, on this CPU.

The FLOPs it reports (scanned blocks counted in full) are checked against a float64 count of
the model's matmuls written out here from the architecture, not from the code.
"""

import dataclasses
import json

import pytest

from linearsr_jax.aot import tpu_pods
from linearsr_jax.cli import main

# sana600m_x4 at SANA-600M width, 2 scanned blocks, in a pixel-unshuffle ×8 space (192 channels,
# a 16×16 grid from 128 px crops) so that the count below is the DiT's alone.
SMALL = ["--config.model.depth=2", "--config.latent.kind=pixel", "--config.latent.factor=8",
         "--config.model.latent_channels=192", "--config.model.lr_stem_convs=1",
         "--config.data.crop_size=128", "--config.data.eval.crop_size=128",
         "--config.data.eval.batch_size=2", "--config.train.eval_steps=1",
         "--config.data.batch_size=16", "--config.stage_order=pretrain"]


def analytic_step_flops(batch, depth=2, width=1152, heads=36, mlp_ratio=2.5, tokens=256,
                        cond_tokens=64, caption=2304, in_channels=192 + 32, out_channels=192,
                        stem_width=128, lr_side=32):
  """Matmul FLOPs of one train step: 3 forwards (forward, and the backward's two products)
  plus one more forward of the blocks, which full remat recomputes."""
  d, h, head = width, int(mlp_ratio * width), width // heads
  block = (2 * tokens * d * 3 * d                        # q, k, v
           + heads * 4 * tokens * head * (head + 1)      # kᵀ[v 1] and q·(kᵀ[v 1])
           + 2 * tokens * d * d                          # self-attention out
           + 2 * tokens * d * d + 2 * 2 * cond_tokens * d * d  # cross q; k, v of the condition
           + 2 * 2 * tokens * cond_tokens * d            # scores and their weighted sum
           + 2 * tokens * d * d                          # cross out
           + 2 * tokens * d * 2 * h + 2 * 9 * tokens * 2 * h + 2 * tokens * h * d)  # Mix-FFN
  rest = (2 * tokens * in_channels * d + 2 * tokens * d * out_channels       # patch in / out
          + 2 * cond_tokens * caption * d + 2 * cond_tokens * d * d         # caption MLP
          + 2 * 256 * d + 2 * d * d + 2 * d * 6 * d                          # timestep MLPs
          + 2 * (lr_side // 2) ** 2 * 9 * 3 * stem_width                     # LR stem
          + 2 * (lr_side // 2) ** 2 * 9 * stem_width * 32)
  forward = depth * block + rest
  return batch * (3 * forward + depth * block)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  out = tmp_path_factory.mktemp("compile") / "report.json"
  assert main(["compile", "--config", "configs/sana600m_x4.py", "--topology", "v5e-4",
               "--out", str(out), *SMALL]) == 0
  return json.loads(out.read_text())


def test_compiled_flops_agree_with_an_analytic_count(report):
  assert report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1, "expert": 1}
  per_chip = analytic_step_flops(batch=16) / 4
  assert report["train_step"]["flops"] == pytest.approx(per_chip, rel=0.10)
  # Without the scan correction the second block would be missing: far below the count.
  assert report["model"]["dit_flops"] < report["train_step"]["flops"]


def test_report_says_what_a_pod_user_needs(report, capsys):
  memory = report["train_step"]["memory"]
  assert report["fits"] and 0 < memory["total"] < report["hbm_bytes"] == 16 * 1024 ** 3
  assert memory["total"] == (memory["arguments"] + memory["outputs"] + memory["temporaries"]
                             - memory["aliased"])
  # FSDP gathers the params for the forward, the backward and the remat: ≥ 2× their bytes.
  params_bytes = (report["model"]["dit_params_token_wise"]) * 4
  assert report["train_step"]["collectives"]["all-gather"] > 2 * params_bytes * 0.9
  roofline = report["roofline"]
  assert roofline["seconds"] >= report["train_step"]["flops"] / 197e12
  assert roofline["images_per_second_per_chip"] == pytest.approx(
      16 / 4 / roofline["seconds"])
  assert report["sampler_step"]["compile_seconds"] > 0


@pytest.mark.parametrize("args, expected", [
    (["--topology", "v5e-3"], "no such slice"),
    (["--topology", "h200-8"], "expected a Cloud TPU slice name"),
    (["--topology", "v5e-4", "--config.mesh.fsdp=3"], "config.mesh"),
    (["--topology", "v5e-4", "--config.data.batch_size=6"], "does not split over the mesh"),
])
def test_bad_topology_mesh_or_batch_is_one_line_and_exit_2(args, expected, capsys):
  code = main(["compile", "--config", "configs/sana600m_x4.py", *SMALL, *args])
  err = capsys.readouterr().err
  assert code == 2, err
  lines = [l for l in err.splitlines() if l.startswith("linearsr: error:")]
  assert len(lines) == 1 and expected in lines[0], err


def test_a_step_that_does_not_fit_exits_1_saying_by_how_much(capsys):
  # One unscanned block at SANA-1600M width with a batch far beyond a v5e chip's 16 GiB.
  code = main(["compile", "--config", "configs/sana1600m_x4.py", "--topology", "v5e-1",
               *SMALL, "--config.model.depth=1", "--config.data.batch_size=4096"])
  captured = capsys.readouterr()
  assert code == 1, captured.err[-2000:]
  assert "DOES NOT FIT" in captured.out
  assert "GiB per chip over the 16 GiB of a v5e chip" in captured.err


def test_slice_names_map_to_libtpu_topologies():
  assert tpu_pods.parse_pod("v5e-64").topology_name == "v5e:8x8"
  assert tpu_pods.parse_pod("v5litepod-16").topology_name == "v5e:4x4"
  assert tpu_pods.parse_pod("v4-32").topology_name == "v4:2x2x4"    # 16 chips, 2 cores each
  assert tpu_pods.parse_pod("v5p-128").topology_name == "v5p:4x4x4"
  assert len(tpu_pods.pod_devices(tpu_pods.parse_pod("v6e-16"))) == 16


def test_find_batch_finds_the_largest_fitting_multiple_in_few_compiles(tmp_path):
  """On a v5e-4 whose chips are given just room for about three batch units (so the search
  walks a short way), the batch found fits and one unit more does not."""
  from configs.sana600m_x4 import get_config
  from linearsr_jax.aot import cli_compile

  config = get_config()
  # The search is under test, not SANA's width: one narrow block compiles in seconds.
  config.update_from_flattened_dict({"model.depth": 1, "model.scan_layers": False,
                                     "model.hidden": 128, "model.heads": 4,
                                     "model.cross_heads": 4, "model.cross_head_dim": 32,
                                     "model.caption_channels": 32, "model.lr_stem_width": 16,
                                     "latent.kind": "pixel", "latent.factor": 8,
                                     "model.latent_channels": 192, "model.lr_stem_convs": 1,
                                     "data.crop_size": 128, "data.eval.crop_size": 128,
                                     "data.eval.batch_size": 2, "train.eval_steps": 1})
  pod = tpu_pods.parse_pod("v5e-4")
  devices = tpu_pods.pod_devices(pod)
  one, two = (cli_compile._train_step_bytes(config, devices, "pretrain", 4 * m) for m in (1, 2))
  room = (one + 2.5 * (two - one)) / 1024 ** 3
  small = dataclasses.replace(pod, chip=dataclasses.replace(pod.chip, hbm_gib=room))
  logged = []
  batch, result = cli_compile.find_batch(config, small, devices, "pretrain", log=logged.append)
  assert batch % 4 == 0 and batch >= 4 and result["fits"] and result["global_batch"] == batch
  assert cli_compile._train_step_bytes(config, devices, "pretrain", batch + 4) > room * 1024 ** 3
  assert len(logged) <= 5, logged
