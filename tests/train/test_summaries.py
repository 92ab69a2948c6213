"""TensorBoard event files written without TensorFlow, read back with TensorFlow's own reader;
the step rate and the time left."""

import logging
import subprocess
import sys

import numpy as np
import pytest

from linearsr_jax.train import summaries


class Clock:

  def __init__(self, now=1000.0):
    self.now = now

  def __call__(self):
    return self.now


def read_events(directory) -> list:
  import tensorflow as tf
  return [
      event for path in sorted(directory.glob("events.out.tfevents.*"))
      for event in tf.compat.v1.train.summary_iterator(str(path))
  ]


def test_scalars_and_images_read_back_with_tensorflow(tmp_path):
  import tensorflow as tf
  rng = np.random.default_rng(0)
  grid = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
  plot = rng.random((1, 4, 6, 3))
  writer = summaries.Summaries(tmp_path)
  writer.write_scalars(3, {"train/loss": 0.25, "val/psnr_y": 31.5})
  writer.write_images(4, {"grid": grid, "plot": plot})
  writer.flush()
  events = read_events(tmp_path)
  assert events[0].file_version == "brain.Event:2"
  scalars = {(e.step, v.tag): v.simple_value
             for e in events for v in e.summary.value if v.HasField("simple_value")}
  assert scalars == {(3, "train/loss"): 0.25, (3, "val/psnr_y"): 31.5}
  images = {v.tag: v.tensor for e in events if e.step == 4 for v in e.summary.value}
  assert list(images["grid"].string_val[:2]) == [b"7", b"5"]  # width, then height
  decoded = [tf.io.decode_png(png).numpy() for png in images["grid"].string_val[2:]]
  np.testing.assert_array_equal(np.stack(decoded), grid)
  np.testing.assert_array_equal(
      tf.io.decode_png(images["plot"].string_val[2]).numpy(), np.round(plot[0] * 255))


def test_a_flush_that_fails_keeps_its_events_for_the_next(tmp_path, caplog):
  blocked = tmp_path / "run"
  blocked.write_text("a file where the directory should be")
  writer = summaries.Summaries(blocked)
  writer.write_scalars(1, {"train/loss": 1.0})
  with caplog.at_level(logging.WARNING):
    writer.flush()  # no exception: the run goes on
  assert "TensorBoard events not written" in caplog.text
  blocked.unlink()
  writer.write_scalars(2, {"train/loss": 0.5})
  writer.flush()
  steps = [e.step for e in read_events(blocked) if e.summary.value]
  assert steps == [1, 2]


def test_each_flush_is_a_new_file_in_write_order_and_time_flushes(tmp_path):
  clock = Clock()
  writer = summaries.Summaries(tmp_path, clock=clock)
  for step in range(5):
    clock.now += summaries.FLUSH_SECONDS / 2  # a flush every second write
    writer.write_scalars(step, {"train/loss": float(step)})
  assert len(list(tmp_path.iterdir())) == 2
  writer.flush()
  assert [e.step for e in read_events(tmp_path) if e.summary.value] == [0, 1, 2, 3, 4]


def test_progress_reports_the_rate_since_the_last_report_and_the_time_left(caplog):
  clock, lines = Clock(0.0), []

  class Scalars:

    def write_scalars(self, step, scalars):
      lines.append((step, scalars["train/steps_per_sec"]))

  progress = summaries.Progress("pretrain", 1000, Scalars(), every=60.0, clock=clock)
  progress(1)  # after the first step's compilation: the clock starts here
  clock.now = 30.0
  progress(50)  # too soon
  clock.now = 80.0
  with caplog.at_level(logging.INFO):
    progress(201)
  assert lines == [(201, pytest.approx(2.5))]
  assert "step 201 of 1000, 2.5 steps/s, 6 min left" in caplog.text  # 799 / 2.5 = 319.6 s


def test_the_training_loop_does_not_import_tensorflow():
  code = "import sys, linearsr_jax.train.loop; print('tensorflow' in sys.modules)"
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert result.stdout.strip() == "False"
