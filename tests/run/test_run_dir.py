"""The run directory's JSONL reader: what a kill during an append leaves is dropped, not fatal."""

import json
import logging

from linearsr_jax.run import run_dir


def _rows(n):
  return [{"step": i, "val/psnr_y": 20.0 + i} for i in range(n)]


def test_a_partial_last_line_is_dropped_with_a_warning(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  full = "".join(json.dumps(r) + "\n" for r in _rows(3))
  path.write_text(full + json.dumps({"step": 3, "val/psnr_y": 23.0})[:13])
  with caplog.at_level(logging.WARNING):
    assert run_dir.read_jsonl(path) == (_rows(3), 1)
  assert "partial last line" in caplog.text


def test_a_damaged_middle_line_is_skipped_and_named(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  lines = [json.dumps(r) for r in _rows(3)]
  path.write_text("\n".join([lines[0], '{"step": 1, "val/ps', lines[2], "[1, 2]", ""]))
  with caplog.at_level(logging.WARNING):
    assert run_dir.read_jsonl(path) == ([_rows(3)[0], _rows(3)[2]], 2)
  assert "line 2 is not a JSON object" in caplog.text
  assert "line 4 is not a JSON object" in caplog.text


def test_metrics_log_rewrites_what_the_checkpoint_saw_and_appends(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in _rows(5)) + '{"step": 5, "val')
  log = run_dir.MetricsLog(path, resume_step=2)
  log.append({"step": 3, "train/loss": 0.5})
  assert [json.loads(l) for l in path.read_text().splitlines()
         ] == [*_rows(3), {"step": 3, "train/loss": 0.5}]
  assert log.evaluations() == _rows(3)
  assert run_dir.read_jsonl(tmp_path / "missing.jsonl") == ([], 0)


def test_a_fresh_stage_starts_an_empty_log(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(json.dumps(_rows(1)[0]) + "\n")
  run_dir.MetricsLog(path, resume_step=None)
  assert path.read_text() == ""
