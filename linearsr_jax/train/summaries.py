"""What the training loop shows a person while it runs: TensorBoard's event files (scalars and
images), a log line per write, and the step rate with the time left.

The event files are written here rather than through clu's metric writers: importing those
imports TensorFlow, 3 to 5 s of CPU at the start of every `linearsr train`, to write a few
protobufs. The format is TensorBoard's own: `Event` protos (tensorboard's generated classes, no
TensorFlow) framed as TFRecords. An object store cannot append, so each flush writes one new,
complete file (atomic.write_atomically, on a local disk or gs://); TensorBoard reads all of a
directory's event files in name order, and the names sort in the order they were written.
"""

import io
import logging
import os
import socket
import struct
import time

import google_crc32c
import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2

from linearsr_jax import atomic, storage

log = logging.getLogger(__name__)

FLUSH_SECONDS = 120.0  # as TensorFlow's summary writer: what a kill can cost of the curves


def _masked_crc(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tf_record(data: bytes) -> bytes:
  """One TFRecord: length, its masked CRC-32C, the data, the data's masked CRC-32C."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", _masked_crc(length)) + data +
          struct.pack("<I", _masked_crc(data)))


def _png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.squeeze(image, axis=-1) if image.shape[-1] == 1 else image).save(
      buffer, format="PNG")
  return buffer.getvalue()


def _uint8(images) -> np.ndarray:
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def _image_value(tag: str, images: np.ndarray) -> summary_pb2.Summary.Value:
  """[N, H, W, C] uint8 as tf.summary.image writes it: one string tensor (width, height, then
  each image's PNG) under the images plugin."""
  n, height, width = images.shape[:3]
  tensor = tensor_pb2.TensorProto(
      dtype=7,  # DT_STRING
      tensor_shape=tensor_shape_pb2.TensorShapeProto(
          dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n + 2)]),
      string_val=[str(width).encode(),
                  str(height).encode(), *map(_png, images)])
  metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
      plugin_name="images"))
  return summary_pb2.Summary.Value(tag=tag, metadata=metadata, tensor=tensor)


class Summaries:
  """Scalars and images by step: logged, and when `directory` is given (the lead host's stage
  directory), written as TensorBoard event files, one per flush."""

  def __init__(self, directory=None, clock=time.time):
    self.directory, self.clock = directory, clock
    self.pending, self.files_written = [], 0
    self.last_flush = clock()
    self.name = (f"events.out.tfevents.{int(self.last_flush):010d}.{socket.gethostname()}."
                 f"{os.getpid()}")

  def write_scalars(self, step: int, scalars: dict):
    log.info("[%d] %s", step, ", ".join(f"{k}={float(v):.6g}" for k, v in scalars.items()))
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
    self._add(step, values)

  def write_images(self, step: int, images: dict):
    """`images`: {tag: [N, H, W, C]}, uint8 or floats in [0, 1]."""
    self._add(step, [_image_value(tag, _uint8(v)) for tag, v in images.items()])

  def _add(self, step: int, values: list):
    if self.directory is None:
      return
    event = event_pb2.Event(wall_time=self.clock(), step=step,
                            summary=summary_pb2.Summary(value=values))
    self.pending.append(tf_record(event.SerializeToString()))
    if self.clock() - self.last_flush >= FLUSH_SECONDS:
      self.flush()

  def flush(self):
    """Writes what is pending as a new event file. A failure is a warning, and the events stay
    pending for the next flush: the curves are not worth stopping a run for."""
    self.last_flush = self.clock()
    if not self.pending:
      return
    header = event_pb2.Event(wall_time=self.clock(), file_version="brain.Event:2")
    path = storage.path(self.directory) / f"{self.name}.{self.files_written:05d}"
    try:
      atomic.write_atomically(path,
                              b"".join([tf_record(header.SerializeToString())] + self.pending))
    except Exception as e:  # noqa: BLE001 (disk, network, permissions: all the same here)
      log.warning("TensorBoard events not written to %s (retried at the next flush): %s", path,
                  storage.describe(e))
      return
    self.pending, self.files_written = [], self.files_written + 1


class Progress:
  """Every `every` seconds: the step rate since the last report and the time the stage's budget
  has left, logged and written as the scalar train/steps_per_sec. The first call starts the
  clock, so the first step's compilation is not counted."""

  def __init__(self, stage: str, max_steps: int, summaries: Summaries, every=60.0,
               clock=time.monotonic):
    self.stage, self.max_steps, self.summaries = stage, max_steps, summaries
    self.every, self.clock, self.mark = every, clock, None

  def __call__(self, step: int):
    now = self.clock()
    if self.mark is None:
      self.mark = (step, now)
      return
    (last_step, last_time) = self.mark
    if now - last_time < self.every:
      return
    rate = (step - last_step) / (now - last_time)
    left = (self.max_steps - step) / rate if rate > 0 else float("inf")
    log.info("stage %s: step %d of %d, %.3g steps/s, %s left", self.stage, step, self.max_steps,
             rate, _duration(left))
    self.summaries.write_scalars(step, {"train/steps_per_sec": rate})
    self.mark = (step, now)


def _duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "unknown time"
  minutes = int(seconds + 59) // 60
  return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"
