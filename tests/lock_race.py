"""Run locks racing: every starter calls `acquire` at the same moment, in its own thread."""

import threading

from linearsr_jax.errors import UserError


def race(starters) -> tuple:
  """(the locks that were acquired, the ones refused with a UserError)."""
  ready, won, refused = threading.Barrier(len(starters)), [], []

  def start(lock):
    ready.wait()
    try:
      won.append(lock.acquire())
    except UserError:
      refused.append(lock)

  threads = [threading.Thread(target=start, args=(lock,)) for lock in starters]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  return won, refused
