"""`linearsr compile`: the real train step compiled for a Cloud TPU slice by libtpu, on this CPU.

The FLOPs it reports (scanned blocks counted in full) are checked against a float64 count of
the model's matmuls written out from the architecture (compile_helpers.py), not from
the code.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

from compile_helpers import (NARROW, NARROW_WIDTH, QUARTER, QUARTER_WIDTH, SMALL,
                             analytic_step_flops)
from linearsr_jax.aot import tpu_pods
from linearsr_jax.commands import cli_compile
from linearsr_jax.commands.cli import main


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  out = tmp_path_factory.mktemp("compile") / "report.json"
  assert main([
      "compile", "--config", "configs/sana600m_x4.py", "--topology", "v5e-4", "--out",
      str(out), *QUARTER
  ]) == 0
  return json.loads(out.read_text())


@pytest.mark.slow
def test_compiled_flops_agree_with_an_analytic_count(report):
  assert report["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1, "expert": 4}
  per_chip = analytic_step_flops(batch=16, **QUARTER_WIDTH) / 4
  assert report["train_step"]["flops"] == pytest.approx(per_chip, rel=0.10)
  # Without the scan correction the second block would be missing: far below the count.
  assert report["model"]["dit_flops"] < report["train_step"]["flops"]


@pytest.mark.slow
def test_report_says_what_a_pod_user_needs(report, capsys):
  memory = report["train_step"]["memory"]
  assert report["fits"] and 0 < memory["total"] < report["hbm_bytes"] == 16 * 1024**3
  assert memory["total"] == (memory["arguments"] + memory["outputs"] + memory["temporaries"] -
                             memory["aliased"])
  # FSDP gathers each bfloat16 kernel twice per step (the forward, and the remat's re-forward
  # whose copy the backward shares): about the float32 params' bytes once.
  params_bytes = (report["model"]["dit_params_token_wise"]) * 4
  assert 0.9 * params_bytes < report["train_step"]["collectives"]["all-gather"] < 1.5 * params_bytes
  roofline = report["roofline"]
  assert roofline["seconds"] >= report["train_step"]["flops"] / 197e12
  assert roofline["images_per_second_per_chip"] == pytest.approx(16 / 4 / roofline["seconds"])
  assert report["sampler_step"]["compile_seconds"] > 0


@pytest.mark.slow
def test_bytes_and_flops_by_kind_add_up_and_the_matmuls_match_an_analytic_count(report):
  """The breakdown's kinds add up to XLA's totals (each kernel costed from the HLO's shapes,
  within 3 %), and its matmuls to the FLOPs written out from the architecture (as the total,
  10 %). This model of 2 blocks is compiled whole, not split into a block and the rest
  (test_hlo_stats checks that split)."""
  t = report["train_step"]
  kinds = t["by_kind"]
  assert sum(k["flops"] for k in kinds.values()) == pytest.approx(t["flops"], rel=0.03)
  assert sum(k["bytes"] for k in kinds.values()) == pytest.approx(t["bytes_accessed"], rel=0.03)
  per_chip = analytic_step_flops(batch=16, **QUARTER_WIDTH) / 4
  assert kinds["matmul"]["flops"] == pytest.approx(per_chip, rel=0.10)
  # The update reads the float32 params, their gradients, Adam's two moments and the EMA, and
  # writes four of them: at least 9/4 of the state the step takes (its arguments, the batch
  # aside: a few MB).
  state = t["memory"]["arguments"]
  assert 9 / 4 * 0.9 * state < kinds["update"]["bytes"] < 4 * state
  assert 0 < kinds["collective"]["bytes"] and "by_kind_per_block" not in t
  printed = cli_compile.format_report(report)
  assert re.search(r"by kind .*TFLOP, GiB whole\n  \w+ +\d+\.\d{3} +\d+\.\d{2}\n", printed)


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


@pytest.mark.slow
def test_a_step_that_does_not_fit_exits_1_saying_by_how_much(capsys):
  # One unscanned block at SANA-1600M width with a batch far beyond a v5e chip's 16 GiB.
  code = main([
      "compile", "--config", "configs/sana1600m_x4.py", "--topology", "v5e-1", *SMALL,
      "--config.model.depth=1", "--config.data.batch_size=4096", "--config.mesh.expert=1"
  ])
  captured = capsys.readouterr()
  assert code == 1, captured.err[-2000:]
  assert "DOES NOT FIT" in captured.out
  assert re.search(r"\d GiB per chip over the 1\d\.\d\d GiB a v5e chip has for it", captured.err)


def test_slice_names_map_to_libtpu_topologies():
  assert tpu_pods.parse_pod("v5e-64").topology_name == "v5e:8x8"
  assert tpu_pods.parse_pod("v5litepod-16").topology_name == "v5e:4x4"
  assert tpu_pods.parse_pod("v4-32").topology_name == "v4:2x2x4"  # 16 chips, 2 cores each
  assert tpu_pods.parse_pod("v5p-128").topology_name == "v5p:4x4x4"
  assert len(tpu_pods.pod_devices(tpu_pods.parse_pod("v6e-16"))) == 16


def test_describing_a_slice_off_a_tpu_vm_logs_no_metadata_errors():
  """libtpu, loaded fresh in a process with no TPU VM metadata, describes the slice without
  logging its failed metadata queries as errors."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
  code = ("from linearsr_jax.aot import tpu_pods;"
          "print(len(tpu_pods.pod_devices(tpu_pods.parse_pod('v5e-16'))))")
  done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        check=True)
  assert done.stdout.strip() == "16"
  assert "could not determine" not in done.stderr and "INVALID_ARGUMENT" not in done.stderr, \
      done.stderr


