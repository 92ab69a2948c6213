"""A grain iterator placed at a saved position, whatever the number of data workers then and now.

The train stream (pipeline.make_train_dataset) is one sequence of batches whatever
data.num_workers is: with k workers, worker i produces batches i, i + k, … in turn. Only the
iterator's state differs: {'next_index': n} in the main process, a per-worker state under
mp_prefetch. So a state saved with one number of workers is read as "n batches consumed" and
written again in the shape the current pipeline takes.
"""

import logging

from linearsr_jax.errors import UserError

log = logging.getLogger(__name__)


def batches_consumed(state: dict) -> int:
  """n for a state of the main-process iterator or of mp_prefetch's; ValueError for any other."""
  if set(state) == {"next_index"}:
    return int(state["next_index"])
  workers = state.get("iterators_in_use_states")
  if (workers and state.get("iterators_in_use_indices") == list(range(len(workers))) and
      not any(state.get("exhausted", [1])) and not state.get("future_states") and
      all(set(w) == {"next_index"} for w in workers)):
    return sum(int(w["next_index"]) for w in workers)
  raise ValueError(f"an iterator state of unknown shape (keys {sorted(state)})")


def state_at(n: int, like: dict) -> dict:
  """The state of an iterator shaped as `like` (a fresh one's) that has consumed n batches."""
  if set(like) == {"next_index"}:
    return {"next_index": n}
  k = len(like["iterators_in_use_states"])
  return {
      "next_index_in_cycle": n % k, "next_index_in_datasets": k,
      "iterators_in_use_indices": list(range(k)),
      "iterators_in_use_states": [{"next_index": (n - i + k - 1) // k} for i in range(k)],
      "exhausted": [0] * k, "future_states": {}
  }


def _workers(state: dict) -> int:
  return len(state.get("iterators_in_use_states", ()))


def place(data_iter, saved: dict, what: str):
  """Sets `data_iter` (fresh, not yet read) to the batch `saved` had reached; a state saved
  with another number of workers is repositioned, and the log says so. A state that is neither
  is one line naming the setting."""
  like = data_iter.get_state()
  if _workers(saved) != _workers(like) or set(saved) != set(like):
    try:
      n = batches_consumed(saved)
      state = state_at(n, like)
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(f"the data iterator state of {what} does not fit this data pipeline "
                      f"({e}): resume with the data.num_workers it was saved with") from None
    log.info(
        "%s: its data iterator was saved with data.num_workers=%d, this run has %d: "
        "repositioned at the same batch (%d consumed)", what, _workers(saved), _workers(like), n)
    saved = state
  try:
    data_iter.set_state(saved)
  except (KeyError, IndexError, TypeError, ValueError) as e:
    raise UserError(f"the data iterator state of {what} does not fit this data pipeline "
                    f"({type(e).__name__}: {e}): resume with the data settings it was saved "
                    "with (data.num_workers, data.batch_size)") from None
  data_iter.start_prefetch()
