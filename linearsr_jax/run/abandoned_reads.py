"""Silence the echoes of a checkpoint read that failed.

Orbax reads a checkpoint's arrays as concurrent asyncio tasks over TensorStore futures. When
one read fails, Orbax's event loop ends at once: the other tasks' errors are never retrieved
(asyncio logs each with its traceback when the task is collected), and the TensorStore reads
still in flight complete into the closed loop (one "Event loop is closed" unraisable error each,
seconds later). By then the caller has said in one line which checkpoint is damaged and why;
these tracebacks add nothing and bury that line. Some arrive while Orbax is still unwinding, so
the filters go in before the first read. Only these two kinds are dropped; anything else still
reaches the previous hooks.
"""

import logging
import sys

_UNRETRIEVED = "Task exception was never retrieved"
_installed = False


class _DropUnretrieved(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return record.msg != _UNRETRIEVED


def _closed_loop_callback(unraisable) -> bool:
  return (unraisable.exc_type is RuntimeError and
          str(unraisable.exc_value) == "Event loop is closed")


def silence():
  """Installs both filters, once per process; called before a checkpoint is read."""
  global _installed
  if _installed:
    return
  _installed = True
  logging.getLogger("asyncio").addFilter(_DropUnretrieved())
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _closed_loop_callback(unraisable):
      previous(unraisable)

  sys.unraisablehook = hook