@pytest.mark.slow
def test_find_batch_finds_the_largest_fitting_multiple_in_few_compiles(monkeypatch):
  """On a v5e-4 whose chips are given just room for about three batch units (so the search
  walks a short way), the batch found fits and one unit more does not."""
  from linearsr_jax.configs.sana600m_x4 import get_config

  config = get_config()
  # The search is under test, not SANA's width: one narrow block compiles in seconds.
  config.update_from_flattened_dict(NARROW)
  pod = tpu_pods.parse_pod("v5e-4")
  devices = tpu_pods.pod_devices(pod)
  # Each batch compiled once: the probes the search makes are the ones checked here too.
  compiled, compile_step = {}, cli_compile._compile_train_step

  def compile_once(config, devices, stage, batch):
    if batch not in compiled:
      compiled[batch] = compile_step(config, devices, stage, batch)
    return compiled[batch]

  monkeypatch.setattr(cli_compile, "_compile_train_step", compile_once)
  step_bytes = lambda batch: cli_compile._compile_train_step(config, devices, "pretrain", batch)[0]
  one, two = step_bytes(4), step_bytes(8)
  room = (one + 2.5 * (two - one)) / 1024**3
  small = dataclasses.replace(pod, chip=dataclasses.replace(pod.chip, hbm_gib=room))
  logged = []
  batch, result = cli_compile.find_batch(config, small, devices, "pretrain", log=logged.append)
  assert batch % 4 == 0 and batch >= 4 and result["fits"] and result["global_batch"] == batch
  assert step_bytes(batch + 4) > room * 1024**3
  assert len(logged) <= 5, logged


@pytest.mark.parametrize(
    "name, gib, most",
    [
        ("affine", lambda m: 1.0 + 0.1 * m, 5),  # one compile more to learn the compiler's reserve
        ("15 % over at 150 units", lambda m: 1.03 + 0.1 * (m - 1) if m <= 2 else 1.13 + 17.35 *
         (m - 2) / 148, 5),
        ("convex", lambda m: 1.0 + 0.1 * m + 0.0008 * m * m, 8),
        ("concave", lambda m: 1.0 + 0.3 * m**0.8, 8),
        ("a jump at 80 units", lambda m: 1.0 + 0.1 * m + (3.0 if m > 80 else 0.0), 7),
        ("two units too many", lambda m: 10.0 + 4.0 * m, 2),
    ])
