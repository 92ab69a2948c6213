"""Reading ESGF's evaluation history from metrics.jsonl."""

import json

import pytest

from linearsr_jax import esgf
from linearsr_jax.errors import UserError


def test_read_metrics_jsonl(tmp_path):
  path = tmp_path / "metrics.jsonl"
  lines = [
      {"step": 100, "val/psnr_y": 25.0, "train/loss": 0.3},
      {"step": 150, "train/loss": 0.2},  # training line: no validation metric
      {"val/psnr_y": 99.0},  # no step
      {"step": 200, "val/psnr_y": float("nan")},  # dropped: not finite
      {"step": 200, "val/psnr_y": 25.5, "note": "text"},
      {"step": 100, "val/psnr_y": 24.0}
  ]  # a resumed run's re-evaluation wins
  path.write_text("\n".join(json.dumps(line) for line in lines) + '\n{"step": 300, "val/ps')
  records, ignored = esgf.read_metrics_jsonl(path)
  assert ignored == 2  # the line without a step and the partial last line
  steps, values = esgf.metric_series(records, "val/psnr_y")
  assert steps.tolist() == [100, 200] and values.tolist() == [24.0, 25.5]
  with pytest.raises(UserError, match="does not exist"):
    esgf.read_metrics_jsonl(tmp_path / "missing.jsonl")
