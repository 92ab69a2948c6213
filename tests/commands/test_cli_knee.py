"""`linearsr knee`: ESGF on a run's metrics.jsonl from the command line."""

import json
import subprocess
import sys

import pytest

from esgf_helpers import exponential_knee, tolerance, two_metric_records
from linearsr_jax import esgf


def run_cli(*args):
  proc = subprocess.run(
      [sys.executable, "-m", "linearsr_jax.commands.cli", "knee", *map(str, args)],
      capture_output=True, text=True, timeout=120)
  return proc.returncode, proc.stdout, proc.stderr


def write_jsonl(path, records):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps({"step": s, **v}) + "\n" for s, v in records))


@pytest.mark.slow
def test_cli_prints_the_decision(tmp_path):
  steps, records = two_metric_records(500, 500, 80)
  write_jsonl(tmp_path / "run" / "pretrain" / "metrics.jsonl", records)
  write_jsonl(tmp_path / "flat" / "metrics.jsonl", records[:15])
  expected = esgf.detect(records, esgf.default_config())
  code, out, err = run_cli("--workdir", tmp_path / "run", "--stage", "pretrain", "--plot",
                           tmp_path / "knee.png")
  assert code == 0, err
  assert f"knee: step {expected.knee_step}" in out
  assert abs(expected.knee_step - exponential_knee(500, steps[0], steps[-1])) <= tolerance(
      steps[-1])
  assert "val/psnr_y (max, 80 points): confirmed" in out and "plateau" in out
  assert (tmp_path / "knee.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  code, out, err = run_cli("--metrics_file", tmp_path / "flat" / "metrics.jsonl")
  assert code == 0 and "no knee yet" in out and "still improving" in out, out + err


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path):
  write_jsonl(tmp_path / "pretrain" / "metrics.jsonl", [(100, {"val/psnr_y": 25.0})])
  for args, message in [
      (["--workdir", tmp_path / "nowhere"], f"workdir {tmp_path}/nowhere does not exist"),
      (["--metrics_file", tmp_path / "x.jsonl"], f"metrics file {tmp_path}/x.jsonl does not exist")
  ]:
    code, out, err = run_cli(*args)
    assert (code, out) == (2, "") and err == f"linearsr: error: {message}\n"


@pytest.mark.parametrize(
    "args, message",
    [(["--workdir", "{tmp}"], "no metrics.jsonl in {tmp}; stages with metrics: pretrain "
      "(pass --stage)"),
     (["--workdir", "{tmp}", "--stage", "moe"], "no metrics.jsonl in {tmp}/moe; stages with "
      "metrics: pretrain (pass --stage)"),
     (["--workdir", "{tmp}", "--stage", "pretrain", "--metrics", "psnr"
      ], "ESGF metric 'psnr' must look like NAME:max or NAME:min"),
     (["--workdir", "{tmp}", "--stage", "pretrain", "--patience", "0"
      ], "esgf.patience = 0 must be >= 2")])
def test_cli_bad_arguments(tmp_path, capsys, args, message):
  from linearsr_jax.commands.cli import main
  write_jsonl(tmp_path / "pretrain" / "metrics.jsonl", [(100, {"val/psnr_y": 25.0})])
  assert main(["knee", *[a.format(tmp=tmp_path) for a in args]]) == 2
  captured = capsys.readouterr()
  assert captured.out == ""
  assert captured.err == f"linearsr: error: {message.format(tmp=tmp_path)}\n"
