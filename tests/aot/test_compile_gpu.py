"""`linearsr compile --topology h100-8`: the train step compiled for NVIDIA GPU nodes by the CUDA
plugin (requirements-gpu-aot.txt), on this CPU with no GPU.

XLA:GPU gives such executables no cost analysis; the FLOPs come from XLA's generic analysis of
the per-GPU HLO plus the cuDNN convolutions counted from their shapes (gpu_cost.py), and are
checked against the same analytic count as the TPU compile's.
"""

import json

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from compile_helpers import NARROW, QUARTER, QUARTER_WIDTH, SMALL, analytic_step_flops
from linearsr_jax.aot import gpu_nodes, hlo_stats
from linearsr_jax.commands.cli import main

GIB = 1024**3


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  out = tmp_path_factory.mktemp("compile_gpu") / "report.json"
  # Unscanned: one train-step compile instead of three (the scan correction is the TPU test's).
  assert main([
      "compile", "--config", "configs/sana600m_x4.py", "--topology", "h100-8", "--out",
      str(out), *QUARTER, "--config.model.scan_layers=False"
  ]) == 0
  return json.loads(out.read_text())


@pytest.mark.slow
def test_gpu_flops_and_memory_agree_with_an_analytic_count_and_an_h100(report):
  assert report["platform"] == "gpu" and report["device_topology"] == "1x1x8"
  assert report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1, "expert": 4}
  assert report["train_step"]["flops"] == pytest.approx(
      analytic_step_flops(batch=16, **QUARTER_WIDTH) / 8, rel=0.10)
  memory = report["train_step"]["memory"]
  assert report["fits"] and 0 < memory["total"] < report["hbm_bytes"] == 80 * GIB
  assert report["roofline"]["peak_bf16_tflops"] == 989
  assert report["roofline"]["seconds"] >= report["train_step"]["flops"] / 989e12
  assert report["train_step"]["collectives"]["all-gather"] > 0
  assert report["sampler_step"]["compile_seconds"] > 0


def test_cudnn_convolutions_are_counted_from_their_shapes():
  """A conv and its two gradients become cuDNN custom calls, which XLA's generic cost analysis
  counts as nothing; each does a forward conv's work on the GPU's eighth of the batch."""
  devices = gpu_nodes.node_devices(gpu_nodes.parse_node("h100-8"))
  mesh = jax.sharding.Mesh(devices, ("batch",))
  n, side, c_in, c_out = 64, 32, 128, 256

  def loss(x, w):
    y = jax.lax.conv_general_dilated(x, w, (2, 2), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jnp.square(y.astype(jnp.float32)))

  x = jax.ShapeDtypeStruct((n, side, side, c_in), jnp.bfloat16,
                           sharding=NamedSharding(mesh, P("batch")))
  w = jax.ShapeDtypeStruct((3, 3, c_in, c_out), jnp.bfloat16, sharding=NamedSharding(mesh, P()))
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile()
  assert compiled.as_text().count('custom_call_target="__cudnn$conv') == 3
  per_gpu = 3 * 2 * (n // 8) * (side // 2)**2 * 9 * c_in * c_out
  assert hlo_stats.stats(compiled)["flops"] == pytest.approx(per_gpu, rel=0.01)


@pytest.mark.slow
def test_a_step_too_large_for_the_gpus_exits_1_saying_by_how_much(capsys):
  # XLA:GPU compiles it anyway (no RESOURCE_EXHAUSTED): the memory analysis decides.
  narrow = [f"--config.{k}={v}" for k, v in NARROW.items()]
  code = main([
      "compile", "--config", "configs/sana600m_x4.py", "--topology", "a100-8", *narrow,
      "--config.stage_order=pretrain", "--config.data.batch_size=524288"
  ])
  captured = capsys.readouterr()
  assert code == 1, captured.err[-2000:]
  assert "DOES NOT FIT" in captured.out
  assert "GiB per chip over the 80.00 GiB a A100 chip has for it" in captured.err


@pytest.mark.parametrize("args, expected", [
    (["--topology", "h100-12"], "GPU nodes come in multiples of 8"),
    (["--topology", "b200-8"], "h100-8, a100-8, h100-16 (2 nodes)"),
])
def test_bad_gpu_nodes_are_one_line_and_exit_2(args, expected, capsys):
  code = main(["compile", "--config", "configs/sana600m_x4.py", *SMALL, *args])
  err = capsys.readouterr().err
  assert code == 2, err
  lines = [l for l in err.splitlines() if l.startswith("linearsr: error:")]
  assert len(lines) == 1 and expected in lines[0], err


def test_without_the_cuda_plugin_the_error_says_what_to_install(monkeypatch, capsys):
  monkeypatch.setattr(gpu_nodes, "PLUGIN", "jax_plugins.not_installed")
  code = main(["compile", "--config", "configs/sana600m_x4.py", "--topology", "h100-8", *SMALL])
  err = capsys.readouterr().err
  assert code == 2, err
  lines = [l for l in err.splitlines() if l.startswith("linearsr: error:")]
  assert lines == [
      "linearsr: error: --topology h100-8 needs the CUDA plugin: "
      "pip install -r requirements-gpu-aot.txt"
  ], err


def test_node_names_map_to_cuda_topologies():
  assert gpu_nodes.parse_node("h100-8").topology_name == "1x1x8"
  node = gpu_nodes.parse_node("a100-16")  # 2 hosts, each its own NVLink domain
  assert node.topology_name == "2x1x8" and node.chip.hbm_gib == 80
  devices = gpu_nodes.node_devices(node)
  assert len(devices) == 16 and {d.process_index for d in devices} == {0, 1}
  assert devices[0].device_kind == "NVIDIA A100-SXM4-80GB"