def test_find_batch_search_on_memory_curves_of_known_shape(monkeypatch, name, gib, most):
  """The search alone, on memory curves given as formulas (multiples of the unit -> GiB):
  it returns the largest multiple that fits, the next one does not, in few compiles. The
  compiler refuses programs above 15.75 GiB (it keeps some HBM for itself), as libtpu does:
  those do not fit either, though under the chip's 16 GiB."""

  probed = []

  def compile_step(config, devices, stage, batch):
    probed.append(batch // 8)
    need = gib(batch // 8) * 1024**3
    kept = 15.75 * 1024**3
    return (need, (object(), 1.0), None) if need <= kept else (need, None, kept)

  monkeypatch.setattr(cli_compile, "_compile_train_step", compile_step)
  monkeypatch.setattr(cli_compile, "_batch_unit", lambda *args: 8)
  monkeypatch.setattr(cli_compile, "report", lambda *args: {})
  monkeypatch.setattr("linearsr_jax.config_check.mesh_sizes", lambda *args: None)
  monkeypatch.setattr("linearsr_jax.sharding.make_mesh", lambda *args: None)
  pod = tpu_pods.parse_pod("v5e-4")  # 16 GiB per chip
  config = type("Config", (), {"mesh": {}})()
  batch, _ = cli_compile.find_batch(config, pod, [], "pretrain", log=lambda line: None)
  largest = batch // 8
  assert gib(largest) <= 15.75 < gib(largest + 1), (name, probed)
  assert len(probed) <= most, (name, probed)


@pytest.mark.slow
def test_each_expert_on_its_own_chips_gathers_only_its_own_weights():
  """4 experts on a v5e-8. With the SANA configs' expert axis of 4 (× fsdp 2) the expert-major
  batch puts each expert's samples on the chips holding that expert, so a chip gathers one
  expert's weights; with no expert axis (fsdp 8) every chip runs, and gathers, all four."""
  import os
  from linearsr_jax.configs.sana600m_x4 import get_config
  from linearsr_jax.aot import step_compile
  from linearsr_jax.train.loop import Run

  devices = tpu_pods.pod_devices(tpu_pods.parse_pod("v5e-8"))
  stats = {}
  for expert in (4, 1):
    config = get_config()
    config.update_from_flattened_dict(dict(NARROW, **{"mesh.expert": expert,
                                                      "data.batch_size": 32}))
    run = Run(config, os.devnull, load_weights=False, devices=devices)
    stats[expert] = step_compile.counted_stats(run, "finetune", 32, depth=1)
    token_wise = step_compile.model_flops(run, "finetune", 32)["dit_params_token_wise"]
  gathered = {e: s["collectives"]["all-gather"] for e, s in stats.items()}
  # Two gathers of each bfloat16 kernel (forward, remat's re-forward): one expert's f32 bytes.
  assert 0.9 * 4 * token_wise < gathered[4] < 1.5 * 4 * token_wise, gathered
  assert 0.2 < gathered[4] / gathered[1] < 0.3, gathered
  reduced = {
      e: s["collectives"]["all-reduce"] + s["collectives"]["reduce-scatter"]
      for e, s in stats.items()
  }
  assert reduced[4] / reduced[1] < 0.3, reduced
  assert stats[4]["flops"] == pytest.approx(stats[1]["flops"], rel=0.05)


@pytest.mark.slow
def test_matmuls_looped_over_fsdp_shards_are_counted_in_full():
  """On v5e-16 with FSDP over all 16 chips, XLA:TPU runs the gathered matmuls of this step as
  loops over the FSDP shards (windowed einsum; 40 of them in one SANA-width block, measured),
  whose body its cost analysis counts once: 17 % of the FLOPs went missing at SANA's width, and
  12 % in the narrow block here (10 loops; at batch 64, or a quarter of SANA's width at batch
  128, XLA makes none). The program that counts is compiled without them, and matches the
  analytic count of the block: 4.8 % over it (the elementwise work the count leaves out)."""
  from linearsr_jax.aot import step_compile
  from linearsr_jax.configs.sana600m_x4 import get_config
  from linearsr_jax.train.loop import Run

  config = get_config()
  config.update_from_flattened_dict(
      dict(NARROW, **{"data.batch_size": 256, "stage_order": "finetune", "mesh.expert": 1}))
  run = Run(config, os.devnull, load_weights=False,
            devices=tpu_pods.pod_devices(tpu_pods.parse_pod("v5e-16")))
  assert dict(run.mesh.shape) == {"data": 1, "fsdp": 16, "tensor": 1, "expert": 1}
  stats = step_compile.counted_stats(run, "finetune", 256, depth=1)
  per_chip = analytic_step_flops(batch=256, depth=1, **NARROW_WIDTH) / 16
  assert stats["flops"] == pytest.approx(per_chip, rel=0.08)


@pytest.mark.parametrize("message, required, available", [
    ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
     "temporaries (15.95G) exceeds available HBM (15.75G).", 15.95, 15.75),
    ("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: XLA:TPU compile permanent error. Ran out of "
     "memory in memory space hbm. Used 15.80G of 15.75G hbm. Exceeded hbm capacity by 50.77M.",
     15.80, 15.75),
])
def test_both_ways_libtpu_refuses_a_program_give_its_sizes(message, required, available):
  """The two messages libtpu gave sana600m on v5e-16 (batches 3392 and 2704): the search needs
  the sizes of both (it had read the second as NaN and walked down one unit at a time)."""
  from linearsr_jax.aot.step_compile import DoesNotFit
  refused = DoesNotFit(message)
  assert refused.required == pytest.approx(required * 1024**3)
  assert refused.available == pytest.approx(available * 1024**3)
