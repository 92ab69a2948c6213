"""Issue 29: a multi-host run makes its decisions once. Two processes (jax.distributed, gloo)
where process 1 sees other storage than process 0: a full disk on process 1 stops both at the
same check; both judge process 0's metrics rows; a read error on process 1 alone sets nothing
aside and stops both in one line (each would otherwise wait for the other in a collective)."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from linearsr_jax.run import run_dir
from test_damaged_checkpoints import _saved
from train_runs import cli_env

HERE = Path(__file__).parent


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_process_0_decides_and_every_process_follows(tmp_path):
  checkpoints = tmp_path / "checkpoints"
  _saved(checkpoints).close()
  before = sorted(p.name for p in checkpoints.iterdir())
  metrics = [tmp_path / "metrics_0.jsonl", tmp_path / "metrics_1.jsonl"]
  run_dir.write_jsonl(metrics[0], [{"step": 5, "val/psnr_y": 20.0}])
  run_dir.write_jsonl(metrics[1], [{"step": 5, "val/psnr_y": 99.0}, {"step": 6}])
  port = str(_free_port())
  env = cli_env(PYTHONPATH=f"{HERE.parents[1]}:{HERE.parent}:{HERE}")
  processes = [
      subprocess.Popen([
          sys.executable,
          str(HERE / "multihost_decisions.py"),
          str(p), port,
          str(checkpoints), *map(str, metrics)
      ], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in (0, 1)
  ]
  outputs = [p.communicate(timeout=180) for p in processes]
  decided = []
  for process, (out, err) in zip(processes, outputs):
    assert process.returncode == 0, err[-3000:]
    decided.append(json.loads(out.strip().splitlines()[-1]))
  for d in decided:
    assert d["disk"].startswith(f"no space left on the device of {checkpoints} on process 1 "
                                "for checkpoint 2: it needs 1,000 bytes, 0 are free"), d
    assert d["rows"] == [{"step": 5, "val/psnr_y": 20.0}]
  assert decided[0]["restored"] == (f"checkpoint {checkpoints}/2 cannot be read on process 1 "
                                    "(see its log)")
  assert decided[1]["restored"] == decided[0]["restored"]
  assert sorted(p.name for p in checkpoints.iterdir()) == before
  assert not (tmp_path / "damaged_checkpoints").exists()
